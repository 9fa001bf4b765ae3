"""REPA: DINO input preparation, projector, cosine loss, the aux-loss hook, loading."""

import functools
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pixnerd_jax.conversion import pixnerd_weights as conversion
from pixnerd_jax.training import checkpoint
from pixnerd_jax.training import repa
from pixnerd_jax.models import dinov2

TINY_DINO = dict(patch_size=14, hidden_size=32, num_layers=1, num_heads=2, mlp_ratio=2.0,
                 pos_grid_size=6, interpolate_offset=0.1)
D = 24  # trunk width in these tests


@functools.lru_cache(maxsize=None)
def _tiny_dino_params():
  """Random params of the right shapes (no init compile: these tests are about the loss)."""
  rng = np.random.default_rng(0)

  def fill(path, shape):
    scale = path[-1].key in ("scale", "gamma")
    return jnp.asarray(scale + 0.2 * rng.normal(size=shape.shape), jnp.float32)

  shapes = dinov2.param_shapes(dinov2.DinoV2(**TINY_DINO))
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _tiny_dino():
  return dinov2.DinoV2(**TINY_DINO), _tiny_dino_params()


def _batch(b=2, size=64, seed=0):
  rng = np.random.default_rng(seed)
  return {"raw_image": jnp.asarray(rng.uniform(size=(b, size, size, 3)), jnp.float32)}


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("size,patch", [(64, 16), (64, 8), (256, 16), (32, 4)])
def test_dino_inputs_match_torch_normalise_then_bicubic(size, patch):
  torch = pytest.importorskip("torch", reason="torch (CPU) is the reference for the resize")
  raw = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype(np.float32)
  out = np.asarray(repa.dino_inputs(jnp.asarray(raw), patch))
  new = 14 * size // patch
  assert out.shape == (2, new, new, 3)
  x = torch.from_numpy(raw).permute(0, 3, 1, 2)
  mean = torch.tensor(repa.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(repa.IMAGENET_STD).view(1, 3, 1, 1)
  ref = torch.nn.functional.interpolate((x - mean) / std, (new, new), mode="bicubic")
  # float32 rounding only (values within about +-3.7): torch's own upsampling kernel is
  # up to 1.3e-5 from float64 math, ours < 1e-6; jax.image.resize("cubic") is 0.5 off.
  np.testing.assert_allclose(out, ref.permute(0, 2, 3, 1).numpy(), atol=3e-5, rtol=0)


def test_dino_grid_equals_pixnerd_grid():
  assert repa.dino_size(256, 256, 16) == (224, 224)
  assert repa.dino_size(512, 512, 16) == (448, 448)
  assert repa.dino_size(64, 64, 8) == (112, 112)  # S/8 at 64 px: an 8x8 grid


# ----------------------------------------------------------------------------- loss


def test_cosine_loss_identical_orthogonal_opposite_and_zero_vectors():
  a = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32)
  np.testing.assert_allclose(repa.cosine_loss(3.0 * a, a), 0.0, atol=1e-6)
  np.testing.assert_allclose(repa.cosine_loss(-a, a), 2.0, atol=1e-6)
  e0, e1 = jnp.eye(8)[0], jnp.eye(8)[1]
  np.testing.assert_allclose(repa.cosine_loss(e0[None, None], e1[None, None]), 1.0, atol=1e-7)
  # torch: a zero vector has similarity 0 (norms clamped to eps), and no NaN gradient.
  zero = jnp.zeros((1, 1, 8))
  np.testing.assert_allclose(repa.cosine_loss(zero, a[:1, :1]), 1.0)
  assert np.isfinite(np.asarray(jax.grad(repa.cosine_loss)(zero, a[:1, :1]))).all()


