"""The text-to-image PixNerd (spec 7.3-7.4): flags on the same model, heavy decoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import models as presets
from flax import linen as nn

from pixnerd_jax.runtime import mesh as sharding
from pixnerd_jax.models import (boxed_param_shapes, build_model, count_params, param_shapes,
                                stack_dit_blocks, unstack_dit_blocks)
from pixnerd_jax.models.nerf import cosine_pixel_encoding
from pixnerd_jax.models.pixnerd import heavy_decoder_geometry, nearest_resize
from pixnerd_jax.models.rope import t2i_rope_angles


def _t2i(**overrides):
  return build_model(presets.get("tiny_t2i", **overrides))


def _inputs(model, batch=2, height=8, width=12, seed=1):
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(keys[0], (batch, height, width, 3))
  t = jax.random.uniform(keys[1], (batch,))
  y = jax.random.normal(keys[2], (batch, model.txt_max_length, model.txt_embed_dim))
  return x, t, y


# Run under jit: op-by-op, every primitive of a forward pass compiles on its own (seconds
# per test on the CPU).
def _init(model, seed, *inputs):
  return nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), *inputs)["params"])


def _apply(model, params, *inputs, **kwargs):
  return jax.jit(functools.partial(model.apply, **kwargs))({"params": params}, *inputs)


def _perturbed_params(model, x, t, y, seed=0):
  """Init params plus noise, so the zero-initialised output layer carries signal."""
  @jax.jit
  def perturb(params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(treedef, [p + 0.05 * jax.random.normal(k, p.shape)
                                        for p, k in zip(leaves, keys)])
  return perturb(_init(model, seed, x, t, y))


def test_xxl_preset_has_the_reference_param_count_and_logical_names():
  model = build_model(presets.get("XXL/16"))
  assert count_params(param_shapes(model)) == 1_171_518_019
  boxed = boxed_param_shapes(model)
  names = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.names
           for path, leaf in jax.tree_util.tree_flatten_with_path(
               boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]}
  assert names["y_pos_embedding"] == (None, "length", "embed")
  assert names["y_embedder/proj/kernel"] == ("text_embed", "embed")
  assert names["blocks_3/attn/kv_y/kernel"] == ("embed", "qkv")
  assert names["text_refine_blocks_0/mlp/w12/kernel"] == ("embed", "mlp")
  rules = dict(sharding.LOGICAL_AXIS_RULES)
  for axes in names.values():  # every name has a rule, so FSDP and AOT shard it
    assert all(a is None or a in rules for a in axes), axes


def test_cosine_pixel_encoding_matches_reference_vectors():
  enc = cosine_pixel_encoding(16, 16, 16.0, 16.0)
  assert enc.shape == (256, 64)
  np.testing.assert_allclose(enc[1, :8], [0.4830, 1, 0.6968, 1, 0.8254, 1, 0.9005, 1],
                             atol=1e-4)
  np.testing.assert_allclose(enc[0], 1.0)


def test_t2i_rope_spans_columns_by_height_and_rows_by_width():
  # A 2x3 grid: column positions linspace(0, 2, 3), row positions linspace(0, 3, 2).
  angles = t2i_rope_angles(8, 2, 3)  # 2 frequencies: 1 and 10000**-0.5
  np.testing.assert_allclose(angles[:3, 0], [0.0, 1.0, 2.0], atol=1e-6)  # x of row 0
  np.testing.assert_allclose(angles[3:, 1], [3.0, 3.0, 3.0], atol=1e-6)  # y of row 1


def test_forward_shapes_and_zero_output_at_init():
  model = _t2i()
  x, t, y = _inputs(model)
  params = _init(model, 0, x, t, y)
  assert "text_refine_blocks_0" in params and "norm" not in params["final_layer"]
  assert "qkv_x" in params["blocks_0"]["attn"] and "w12" in params["blocks_0"]["mlp"]
  out = _apply(model, params, x, t, y)
  assert out.shape == x.shape
  np.testing.assert_array_equal(out, 0.0)


def test_text_changes_the_output_and_samples_are_independent():
  model = _t2i()
  x, t, y = _inputs(model)
  params = _perturbed_params(model, x, t, y)
  out = _apply(model, params, x, t, y)
  other = _apply(model, params, x, t, y.at[1].multiply(-1.0))
  np.testing.assert_allclose(other[0], out[0], atol=1e-6)
  assert np.abs(other[1] - out[1]).max() > 1e-3


def test_wrong_text_feature_shape_is_a_clear_error():
  model = _t2i()
  x, t, y = _inputs(model)
  with pytest.raises(ValueError, match=r"\(B, 16, 32\)"):
    model.init(jax.random.key(0), x, t, y[:, :5])


def test_heavy_decoder_at_scale_one_is_the_plain_model():
  model = _t2i()
  x, t, y = _inputs(model)
  params = _perturbed_params(model, x, t, y)
  plain = _apply(model, params, x, t, y)
  heavy = _apply(model.clone(decoder_patch_scaling=(1.0, 1.0)), params, x, t, y)
  np.testing.assert_array_equal(heavy, plain)


def test_heavy_decoder_renders_larger_and_non_square_images():
  model = _t2i()
  x, t, y = _inputs(model, height=8, width=12)
  params = _perturbed_params(model, x, t, y)
  big_x = jax.random.normal(jax.random.key(5), (2, 16, 18, 3))
  heavy = model.clone(decoder_patch_scaling=(2.0, 1.5))
  out = _apply(heavy, params, big_x, t, y)
  assert out.shape == big_x.shape and np.isfinite(out).all()


def test_heavy_decoder_trunk_sees_a_nearest_copy():
  x = jnp.arange(6 * 4, dtype=jnp.float32).reshape(1, 6, 4, 1)
  # torch: source index floor(i * in / out): rows 0, 1.5 -> 1, 3, 4.5 -> 4.
  np.testing.assert_array_equal(nearest_resize(x, 4, 2)[0, :, :, 0],
                                np.asarray(x)[0][[0, 1, 3, 4]][:, [0, 2], 0])


def test_heavy_decoder_sizes_that_cannot_be_made_are_named():
  assert heavy_decoder_geometry(1024, 768, 16, (2.0, 1.5)) == ((512, 512), (32, 24))
  with pytest.raises(ValueError, match="cannot be made"):
    heavy_decoder_geometry(1000, 768, 16, (2.0, 1.5))
  model = _t2i(decoder_patch_scaling=(1.5, 1.5))
  x, t, y = _inputs(model, height=8, width=8)
  with pytest.raises(ValueError, match="8x8"):
    model.init(jax.random.key(0), x, t, y)


def test_heavy_decoder_is_refused_for_the_class_model():
  model = build_model(presets.get("tiny", num_classes=10), decoder_patch_scaling=(2.0, 2.0))
  with pytest.raises(ValueError, match="text-to-image option"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)),
               jnp.zeros((1,), jnp.int32))


@pytest.mark.parametrize("remat_policy", ["none", "blocks"])
def test_scanned_t2i_trunk_matches_the_loop(remat_policy):
  loop = _t2i(num_blocks=4, num_cond_blocks=3, features_after_block=2)
  scanned = loop.clone(scan_blocks=True, remat_policy=remat_policy)
  x, t, y = _inputs(loop)
  params = _perturbed_params(loop, x, t, y)
  stacked = stack_dit_blocks(params, 3)
  assert jax.tree.structure(stacked) == jax.tree.structure(param_shapes(scanned))

  def loss(model, p):
    out, inter = model.apply({"params": p}, x, t, y, mutable=["intermediates"])
    (features,) = inter["intermediates"]["trunk_features"]
    return jnp.mean(jnp.square(out - x)) + jnp.mean(jnp.square(features))

  ref, ref_grads = jax.jit(jax.value_and_grad(lambda p: loss(loop, p)))(params)
  val, grads = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
  np.testing.assert_allclose(val, ref, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               unstack_dit_blocks(grads), ref_grads)


def test_bfloat16_compute_stays_close_to_float32():
  model = _t2i()
  x, t, y = _inputs(model)
  params = _perturbed_params(model, x, t, y)
  ref = _apply(model, params, x, t, y)
  low = _apply(model.clone(dtype=jnp.bfloat16), params, x, t, y)
  assert low.dtype == jnp.bfloat16
  assert np.abs(np.asarray(low, np.float32) - ref).max() < 0.05 * np.abs(ref).max() + 0.05
