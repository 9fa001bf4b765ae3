"""layers.Dense: the CPU formulation of its backward gives autodiff's gradients, and is
used where it is faster (wide kernels, CPU backend) and nowhere else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixnerd_jax.models import layers, platform


def _dense_and_plain(features, in_features, dtype=jnp.float32):
  dense = layers.Dense(features, dtype=dtype)
  x = jax.random.normal(jax.random.key(0), (3, 7, in_features))
  params = dense.init(jax.random.key(1), x)
  weights = jax.random.normal(jax.random.key(2), (3, 7, features))

  def via_dense(params, x):
    return jnp.sum(dense.apply(params, x).astype(jnp.float32) * weights)

  def via_plain_dot(params, x):
    p = params["params"]
    x, kernel = x.astype(dtype), p["kernel"].astype(dtype)
    out = jnp.einsum("bli,io->blo", x, kernel) + p["bias"].astype(dtype)
    return jnp.sum(out.astype(jnp.float32) * weights)

  return params, x, via_dense, via_plain_dot


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_wide_dense_gradients_match_autodiff(dtype):
  params, x, via_dense, via_plain = _dense_and_plain(160, 136, dtype)
  assert platform.target_platform() == "cpu"
  got = jax.grad(via_dense, argnums=(0, 1))(params, x)
  want = jax.grad(via_plain, argnums=(0, 1))(params, x)
  tol = 1e-4 if dtype == jnp.float32 else 5e-2
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               rtol=tol, atol=tol)
  np.testing.assert_allclose(via_dense(params, x), via_plain(params, x), rtol=1e-5)


def test_cpu_backward_is_used_for_wide_kernels_on_cpu_only(monkeypatch):
  wide, x_wide, wide_fn, _ = _dense_and_plain(160, 136)
  narrow, x_narrow, narrow_fn, _ = _dense_and_plain(32, 67)
  wide_jaxpr = str(jax.make_jaxpr(jax.grad(wide_fn))(wide, x_wide))
  narrow_jaxpr = str(jax.make_jaxpr(jax.grad(narrow_fn))(narrow, x_narrow))
  # The transposed copy of the inputs behind its barrier is what makes it faster.
  assert "custom_vjp" in wide_jaxpr and "optimization_barrier" in wide_jaxpr
  assert "custom_vjp" not in narrow_jaxpr and "optimization_barrier" not in narrow_jaxpr
  # Traced for a TPU (aot_compile under a TPU mesh): autodiff's dot, which TPUs fold for free.
  monkeypatch.setattr(platform, "target_platform", lambda: "tpu")
  tpu_jaxpr = str(jax.make_jaxpr(jax.grad(wide_fn))(wide, x_wide))
  assert "custom_vjp" not in tpu_jaxpr and "optimization_barrier" not in tpu_jaxpr
