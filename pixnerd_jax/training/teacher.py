"""The frozen flow-matching teacher of MeanFlow distillation (config.meanflow.teacher)."""

import json

from etils import epath
import jax
import ml_collections
import numpy as np

from pixnerd_jax.models import PixNerDiT, build_model, param_shapes, params_for_model
from pixnerd_jax.training import checkpoint

# How to run the teacher, taken from the run's config.model rather than model.json.
_RUNTIME_FIELDS = ("dtype", "attention_implementation", "remat_policy", "scan_blocks")


def teacher_model_config(config: ml_collections.ConfigDict) -> dict:
  """The teacher's architecture: model.json of a params checkpoint, else the student's
  config.model (a training workdir of the same model); never average-velocity."""
  path = config.meanflow.teacher
  model_json = epath.Path(path) / checkpoint.MODEL_JSON  # local or gs://
  if model_json.exists():
    model_config = json.loads(model_json.read_text())
    for key in _RUNTIME_FIELDS:
      if key in config.model:
        model_config[key] = config.model[key]
  else:
    model_config = dict(config.model)
  model_config = dict(model_config, average_velocity=False)
  model_config.pop("preset", None)
  return model_config


def build_teacher(config: ml_collections.ConfigDict) -> PixNerDiT:
  return build_model(teacher_model_config(config))


def load_teacher(config: ml_collections.ConfigDict) -> tuple[PixNerDiT, dict, str]:
  """(teacher model, its params in that model's layout, a description).

  config.meanflow.teacher: a training workdir (its newest checkpoint's EMA params, read
  with config.model) or a params checkpoint (`convert checkpoint`, with model.json).
  """
  path = config.meanflow.teacher
  model = build_teacher(config)
  root = epath.Path(path)
  if (root / checkpoint.MODEL_JSON).exists():
    _, params = checkpoint.load_params(path)
    source = f"params checkpoint {checkpoint.absolute(root)}"
  elif (root / "checkpoints").is_dir():
    step, state = checkpoint.load_train_state(path)
    params = state["ema_params"]
    source = f"EMA params of step {step} in {checkpoint.absolute(root)}"
  else:
    raise checkpoint.CheckpointError(
        f"config.meanflow.teacher={path} is neither a training workdir (no checkpoints/) "
        f"nor a params checkpoint (no {checkpoint.MODEL_JSON}): train the teacher first "
        "(python -m pixnerd_jax.main --config=configs/digits.py --workdir=workdirs/digits) "
        "or convert an official one (python -m pixnerd_jax.convert checkpoint ...).")
  params = checkpoint.match_params(params_for_model(params, model), param_shapes(model),
                                   f"The teacher ({source})")
  # Host arrays: every process holds the whole tree, so device_put can place each
  # process's shards of a global sharding.
  return model, jax.tree.map(np.asarray, params), source
