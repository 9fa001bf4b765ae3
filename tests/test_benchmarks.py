"""The benchmarks the README shows run and print their figures (tiny settings)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--resolution", "16", "--batch", "2", "--num_classes", "10"]


def _run(script: str, *args: str) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_roofline_prints_step_flops_parts_and_gemm_rates():
  out = _run("roofline.py", *TINY, "--repeats", "1")
  for part in ("trunk dense", "field weight generator", "field MLP (per-pixel)", "total"):
    assert re.search(rf"{re.escape(part)}.*GFLOP", out), out
  assert re.search(r"square 1024\s+XLA\s+\d+\.\d GFLOP/s", out), out
  for step in ("train step", "CFG Euler step"):
    match = re.search(rf"{step}.*?([\d.e+-]+) GFLOP\s+([\d.]+) ms\s+([\d.]+) img/s", out)
    assert match and float(match.group(1)) > 0 and float(match.group(3)) > 0, out


def test_vs_reference_runs_our_side_without_torch_paths():
  out = _run("vs_reference.py", *TINY, "--rounds", "1", "--repeats", "1", "--warmup", "0",
             "--modes", "train,sample")
  assert re.search(r"\| train \| ours \| [\d.]+", out), out
  assert re.search(r"\| sample \| ours \| [\d.]+", out), out


def test_vs_reference_names_a_bad_reference_folder(tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "vs_reference.py"), "--reference",
       str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
      env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert result.returncode == 2
  assert "pixnerd_c2i.py not found" in result.stderr


@pytest.mark.parametrize("script", ["roofline.py", "profile_step.py"])
def test_a_bad_preset_or_resolution_is_a_usage_error(script):
  for args, message in ((["--preset", "Z/9"], "--preset"),
                        (["--preset", "S/8", "--resolution", "60"], "not divisible")):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                            capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_profile_step_splits_the_step_time_by_part():
  for mode, parts in (("train", ("trunk dense GEMMs (fwd)", "trunk dense GEMMs (bwd)",
                                 "optimizer + EMA", "field weight generator (bwd)")),
                      ("sample", ("trunk dense GEMMs", "field weight generator"))):
    out = _run("profile_step.py", *TINY, "--mode", mode, "--repeats", "1", "--warmup", "1",
               "--top", "3")
    header = re.search(r"([\d.]+) ms untraced, ([\d.]+) ms traced", out)
    assert header and float(header.group(2)) > 0, out
    shares = {m.group(1).strip(): float(m.group(3)) for m in re.finditer(
        r"^([a-zA-Z+ ,()]+?)\s+([\d.]+)\s+([\d.]+)%$", out, re.M)}
    for part in parts:
      assert part in shares, (part, out)
    # Every moment of the traced step is given to some part (or to no thunk at all).
    assert 90.0 <= sum(shares.values()) <= 100.5, out
    assert len(re.findall(r"^\s+[\d.]+ \S+\s+\S+\[", out, re.M)) == 3, out


def test_train_step_benchmark_prints_images_per_second_tflops_and_mfu():
  out = _run("train_step.py", *TINY, "--repeats", "2", "--warmup", "0")
  assert re.search(r"images/s\s+\d+\.\d", out), out
  tflops = re.search(r"TFLOP/s per device\s+([\d.e+-]+)", out)
  assert tflops and float(tflops.group(1)) > 0, out
  assert "n/a (no peak known for 'cpu')" in out, out
  assert re.search(r"FLOPs per step\s+[\d.e+-]+ per device \(XLA cost analysis\)", out), out
