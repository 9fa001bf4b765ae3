"""Multi-process training: 2 processes x 4 CPU devices equal 1 process x 8; resume works
across processes and onto a different device count."""

import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from pixnerd_jax.training import checkpoint
from tests import device_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(devices):
  return device_env.with_cpu_devices(devices)


def _cmd(workdir, steps, *extra, config="tiny"):
  return [sys.executable, "-m", "pixnerd_jax.main", f"--config=configs/{config}.py",
          f"--workdir={workdir}", f"--config.num_train_steps={steps}",
          "--config.checkpoint_every=3", "--config.log_every=3", *extra]


def _run_single(workdir, steps, devices, config="tiny"):
  result = subprocess.run(_cmd(workdir, steps, config=config), cwd=ROOT, env=_env(devices),
                          capture_output=True, timeout=300)
  assert result.returncode == 0, result.stderr.decode()[-3000:]


def _run_two_processes(workdir, steps, *extra, devices=4, config="tiny"):
  """Both processes' stderr (joined); fails with the first failing process's tail."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  logs = [tempfile.TemporaryFile() for _ in range(2)]  # a pipe could fill while we poll
  procs = [subprocess.Popen(
      _cmd(workdir, steps, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}", *extra, config=config), cwd=ROOT, env=_env(devices),
      stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(2)]
  deadline = time.monotonic() + 600
  while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
    if any(p.poll() not in (None, 0) for p in procs):
      break  # one failed: the other would wait for it forever
    time.sleep(0.2)
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
  errors = []
  for proc, log in zip(procs, logs, strict=True):
    proc.wait()
    log.seek(0)
    errors.append(log.read().decode())
    log.close()
  for i, proc in enumerate(procs):
    assert proc.returncode == 0, f"process {i}: {errors[i][-3000:]}"
  return "\n".join(errors)


def _params(workdir):
  step, state = checkpoint.load_train_state(str(workdir))
  return step, state["params"]


def _assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def _event_tags(workdir):
  """{tag: [steps]} of the scalars and images process 0 wrote."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  tags = {}
  for path in pathlib.Path(workdir).glob("events.out.tfevents.*"):
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={"images": 0,
                                                                        "tensors": 0})
    acc.Reload()
    for kind in ("tensors", "images"):
      for tag in acc.Tags()[kind]:
        events = acc.Tensors(tag) if kind == "tensors" else acc.Images(tag)
        tags.setdefault(tag, []).extend(e.step for e in events)
  return tags


def test_two_processes_full_loop_match_one_process_and_resume(tmp_path):
  """2 processes x 4 devices train as 1 x 8, with the whole loop on: periodic grids,
  periodic and final digits-judge evaluation (samples sharded over both processes'
  devices), a profile window on both hosts, checkpoints and the final grid, then a resume
  in both processes. 16 samples everywhere (2 grid rows of 8): one sampling program serves
  grid and metrics."""
  # The reference is itself resumed onto another mesh: saved on 8 devices at step 3,
  # continued on 4. A resume that depended on the mesh would miss the two-process run.
  reference = tmp_path / "one_process"
  _run_single(reference, 3, devices=8)
  _run_single(reference, 6, devices=4)

  multi = tmp_path / "two_processes"
  loop = ("--config.sample_every=2", "--config.eval_every=2", "--config.eval_num_samples=16",
          "--config.final_eval_num_samples=16", "--config.grid_classes=2")
  _run_two_processes(multi, 3, *loop, "--config.profile.start_step=2",
                     "--config.profile.num_steps=1", "--config.profile.all_hosts=True")
  assert _params(multi)[0] == 3
  # Both processes traced step 2, each into its own folder.
  for i in range(2):
    traces = list((multi / f"process_{i}" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1, (i, traces)
  _run_two_processes(multi, 6, *loop)  # resumes from step 3 in both processes
  step, params = _params(multi)
  assert step == 6
  _assert_close(params, _params(reference)[1])
  assert (multi / "samples_final.png").is_file()
  tags = _event_tags(multi)
  assert sorted(tags["samples/ema"]) == [2, 3, 4, 6], tags
  assert sorted(tags["eval/digits_accuracy"]) == [2, 4], tags
  assert sorted(tags["final/digits_accuracy"]) == [3, 6], tags


def test_two_processes_text_to_image_loop(tmp_path):
  """The t2i loop on 2 processes x 2 devices: the stand-in text encoder written once into
  the shared workdir and read by both, captions encoded on every host, a periodic grid,
  the digits judge's final evaluation of prompts sharded over both processes, the final
  grid. (That 2 processes train as 1 is the class-conditional test's job above: the
  step is the same program with text features in place of labels.)"""
  multi = tmp_path / "two_processes"
  stderr = _run_two_processes(multi, 4, "--config.sample_every=2",
                              "--config.final_eval_num_samples=8", "--config.grid_classes=2",
                              devices=2, config="tiny_t2i")
  assert "Traceback" not in stderr, stderr[-3000:]
  step, params = _params(multi)
  assert step == 4
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
  assert (multi / "samples_final.png").is_file()
  tags = _event_tags(multi)
  assert sorted(tags["samples/ema"]) == [2, 4], tags
  assert sorted(tags["final/digits_accuracy"]) == [4], tags
