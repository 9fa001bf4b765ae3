"""Meshes: data / FSDP / tensor parallel training equals one device, params really sharded."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import models as presets
from pixnerd_jax import models
from pixnerd_jax.runtime import mesh as sharding
from tests import device_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sharding_worker.py"


# Pure fsdp, all three axes at once, and data x fsdp with the scanned trunk (pure data
# parallelism is the multi-host tests' 1 x 8 and 2 x 4 runs). Each costs a compile.
MESHES = {"single": (1, 1, 1, 1), "1x8x1": (1, 8, 1), "2x2x2": (2, 2, 2),
          "scan": (2, 4, 1, 8, 1)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{name: the worker's arrays} for every mesh in MESHES, from one worker process."""
  out = tmp_path_factory.mktemp("meshes")
  env = device_env.with_cpu_devices(8)
  specs = [f"{name}={','.join(map(str, mesh))}" for name, mesh in MESHES.items()]
  result = subprocess.run([sys.executable, str(WORKER), str(out), *specs], cwd=ROOT,
                          env=env, capture_output=True, timeout=900)
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  arrays = {}
  for name in MESHES:
    with np.load(out / f"{name}.npz") as f:
      arrays[name] = {k: f[k] for k in f.files}
  return arrays


def test_meshes_match_single_device(runs):
  single = runs["single"]
  for mesh in [(1, 8, 1), (2, 2, 2)]:
    result = runs["x".join(map(str, mesh))]
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


def test_scanned_blocks_on_a_mesh_match_single_device(runs):
  single, scanned = runs["single"], runs["scan"]
  np.testing.assert_allclose(scanned["losses"], single["losses"], rtol=1e-5, atol=1e-6)
  keys = [k for k in single if k.startswith("param/")]
  assert sorted(keys) == sorted(k for k in scanned if k.startswith("param/"))
  for key in keys:
    np.testing.assert_allclose(scanned[key], single[key], rtol=1e-4, atol=2e-6, err_msg=key)
  # Stacked qkv kernel (layers=2, embed=64, qkv=192): layers whole, embed over fsdp.
  assert tuple(scanned["qkv_shard_shape"]) == (2, 16, 192)
  assert str(scanned["qkv_spec"]).startswith("P(None, 'fsdp'")


@pytest.mark.parametrize("scan_blocks", [False, True])
def test_activation_constraints_reach_the_program(scan_blocks):
  # linen's constraints silently vanish unless activate() sets the abstract mesh.
  model = models.build_model(presets.get("tiny", num_classes=10, scan_blocks=scan_blocks))
  x, t, y = models.dummy_inputs(model, batch=2, height=8, width=8)
  forward = jax.jit(lambda p: model.apply({"params": p}, x, t, y))
  params = models.param_shapes(model)
  assert "sharding_constraint" not in forward.lower(params).as_text()
  with sharding.activate(sharding.create_mesh()):
    text = forward.lower(params).as_text()
  # patch embedding + every DiT block's output (the scanned body's once) + the decoder.
  expected = 1 + (1 if scan_blocks else model.num_cond_blocks) + 1
  assert text.count("sharding_constraint") >= expected
  assert '{"data", "fsdp"}' in text  # the batch axis of the activations


def test_mesh_shape_from_config():
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
  assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)


def test_trainer_and_aot_take_the_device_order_of_mesh_utils(monkeypatch):
  """One function orders the devices for both (topology-aware on TPU); its errors are
  not swallowed into a plain order that the AOT-proved program would not use."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.training import aot_compile  # pylint: disable=g-import-not-at-top
  devices = jax.devices()[:1]
  calls = []

  def topology_order(shape, devs):
    calls.append((tuple(shape), list(devs)))
    return np.asarray(devs).reshape(shape)

  monkeypatch.setattr(sharding.mesh_utils, "create_device_mesh", topology_order)
  mesh = sharding.create_mesh(None, devices)
  assert calls == [((1, 1, 1), devices)]
  assert mesh.devices.shape == (1, 1, 1)

  class TopologyError(Exception):
    pass

  def refuse(shape, devs):
    raise TopologyError("unusual topology")

  monkeypatch.setattr(sharding.mesh_utils, "create_device_mesh", refuse)
  with pytest.raises(TopologyError):
    sharding.create_mesh(None, devices)
  config = tiny.get_config()
  config.batch_size = 1
  with pytest.raises(TopologyError):  # aot_compile builds its mesh the same way
    aot_compile.compile_train_step(config, devices)
