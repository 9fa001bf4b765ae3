"""DINOv2 in Flax: parity with Hugging Face's Dinov2Model, and the weight converter.

A tiny randomly initialised Dinov2Model (no downloads) with a 24x24 position grid is
run at 224 px (16x16 grid: the position embedding shrinks), 336 px (its own grid) and
448 px (32x32: it grows).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (CPU) is needed for DINOv2 parity tests")
transformers = pytest.importorskip(
    "transformers", reason="transformers is needed for DINOv2 parity tests (CI installs it)")
F = torch.nn.functional

from pixnerd_jax import convert_dinov2  # pylint: disable=g-import-not-at-top

from pixnerd_jax.conversion import dinov2_weights as conversion_dinov2  # pylint: disable=g-import-not-at-top
from pixnerd_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
from pixnerd_jax.models.state_dict import ConversionError  # pylint: disable=g-import-not-at-top
from pixnerd_jax.models import dinov2  # pylint: disable=g-import-not-at-top

HEADS = 4
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf_model():
  """A tiny Dinov2Model with every norm, bias and LayerScale perturbed off its init."""
  torch.manual_seed(0)
  config = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=HEADS, patch_size=14,
                                     image_size=14 * 24, layerscale_value=0.5)
  model = transformers.Dinov2Model(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or "lambda1" in name or name.endswith("bias"):
        p.add_(0.3 * torch.randn_like(p))
  return model


def _state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _hf_hub_file_names(sd):
  """transformers >= 5 in-memory names -> the names in the Hub's model.safetensors."""
  renames = {"attention.q_proj": "attention.attention.query",
             "attention.k_proj": "attention.attention.key",
             "attention.v_proj": "attention.attention.value",
             "attention.o_proj": "attention.output.dense"}
  out = {}
  for key, value in sd.items():
    for new, old in renames.items():
      key = key.replace(new, old)
    out[key] = value
  return out


def _torch_hub_names(sd, num_layers=2):
  """The same weights under the official torch-hub dinov2_vitb14 keys (written for the
  test from the hub's module names: blocks.N.attn.qkv, ls1.gamma, pos_embed, norm)."""
  out = {
      "cls_token": sd["embeddings.cls_token"],
      "mask_token": sd["embeddings.mask_token"],
      "pos_embed": sd["embeddings.position_embeddings"],
      "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
      "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
      "norm.weight": sd["layernorm.weight"],
      "norm.bias": sd["layernorm.bias"],
  }
  for i in range(num_layers):
    hf, hub = f"encoder.layer.{i}.", f"blocks.{i}."
    for leaf in ("weight", "bias"):
      out[hub + f"attn.qkv.{leaf}"] = np.concatenate(
          [sd[hf + f"attention.{x}_proj.{leaf}"] for x in "qkv"], axis=0)
      out[hub + f"attn.proj.{leaf}"] = sd[hf + f"attention.o_proj.{leaf}"]
      for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
        out[hub + f"{name}.{leaf}"] = sd[hf + f"{name}.{leaf}"]
    out[hub + "ls1.gamma"] = sd[hf + "layer_scale1.lambda1"]
    out[hub + "ls2.gamma"] = sd[hf + "layer_scale2.lambda1"]
  assert len(out) == len(sd) - 4 * num_layers  # q, k, v (weight, bias) fused into qkv
  return out


