"""Checkpoint I/O with Orbax.

A params checkpoint (what `convert checkpoint` writes, and what sampling and
fine-tuning read) is a directory with `params/` (an Orbax PyTree of float32 arrays)
and `model.json` (the model config fields, reference names).
"""

import json

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from pixnerd_jax.runtime import console

MODEL_JSON = "model.json"
REPA_PROJECTOR_DIR = "repa_projector"
PARAMS_DIR = "params"


class CheckpointError(ValueError):
  """A checkpoint directory is missing, incomplete or unreadable."""


def absolute(path) -> epath.Path:
  """`path` as an absolute epath.Path; gs:// and other URLs are left as they are
  (epath's `absolute()` would prefix them with the working directory)."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.absolute()


def save_params(directory: str, params, model_config: dict) -> None:
  """Writes params and their model config; overwrites an existing params checkpoint."""
  path = epath.Path(directory)
  params = jax.tree.map(np.asarray, params)
  try:
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(absolute(path) / PARAMS_DIR, params, force=True)
    (path / MODEL_JSON).write_text(json.dumps(dict(model_config), indent=2, sort_keys=True))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"Could not write the params checkpoint {directory}: choose a "
                          f"writable directory with free space. ({console.summary(e, 200)})") from e


def _is_array_metadata(m) -> bool:
  return hasattr(m, "shape") and hasattr(m, "dtype")


def _host_restore_args(tree):
  """Restore args that read every array of `tree` (metadata or shapes) into numpy."""
  return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                      is_leaf=_is_array_metadata)


def load_params(directory: str, on_host: bool = False):
  """Reads (model config dict, params) written by `save_params`.

  on_host: numpy arrays in host memory instead of arrays on a device (the caller then
  places each device's shard: sampling a model too large for one device).
  """
  path = epath.Path(directory)
  model_json = path / MODEL_JSON
  if not (path / PARAMS_DIR).exists() or not model_json.exists():
    raise CheckpointError(
        f"{directory} is not a params checkpoint: expected {PARAMS_DIR}/ and {MODEL_JSON} "
        "(made by `python -m pixnerd_jax.convert checkpoint`).")
  try:
    model_config = json.loads(model_json.read_text())
    if on_host:
      handler = ocp.PyTreeCheckpointHandler()
      try:
        item = absolute(path) / PARAMS_DIR
        params = handler.restore(item, args=ocp.args.PyTreeRestore(
            restore_args=_host_restore_args(handler.metadata(item).tree)))
      finally:
        handler.close()
    else:
      with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(absolute(path) / PARAMS_DIR)
  except Exception as e:  # orbax/tensorstore raise many types for damaged files
    raise CheckpointError(
        f"Could not read the params checkpoint {directory}: it is damaged or incomplete; "
        f"convert or copy it again. ({console.summary(e, 200)})") from e
  return model_config, params


# ----------------------------------------------------------------------------- training

DAMAGED_SUFFIX = ".damaged"


def create_manager(workdir: str, config) -> ocp.CheckpointManager:
  """Asynchronous, atomic (write-then-rename) checkpoints in workdir/checkpoints; the
  unfinished saves of a killed run (`<step>.orbax-checkpoint-tmp*`) are removed."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True, enable_async_checkpointing=True,
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(absolute(workdir) / "checkpoints",
                               options=options, item_handlers=_item_handlers())


def _item_handlers() -> dict:
  import grain  # pylint: disable=import-outside-toplevel
  return {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  """Starts an async save of the train state with the data iterator's position.

  Raises CheckpointError when this save, or the previous one still being written in the
  background, fails (unwritable directory, full disk).
  """
  from pixnerd_jax import data  # pylint: disable=import-outside-toplevel
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=data.iterator_checkpoint_args(data_iterator)), force=True)
  except Exception as e:  # OSError, or whatever the storage layer raises
    raise _save_error(manager, step, e) from e


