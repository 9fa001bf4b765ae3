"""AOT compile for a TPU topology on this CPU host (needs libtpu, not a TPU)."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

from pixnerd_jax.training import aot_compile

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install -r requirements-test.txt); the TPU "
           "compiler is what this test exercises")


def _start(*args):
  return subprocess.Popen(
      [sys.executable, "-m", "pixnerd_jax.aot", "--config=configs/tiny.py", *args],
      cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _finish(proc):
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


@needs_libtpu
def test_compiles_tiny_on_four_chips_and_rejects_what_does_not_fit():
  # Both compile at once: each is mostly single-threaded XLA work.
  fits = _start("--topology=v5p:2x2x1", "--step_time_s=0.01")
  # The scanned trunk must compile for TPU too.
  too_big = _start("--topology=v5e:2x2", "--hbm_gib=0.001", "--config.model.scan_blocks=True")
  code, out, err = _finish(fits)
  assert code == 0, err[-3000:]
  assert "4 chips" in out and "data=4 fsdp=1 tensor=1" in out
  for line in ("arguments", "outputs", "aliased", "temporaries", "generated code",
               "total"):
    assert f"  {line} " in out
  # v5p reports temporaries; the donated state aliases (almost) all of its output.
  values = {l.split()[0]: float(l.split()[-2]) for l in out.splitlines()
            if l.startswith("  ") and l.strip().endswith("GiB") and "HBM" not in l}
  assert values["temporaries"] > 0 and values["aliased"] > 0.9 * values["outputs"]
  assert "FLOPs per step" in out and "% of peak at 0.01 s/step" in out
  assert "fits" in out

  code, out, err = _finish(too_big)
  assert code == 1, out + err[-3000:]
  assert "does not fit: needs" in err and "of 0.00 GiB" in err
  assert "--config.mesh.fsdp" in err and "remat_policy=blocks" in err
  # XLA counts a scanned body once, so the analytic count stands in for it.
  assert "(analytic count of the model" in out and "scan_blocks (XLA counts" in out
  assert "step time floor" in out


def test_topology_names():
  assert aot_compile.parse_topology("v5p:4x4x4") == ("v5p", (4, 4, 4))
  assert aot_compile.parse_topology("V6E:8x8") == ("v6e", (8, 8))
  with pytest.raises(aot_compile.AotError, match="3-D shape"):
    aot_compile.parse_topology("v5p:4x4")
  with pytest.raises(aot_compile.AotError, match="GENERATION:SHAPE"):
    aot_compile.parse_topology("v5litepod-16")
  # Host layouts: 4 chips per v4/v5p host; small v5e/v6e slices are one host.
  assert aot_compile.chips_per_host_bounds("v5p", (4, 4, 4)) == (2, 2, 1)
  assert aot_compile.chips_per_host_bounds("v6e", (2, 4)) == (2, 4, 1)
  assert aot_compile.chips_per_host_bounds("v6e", (8, 8)) == (2, 2, 1)


@needs_libtpu
def test_lowers_meanflow_distillation_without_the_teachers_weights():
  # The teacher is a step argument sharded as the student; its folder is on the training
  # hosts, not necessarily on the one that compiles.
  code, out, err = _finish(_start(
      "--topology=v5p:2x2x1", "--dry_run", "--config.model.average_velocity=True",
      "--config.meanflow.enabled=True", "--config.meanflow.teacher=/not/on/this/host"))
  assert code == 0, err[-3000:]
  assert re.search(r"(?m)^dry run\s+the step lowered", out), out


def test_out_of_memory_messages_are_parsed():
  # What XLA said for imagenet256 (64 images per chip) on v5e:2x2.
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for "
             "HLO temporaries (25.33G) exceeds available HBM (15.75G).")
  assert aot_compile.oom_gib(message) == (25.33, 15.75)
  assert aot_compile.oom_gib("Used 120.50G of 95.74G hbm. Exceeded hbm capacity") == (120.5, 95.74)
  assert aot_compile.oom_gib("Used 512M of 1G hbm") == (0.5, 1.0)
  assert aot_compile.oom_gib("some other error") is None
