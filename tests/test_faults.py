"""Fault injection: unattended restarts end bitwise equal to an uninterrupted run.

One run of `pixnerd_jax.main` (tiny config, subprocesses) goes through every fault a
preemptible pod meets: SIGKILL while an asynchronous save is in flight, SIGKILL at a
random moment, a disk that fills up mid-run (a clear error; the earlier checkpoints stay
resumable), damaged checkpoints (truncated arrays, a broken data-iterator state: moved
aside, the run falls back); after each the same command is started again, and the end
state equals an uninterrupted run's bit for bit. The runs share a JAX compilation cache
so restarts skip XLA. Where no checkpoint restores, or one was written with another
config, nothing is moved (checked in-process on checkpoint.restore_latest).
"""

import os
import pathlib
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from pixnerd_jax import data
from pixnerd_jax.training import checkpoint
from pixnerd_jax.runtime import console
from pixnerd_jax.runtime import mesh as sharding
from pixnerd_jax.training import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 40, 5
OVERRIDES = (f"--config.num_train_steps={STEPS}", f"--config.checkpoint_every={EVERY}",
             f"--config.log_every={EVERY}")
TMP_MARK = "orbax-checkpoint-tmp"  # an unfinished save: <step>.orbax-checkpoint-tmp...
# In-process restores of damaged files leave TensorStore callbacks that asyncio refuses
# once its loop is closed; the entry points keep them off stderr (console.quiet_start, checked
# on the subprocesses here), pytest would report each as a warning.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
NOISE = ("Traceback", "Exception ignored", "Event loop is closed", "tensorstore_spec",
         "could not determine TPU")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp("jax_cache")
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _command(workdir):
  return [sys.executable, "-m", "pixnerd_jax.main", "--config=configs/tiny.py",
          f"--workdir={workdir}", *OVERRIDES]


def _run(workdir, env, stage: str) -> str:
  result = subprocess.run(_command(workdir), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, (stage, result.stderr[-3000:])
  return result.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
  """An uninterrupted run (it also fills the compilation cache): (workdir, final state)."""
  workdir = tmp_path_factory.mktemp("reference")
  _run(workdir, env, "reference")
  step, state = checkpoint.load_train_state(str(workdir))
  assert step == STEPS
  return workdir, state


def _names(directory) -> set[str]:
  try:
    return set(os.listdir(directory))
  except FileNotFoundError:
    return set()


def _step_of(name: str) -> int:
  head = name.split(".")[0]
  return int(head) if head.isdigit() else -1


def _complete(checkpoints) -> list[int]:
  return sorted(int(n) for n in _names(checkpoints) if n.isdigit())


def _assert_clean(stderr: str, stage: str):
  for noise in NOISE:
    assert noise not in stderr, (stage, noise, stderr[-3000:])


def _kill_at(workdir, env, log, reached) -> list[str]:
  """Starts the run, SIGKILLs it once reached(names in checkpoints/) holds; returns the
  names right after the kill."""
  checkpoints = workdir / "checkpoints"
  with open(log, "w") as stderr:
    proc = subprocess.Popen(_command(workdir), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not reached(_names(checkpoints)):
      time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  return sorted(_names(checkpoints))


def _truncate_arrays(step_dir: pathlib.Path):
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for path in files:
    os.truncate(path, 10)


def test_kills_full_disk_and_damage_then_restarts_end_bitwise_equal(tmp_path, reference, env):
  seed = random.SystemRandom().randrange(2**32)
  rng = random.Random(seed)
  workdir = tmp_path / "run"
  checkpoints = workdir / "checkpoints"
  seen = [f"seed {seed}"]

  # 1. SIGKILL as soon as the save of a random step is being written: the asynchronous
  # write is cut, its temporary directory stays behind. (Should the save finish between
  # the look and the kill, the kill counts as a random one and this is tried again.)
  for attempt in range(3):
    target = max(_complete(checkpoints), default=0) + rng.choice([EVERY, 2 * EVERY])
    after = _kill_at(workdir, env, tmp_path / f"kill1_{attempt}.log",
                     lambda names: any(TMP_MARK in n and _step_of(n) >= target for n in names))
    seen.append(f"kill in flight (step >= {target}): {after}")
    if any(TMP_MARK in n for n in after):
      break
  assert any(TMP_MARK in n for n in after), seen

  # 2. SIGKILL at a random moment after a later checkpoint is complete.
  newest = max(_complete(checkpoints), default=0)
  target = rng.choice(list(range(newest + EVERY, 3 * EVERY + 1, EVERY)) or [newest + EVERY])
  pause = rng.uniform(0, 0.2)
  def reached(names):
    if any(n.isdigit() and int(n) >= target for n in names):
      time.sleep(pause)
      return True
    return False
  after = _kill_at(workdir, env, tmp_path / "kill2.log", reached)
  seen.append(f"kill {pause:.2f} s after checkpoint {target}: {after}")

  # 3. The disk fills up: once the restarted run has completed a new checkpoint (and
  # three are there, for step 4), no file of the process may grow (RLIMIT_FSIZE 0 binds
  # root too; Python ignores SIGXFSZ, so writes fail with EFBIG). stderr is a pipe,
  # which the limit does not touch.
  newest = max(_complete(checkpoints), default=0)
  assert newest <= STEPS - 3 * EVERY, seen  # room for a save to fail after the limit
  proc = subprocess.Popen(_command(workdir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while len(_complete(checkpoints)) < 3 or max(_complete(checkpoints)) <= newest:
      assert proc.poll() is None and time.time() < deadline, (seen, proc.stderr.read()[-3000:])
      time.sleep(0.001)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0, 0))
    _, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  complete = _complete(checkpoints)
  seen.append(f"disk full: exit {proc.returncode}, complete {complete}")
  assert proc.returncode == 1, (seen, err[-3000:])
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: Writing the checkpoint of step "), (seen, err[-3000:])
  assert f"resume from step {complete[-1]}, the newest complete checkpoint" in last, last
  assert "File too large" in last, last
  _assert_clean(err, "disk full")
  assert len(complete) == 3 and complete[-1] < STEPS, seen

  # 4. The newest checkpoint's arrays are cut short; the one before loses its data
  # iterator state. The restart moves both aside and falls back to the third.
  newest, second, third = complete[::-1]
  _truncate_arrays(checkpoints / str(newest))
  (checkpoints / str(second) / "data" / "process_0-of-1.json").write_text('{"next_ind')
  stderr = _run(workdir, env, "after damage")
  for step in (newest, second):
    assert f"The checkpoint of step {step} in" in stderr, stderr[-3000:]
    assert f"Moved the damaged checkpoint of step {step} to" in stderr, stderr[-3000:]
  assert f"Resumed from the checkpoint of step {third}." in stderr, stderr[-3000:]
  _assert_clean(stderr, "after damage")
  names = _names(checkpoints)
  assert {f"{newest}.damaged", f"{second}.damaged"} <= names, names
  assert (checkpoints / f"{second}.damaged" / "data" / "process_0-of-1.json").read_text() == (
      '{"next_ind')  # moved, never deleted or rewritten
  assert not any(TMP_MARK in n for n in names), names  # unfinished saves removed

  step, state = checkpoint.load_train_state(str(workdir))
  assert step == STEPS
  for key in ("params", "ema_params", "opt_state"):
    ref, got = jax.tree.leaves(reference[1][key]), jax.tree.leaves(state[key])
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{key} {seen}")


def _restore_latest(workdir, config):
  """checkpoint.restore_latest as the trainer calls it, on an abstract state."""
  console.quiet_start(tpu=False)  # as the entry points: leftovers of failed reads stay quiet
  program = train.build_train_program(config, sharding.create_mesh(config.mesh))
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       program.state_shapes, program.state_sharding)
  iterator = data.create_train_iterator(config.data, global_batch_size=config.batch_size,
                                        seed=config.seed)
  manager = checkpoint.create_manager(str(workdir), config)
  try:
    return checkpoint.restore_latest(manager, state, iterator)
  finally:
    manager.close()


def test_when_no_checkpoint_restores_nothing_is_moved(tmp_path, reference):
  shutil.copytree(reference[0] / "checkpoints", tmp_path / "checkpoints")
  steps = _complete(tmp_path / "checkpoints")
  for step in steps:
    _truncate_arrays(tmp_path / "checkpoints" / str(step))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"No checkpoint in .* restores, so nothing was moved") as e:
    _restore_latest(tmp_path, tiny.get_config())
  assert "tensorstore_spec" not in str(e.value) and len(str(e.value)) < 700
  assert _complete(tmp_path / "checkpoints") == steps
  assert not any(n.endswith(".damaged") for n in _names(tmp_path / "checkpoints"))


