"""Multi-process training: 2 processes x 4 CPU devices equal 1 process x 8; resume works
across processes and onto a different device count."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from pixnerd_jax.training import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _cmd(workdir, steps, *extra):
  return [sys.executable, "-m", "pixnerd_jax.main", "--config=configs/tiny.py",
          f"--workdir={workdir}", f"--config.num_train_steps={steps}",
          "--config.checkpoint_every=3", "--config.log_every=3", *extra]


def _run_single(workdir, steps, devices):
  result = subprocess.run(_cmd(workdir, steps), cwd=ROOT, env=_env(devices),
                          capture_output=True, timeout=300)
  assert result.returncode == 0, result.stderr.decode()[-3000:]


def _run_two_processes(workdir, steps, *extra):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      _cmd(workdir, steps, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}", *extra), cwd=ROOT, env=_env(4), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE) for i in range(2)]
  for i, proc in enumerate(procs):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"process {i}: {err.decode()[-3000:]}"


def _params(workdir):
  step, state = checkpoint.load_train_state(str(workdir))
  return step, state["params"]


def _assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_two_processes_match_one_and_resume(tmp_path):
  reference = tmp_path / "one_process"
  _run_single(reference, 6, devices=8)

  multi = tmp_path / "two_processes"
  _run_two_processes(multi, 3, "--config.profile.start_step=2",
                     "--config.profile.num_steps=1", "--config.profile.all_hosts=True")
  assert _params(multi)[0] == 3
  # Both processes traced step 2, each into its own folder.
  for i in range(2):
    traces = list((multi / f"process_{i}" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1, (i, traces)
  _run_two_processes(multi, 6)  # resumes from step 3 in both processes
  step, params = _params(multi)
  assert step == 6
  _assert_close(params, _params(reference)[1])

  # Saved on 8 devices, resumed on 4 (a different mesh).
  remesh = tmp_path / "remesh"
  _run_single(remesh, 3, devices=8)
  _run_single(remesh, 6, devices=4)
  _assert_close(_params(remesh)[1], _params(reference)[1])