def test_cosine_similarity_matches_torch_including_tiny_norms():
  torch = pytest.importorskip("torch", reason="torch (CPU) is the reference")
  rng = np.random.default_rng(1)
  a = rng.normal(size=(3, 7, 16)).astype(np.float32)
  b = rng.normal(size=(3, 7, 16)).astype(np.float32)
  a[0, :3] *= 1e-9  # below eps: torch divides by eps instead of the norm
  ref = torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), dim=-1)
  np.testing.assert_allclose(np.asarray(repa.cosine_similarity(jnp.asarray(a), jnp.asarray(b))),
                             ref.numpy(), atol=1e-6)


# ----------------------------------------------------------------------------- projector


def test_projector_from_reference_keys_matches_torch():
  torch = pytest.importorskip("torch", reason="torch (CPU) builds the reference projector")
  torch.manual_seed(0)
  proj = torch.nn.Sequential(torch.nn.Sequential(
      torch.nn.Linear(D, D), torch.nn.SiLU(), torch.nn.Linear(D, D), torch.nn.SiLU(),
      torch.nn.Linear(D, 768)))
  state = {f"diffusion_trainer.proj.{k}": v.numpy() for k, v in proj.state_dict().items()}
  state["ema_denoiser.final_layer.linear.bias"] = np.zeros(3, np.float32)  # ignored
  params = conversion.extract_repa_projector(state)
  expected = jax.tree.map(np.shape, repa.init_projector(repa.Projector(), jax.random.key(0), D))
  assert jax.tree.map(np.shape, params) == expected
  h = np.random.default_rng(0).normal(size=(2, 5, D)).astype(np.float32)
  out = repa.Projector().apply({"params": params}, jnp.asarray(h))
  with torch.no_grad():
    ref = proj(torch.from_numpy(h)).numpy()
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)

  assert conversion.extract_repa_projector({"ema_denoiser.x": np.zeros(1)}) is None
  del state["diffusion_trainer.proj.0.4.bias"]
  with pytest.raises(conversion.ConversionError, match=r"missing \['0.4.bias'\]"):
    conversion.extract_repa_projector(state)


def test_projector_init_is_torch_default():
  params = repa.init_projector(repa.Projector(), jax.random.key(0), 256)
  for name in ("proj_0_0", "proj_0_2", "proj_0_4"):
    kernel, bias = params[name]["kernel"], params[name]["bias"]
    bound = 1 / np.sqrt(256)
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    assert np.abs(kernel).max() > 0.95 * bound  # uniform over the whole range
  assert params["proj_0_4"]["kernel"].shape == (256, 768)


# ----------------------------------------------------------------------------- hook


def _constant_target_dino(direction):
  """A DINO whose every patch token is `direction`: final norm scale 0, bias = direction."""
  model, params = _tiny_dino()
  params = dict(params)
  params["norm"] = {"scale": jnp.zeros(32), "bias": jnp.asarray(direction, jnp.float32)}
  return model, params


def _projector_params_emitting(vector):
  """Projector params whose output is `vector` for every token (last kernel zero)."""
  params = repa.init_projector(repa.Projector(out_size=32), jax.random.key(1), D)
  params["proj_0_4"] = {"kernel": jnp.zeros((D, 32)), "bias": jnp.asarray(vector, jnp.float32)}
  return params


def test_hook_loss_is_zero_for_the_same_direction_and_one_for_orthogonal():
  direction = np.random.default_rng(0).normal(size=32).astype(np.float32)
  model, dino_params = _constant_target_dino(direction)
  features = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, D)), jnp.float32)
  orthogonal = np.roll(direction, 1)
  orthogonal -= direction * (orthogonal @ direction) / (direction @ direction)
  projector = repa.Projector(out_size=32)
  hook = jax.jit(repa.make_aux_loss_fn(model, dino_params, projector, 0.5, patch_size=16))
  for vector, expected in ((2.5 * direction, 0.0), (orthogonal, 1.0)):
    loss, metrics = hook(_projector_params_emitting(vector), features, _batch(), None)
    np.testing.assert_allclose(metrics["repa_loss"], expected, atol=1e-6)
    np.testing.assert_allclose(loss, 0.5 * expected, atol=1e-6)


