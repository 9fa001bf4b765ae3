"""Entry points: one readable error line, library details cut, no noise at start or exit."""

import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from absl import app

from configs import tiny
from pixnerd_jax import convert
from pixnerd_jax.training import checkpoint
from pixnerd_jax.runtime import console
from pixnerd_jax.evaluation import fid
from pixnerd_jax.models import build_model, param_shapes

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = ("[tensorstore_spec='{\\\"context\\\":{\\\"cache_pool\\\":{}},\\\"driver\\\":"
        "\\\"zarr\\\",\\\"kvstore\\\":{\\\"path\\\":\\\"/w/checkpoints/6/state/\\\"}}']")
NOISE = ("Traceback", "Exception ignored", "Event loop is closed", "tensorstore_spec")


def test_summary_cuts_tensorstore_specs_and_extra_lines():
  error = ValueError(
      'OUT_OF_RANGE: Error opening "cast" driver: Error opening "zarr" driver: Error reading '
      '"step/.zarray": Requested byte range [0, 18638) is not valid for value of size 10 '
      + SPEC.replace("tensorstore_spec", "tensorstore_spec[1]") + " " + SPEC)
  assert console.summary(error) == ('OUT_OF_RANGE: Error reading "step/.zarray": Requested byte '
                                'range [0, 18638) is not valid for value of size 10')
  assert console.summary(RuntimeError("first line\n  second\nthird")) == "first line [...]"
  long = console.summary(ValueError("x" * 1000), limit=50)
  assert len(long) == 50 and long.endswith("[...]")
  assert console.summary(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_entry_point_prints_one_line_and_returns_the_exit_code(capsys):
  @console.entry_point(known=(checkpoint.CheckpointError,), code=3, oom_hint="lower --batch_size")
  def main(error):
    raise error

  assert main(checkpoint.CheckpointError("The checkpoint is damaged: move it aside.")) == 3
  assert capsys.readouterr().err == "error: The checkpoint is damaged: move it aside.\n"

  oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.0GiB.\n"
                     "BufferAssignment OOM Debugging.\n" + "buffer\n" * 500)
  assert main(oom) == 3
  err = capsys.readouterr().err
  assert err == ("error: out of memory: lower --batch_size (RESOURCE_EXHAUSTED: Out of "
                 "memory while trying to allocate 9.0GiB. [...])\n")

  assert main(ZeroDivisionError("division by zero")) == 3  # a bug: line, then traceback
  first, *rest = capsys.readouterr().err.splitlines()
  assert first.startswith("error: unexpected ZeroDivisionError: division by zero (a bug")
  assert rest[0] == "Traceback (most recent call last):" and "test_console.py" in "\n".join(rest)

  with pytest.raises(app.UsageError):  # absl prints usage for these
    main(app.UsageError("--flag is required"))
  with pytest.raises(SystemExit):
    main(SystemExit(0))

  @console.entry_point()
  def fine():
    return 0
  assert fine() == 0 and capsys.readouterr().err == ""


def test_closed_event_loop_leftovers_are_not_printed():
  forwarded = []
  hook = console._quiet_unraisable(forwarded.append)
  leftover = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
  other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
  hook(leftover)
  hook(other)
  assert forwarded == [other]


def test_never_awaited_library_coroutines_are_not_printed():
  """The leftover of a failed Orbax restore that ended a fault test's stderr under load."""
  code = (
      "import gc\n"
      "from pixnerd_jax.runtime import console\n"
      "console.quiet_start(tpu=False)\n"
      "async def read_shard():\n"
      "  pass\n"
      "pending = read_shard()\n"
      "del pending\n"
      "gc.collect()\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "never awaited" not in result.stderr and "tracemalloc" not in result.stderr, (
      result.stderr)


def test_convert_and_fid_errors_are_one_line(tmp_path, capsys):
  (tmp_path / "blocker").write_text("a file where the output directory should go")
  with pytest.raises(checkpoint.CheckpointError, match="choose a writable directory"):
    checkpoint.save_params(str(tmp_path / "blocker" / "out"), {"w": np.zeros(2)}, {})

  np.savez(tmp_path / "bad.npz", w=np.zeros(3))
  assert fid.main([f"--samples={tmp_path}/none.npz", f"--reference={tmp_path}/none.npz",
                   f"--inception={tmp_path}/bad.npz"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: --inception={tmp_path}/bad.npz "
                                                 "does not read: pass the .npz written by")

  (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
  assert convert.main(["checkpoint", str(tmp_path / "broken.safetensors"), "--out",
                       str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err


def test_sample_with_a_damaged_params_checkpoint_says_so_in_one_line(tmp_path):
  model_cfg = {k: v for k, v in tiny.get_config().model.items() if k != "preset"}
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                        param_shapes(build_model(model_cfg)))
  checkpoint.save_params(str(tmp_path / "ckpt"), params, model_cfg)
  for path in (tmp_path / "ckpt" / "params").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      os.truncate(path, 10)
  result = subprocess.run(
      [sys.executable, "-m", "pixnerd_jax.sample", "--config=configs/tiny.py",
       f"--checkpoint={tmp_path / 'ckpt'}", f"--out={tmp_path / 'out'}", "--num_samples=10"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: Could not read the params checkpoint {tmp_path / 'ckpt'}: "
                         "it is damaged or incomplete; convert or copy it again."), last
  for noise in NOISE:
    assert noise not in result.stderr, result.stderr[-3000:]


def test_main_prints_a_bad_mesh_an_empty_folder_and_unreadable_data_in_one_line(
    tmp_path, capsys):
  """The training entry point's user errors: one line, no traceback."""
  from pixnerd_jax import data, main  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.data import folder  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.runtime import mesh  # pylint: disable=g-import-not-at-top
  def bad_mesh():
    mesh.mesh_shape({"data": 1, "fsdp": 3, "tensor": 1}, 2)
  def empty_folder():
    folder.scan_folder(str(tmp_path))
  def unreadable():
    raise data.DataError("5 consecutive examples failed to load")
  for fails in (bad_mesh, empty_folder, unreadable):
    assert console.entry_point(known=main.USER_ERRORS)(fails)() == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_skipping_libtpu_keeps_jax_fallback_from_a_gpu_plugin_to_cpu(monkeypatch):
  """Off TPU hosts only the TPU backend is unregistered; jax_platforms stays unset, so a
  GPU plugin that cannot start (no visible GPU) still falls back to CPU as in plain JAX
  (naming every plugin in jax_platforms made that failure fatal)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  factories = {name: types.SimpleNamespace(priority=p)
               for name, p in (("tpu", 300), ("cuda", 200), ("cpu", 0))}
  monkeypatch.setattr(xla_bridge, "_backend_factories", factories)
  monkeypatch.setattr(xla_bridge, "_discover_and_register_pjrt_plugins", lambda: None)
  monkeypatch.setattr(console, "host_has_tpu", lambda: False)
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  before = jax.config.jax_platforms  # conftest sets cpu; a user's start has it unset
  jax.config.update("jax_platforms", None)
  try:
    assert console.skip_tpu_backend() == "cuda,cpu"
    assert not jax.config.jax_platforms
    assert set(factories) == {"cuda", "cpu"}
  finally:
    jax.config.update("jax_platforms", before)
