"""Which backend a model is being traced for.

Some layers pick a formulation per backend (the CPU backward passes in layers.py and
attention.py, interpret mode for the splash kernel). Tracing happens on the host, so
the answer comes from the mesh in scope, whose devices may be a TPU slice that this host
only compiles for (aot_compile), and otherwise from JAX's default backend.
"""

import jax


def target_platform() -> str:
  """'cpu', 'gpu' or 'tpu': the platform of the mesh in scope, else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  if device is not None:
    return device.platform
  return jax.default_backend()