def test_hook_matches_torch_cosine_on_projected_features():
  torch = pytest.importorskip("torch", reason="torch (CPU) is the reference")
  model, dino_params = _tiny_dino()
  projector = repa.Projector(out_size=32)
  params = repa.init_projector(projector, jax.random.key(2), D)
  features = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, D)), jnp.float32)
  batch = _batch()
  loss, metrics = jax.jit(repa.make_aux_loss_fn(model, dino_params, projector, 0.5))(
      params, features, batch, None)
  src = jax.jit(projector.apply)({"params": params}, features)
  dst = jax.jit(lambda p, raw: model.apply({"params": p}, repa.dino_inputs(raw, 16)))(
      dino_params, batch["raw_image"])
  assert dst.shape == (2, 16, 32)
  ref = (1 - torch.nn.functional.cosine_similarity(
      torch.from_numpy(np.array(src)), torch.from_numpy(np.array(dst)), dim=-1)).mean()
  np.testing.assert_allclose(metrics["repa_loss"], ref.item(), atol=1e-6)
  np.testing.assert_allclose(loss, 0.5 * ref.item(), atol=1e-6)


def test_gradients_reach_the_projector_and_features_but_not_dino():
  model, dino_params = _tiny_dino()
  projector = repa.Projector(out_size=32)
  params = repa.init_projector(projector, jax.random.key(2), D)
  features = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, D)), jnp.float32)
  batch = _batch()

  # The recommended wiring: DINO params are a jit argument, the hook is built inside.
  @jax.jit
  def grads(proj_params, dino, feats):
    def total(proj_params, dino, feats):
      hook = repa.make_aux_loss_fn(model, dino, projector, 0.5)
      return hook(proj_params, feats, batch, None)[0]
    return jax.grad(total, argnums=(0, 1, 2))(proj_params, dino, feats)

  g_proj, g_dino, g_feat = grads(params, dino_params, features)
  assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(g_proj))
  assert np.abs(np.asarray(g_feat)).max() > 0
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(g_dino))


def test_hook_truncates_extra_trunk_tokens_like_the_reference():
  model, dino_params = _tiny_dino()
  projector = repa.Projector(out_size=32)
  params = repa.init_projector(projector, jax.random.key(2), D)
  features = jnp.asarray(np.random.default_rng(3).normal(size=(2, 64, D)), jnp.float32)
  hook = jax.jit(repa.make_aux_loss_fn(model, dino_params, projector, 0.5, patch_size=16))
  batch = _batch()  # 64 px at p=16: 16 DINO tokens, the trunk has 64
  full, _ = hook(params, features, batch, None)
  first, _ = hook(params, features[:, :16], batch, None)
  np.testing.assert_allclose(full, first, rtol=1e-6)
  with pytest.raises(ValueError, match="8 trunk tokens but 16 DINO tokens"):
    hook(params, features[:, :8], batch, None)


# ----------------------------------------------------------------------------- loading


def test_load_dino_reads_a_conversion_and_explains_a_missing_one(tmp_path):
  config = ml_collections.ConfigDict({"repa": {"enabled": True, "dino_checkpoint": ""}})
  with pytest.raises(FileNotFoundError, match=r"config\.repa\.dino_checkpoint.*convert_dinov2"):
    repa.load_dino(config)
  config.repa.dino_checkpoint = str(tmp_path / "absent")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    repa.load_dino(config)

  model, params = _tiny_dino()
  checkpoint.save_params(str(tmp_path / "dino"), params,
                         dict(dinov2.config_dict(model), architecture="dinov2"))
  config.repa.dino_checkpoint = str(tmp_path / "dino")
  loaded_model, loaded = repa.load_dino(config)
  assert loaded_model == model
  jax.tree.map(np.testing.assert_array_equal, loaded, params)

  checkpoint.save_params(str(tmp_path / "pixnerd"), params, {"patch_size": 4})
  config.repa.dino_checkpoint = str(tmp_path / "pixnerd")
  with pytest.raises(checkpoint.CheckpointError, match="not a DINOv2 conversion"):
    repa.load_dino(config)
