"""`convert export`: our params back to the official key names and layouts."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from pixnerd_jax import convert
from pixnerd_jax.conversion import pixnerd_export
from pixnerd_jax.conversion.pixnerd_weights import EMA_PREFIX, ONLINE_PREFIX
from pixnerd_jax.models.state_dict import load_state_dict


def _assert_same_state_dict(found: dict, expected: dict):
  assert sorted(found) == sorted(expected)
  for key, value in expected.items():
    assert found[key].shape == value.shape and found[key].dtype == np.float32, key
    np.testing.assert_array_equal(found[key], value, err_msg=key)


def _strip(state_dict: dict, prefix: str) -> dict:
  return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


@pytest.mark.parametrize("fixture_name", ["c2i_fixture", "t2i_fixture"])
def test_official_weights_convert_and_export_back_exactly(fixture_name, request, tmp_path):
  fixture = request.getfixturevalue(fixture_name)
  official = load_state_dict(str(fixture))  # the fixture's sd/*, float32
  assert convert.main(["checkpoint", str(fixture), "--out", str(tmp_path / "ours")]) == 0
  out = tmp_path / "back.safetensors"
  assert convert.main(["export", f"--checkpoint={tmp_path / 'ours'}", f"--out={out}"]) == 0
  exported = load_file(str(out))
  assert set(exported) == ({ONLINE_PREFIX + k for k in official} |
                           {EMA_PREFIX + k for k in official})
  for prefix in (ONLINE_PREFIX, EMA_PREFIX):
    _assert_same_state_dict(_strip(exported, prefix), official)


def test_export_names_a_bad_output_or_input(tmp_path, capsys):
  assert convert.main(["export", f"--checkpoint={tmp_path}", "--out=x.pt"]) == 2
  assert "must end in .safetensors or .ckpt" in capsys.readouterr().err
  assert convert.main(["export", f"--checkpoint={tmp_path}", "--out=x.safetensors"]) == 2
  assert "neither a training workdir" in capsys.readouterr().err


def test_torch_key_inverts_the_import_mapping():
  assert pixnerd_export.torch_key(("blocks_3", "attn", "qkv", "kernel")) == \
      "blocks.3.attn.qkv.weight"
  assert pixnerd_export.torch_key(("x_embedder", "embedder_0", "bias")) == \
      "x_embedder.embedder.0.bias"
  assert pixnerd_export.torch_key(("y_embedder", "embedding_table")) == \
      "y_embedder.embedding_table.weight"
  assert pixnerd_export.torch_key(("proj_0_4", "kernel")) == "proj.0.4.weight"
  assert pixnerd_export.torch_key(("y_pos_embedding",)) == "y_pos_embedding"
