"""Saving the input iterator's position together with the training state.

Usage in the trainer (Orbax `CheckpointManager` with a Composite item):

    import orbax.checkpoint as ocp
    from pixnerd_jax import data

    train_iter = data.create_train_iterator(config.data, global_batch_size=B)
    mngr = ocp.CheckpointManager(workdir)
    # Save (the iterator's state is taken synchronously, at this step):
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state),
        data=data.iterator_checkpoint_args(train_iter)))
    # Restore into a freshly created iterator (same config, seed, num_workers
    # and process layout); it continues with the batch after `step`:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_train_state),
        data=data.iterator_checkpoint_args(train_iter, restore=True)))
    train_state = restored.state   # train_iter now has the saved position.

Each process writes its own `process_<i>-of-<n>.json` (a few hundred bytes:
the next position in the index stream, per worker), so multi-host works
without gathering anything.
"""

from typing import Union

import grain


def iterator_checkpoint_args(
    iterator: grain.DatasetIterator, *, restore: bool = False
) -> Union[grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointRestore]:
  """Orbax args that save `iterator`'s state, or restore into it in place.

  Args:
    iterator: the iterator from `create_train_iterator`.
    restore: False for `CheckpointManager.save`, True for `.restore`.

  Returns:
    Args to pass as one item of `ocp.args.Composite(...)`.
  """
  if restore:
    return grain.checkpoint.CheckpointRestore(iterator)
  return grain.checkpoint.CheckpointSave(iterator)
