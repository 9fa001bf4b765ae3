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
