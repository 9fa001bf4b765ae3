"""Which backend a model is being traced for.

Some layers pick a formulation per backend (the CPU backward passes in layers.py and
attention.py, interpret mode for the splash kernel). Tracing happens on the host, so
the answer comes from the mesh in scope, whose devices may be a TPU slice that this host
only compiles for (aot_compile), and otherwise from JAX's default backend.
"""

import contextlib
import threading

import jax

_forward_mode = threading.local()


def target_platform() -> str:
  """'cpu', 'gpu' or 'tpu': the platform of the mesh in scope, else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  if device is not None:
    return device.platform
  return jax.default_backend()


@contextlib.contextmanager
def forward_mode_autodiff():
  """Traces the enclosed model calls for jax.jvp: the hand-written CPU backward passes
  (custom_vjp, which has no forward-mode rule) give way to plain XLA ops."""
  previous = getattr(_forward_mode, "active", False)
  _forward_mode.active = True
  try:
    yield
  finally:
    _forward_mode.active = previous


def custom_cpu_backward() -> bool:
  """Whether layers may use their CPU custom_vjp formulations: on the CPU backend, and
  not inside `forward_mode_autodiff`."""
  return target_platform() == "cpu" and not getattr(_forward_mode, "active", False)