def wait_until_saved(manager: ocp.CheckpointManager, step: int | None = None) -> None:
  """Waits for the background save (of `step`, if known); CheckpointError if it failed."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _save_error(manager, step, e) from e


def complete_steps(directory) -> list[int]:
  """Steps of the complete checkpoints in `directory`, read afresh (checkpoints moved
  aside have other names; on object stores an unfinished save has the step's name but no
  commit marker); [] if the directory cannot be listed."""
  try:
    return sorted(int(p.name) for p in epath.Path(directory).iterdir()
                  if p.name.isdigit() and ocp.step.is_checkpoint_finalized(p))
  except OSError:
    return []


def _save_error(manager, step: int | None, error: Exception) -> CheckpointError:
  logging.debug("Checkpoint save failed", exc_info=error)
  complete = complete_steps(manager.directory)
  resume = (f"restart to resume from step {complete[-1]}, the newest complete checkpoint"
            if complete else "restart (no checkpoint is complete yet: it starts from step 0)")
  which = "a checkpoint" if step is None else f"the checkpoint of step {step}"
  return CheckpointError(
      f"Writing {which} to {manager.directory} failed: make that directory writable or "
      f"free space on its disk, then {resume}. ({console.summary(error, 200)})")


def _restore(directory, step: int, state, data_iterator):
  """The state of `step` in the structure/sharding of `state`; the iterator in place.

  Through the item handlers rather than the manager: the manager's restore ends in a
  barrier, and a process whose files fail to read would leave the others waiting there.
  Each process reads what it needs; restore_latest then has them agree.
  """
  from pixnerd_jax import data  # pylint: disable=import-outside-toplevel
  step_dir = epath.Path(directory) / str(step)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  handlers = _item_handlers()
  try:
    restored = handlers["state"].restore(step_dir / "state",
                                         args=ocp.args.StandardRestore(abstract))
    handlers["data"].restore(step_dir / "data",
                             args=data.iterator_checkpoint_args(data_iterator, restore=True))
  finally:
    handlers["state"].close()
  return restored


def restore_latest(manager: ocp.CheckpointManager, state, data_iterator):
  """(step, state, data_iterator) from the newest checkpoint that restores; step is None
  (and state, data_iterator unchanged) when there is none.

  A checkpoint that does not restore while an older one does is damaged (truncated or
  lost files, a broken data-iterator state): it is moved to `<step>.damaged` with a
  warning, never deleted, never read again, and the run resumes from the older one
  (replaying the same steps, so it ends as an uninterrupted run would). Nothing is moved
  and CheckpointError is raised when a checkpoint was written with another config, or
  when none restores (the storage may be unreachable rather than the files damaged).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failed = []
  for step in steps:
    restored, problem, other_config = None, None, None
    try:
      restored = _restore(manager.directory, step, state, data_iterator)
    except Exception as e:  # pylint: disable=broad-except
      problem = e
      logging.debug("Restoring step %d failed", step, exc_info=e)
      try:
        _raise_if_written_with_another_config(manager, step, state)
      except CheckpointError as mismatch:
        other_config = mismatch
    # Every process takes part in every agreement before any of them raises: one that
    # raised alone would leave the others waiting in the next collective forever.
    outcomes = _outcomes_of_all_processes(
        _OTHER_CONFIG if other_config else _FAILED if problem else _RESTORED)
    if _OTHER_CONFIG in outcomes:
      raise other_config or CheckpointError(
          f"The checkpoint of step {step} in {manager.directory} was written with another "
          "config (found on another process): restart with the config it was written "
          "with, or use a new --workdir.")
    if _FAILED in outcomes:
      reason = console.summary(problem, 250) if problem else "it failed on another process"
      logging.warning("The checkpoint of step %d in %s does not restore (%s); %s.", step,
                      manager.directory, reason,
                      "trying the previous one" if step != steps[-1] else "no older one")
      failed.append((step, reason))
      continue
    for bad, _ in failed:
      moved = _move_aside(manager.directory, bad)
      logging.warning("Moved the damaged checkpoint of step %d to %s; resuming from step "
                      "%d.", bad, moved, step)
    if failed:
      manager.reload()
    return step, restored, data_iterator
  if failed:
    raise CheckpointError(
        f"No checkpoint in {manager.directory} restores, so nothing was moved: if the "
        "storage was unreachable, restart when it is back; if the files are damaged, move "
        f"the directory aside to start again from step 0. (Steps {steps}; step "
        f"{failed[0][0]}: {console.summary(Exception(failed[0][1]), 150)})")
  return None, state, data_iterator


