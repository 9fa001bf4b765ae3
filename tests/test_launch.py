"""Launch scripts: --help, the commands --dry-run prints, and argument errors."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("tpu_pod.sh", "slurm_gpu.sh", "single_host_gpu.sh")


def _jax_version():
  return re.search(r"^jax==([\d.]+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)


def _run(script, *args):
  result = subprocess.run(["bash", str(ROOT / "launch" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_strict_mode(script):
  code, out, _ = _run(script, "--help")
  assert code == 0
  assert f"Usage: launch/{script}" in out and "--dry-run" in out
  text = (ROOT / "launch" / script).read_text()
  assert "set -euo pipefail" in text


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_argument_fails(script):
  code, _, err = _run(script, "--frobnicate")
  assert code != 0 and "unknown argument '--frobnicate'" in err


def test_tpu_pod_dry_run():
  code, out, err = _run(
      "tpu_pod.sh", "--name", "pod-a", "--zone", "us-east5-a", "--project", "proj",
      "--config", "configs/imagenet256.py", "--workdir", "gs://bucket/run1", "--create",
      "--accelerator-type", "v5p-128", "--repo", "https://example.com/pixnerd-jax.git",
      "--ref", "abc123", "--dry-run", "--", "--config.mesh.fsdp=-1")
  assert code == 0, err
  create, setup, start = out.strip().splitlines()
  assert create.startswith("gcloud compute tpus tpu-vm create pod-a")
  assert "--accelerator-type=v5p-128" in create and "--version=v2-alpha-tpuv5" in create
  for line in (setup, start):
    assert line.startswith("gcloud compute tpus tpu-vm ssh pod-a")
    assert "--zone=us-east5-a" in line and "--project=proj" in line
    assert "--worker=all" in line
  assert "git clone https://example.com/pixnerd-jax.git" in setup
  assert "git checkout --quiet abc123" in setup
  assert "-r requirements.txt" in setup and f"jax[tpu]=={_jax_version()}" in setup
  assert "python -m pixnerd_jax.main --config=configs/imagenet256.py" in start
  assert "--workdir=gs://bucket/run1 --config.mesh.fsdp=-1" in start
  assert "nohup" in start


def test_tpu_pod_reuse_skips_create_and_setup():
  code, out, err = _run("tpu_pod.sh", "--name", "pod-a", "--zone", "z",
                        "--config", "configs/tiny.py", "--workdir", "gs://b/r",
                        "--skip-setup", "--dry-run")
  assert code == 0, err
  lines = out.strip().splitlines()
  assert len(lines) == 1 and "--worker=all" in lines[0] and "pixnerd_jax.main" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--config", "configs/tiny.py", "--workdir", "gs://b/r"],
     "missing required --name"),
    (["--name", "n", "--zone", "z", "--config", "configs/tiny.py", "--workdir", "/tmp/r"],
     "use gs://"),
    (["--name", "n", "--zone", "z", "--config", "configs/nope.py", "--workdir", "gs://b/r"],
     "no such file"),
    (["--name", "n", "--zone", "z", "--config", "configs/tiny.py", "--workdir", "gs://b/r",
      "--create"], "--create needs --accelerator-type"),
    (["--name", "--zone", "z"], "--name needs a value"),
])
def test_tpu_pod_argument_errors(args, message):
  code, out, err = _run("tpu_pod.sh", *args, "--dry-run")
  assert code != 0 and message in err and not out


def test_slurm_dry_run(tmp_path):
  code, out, err = _run("slurm_gpu.sh", "--nodes", "4", "--gpus-per-node", "8",
                        "--config", "configs/imagenet256.py", "--workdir", str(tmp_path),
                        "--partition", "gpu", "--time", "1-00:00:00", "--setup",
                        "--dry-run", "--", "--config.mesh.fsdp=8")
  assert code == 0, err
  assert f"jax[cuda13]=={_jax_version()}" in out and "-r " in out
  sbatch = next(line for line in out.splitlines() if line.startswith("sbatch"))
  for piece in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
                "--time=1-00:00:00", f"--output={tmp_path}/slurm-%j.out"):
    assert piece in sbatch
  assert "--gpus-per-task" not in out  # each task must see all of its node's GPUs
  srun = next(line for line in out.splitlines() if line.startswith("srun"))
  assert "python -m pixnerd_jax.main --config=configs/imagenet256.py" in srun
  assert f"--workdir={tmp_path} --config.mesh.fsdp=8" in srun
  assert "set -euo pipefail" in out  # the batch script is strict too


@pytest.mark.parametrize("args, message", [
    (["--gpus-per-node", "8", "--config", "configs/tiny.py", "--workdir", "/w"],
     "missing required --nodes"),
    (["--nodes", "two", "--gpus-per-node", "8", "--config", "configs/tiny.py",
      "--workdir", "/w"], "--nodes must be a positive integer"),
    (["--nodes", "1"], "missing required --gpus-per-node --config --workdir"),
])
def test_slurm_argument_errors(args, message):
  code, _, err = _run("slurm_gpu.sh", *args, "--dry-run")
  assert code != 0 and message in err


def test_single_host_dry_run():
  code, out, err = _run("single_host_gpu.sh", "--config", "configs/tiny.py",
                        "--workdir", "gs://b/r", "--gpus", "0,1", "--dry-run",
                        "--", "--config.batch_size=16")
  assert code == 0, err
  (line,) = out.strip().splitlines()
  assert line.startswith("env CUDA_VISIBLE_DEVICES=0,1 ")
  assert ("-m pixnerd_jax.main --config=configs/tiny.py --workdir=gs://b/r "
          "--config.batch_size=16") in line


@pytest.mark.parametrize("args, message", [
    (["--workdir", "/w"], "missing required --config"),
    (["--config", "configs/tiny.py", "--workdir", "/w", "--gpus", "a,b"],
     "--gpus must be a comma-separated list"),
])
def test_single_host_argument_errors(args, message):
  code, _, err = _run("single_host_gpu.sh", *args, "--dry-run")
  assert code != 0 and message in err
