"""Checkpoint I/O with Orbax.

A params checkpoint (what `convert checkpoint` writes, and what sampling and
fine-tuning read) is a directory with `params/` (an Orbax PyTree of float32 arrays)
and `model.json` (the model config fields, reference names).
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

MODEL_JSON = "model.json"
REPA_PROJECTOR_DIR = "repa_projector"
PARAMS_DIR = "params"


class CheckpointError(ValueError):
  """A checkpoint directory is missing, incomplete or unreadable."""


def save_params(directory: str, params, model_config: dict) -> None:
  """Writes params and their model config; overwrites an existing params checkpoint."""
  path = epath.Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  params = jax.tree.map(np.asarray, params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path.absolute() / PARAMS_DIR, params, force=True)
  (path / MODEL_JSON).write_text(json.dumps(dict(model_config), indent=2, sort_keys=True))


def load_params(directory: str):
  """Reads (model config dict, params) written by `save_params`."""
  path = epath.Path(directory)
  model_json = path / MODEL_JSON
  if not (path / PARAMS_DIR).exists() or not model_json.exists():
    raise CheckpointError(
        f"{directory} is not a params checkpoint: expected {PARAMS_DIR}/ and {MODEL_JSON} "
        "(made by `python -m pixnerd_jax.convert checkpoint`).")
  try:
    model_config = json.loads(model_json.read_text())
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(path.absolute() / PARAMS_DIR)
  except Exception as e:  # orbax/tensorstore raise many types for damaged files
    raise CheckpointError(f"Could not read the params checkpoint {directory}: {e}") from e
  return model_config, params


# ----------------------------------------------------------------------------- training


def create_manager(workdir: str, config) -> ocp.CheckpointManager:
  """Asynchronous, atomic (write-then-rename) checkpoints in workdir/checkpoints."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(epath.Path(workdir).absolute() / "checkpoints",
                               options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  """Starts an async save of the train state with the data iterator's position."""
  from pixnerd_jax import data  # pylint: disable=import-outside-toplevel
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=data.iterator_checkpoint_args(data_iterator)), force=True)


def restore(manager: ocp.CheckpointManager, step: int, state, data_iterator):
  """Restores `step` into the structure/sharding of `state`; the iterator in place."""
  from pixnerd_jax import data  # pylint: disable=import-outside-toplevel
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=data.iterator_checkpoint_args(data_iterator, restore=True)))
  except Exception as e:  # orbax raises many types for damaged or foreign checkpoints
    raise CheckpointError(
        f"Could not restore the checkpoint of step {step} in {manager.directory}: {e}. If the "
        "config changed since it was written, use the original config; if it is damaged, "
        f"delete {manager.directory}/{step} to resume from the previous one.") from e
  return restored.state, data_iterator


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


def load_train_state(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, state as nested dicts) from a training workdir: params, ema_params, ... .

  Reads the latest checkpoint unless `step` is given, onto this process's first device,
  whatever mesh or host count wrote it; no config or model needed.
  """
  directory = epath.Path(workdir).absolute() / "checkpoints"
  if not directory.exists():
    raise CheckpointError(f"No checkpoints in {workdir}: {directory} does not exist.")
  if step is None:
    with ocp.CheckpointManager(directory, item_names=("state", "data")) as manager:
      step = manager.latest_step()
  if step is None:
    raise CheckpointError(f"No complete checkpoint in {directory}.")
  path = directory / str(step) / "state"
  try:
    with ocp.StandardCheckpointer() as ckptr:
      metadata = ckptr.metadata(path).item_metadata
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata,
          is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
      state = ckptr.restore(path, target)
  except Exception as e:  # damaged files raise many types
    raise CheckpointError(f"Could not read checkpoint {step} in {directory}: {e}") from e
  return step, state
