"""Meshes: data / FSDP / tensor parallel training equals one device, params really sharded."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pixnerd_jax import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sharding_worker.py"


def _run(tmp_path, name, *mesh):
  out = tmp_path / f"{name}.npz"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, str(WORKER), str(out), *map(str, mesh)], cwd=ROOT,
                          env=env, capture_output=True, timeout=600)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  with np.load(out) as f:
    return {k: f[k] for k in f.files}


def test_meshes_match_single_device(tmp_path):
  single = _run(tmp_path, "single", 1, 1, 1, 1)
  for mesh in [(8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2)]:
    result = _run(tmp_path, "x".join(map(str, mesh)), *mesh)
    np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-5, atol=1e-6)
    for key in single:
      if key.startswith("param/"):
        np.testing.assert_allclose(result[key], single[key], rtol=1e-4, atol=2e-6,
                                   err_msg=f"{mesh} {key}")
    # qkv kernel (embed=64, qkv=192): embed split over fsdp, qkv over tensor.
    _, fsdp, tensor = mesh
    assert tuple(result["qkv_shard_shape"]) == (64 // fsdp, 192 // tensor), mesh
    if fsdp > 1:
      assert "fsdp" in str(result["qkv_spec"])


def test_mesh_shape_from_config():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
  assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
