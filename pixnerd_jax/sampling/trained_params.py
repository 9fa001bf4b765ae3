"""A sampler's params: the EMA (or online) params of a training workdir, or a params
checkpoint (`convert checkpoint` output, whose model.json gives the architecture)."""

from etils import epath

from pixnerd_jax.models import build_model, param_shapes, params_for_model
from pixnerd_jax.training import checkpoint

# How to run the model rather than what it is: taken from the run config, not model.json.
_RUNTIME_MODEL_FIELDS = ("dtype", "attention_implementation", "remat_policy", "scan_blocks")


def load_checkpoint(path: str, config, online: bool = False, step: int | None = None):
  """(model, params, description) from a training workdir or a params checkpoint.

  Args:
    path: a workdir (has checkpoints/) or a params checkpoint (has model.json).
    config: the run config; config.model names the architecture of a workdir.
    online: workdir only: the online params instead of the EMA ones.
    step: workdir only: which checkpoint (default latest).
  """
  root = epath.Path(path)  # local or gs://
  if (root / checkpoint.MODEL_JSON).exists():
    if online or step is not None:
      raise checkpoint.CheckpointError(
          f"{path} is a params checkpoint: --online and --step apply to training workdirs.")
    model_config, params = checkpoint.load_params(path)
    model_config = dict(model_config)
    for key in _RUNTIME_MODEL_FIELDS:
      if key in config.model:
        model_config[key] = config.model[key]
    source = f"params checkpoint {checkpoint.absolute(root)}"
  elif (root / "checkpoints").is_dir():
    model_config = dict(config.model)
    key = "params" if online else "ema_params"
    step, state = checkpoint.load_train_state(path, step, only=(key,))  # not Adam's moments
    params = state[key]
    source = f"{'online' if online else 'EMA'} params of step {step} in {checkpoint.absolute(root)}"
  else:
    raise checkpoint.CheckpointError(
        f"{path} is neither a training workdir (no checkpoints/) nor a params checkpoint "
        f"(no {checkpoint.MODEL_JSON}).")
  model = build_model(model_config)
  params = checkpoint.match_params(params_for_model(params, model), param_shapes(model),
                                   source)
  return model, params, source
