"""Which examples of the global stream each JAX process reads."""

import grain


class ProcessBlockShard(grain.MapDataset):
  """Process p of n reads rows [p*b, (p+1)*b) of every global batch of n*b examples.

  Assembling the processes' local batches in process order (as
  jax.make_array_from_process_local_data does) then gives exactly the global batch a
  single process would read, so a run's result does not depend on the host count.
  """

  def __init__(self, parent: grain.MapDataset, *, local_batch_size: int,
               process_index: int, process_count: int):
    super().__init__(parent)
    self._block = local_batch_size
    self._index = process_index
    self._count = process_count
    self._length = len(parent) // process_count

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    batch, row = divmod(index, self._block)
    return (batch * self._count + self._index) * self._block + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices):
    return self._parent._getitems([self._parent_index(i) for i in indices])  # pylint: disable=protected-access

  def __str__(self) -> str:
    return f"ProcessBlockShard({self._index}/{self._count}, block={self._block})"
