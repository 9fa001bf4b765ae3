"""Converter: parity with the official model through the official checkpoint formats."""

import json

import jax
import numpy as np
import pytest

from pixnerd_jax import convert
from pixnerd_jax.conversion import pixnerd_weights as conversion
from pixnerd_jax.training import checkpoint
from pixnerd_jax.models import PixNerDiT


def _fixture(path):
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def _state_dict(fixture):
  return {k[3:]: v for k, v in fixture.items() if k.startswith("sd/")}


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def test_forward_parity_on_the_c2i_fixture(c2i_fixture):
  fixture = _fixture(c2i_fixture)
  model_cfg, params = conversion.convert_state_dict(_state_dict(fixture))
  assert model_cfg.items() >= json.loads(str(fixture["cfg_json"]))["model"].items()
  out = PixNerDiT(**model_cfg).apply({"params": params}, _nhwc(fixture["x"]), fixture["t"],
                                     fixture["y"].astype(np.int32))
  err = np.abs(np.asarray(out) - _nhwc(fixture["out"])).max()
  assert err <= 1e-5, f"forward error {err}"


def test_t2i_checkpoint_is_recognised_from_its_keys(t2i_fixture):
  fixture = _fixture(t2i_fixture)
  ref = json.loads(str(fixture["cfg_json"]))["model"]
  model_cfg, params = conversion.convert_state_dict(_state_dict(fixture))
  assert model_cfg == dict(
      in_channels=3, patch_size=ref["patch_size"], num_groups=ref["num_groups"],
      hidden_size=ref["hidden_size"], hidden_size_x=ref["decoder_hidden_size"],
      nerf_mlpratio=2, num_blocks=ref["num_encoder_blocks"] + ref["num_decoder_blocks"],
      num_cond_blocks=ref["num_encoder_blocks"], max_freqs=8, conditioning="text",
      txt_embed_dim=ref["txt_embed_dim"], txt_max_length=ref["txt_max_length"],
      num_text_blocks=ref["num_text_blocks"])
  assert params["y_pos_embedding"].shape == (1, ref["txt_max_length"], ref["hidden_size"])
  np.testing.assert_array_equal(params["blocks_1"]["attn"]["kv_y"]["kernel"],
                                fixture["sd/blocks.1.attn.kv_y.weight"].T)


def test_verify_command_passes_on_every_fixture_format(reference_fixtures, capsys):
  for path in reference_fixtures:
    assert convert.main(["verify", str(path)]) == 0, path.name
    out = capsys.readouterr().out
    assert "PASS" in out
    assert "FAIL" not in out


@pytest.mark.parametrize("key", ["sample_out", "heavy_out", "euler_sample_out"])
def test_verify_command_fails_on_wrong_t2i_outputs(t2i_fixture, tmp_path, capsys, key):
  broken = _fixture(t2i_fixture)
  broken[key] = broken[key] + 0.01
  bad_path = tmp_path / "broken.npz"
  np.savez(bad_path, **broken)
  assert convert.main(["verify", str(bad_path)]) == 1
  assert "FAIL" in capsys.readouterr().out


def test_verify_command_fails_on_a_wrong_sampler_run(samplers_fixture, c2i_fixture, tmp_path,
                                                      capsys):
  for path, key in ((samplers_fixture, "out_heun_exact"), (c2i_fixture, "sample_out")):
    broken = _fixture(path)
    broken[key] = broken[key] + 0.01
    np.savez(tmp_path / "broken.npz", **broken)
    assert convert.main(["verify", str(tmp_path / "broken.npz")]) == 1
    assert "FAIL" in capsys.readouterr().out


def _tiny_samplers_fixture():
  """A file in the samplers fixture's format (random tiny weights, one Euler run), built
  here: the error tests need its layout, not the official numbers."""
  from configs import tiny  # pylint: disable=import-outside-toplevel
  from pixnerd_jax import models  # pylint: disable=import-outside-toplevel
  from pixnerd_jax.conversion import pixnerd_export  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  model = models.build_model(tiny.get_config().model)
  params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32),
                        models.param_shapes(model))
  fixture = {f"sd/{k}": v for k, v in pixnerd_export.params_to_state_dict(params).items()}
  run = dict(sampler="euler", num_steps=2, guidance=2.0, timeshift=1.0)
  fixture["cfg_json"] = np.array(json.dumps({"runs": {"euler": run}}))
  fixture["noise"] = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
  fixture["labels"] = np.array([0, 1])
  fixture["out_euler"] = np.zeros((2, 3, 16, 16), np.float32)
  return fixture


