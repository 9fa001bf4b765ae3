"""Device mesh, the logical-axis rules, and the shardings derived from them.

Every parameter carries logical axis names (set where it is created, in models/); this
file's one table maps them to mesh axes:
  data    pure data parallelism: params replicated, batch split.
  fsdp    params, optimizer state and EMA split over their 'embed' axis (ZeRO-3 style);
          the batch is split over data x fsdp.
  tensor  Megatron-style split of the attention/MLP/hypernetwork widths.
"""

import contextlib
import math

from absl import logging
import jax
import optax
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


class MeshError(ValueError):
  """config.mesh does not fit the devices; the message says how to fix it."""

# logical axis -> mesh axis (None = replicated). Activations use the same names.
LOGICAL_AXIS_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("qkv", "tensor"),
    ("heads", "tensor"),
    ("adaln", "tensor"),
    ("nerf_gen", "tensor"),
    ("embed_in", None),
    ("text_embed", None),
    ("vocab", None),
    ("freq", None),
    ("patch", None),
    ("field", None),
    ("field_in", None),
    ("channels", None),
    ("norm", None),
    ("length", None),
    ("act_embed", None),
    ("layers", None),  # the stacked axis of scanned blocks
)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """Axis sizes for MESH_AXES from config (one may be -1 = the remaining devices)."""
  sizes = [int(mesh_config[name]) for name in MESH_AXES]
  if sizes.count(-1) > 1:
    raise MeshError(f"config.mesh: at most one axis may be -1, got {dict(mesh_config)}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f"config.mesh {dict(mesh_config)} does not divide {num_devices} "
                       "devices. Fix: choose axis sizes whose product divides the count.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(f"config.mesh {dict(mesh_config)} needs {math.prod(sizes)} devices, "
                     f"there are {num_devices}. Fix: make the product equal, or use -1.")
  return tuple(sizes)


def create_mesh(mesh_config=None, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all global devices; Auto axes for linen rules.

  The one place a device order is chosen (topology-aware on TPU): the trainer and
  aot_compile both build their mesh here, so the program compiled ahead of time is the
  one the pod runs.
  """
  devices = jax.devices() if devices is None else devices
  mesh_config = mesh_config or {"data": -1, "fsdp": 1, "tensor": 1}
  shape = mesh_shape(mesh_config, len(devices))
  device_grid = mesh_utils.create_device_mesh(shape, devices)
  return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def activate(mesh: Mesh):
  """Mesh + logical rules in scope: activation constraints in the model take effect.

  linen's `with_logical_constraint` is a silent no-op unless the abstract mesh is set,
  which `jax.set_mesh` does and the legacy `with mesh:` does not.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp."""
  return NamedSharding(mesh, P(BATCH_AXES))


def _fit_spec(spec: P, shape, mesh: Mesh) -> P:
  """Drops mesh axes from dims they do not divide (those dims stay replicated)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[n] for n in names)
    fitted.append(axes if names and dim % size == 0 else None)
  return P(*fitted)


def param_shardings(boxed_shapes, mesh: Mesh):
  """NamedShardings for a param tree whose leaves are logically-partitioned boxes.

  Args:
    boxed_shapes: the un-unboxed output of jax.eval_shape(model.init, ...)['params'].
  Returns:
    the same tree (unboxed) of NamedShardings.
  """
  logical = nn.get_partition_spec(boxed_shapes)
  mesh_specs = nn.logical_to_mesh(logical, LOGICAL_AXIS_RULES)
  shapes = nn.meta.unbox(boxed_shapes)
  out, uneven = {}, []

  def to_sharding(spec, shape_struct):
    fitted = _fit_spec(spec, shape_struct.shape, mesh)
    if fitted != spec:
      uneven.append((shape_struct.shape, spec))
    return NamedSharding(mesh, fitted)

  out = jax.tree.map(to_sharding, mesh_specs, shapes,
                     is_leaf=lambda x: isinstance(x, P))
  if uneven:
    logging.info("%d params keep some dims replicated (not divisible by the mesh): %s",
                 len(uneven), uneven[:5])
  return out


def state_shardings(state_shapes, params_sharding, tx, mesh: Mesh):
  """Shardings for a TrainState: params, EMA and the optimizer's per-param moments by the
  rules; aux params (small: the REPA projector) and scalars replicated."""
  aux_sharding = jax.tree.map(lambda _: replicated(mesh), state_shapes.aux_params)
  opt_sharding = optax.tree_map_params(
      tx, lambda _, sharding: sharding, state_shapes.opt_state,
      (params_sharding, aux_sharding), transform_non_params=lambda _: replicated(mesh))
  return state_shapes.replace(step=replicated(mesh), params=params_sharding,
                              ema_params=params_sharding, opt_state=opt_sharding,
                              aux_params=aux_sharding)