def _assert_same_tree(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_patch_tokens_match_huggingface_with_interpolated_positions(hf_model):
  model_cfg, params = conversion_dinov2.state_dict_to_params(
      _state_dict(hf_model), num_heads=HEADS, interpolate_offset=0.0)
  assert model_cfg["pos_grid_size"] == 24 and model_cfg["num_layers"] == 2
  model = dinov2.DinoV2(**model_cfg)
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
  rng = np.random.default_rng(0)
  for pixels in (224, 336, 448):  # grid 16 (shrink), 24 (as trained), 32 (grow)
    x = rng.normal(size=(2, 3, pixels, pixels)).astype(np.float32)
    with torch.no_grad():
      ref = hf_model(pixel_values=torch.from_numpy(x)).last_hidden_state[:, 1:].numpy()
    out = np.asarray(forward(params, jnp.asarray(x.transpose(0, 2, 3, 1))))
    assert out.shape == ref.shape == (2, (pixels // 14) ** 2, 64)
    err = np.abs(out - ref).max()
    assert err <= TOLERANCE, f"{pixels} px: patch tokens differ by {err}"


def test_converter_reads_hub_and_both_huggingface_layouts_alike(hf_model):
  sd = _state_dict(hf_model)
  _, reference = conversion_dinov2.state_dict_to_params(sd, HEADS)
  for layout in (_hf_hub_file_names(sd), _torch_hub_names(sd),
                 {f"dinov2.{k}": v for k, v in sd.items()}):
    cfg, params = conversion_dinov2.state_dict_to_params(layout, HEADS)
    assert cfg["interpolate_offset"] == 0.1  # the torch-hub resampling by default
    _assert_same_tree(params, reference)


def test_convert_command_on_hub_pth_and_huggingface_folder(hf_model, tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  sd = _state_dict(hf_model)
  _, reference = conversion_dinov2.state_dict_to_params(sd, HEADS)

  pth = tmp_path / "dinov2_vitb14_pretrain.pth"
  torch.save({k: torch.from_numpy(v) for k, v in _torch_hub_names(sd).items()}, pth)
  assert convert_dinov2.main([str(pth), "--out", str(tmp_path / "hub"),
                              "--num_heads", str(HEADS)]) == 0
  cfg, params = checkpoint.load_params(str(tmp_path / "hub"))
  assert cfg["architecture"] == "dinov2" and cfg["num_heads"] == HEADS
  _assert_same_tree(params, reference)

  folder = tmp_path / "dinov2-base"  # as downloaded: config.json gives the head count
  folder.mkdir()
  save_file(_hf_hub_file_names(sd), str(folder / "model.safetensors"))
  (folder / "config.json").write_text(json.dumps({"num_attention_heads": HEADS}))
  assert convert_dinov2.main([str(folder), "--out", str(tmp_path / "hf"),
                              "--interpolate_offset", "0"]) == 0
  cfg, params = checkpoint.load_params(str(tmp_path / "hf"))
  assert cfg["num_heads"] == HEADS and cfg["interpolate_offset"] == 0.0
  _assert_same_tree(params, reference)


def test_converter_names_unexpected_missing_and_register_keys(hf_model, capsys, tmp_path):
  hub = _torch_hub_names(_state_dict(hf_model))
  extra = dict(hub, **{"head.weight": np.zeros((10, 64), np.float32)})
  del extra["blocks.1.ls2.gamma"]
  with pytest.raises(ConversionError, match=r"unexpected keys: \['head.weight'\]") as e:
    conversion_dinov2.state_dict_to_params(extra, HEADS)
  assert "blocks_1/ls2/gamma" in str(e.value)
  with pytest.raises(ConversionError, match="register_tokens"):
    conversion_dinov2.state_dict_to_params(
        dict(hub, register_tokens=np.zeros((1, 4, 64), np.float32)), HEADS)
  assert convert_dinov2.main([str(tmp_path / "absent.pth"), "--out", str(tmp_path)]) == 2
  assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("offset", [0.0, 0.1])
@pytest.mark.parametrize("grid", [(16, 16), (32, 32), (10, 20)])
def test_position_resampling_matches_torch(offset, grid):
  """offset 0: HF's size-based call; 0.1: the torch-hub's scale-factor call."""
  rng = np.random.default_rng(1)
  pos = rng.normal(size=(1 + 37 * 37, 8)).astype(np.float32)
  patch = torch.from_numpy(pos[1:].reshape(1, 37, 37, 8)).permute(0, 3, 1, 2)
  if offset:
    kw = dict(scale_factor=((grid[0] + offset) / 37, (grid[1] + offset) / 37))
  else:
    kw = dict(size=grid)
  ref = F.interpolate(patch, mode="bicubic", align_corners=False, antialias=False, **kw)
  ref = ref.permute(0, 2, 3, 1).reshape(-1, 8).numpy()
  out = np.asarray(dinov2.interpolate_pos_embed(jnp.asarray(pos), *grid, offset))
  np.testing.assert_array_equal(out[0], pos[0])
  np.testing.assert_allclose(out[1:], ref, atol=1e-5)
  # The trained grid is used unchanged at its own size, as both torch versions do.
  np.testing.assert_array_equal(dinov2.interpolate_pos_embed(jnp.asarray(pos), 37, 37, offset),
                                pos)


def test_vit_b14_preset_shapes():
  shapes = dinov2.param_shapes(dinov2.DinoV2(**dinov2.VIT_B14))
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  # dinov2_vitb14 has 86,580,480 params with its mask_token (768), which the forward omits.
  assert n == 86_580_480 - 768
  assert shapes["pos_embed"].shape == (1 + 37 * 37, 768)
  assert shapes["patch_embed"]["kernel"].shape == (14, 14, 3, 768)