@pytest.mark.parametrize("drop", ["weights", "runs"])
def test_verify_command_rejects_a_file_that_is_not_a_fixture(tmp_path, capsys, drop):
  fixture = _tiny_samplers_fixture()
  if drop == "weights":
    kept = {k: v for k, v in fixture.items() if not k.startswith("sd/")}
  else:  # cfg_json names runs whose arrays are gone
    kept = {k: v for k, v in fixture.items() if k.startswith("sd/") or k == "cfg_json"}
  np.savez(tmp_path / "partial.npz", **kept)
  assert convert.main(["verify", str(tmp_path / "partial.npz")]) == 2
  err = capsys.readouterr().err
  assert ("partial.npz" in err and "sd/*" in err) if drop == "weights" else (
      "lacks its arrays" in err and "noise" in err)


def test_converts_lightning_ckpt_ema_by_default_and_online_on_request(
    c2i_fixture, tmp_path):
  torch = pytest.importorskip("torch", reason="torch (CPU) is needed to write .ckpt files")
  sd = _state_dict(_fixture(c2i_fixture))
  online = {f"denoiser.{k}": torch.from_numpy(v) for k, v in sd.items()}
  ema = {f"ema_denoiser.{k}": torch.from_numpy(v * 2) for k, v in sd.items()}
  proj = {"conditioner.null_embedding": torch.zeros(4, 4)}  # ignored: not the denoiser
  src = tmp_path / "epoch=1-step=10.ckpt"
  torch.save({"state_dict": {**online, **ema, **proj}, "global_step": 10}, src)

  assert convert.main(["checkpoint", str(src), "--out", str(tmp_path / "ema")]) == 0
  assert convert.main(["checkpoint", str(src), "--out", str(tmp_path / "on"), "--online"]) == 0
  _, ema_params = checkpoint.load_params(str(tmp_path / "ema"))
  cfg, online_params = checkpoint.load_params(str(tmp_path / "on"))
  assert cfg["num_classes"] == 10
  key = sd["blocks.0.attn.qkv.weight"]
  np.testing.assert_array_equal(online_params["blocks_0"]["attn"]["qkv"]["kernel"], key.T)
  np.testing.assert_array_equal(ema_params["blocks_0"]["attn"]["qkv"]["kernel"], 2 * key.T)


def test_converts_the_official_t2i_lightning_ckpt(t2i_fixture, tmp_path):
  torch = pytest.importorskip("torch", reason="torch (CPU) is needed to write .ckpt files")
  fixture = _fixture(t2i_fixture)
  sd = _state_dict(fixture)
  state = {f"ema_denoiser.{k}": torch.from_numpy(v) for k, v in sd.items()}
  state.update({f"denoiser.{k}": torch.from_numpy(v + 1) for k, v in sd.items()})
  torch.save({"state_dict": state}, tmp_path / "model.ckpt")
  assert convert.main(["checkpoint", str(tmp_path / "model.ckpt"), "--out",
                       str(tmp_path / "t2i")]) == 0
  cfg, params = checkpoint.load_params(str(tmp_path / "t2i"))
  assert cfg["conditioning"] == "text"
  out = PixNerDiT(**cfg).apply({"params": params}, _nhwc(fixture["x"]), fixture["t"],
                               fixture["y"])
  assert np.abs(np.asarray(out) - _nhwc(fixture["out"])).max() <= 1e-5


@pytest.mark.parametrize("name", ["c2i", "t2i"])
def test_converts_plain_pth_and_safetensors_identically(c2i_fixture, t2i_fixture, tmp_path,
                                                        name):
  torch = pytest.importorskip("torch", reason="torch (CPU) is needed to write .pth files")
  from safetensors.numpy import save_file
  sd = _state_dict(_fixture(c2i_fixture if name == "c2i" else t2i_fixture))
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "model.pth")
  save_file(sd, str(tmp_path / "model.safetensors"))
  a = conversion.select_denoiser(conversion.load_state_dict(str(tmp_path / "model.pth")))
  b = conversion.select_denoiser(conversion.load_state_dict(str(tmp_path / "model.safetensors")))
  _, pa = conversion.convert_state_dict(a)
  _, pb = conversion.convert_state_dict(b)
  jax.tree.map(np.testing.assert_array_equal, pa, pb)


def test_pickles_with_code_are_refused(tmp_path):
  pytest.importorskip("torch", reason="torch (CPU) is needed for this check")
  import pickle

  class Evil:
    def __reduce__(self):
      return (print, ("this must never run",))

  path = tmp_path / "evil.pt"
  with open(path, "wb") as f:
    pickle.dump({"state_dict": Evil()}, f)
  with pytest.raises(conversion.ConversionError, match="weights_only=True"):
    conversion.load_state_dict(str(path))


