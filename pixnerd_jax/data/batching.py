"""Full-batch assembly that drops failed examples and counts them.

Grain's own `filter` + `batch` would drop bad examples silently. This stage
consumes a stream in which a failed example is a `Skipped` (its reason),
always emits full
batches, and records in each batch how many examples were dropped while
assembling it (`num_skipped`). The count lives in the batch rather than in a
module-level counter because the stage usually runs in a worker process,
where a global would be invisible to the trainer.
"""

from typing import Any

import grain
import numpy as np

from pixnerd_jax.data.errors import DataError

NUM_SKIPPED_KEY = 'num_skipped'
# How many causes of a run of failures the error quotes.
_CAUSES_QUOTED = 3


class Skipped:
  """Stands in the stream for an example that failed to load; `reason` names the file
  and the error (a plain object: it crosses worker processes by pickle)."""

  def __init__(self, reason: str):
    self.reason = reason


class FullBatchIterDataset(grain.IterDataset):
  """Batches dicts of arrays, skipping `Skipped` elements.

  Output: dict of stacked arrays (batch_size, ...) plus `num_skipped`, an
  int32 scalar: the `Skipped`s consumed since the previous batch.
  """

  def __init__(self, parent: grain.IterDataset, *, batch_size: int,
               max_consecutive_skips: int):
    """Initialises the stage.

    Args:
      parent: stream of dicts of numpy arrays, or `Skipped` for a failed
        example.
      batch_size: examples per batch; every emitted batch is full.
      max_consecutive_skips: more consecutive failures than this raise one
        DataError quoting the first causes (e.g. every file unreadable),
        instead of warning through a whole epoch.
    """
    super().__init__(parent)
    if batch_size <= 0:
      raise ValueError(f'batch_size must be positive, got {batch_size}.')
    self._batch_size = batch_size
    self._max_consecutive_skips = max_consecutive_skips

  def __iter__(self) -> grain.DatasetIterator:
    return _FullBatchIterator(self._parent.__iter__(), self._batch_size,
                              self._max_consecutive_skips)

  def __str__(self) -> str:
    return f'FullBatchIterDataset(batch_size={self._batch_size})'


class _FullBatchIterator(grain.DatasetIterator):
  """Iterator of `FullBatchIterDataset`."""

  def __init__(self, parent: grain.DatasetIterator, batch_size: int,
               max_consecutive_skips: int):
    super().__init__(parent)
    self._batch_size = batch_size
    self._max_consecutive_skips = max_consecutive_skips

  def __next__(self) -> dict[str, np.ndarray]:
    examples = []
    skipped = 0
    consecutive = 0
    causes = []
    # A batch is assembled in one call, so the parent's state after a batch is
    # the complete state of this stage (nothing half-consumed is held here).
    while len(examples) < self._batch_size:
      example = next(self._parent)  # A finite parent drops its remainder.
      if isinstance(example, Skipped):
        skipped += 1
        consecutive += 1
        if len(causes) < _CAUSES_QUOTED:
          causes.append(example.reason)
        if consecutive > self._max_consecutive_skips:
          raise DataError(
              f'{consecutive} consecutive examples failed to load: the data '
              'looks unreadable; fix or remove the files (first causes: '
              + '; '.join(causes) + ').')
        continue
      consecutive = 0
      causes = []
      examples.append(example)
    batch = {key: np.stack([example[key] for example in examples])
             for key in examples[0]}
    batch[NUM_SKIPPED_KEY] = np.asarray(skipped, np.int32)
    return batch

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)

  def __str__(self) -> str:
    return f'_FullBatchIterator(batch_size={self._batch_size})'