# What one process found when restoring a step.
_RESTORED, _FAILED, _OTHER_CONFIG = 0, 1, 2


def _outcomes_of_all_processes(outcome: int) -> set[int]:
  """The outcomes every process found (a collective: all processes must call it)."""
  if jax.process_count() == 1:
    return {outcome}
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return {int(o) for o in np.ravel(multihost_utils.process_allgather(np.int32(outcome)))}


def _on_all_processes(ok: bool) -> bool:
  """Whether `ok` holds on every process (they must agree on which step they resume)."""
  return _outcomes_of_all_processes(_RESTORED if ok else _FAILED) == {_RESTORED}


def _move_aside(directory, step: int) -> epath.Path:
  """Renames directory/step to directory/step.damaged (.damaged.1, ... if taken); process
  0 does it, the others wait."""
  directory = epath.Path(directory)
  target = directory / f"{step}{DAMAGED_SUFFIX}"
  n = 0
  while target.exists():
    n += 1
    target = directory / f"{step}{DAMAGED_SUFFIX}.{n}"
  _on_all_processes(True)  # all have picked the name before process 0 renames
  problem = None
  if jax.process_index() == 0:
    try:
      (directory / str(step)).rename(target)
    except OSError as e:
      problem = console.summary(e, 200)
  if not _on_all_processes(problem is None):  # also the barrier after the rename
    raise CheckpointError(
        f"The checkpoint of step {step} in {directory} is damaged and could not be moved "
        f"aside: move or delete {directory / str(step)} by hand, then restart. "
        f"({problem or 'the rename failed on process 0'})")
  return target


def _shapes_by_path(tree) -> dict[str, tuple]:
  """{'params/blocks_0/attn/qkv/kernel': (shape, dtype)} for arrays or array metadata;
  dict keys, sequence indices and attribute names all read the same."""
  def name(key):
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
  return {"/".join(name(k) for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
          for path, leaf in leaves if hasattr(leaf, "shape")}


def _tree_difference(found: dict, expected: dict) -> str | None:
  if found == expected:
    return None
  missing = sorted(set(expected) - set(found))
  extra = sorted(set(found) - set(expected))
  shapes = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
  parts = [f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}"
           for label, keys in (("missing", missing), ("unexpected", extra),
                               ("different shapes", shapes)) if keys]
  return ", ".join(parts)


def _raise_if_written_with_another_config(manager, step: int, state) -> None:
  """CheckpointError if the checkpoint's own metadata reads and differs from `state`;
  returns when the metadata matches or does not read (then the files are damaged)."""
  check_written_with_this_config(manager.directory, step, state)


def check_written_with_this_config(directory, step: int, state) -> None:
  """CheckpointError if the state of directory/step (a CheckpointManager's directory)
  has another tree or other shapes than `state` (arrays or ShapeDtypeStructs: params,
  EMA, optimizer state, aux params); returns when they match or the metadata does not
  read."""
  handler = ocp.StandardCheckpointHandler()
  try:
    metadata = handler.metadata(epath.Path(directory) / str(step) / "state")
  except Exception:  # pylint: disable=broad-except
    return
  finally:
    handler.close()
  if metadata is None:
    return
  difference = _tree_difference(_shapes_by_path(metadata), _shapes_by_path(state))
  if difference:
    raise CheckpointError(
        f"The checkpoint of step {step} in {directory} was written with another "
        "config: restart with the config it was written with, or use a new --workdir. "
        f"({difference})")