def test_missing_and_unexpected_keys_are_named(c2i_fixture):
  sd = _state_dict(_fixture(c2i_fixture))
  sd.pop("blocks.1.mlp.w2.weight")
  sd["blocks.1.mlp.w9.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(conversion.ConversionError) as e:
    conversion.convert_state_dict(sd)
  assert "blocks.1.mlp.w9.weight" in str(e.value)
  assert "blocks_1/mlp/w2/kernel" in str(e.value)


def test_t2i_missing_and_unexpected_keys_are_named(t2i_fixture):
  sd = _state_dict(_fixture(t2i_fixture))
  sd.pop("text_refine_blocks.1.mlp.w12.weight")
  sd["blocks.0.attn.kv_z.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(conversion.ConversionError) as e:
    conversion.convert_state_dict(sd)
  assert "blocks.0.attn.kv_z.weight" in str(e.value)
  assert "text_refine_blocks_1/mlp/w12/kernel" in str(e.value)


def test_shape_mismatch_is_named(c2i_fixture):
  sd = _state_dict(_fixture(c2i_fixture))
  sd["blocks.0.attn.proj.bias"] = np.zeros((65,), np.float32)
  with pytest.raises(conversion.ConversionError, match="blocks.0.attn.proj.bias"):
    conversion.convert_state_dict(sd)


def test_infers_released_architectures_from_key_shapes():
  dx, d = 64, 1152
  sd = {
      "s_embedder.proj.weight": np.zeros((d, 768)),
      "x_embedder.embedder.0.weight": np.zeros((dx, 67)),
      "final_layer.linear.weight": np.zeros((3, dx)),
      "y_embedder.embedding_table.weight": np.zeros((1001, d)),
      "blocks.0.attn.q_norm.weight": np.zeros((72,)),
  }
  for i in range(26):
    sd[f"blocks.{i}.attn.qkv.weight"] = None
  for i in range(26, 30):
    sd[f"blocks.{i}.param_generator1.0.weight"] = np.zeros((16384, d))
  cfg = conversion.infer_model_config(sd)
  assert cfg == dict(in_channels=3, patch_size=16, num_groups=16, hidden_size=1152,
                     hidden_size_x=64, nerf_mlpratio=2, num_blocks=30, num_cond_blocks=26,
                     num_classes=1000, max_freqs=8)


def test_clear_errors_for_bad_files(tmp_path, capsys):
  assert convert.main(["checkpoint", str(tmp_path / "nope.ckpt"), "--out", "x"]) == 2
  assert "not found" in capsys.readouterr().err
  (tmp_path / "w.h5").write_bytes(b"")
  assert convert.main(["checkpoint", str(tmp_path / "w.h5"), "--out", "x"]) == 2
  assert "Unsupported checkpoint extension" in capsys.readouterr().err
  with pytest.raises(checkpoint.CheckpointError, match="not a params checkpoint"):
    checkpoint.load_params(str(tmp_path))


def test_ckpt_without_torch_says_how_to_install(tmp_path, monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  path = tmp_path / "model.ckpt"
  path.write_bytes(b"\x80\x02}q\x00.")
  with pytest.raises(ImportError, match="pip install torch==2.13.0"):
    conversion.load_state_dict(str(path))


def test_repa_projector_is_converted_beside_the_params(c2i_fixture, tmp_path):
  torch = pytest.importorskip("torch", reason="torch (CPU) is needed to write .ckpt files")
  sd = {f"ema_denoiser.{k}": torch.from_numpy(v)
        for k, v in _state_dict(_fixture(c2i_fixture)).items()}
  rng = np.random.default_rng(0)
  shapes = {"0.0": (64, 64), "0.2": (64, 64), "0.4": (768, 64)}
  for layer, (out, inp) in shapes.items():
    sd[f"diffusion_trainer.proj.{layer}.weight"] = torch.from_numpy(
        rng.normal(size=(out, inp)).astype(np.float32))
    sd[f"diffusion_trainer.proj.{layer}.bias"] = torch.zeros(out)
  torch.save({"state_dict": sd}, tmp_path / "repa.ckpt")
  assert convert.main(["checkpoint", str(tmp_path / "repa.ckpt"), "--out",
                       str(tmp_path / "out")]) == 0
  _, projector = checkpoint.load_params(str(tmp_path / "out" / checkpoint.REPA_PROJECTOR_DIR))
  np.testing.assert_array_equal(projector["proj_0_4"]["kernel"],
                                sd["diffusion_trainer.proj.0.4.weight"].numpy().T)