def test_checkpoint_of_another_config_is_named_not_moved(tmp_path, reference, env):
  shutil.copytree(reference[0] / "checkpoints", tmp_path / "checkpoints")
  steps = _complete(tmp_path / "checkpoints")
  result = subprocess.run(
      _command(tmp_path) + ["--config.model.hidden_size=64", "--config.model.num_groups=4"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: The checkpoint of step {steps[-1]} in ") and (
      "was written with another config: restart with the config it was written with, or "
      "use a new --workdir. (different shapes [") in last, last
  _assert_clean(result.stderr, "another config")
  assert _names(tmp_path / "checkpoints") == {str(s) for s in steps}


def test_restore_latest_without_checkpoints_starts_fresh(tmp_path):
  step, state, _ = _restore_latest(tmp_path, tiny.get_config())
  assert step is None and isinstance(jax.tree.leaves(state)[0], jax.ShapeDtypeStruct)


def _with_other_process(monkeypatch, other_outcome):
  """Runs restore_latest as process 0 of 2 whose partner finds `other_outcome` at every
  agreement; returns the list of outcomes this process contributed."""
  contributed = []

  def gather(outcome):
    contributed.append(outcome)
    return {outcome, other_outcome}

  monkeypatch.setattr(checkpoint, "_outcomes_of_all_processes", gather)
  return contributed


def test_restore_decision_is_agreed_before_anyone_raises(tmp_path, reference, monkeypatch):
  """A process that finds another config still joins the agreement (the partner would
  wait in it forever), and a partner's finding stops this process too."""
  shutil.copytree(reference[0] / "checkpoints", tmp_path / "checkpoints")
  other = tiny.get_config()
  other.model.hidden_size, other.model.num_groups = 64, 4
  contributed = _with_other_process(monkeypatch, checkpoint._RESTORED)
  with pytest.raises(checkpoint.CheckpointError, match="written with another config"):
    _restore_latest(tmp_path, other)
  assert contributed == [checkpoint._OTHER_CONFIG]

  # This process restores, the other finds another config: both stop, none resumes.
  contributed = _with_other_process(monkeypatch, checkpoint._OTHER_CONFIG)
  with pytest.raises(checkpoint.CheckpointError, match="another process"):
    _restore_latest(tmp_path, tiny.get_config())
  assert contributed == [checkpoint._RESTORED]
