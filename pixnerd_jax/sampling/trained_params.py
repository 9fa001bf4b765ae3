"""A sampler's params: the EMA (or online) params of a training workdir, or a params
checkpoint (`convert checkpoint` output, whose model.json gives the architecture),
placed on the sampling mesh by the training's logical-axis rules."""

from etils import epath
import jax
from jax.sharding import Mesh, NamedSharding

from pixnerd_jax.models import boxed_param_shapes, build_model, param_shapes, params_for_model
from pixnerd_jax.runtime import mesh as mesh_lib
from pixnerd_jax.training import checkpoint

# How to run the model rather than what it is: taken from the run config, not model.json.
_RUNTIME_MODEL_FIELDS = ("dtype", "attention_implementation", "remat_policy", "scan_blocks")


def sampling_mesh(config, devices=None) -> Mesh:
  """config.mesh (as training: data, fsdp, tensor; -1 = the remaining devices) over this
  process's devices: each process samples its own images on its own devices."""
  return mesh_lib.create_mesh(config.get("mesh"),
                              jax.local_devices() if devices is None else devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Samples split over the mesh's batch axes (data x fsdp), as training's batches."""
  return mesh_lib.batch_sharding(mesh)


def param_shardings(model, mesh: Mesh):
  """The params' NamedShardings on `mesh` by the training's logical-axis rules (fsdp
  splits 'embed', tensor the widths). The sizes a sampler renders at leave the params
  as they are, so they come from the model at its trained size."""
  base = model.clone(decoder_patch_scaling=None, decoder_chunk_size=None)
  return mesh_lib.param_shardings(boxed_param_shapes(base), mesh)


def load_checkpoint(path: str, config, online: bool = False, step: int | None = None,
                    mesh: Mesh | None = None):
  """(model, params, description) from a training workdir or a params checkpoint.

  Args:
    path: a workdir (has checkpoints/) or a params checkpoint (has model.json); local or
      gs://.
    config: the run config; config.model names the architecture of a workdir.
    online: workdir only: the online params instead of the EMA ones.
    step: workdir only: which checkpoint (default latest).
    mesh: the sampling mesh: the params are read into host memory and each device gets
      only its shard (`param_shardings`). None: on this process's first device.
  """
  root = epath.Path(path)  # local or gs://
  on_host = mesh is not None
  if (root / checkpoint.MODEL_JSON).exists():
    if online or step is not None:
      raise checkpoint.CheckpointError(
          f"{path} is a params checkpoint: --online and --step apply to training workdirs.")
    model_config, params = checkpoint.load_params(path, on_host=on_host)
    model_config = dict(model_config)
    for key in _RUNTIME_MODEL_FIELDS:
      if key in config.model:
        model_config[key] = config.model[key]
    source = f"params checkpoint {checkpoint.absolute(root)}"
  elif (root / "checkpoints").is_dir():
    model_config = dict(config.model)
    key = "params" if online else "ema_params"
    step, state = checkpoint.load_train_state(path, step, only=(key,),  # not Adam's moments
                                              on_host=on_host)
    params = state[key]
    source = f"{'online' if online else 'EMA'} params of step {step} in {checkpoint.absolute(root)}"
  else:
    raise checkpoint.CheckpointError(
        f"{path} is neither a training workdir (no checkpoints/) nor a params checkpoint "
        f"(no {checkpoint.MODEL_JSON}).")
  model = build_model(model_config)
  params = checkpoint.match_params(params_for_model(params, model), param_shapes(model),
                                   source)
  if mesh is not None:
    params = jax.device_put(params, param_shardings(model, mesh))
  return model, params, source