def match_params(params, reference, source: str):
  """Checks that loaded params have the tree and shapes of `reference`; returns them."""
  loaded = {"/".join(map(str, k)): v.shape for k, v in
            jax.tree_util.tree_flatten_with_path(params)[0]}
  expected = {"/".join(map(str, k)): v.shape for k, v in
              jax.tree_util.tree_flatten_with_path(reference)[0]}
  if loaded != expected:
    missing = sorted(set(expected) - set(loaded))
    extra = sorted(set(loaded) - set(expected))
    shapes = sorted(k for k in set(loaded) & set(expected) if loaded[k] != expected[k])
    raise CheckpointError(
        f"{source} does not fit config.model: missing {missing[:5]}, unexpected "
        f"{extra[:5]}, different shapes {shapes[:5]}. Set config.model to the "
        "checkpoint's model.json.")
  return params


def load_train_state(workdir: str, step: int | None = None,
                     only: tuple[str, ...] | None = None,
                     on_host: bool = False) -> tuple[int, dict]:
  """(step, state as nested dicts) from a training workdir: params, ema_params, ... .

  Reads the given step, or the newest checkpoint that reads (a damaged newer one is
  skipped with a warning, and left in place), onto this process's first device, whatever
  mesh or host count wrote it; no config or model needed. `only` names the entries to
  read (e.g. ('ema_params',) for sampling): the others (the optimizer's moments, 2x the
  params) are neither read nor held in memory. on_host: numpy arrays in host memory
  instead (no device holds the whole state; the caller places the shards).
  """
  directory = absolute(workdir) / "checkpoints"
  if not directory.exists():
    raise CheckpointError(f"No checkpoints in {workdir}: {directory} does not exist.")
  steps = complete_steps(directory)
  if step is not None and step not in steps:
    raise CheckpointError(f"No complete checkpoint of step {step} in {directory}; it has "
                          f"steps {steps}.")
  if not steps:
    raise CheckpointError(f"No complete checkpoint in {directory}.")
  candidates = [step] if step is not None else steps[::-1]
  for candidate in candidates:
    try:
      return candidate, _read_state(directory, candidate, only, on_host)
    except Exception as e:  # pylint: disable=broad-except  # damaged files raise many types
      logging.debug("Reading step %d failed", candidate, exc_info=e)
      problem = console.summary(e, 200)
      if step is None and candidate != candidates[-1]:
        logging.warning("The checkpoint of step %d in %s does not read (%s); using the "
                        "previous one.", candidate, directory, problem)
  if step is not None:
    raise CheckpointError(f"The checkpoint of step {step} in {directory} does not read: "
                          f"its files are damaged; pick another step with --step (complete "
                          f"ones: {steps}). ({problem})")
  raise CheckpointError(f"No checkpoint in {directory} reads: their files are damaged or "
                        f"the storage is unreachable. (Steps {steps}; step {candidates[-1]}: "
                        f"{problem})")


def _read_state(directory: epath.Path, step: int, only: tuple[str, ...] | None = None,
                on_host: bool = False) -> dict:
  # The handler alone: a Checkpointer on the item directory would warn that the step's
  # metadata file is not there (it is one level up).
  handler = ocp.StandardCheckpointHandler()
  try:
    path = directory / str(step) / "state"
    metadata = handler.metadata(path)
    if only is not None:
      missing = [key for key in only if key not in metadata]
      if missing:
        raise CheckpointError(f"The checkpoint {path} has no {missing}.")
      metadata = {key: metadata[key] for key in only}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata,
        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    if only is None and not on_host:
      return handler.restore(path, args=ocp.args.StandardRestore(target))
  finally:
    handler.close()
  # A part of the saved tree (the rest is not read), or numpy arrays.
  restore_args = (_host_restore_args(target) if on_host
                  else ocp.checkpoint_utils.construct_restore_args(target))
  partial = ocp.PyTreeCheckpointHandler()
  try:
    return partial.restore(path, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=only is not None))
  finally:
    partial.close()
