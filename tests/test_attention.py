"""Attention implementations: the TPU splash kernel (Pallas interpret mode on CPU) against
XLA attention, through the function and through the model under a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny as tiny_config
from pixnerd_jax.runtime import mesh as sharding
from pixnerd_jax.training import validation
from pixnerd_jax.models import attention, build_model, init_params


def _qkv(batch=2, length=40, heads=2, head_dim=72, kv_length=None, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  kv_length = kv_length or length
  return (jax.random.normal(keys[0], (batch, length, heads, head_dim)),
          jax.random.normal(keys[1], (batch, kv_length, heads, head_dim)),
          jax.random.normal(keys[2], (batch, kv_length, heads, head_dim)))


@pytest.mark.parametrize("masked", [False, True])
def test_splash_matches_xla_values_and_grads(masked):
  # Head dim 72 (XL/16's) and 40 tokens: both padded to the kernel's 128 tiles.
  q, k, v = _qkv(kv_length=56)
  kv_mask = (jax.random.uniform(jax.random.key(3), (2, 56)) > 0.4) if masked else None

  def loss(impl, q, k, v):
    out = attention.dot_product_attention(q, k, v, implementation=impl, kv_mask=kv_mask)
    return jnp.sum(jnp.sin(out)), out

  (_, splash_out), splash_grads = jax.value_and_grad(
      lambda *a: loss("splash", *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  (_, xla_out), xla_grads = jax.value_and_grad(
      lambda *a: loss(None, *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  assert splash_out.shape == q.shape
  np.testing.assert_allclose(splash_out, xla_out, atol=1e-5)
  for got, want in zip(splash_grads, xla_grads):
    np.testing.assert_allclose(got, want, atol=1e-5)
  if masked:  # the mask matters: without it the result differs
    unmasked = attention.dot_product_attention(q, k, v, implementation="splash")
    assert float(jnp.abs(unmasked - splash_out).max()) > 1e-2


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cpu_attention_matches_jax_values_and_grads(masked, dtype):
  """The default attention on CPU (hand-written backward) against jax.nn's XLA attention."""
  q, k, v = (a.astype(dtype) for a in _qkv(length=24, head_dim=40, kv_length=32))
  kv_mask = (jax.random.uniform(jax.random.key(3), (2, 32)) > 0.4) if masked else None
  weights = jax.random.normal(jax.random.key(4), q.shape)

  def loss(impl, q, k, v):
    out = attention.dot_product_attention(q, k, v, implementation=impl, kv_mask=kv_mask)
    return jnp.sum(out.astype(jnp.float32) * weights), out

  (_, got), got_grads = jax.value_and_grad(
      lambda *a: loss(None, *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  (_, want), want_grads = jax.value_and_grad(
      lambda *a: loss("xla", *a), argnums=(0, 1, 2), has_aux=True)(q, k, v)
  assert "custom_vjp" in str(jax.make_jaxpr(lambda *a: loss(None, *a)[0])(q, k, v))
  tol = 2e-6 if dtype == jnp.float32 else 2e-2
  assert got.dtype == dtype
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=tol)
  for g, w in zip(got_grads, want_grads):
    assert g.dtype == dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               atol=tol * 4, rtol=tol)


def test_splash_in_model_under_mesh_matches_xla():
  """attention_implementation='splash' in the model (shard_map over the batch inside the
  jitted apply under the trainer's mesh) gives the default model's output."""
  config = tiny_config.get_config()
  model = build_model(config.model)
  splash_model = build_model(dict(config.model, attention_implementation="splash"))
  params = init_params(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  t, y = jnp.array([0.3, 0.8]), jnp.array([1, 2])
  mesh = sharding.create_mesh(config.mesh)
  with sharding.activate(mesh):
    got = jax.jit(lambda p: splash_model.apply({"params": p}, x, t, y))(params)
    jaxpr = jax.make_jaxpr(lambda p: splash_model.apply({"params": p}, x, t, y))(params)
  want = model.apply({"params": params}, x, t, y)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert "shard_map" in str(jaxpr)  # the kernel ran inside shard_map


def test_unknown_implementation_is_rejected():
  q, k, v = _qkv(length=8, head_dim=8)
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
    attention.dot_product_attention(q, k, v, implementation="flash")


def test_validation_allows_splash_only_on_tpu():
  config = tiny_config.get_config()
  config.model.attention_implementation = "splash"
  with pytest.raises(validation.ConfigError, match="splash kernel is a TPU"):
    validation.validate_config(config, platform="cpu")
  validation.validate_config(config, platform="tpu")


def test_splash_in_t2i_model_matches_xla():
  """The t2i trunk (image queries over [image; text] keys/values) and the text-refine
  blocks (text self-attention, no RoPE) give the XLA model's output with splash."""
  from configs import models as presets  # pylint: disable=g-import-not-at-top
  model = build_model(presets.get("tiny_t2i"))
  splash_model = model.clone(attention_implementation="splash")
  keys = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(keys[0], (2, 8, 12, 3))
  t = jax.random.uniform(keys[1], (2,))
  y = jax.random.normal(keys[2], (2, model.txt_max_length, model.txt_embed_dim))
  params = init_params(model, jax.random.key(0))
  leaves, treedef = jax.tree.flatten(params)  # noise, so the zero-init output carries signal
  noise = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.05 * jax.random.normal(k, p.shape)
                                        for p, k in zip(leaves, noise)])
  want = model.apply({"params": params}, x, t, y)
  got = jax.jit(lambda p: splash_model.apply({"params": p}, x, t, y))(params)
  assert float(jnp.abs(want).max()) > 1e-3  # the output carries signal
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
