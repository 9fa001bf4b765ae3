"""The PixNerd network: reference vectors, layout, init, presets, precision."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import models as presets
from flax import linen as nn

from pixnerd_jax.models import (boxed_param_shapes, build_model, count_params, init_params,
                                param_shapes, params_for_model, patchify, stack_dit_blocks,
                                unpatchify, unstack_dit_blocks)
from pixnerd_jax.models.layers import swiglu_hidden_size, timestep_frequencies
from pixnerd_jax.models.nerf import dct_pixel_encoding
from pixnerd_jax.models.rope import apply_rope, rope_2d_angles


def test_dct_encoding_matches_reference_vectors():
  enc = dct_pixel_encoding(16, 8)
  assert enc.shape == (256, 64)
  np.testing.assert_allclose(
      enc[17, :10],
      [1.0, 0.971490, 0.887586, 0.753071, 0.575617, 0.365341, 0.134233, -0.104529,
       0.971490, 0.409255], atol=1e-5)
  np.testing.assert_allclose(enc.sum(), 339.41028, rtol=1e-6)
  np.testing.assert_allclose(enc[0, :10], [1] * 9 + [0.4336], atol=1e-4)


def test_dct_x_frequency_is_the_slow_index():
  enc = dct_pixel_encoding(16, 8)
  # Pixel (row 0, col 1) varies in x only: features with a = 0 (x-frequency 0) stay 1/(1+0).
  assert np.allclose(enc[1, :8], 1.0)
  assert not np.allclose(enc[1, 8:16], enc[0, 8:16])


def test_timestep_embedding_matches_reference_vectors():
  emb = np.asarray(timestep_frequencies(jnp.array([0.5])))[0]
  np.testing.assert_allclose(emb[0:3], [0.877583, 0.881821, 0.885916], atol=1e-6)
  np.testing.assert_allclose(emb[128:131], [0.479426, 0.471584, 0.463845], atol=1e-6)
  np.testing.assert_allclose(emb[127], 0.998704, atol=1e-6)
  np.testing.assert_allclose(emb[255], 0.050886, atol=1e-6)


def test_rope_angles_match_reference_vectors():
  angles = rope_2d_angles(72, 16, 16)
  assert angles.shape == (256, 36)
  np.testing.assert_allclose(angles[17, :4], [1.066667, 1.066667, 0.639450, 0.639450],
                             atol=1e-5)
  np.testing.assert_allclose(rope_2d_angles(72, 32, 32)[33, 0], 16 / 31, atol=1e-6)
  # Non-square grid: channel pair 0 follows x (columns), pair 1 follows y (rows).
  rect = rope_2d_angles(16, 2, 3)
  np.testing.assert_allclose(rect[:3, 0], [0, 8, 16])
  np.testing.assert_allclose(rect[[0, 3], 1], [0, 16])


def test_apply_rope_rotates_adjacent_pairs():
  q = jnp.arange(8, dtype=jnp.float32).reshape(1, 1, 1, 8) + 1
  angles = jnp.array([[np.pi / 2, 0.0, np.pi, 0.0]])
  out = np.asarray(apply_rope(q, angles))[0, 0, 0]
  np.testing.assert_allclose(out, [-2, 1, 3, 4, -5, -6, 7, 8], atol=1e-6)


def test_patchify_layout_and_identity():
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
  tokens = patchify(x, 4)
  assert tokens.shape == (2, 6, 48)
  # Token 1 is patch row 0, column 1; feature 16 is channel 1 at pixel (0, 0).
  np.testing.assert_array_equal(tokens[:, 1, 0], x[:, 0, 4, 0])
  np.testing.assert_array_equal(tokens[:, 1, 16], x[:, 0, 4, 1])
  np.testing.assert_array_equal(tokens[:, 3, 1], x[:, 4, 1, 0])
  np.testing.assert_array_equal(unpatchify(tokens, 8, 12, 4), x)


def test_swiglu_two_thirds_rule():
  assert swiglu_hidden_size(1152) == 3072
  assert swiglu_hidden_size(1024) == 2730


@pytest.mark.parametrize("name,expected", [("XL/16", 700_589_219), ("L/16", 452_113_795)])
def test_released_presets_have_reference_param_counts(name, expected):
  assert count_params(param_shapes(build_model(presets.get(name)))) == expected


def _tiny(**overrides):
  return build_model(presets.get("tiny", num_classes=10, **overrides))


# Run under jit: op-by-op, every primitive of a forward pass compiles on its own (seconds
# per test on the CPU).
def _init(model, seed, *inputs):
  return nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), *inputs)["params"])


def _apply(model, params, *inputs, **kwargs):
  return jax.jit(functools.partial(model.apply, **kwargs))({"params": params}, *inputs)


def test_output_is_zero_at_init_and_shapes_follow_input():
  model = _tiny()
  x = jax.random.normal(jax.random.key(1), (3, 8, 12, 3))
  t = jnp.array([0.1, 0.5, 0.9])
  y = jnp.array([0, 4, 10])
  params = _init(model, 0, x, t, y)
  out = _apply(model, params, x, t, y)
  assert out.shape == x.shape
  np.testing.assert_array_equal(out, 0.0)
  # Everything but the zeroed final layer carries signal, gates included.
  assert np.abs(params["blocks_0"]["adaLN_modulation_0"]["kernel"]).max() > 0
  assert params["y_embedder"]["embedding_table"].shape == (11, 32)


def test_init_distributions_follow_the_reference():
  params = init_params(build_model(presets.get("S/16")), jax.random.key(0))
  qkv = np.asarray(params["blocks_0"]["attn"]["qkv"]["kernel"])
  bound = 1 / np.sqrt(384)
  assert np.abs(qkv).max() <= bound and np.abs(qkv).max() > 0.95 * bound
  np.testing.assert_allclose(np.asarray(params["y_embedder"]["embedding_table"]).std(), 0.02,
                             rtol=0.05)
  np.testing.assert_allclose(np.asarray(params["t_embedder"]["mlp_0"]["kernel"]).std(), 0.02,
                             rtol=0.05)
  np.testing.assert_array_equal(params["s_embedder"]["proj"]["bias"], 0.0)
  xavier_bound = np.sqrt(6 / (768 + 384))
  assert np.abs(np.asarray(params["s_embedder"]["proj"]["kernel"])).max() <= xavier_bound


def _perturbed_params(model, x, t, y, scale=0.05):
  params = _init(model, 0, x, t, y)

  @jax.jit
  def perturb(params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return jax.tree.unflatten(
        treedef, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  return perturb(params)


def test_bfloat16_compute_stays_close_to_float32():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  t, y = jnp.array([0.3, 0.8]), jnp.array([1, 2])
  f32 = _tiny()
  params = _perturbed_params(f32, x, t, y)
  ref = _apply(f32, params, x, t, y)
  out = _apply(_tiny(dtype="bfloat16"), params, x, t, y)
  assert out.dtype == jnp.bfloat16
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  err = np.abs(np.asarray(out, np.float32) - np.asarray(ref)).max()
  assert err < 0.05 * np.abs(np.asarray(ref)).max(), err
  assert err > 0  # really computed in bf16


def test_batch_elements_are_independent():
  model = _tiny()
  x = jax.random.normal(jax.random.key(1), (3, 8, 4, 3))
  t, y = jnp.array([0.3, 0.8, 0.5]), jnp.array([1, 2, 3])
  params = _perturbed_params(model, x, t, y)
  full = _apply(model, params, x, t, y)
  single = _apply(model, params, x[1:2], t[1:2], y[1:2])
  np.testing.assert_allclose(full[1:2], single, atol=1e-5)


def test_indivisible_resolution_is_rejected():
  model = _tiny()
  with pytest.raises(ValueError, match="not divisible by patch_size"):
    model.init(jax.random.key(0), jnp.zeros((1, 6, 8, 3)), jnp.zeros((1,)),
               jnp.zeros((1,), jnp.int32))


def test_trunk_features_hook():
  model = _tiny(features_after_block=1)
  x = jnp.zeros((2, 8, 8, 3))
  t, y = jnp.array([0.3, 0.8]), jnp.array([1, 2])
  params = _init(model, 0, x, t, y)
  _, state = _apply(model, params, x, t, y, mutable=["intermediates"])
  (features,) = state["intermediates"]["trunk_features"]
  assert features.shape == (2, 4, 32)


def _loss_and_grads(model, params, x, t, y):
  def loss(p):
    out, state = model.apply({"params": p}, x, t, y, mutable=["intermediates"])
    (features,) = state["intermediates"]["trunk_features"]
    return jnp.mean(jnp.square(out - x)) + jnp.mean(jnp.square(features))
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat_policy", ["none", "decoder", "blocks", "dots_saveable"])
def test_scanned_trunk_and_remat_match_the_block_loop(remat_policy):
  fields = dict(num_blocks=5, num_cond_blocks=3, features_after_block=2)
  loop = _tiny(**fields)
  scanned = _tiny(**fields, scan_blocks=True, remat_policy=remat_policy)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  t, y = jnp.array([0.3, 0.8]), jnp.array([1, 2])
  params = _perturbed_params(loop, x, t, y)
  stacked = stack_dit_blocks(params, 3)
  assert stacked["dit_blocks"]["block"]["attn"]["qkv"]["kernel"].shape == (3, 32, 96)
  assert "blocks_0" not in stacked and "blocks_3" in stacked  # NerfBlocks stay per block
  assert jax.tree.structure(stacked) == jax.tree.structure(param_shapes(scanned))

  ref_loss, ref_grads = _loss_and_grads(loop, params, x, t, y)
  loss, grads = _loss_and_grads(scanned, stacked, x, t, y)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for (path, g), ref in zip(jax.tree_util.tree_flatten_with_path(unstack_dit_blocks(grads))[0],
                            jax.tree.leaves(ref_grads), strict=True):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_block_layouts_convert_both_ways_and_init_agrees():
  loop, scanned = _tiny(), _tiny(scan_blocks=True)
  params = init_params(loop, jax.random.key(3))
  back = unstack_dit_blocks(params_for_model(params, scanned))
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), params, back))
  assert params_for_model(params, loop) == params
  # Same seed, same values, whichever layout trains.
  scanned_init = init_params(scanned, jax.random.key(3))
  np.testing.assert_array_equal(unstack_dit_blocks(scanned_init)["blocks_1"]["mlp"]["w1"]["kernel"],
                                params["blocks_1"]["mlp"]["w1"]["kernel"])
  boxed = boxed_param_shapes(scanned)["dit_blocks"]["block"]["attn"]["qkv"]["kernel"]
  assert boxed.names == ("layers", "embed", "qkv")


def test_scanned_trunk_rejects_a_feature_block_outside_the_trunk():
  model = _tiny(scan_blocks=True, features_after_block=5)
  with pytest.raises(ValueError, match="not a DiT block"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)),
               jnp.zeros((1,), jnp.int32))


def test_field_embedder_equals_one_linear_over_pixels_and_encoding():
  """NerfEmbedder computes the encoding's share once per pixel; it must be exactly the
  reference's Linear over [pixels, encoding]: the same param names and shapes (so
  checkpoints and init are unchanged), values and gradients."""
  from pixnerd_jax.models import layers
  from pixnerd_jax.models.nerf import NerfEmbedder
  pixels = jax.random.normal(jax.random.key(0), (6, 64, 3))
  encoding = dct_pixel_encoding(8, 8)
  embedder = NerfEmbedder(32)
  params = embedder.init(jax.random.key(1), pixels, encoding)["params"]
  dense = layers.torch_dense(32, 67, axes=("field_in", "field"))
  inputs = jnp.concatenate([pixels, jnp.broadcast_to(encoding, (6, 64, 64))], axis=-1)
  dense_params = dense.init(jax.random.key(1), inputs)["params"]
  got = nn.meta.unbox(params)["embedder_0"]
  want = nn.meta.unbox(dense_params)
  assert jax.tree.map(jnp.shape, got) == {"kernel": (67, 32), "bias": (32,)}
  assert jax.tree.map(jnp.shape, want) == jax.tree.map(jnp.shape, got)
  ours = lambda p, x: embedder.apply({"params": {"embedder_0": p}}, x, encoding)
  linear = lambda p, x: dense.apply(
      {"params": p}, jnp.concatenate([x, jnp.broadcast_to(encoding, (6, 64, 64))], -1))
  np.testing.assert_allclose(ours(got, pixels), linear(got, pixels), atol=1e-5)
  g_ours = jax.grad(lambda p, x: jnp.sum(jnp.sin(ours(p, x))), argnums=(0, 1))(got, pixels)
  g_lin = jax.grad(lambda p, x: jnp.sum(jnp.sin(linear(p, x))), argnums=(0, 1))(got, pixels)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_lin), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
