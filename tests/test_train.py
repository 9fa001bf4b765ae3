"""The trainer: learning, exact resume after SIGKILL/SIGTERM, guards, config errors."""

import functools
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from pixnerd_jax import data
from pixnerd_jax.training import checkpoint
from pixnerd_jax.training import flops
from pixnerd_jax.training import train
from pixnerd_jax.training import validation

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  config = tiny.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_loss_goes_down_on_digits():
  config = _config()
  model = train.create_model(config)
  tx, schedule = train.create_optimizer(config)
  state = train.create_train_state(train.init_params(model, 0), tx)
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule,
                                   config=config))
  it = data.create_train_iterator(config.data, global_batch_size=32, seed=0)
  losses = []
  initial = jax.device_get(state.params)
  for _ in range(60):
    batch = next(it)
    previous_ema = jax.device_get(state.ema_params)
    state, metrics = step(state, {"image": batch["image"], "label": batch["label"]})
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 60
  assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:5]), losses
  # EMA moved away from the initial params, trails the online ones, and its last update
  # is decay * previous + (1 - decay) * new params (a never-updated EMA fails all three).
  decay = float(train.ema_decay_at(jnp.int32(59), config.ema_decay, config.ema_warmup))
  for ema, online, before, init in zip(*map(jax.tree.leaves, (
      jax.device_get(state.ema_params), jax.device_get(state.params), previous_ema,
      initial)), strict=True):
    np.testing.assert_allclose(ema, decay * before + (1 - decay) * online, rtol=1e-6,
                               atol=1e-7)
  ema_leaves = jax.tree.leaves(jax.device_get(state.ema_params))
  assert any(not np.array_equal(e, i) for e, i in zip(ema_leaves, jax.tree.leaves(initial),
                                                      strict=True))
  assert any(not np.array_equal(e, o) for e, o in zip(
      ema_leaves, jax.tree.leaves(jax.device_get(state.params)), strict=True))


def test_step_noise_depends_only_on_step():
  a = jax.random.normal(train.step_rng(0, jnp.int32(5)), (3,))
  b = jax.random.normal(train.step_rng(0, jnp.int32(5)), (3,))
  c = jax.random.normal(train.step_rng(0, jnp.int32(6)), (3,))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_ema_warmup_and_schedule():
  assert float(train.ema_decay_at(jnp.int32(0), 0.999, 10)) == pytest.approx(0.1)
  assert float(train.ema_decay_at(jnp.int32(10**6), 0.999, 10)) == pytest.approx(0.999)
  assert float(train.ema_decay_at(jnp.int32(0), 0.9999, 0)) == pytest.approx(0.9999)
  config = _config(**{"optimizer.warmup_steps": 10, "optimizer.schedule": "cosine",
                      "num_train_steps": 110})
  _, schedule = train.create_optimizer(config)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-9)


def _params(workdir):
  step, state = checkpoint.load_train_state(str(workdir))
  return step, state


def _assert_same_tree(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _main_cmd(workdir, *overrides):
  return [sys.executable, "-m", "pixnerd_jax.main", "--config=configs/tiny.py",
          f"--workdir={workdir}", *overrides]


def _run_until_checkpoint_then_signal(cmd, workdir, sig):
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  ckpt_dir = pathlib.Path(workdir) / "checkpoints"
  # A poll that ends at the first checkpoint (seconds on an idle machine); the long limit
  # is for a loaded one, where start-up and the compile alone can take minutes.
  deadline = time.time() + 300
  saved = False
  while time.time() < deadline and proc.poll() is None:
    saved = ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    if saved:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  if not saved:
    proc.kill()
    pytest.fail(f"no checkpoint within 300 s: {proc.communicate()[1].decode()[-2000:]}")
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  return proc.returncode, err.decode()


def _assert_readable_console(text: str, first_step: int) -> str:
  """The console of a tiny run with log_every=5, as a person sees it: a short start,
  short lines, one progress line per interval (training-only speed and an ETA)."""
  lines = text.splitlines()
  assert all(len(line) <= 200 for line in lines), max(lines, key=len)
  progress = [i for i, line in enumerate(lines) if line.startswith("step ") and " ETA " in line]
  assert progress, text[-3000:]
  assert progress[0] <= 25, "\n".join(lines[:progress[0]])
  steps = [int(lines[i].split()[1].split("/")[0]) for i in progress]
  # A line every 5 steps; the last may be where SIGTERM stopped the run.
  assert steps[:-1] == list(range(first_step, first_step + 5 * len(steps) - 5, 5)), steps
  for noise in ("Setting work unit notes", "Hyperparameters", "batch_size:", "| Name",
                "oneDNN", "absl::InitializeLog"):
    assert noise not in text, noise
  assert re.search(r"loss \d\.\d{4}  [\d.]+ steps/s  \d+ img/s", lines[progress[0]])
  return text


def test_sigterm_saves_and_the_restart_resumes_bitwise_identical(tmp_path):
  # SIGKILLs, damaged checkpoints and failing saves: tests/test_faults.py.
  sig = signal.SIGTERM
  # 40 steps: the signal comes at the first checkpoint (step 5), 35 steps before the end.
  overrides = ["--config.num_train_steps=40", "--config.checkpoint_every=5",
               "--config.log_every=5"]
  reference = tmp_path / "reference"
  train.train_and_evaluate(_config(num_train_steps=40, checkpoint_every=5, log_every=5),
                           str(reference))

  interrupted = tmp_path / "interrupted"
  code, err = _run_until_checkpoint_then_signal(_main_cmd(interrupted, *overrides),
                                                interrupted, sig)
  assert code == 0, err  # saves and exits cleanly
  stopped_at, _ = _params(interrupted)
  assert stopped_at < 40

  resumed = subprocess.run(_main_cmd(interrupted, *overrides), cwd=ROOT,
                           capture_output=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
  _assert_readable_console(err, first_step=5)
  console = _assert_readable_console(resumed.stdout.decode() + resumed.stderr.decode(),
                                     first_step=stopped_at + 5 - stopped_at % 5)
  assert f"Resumed from the checkpoint of step {stopped_at}." in console
  step_a, state_a = _params(reference)
  step_b, state_b = _params(interrupted)
  assert step_a == step_b == 40
  _assert_same_tree(state_a["params"], state_b["params"])
  _assert_same_tree(state_a["ema_params"], state_b["ema_params"])
  _assert_same_tree(state_a["opt_state"], state_b["opt_state"])


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = _config(checkpoint_every=1, log_every=1, num_train_steps=10,
                   **{"optimizer.learning_rate": 1e38, "optimizer.warmup_steps": 0})
  with pytest.raises(train.NonFiniteLossError, match=r"Non-finite loss at step (\d+)") as e:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(e.value.args[0].split("step ")[1].split(";")[0])
  step, state = _params(tmp_path)
  assert step == bad_step - 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_sample_grid_events_utilisation_and_profile_are_written(tmp_path, monkeypatch):
  # The CPU has no peak in the table; give it one to see train/mfu written.
  monkeypatch.setitem(flops.PEAK_BF16_FLOPS, jax.devices()[0].device_kind, 1e12)
  config = _config(num_train_steps=4, sample_every=2, checkpoint_every=4,
                   **{"profile.start_step": 2, "profile.num_steps": 2})
  train.train_and_evaluate(config, str(tmp_path))
  from PIL import Image
  grid = Image.open(tmp_path / "samples_final.png")
  assert grid.size[0] > 8 * 16 and grid.size[1] > 10 * 16
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
  assert {"train/tflops_per_device", "train/mfu", "train/images_per_sec"} <= tags, tags
  traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0, traces


def test_init_from_params_checkpoint(tmp_path):
  config = _config(num_train_steps=1)
  model = train.create_model(config)
  params = jax.tree.map(lambda p: p + 1.0, train.init_params(model, 123))
  checkpoint.save_params(str(tmp_path / "init"), params, dict(config.model))
  config.init_from = str(tmp_path / "init")
  config.optimizer.learning_rate = 1e-12
  state = train.train_and_evaluate(config, str(tmp_path / "run"))
  np.testing.assert_allclose(np.asarray(state.params["final_layer"]["linear"]["bias"]),
                             np.asarray(params["final_layer"]["linear"]["bias"]), atol=1e-6)
  # The per-block checkpoint also starts a run whose DiT trunk is scanned.
  scanned = _config(num_train_steps=1, init_from=str(tmp_path / "init"),
                    **{"model.scan_blocks": True, "optimizer.learning_rate": 1e-12})
  state = train.train_and_evaluate(scanned, str(tmp_path / "run_scanned"))
  np.testing.assert_allclose(
      np.asarray(state.params["dit_blocks"]["block"]["attn"]["qkv"]["kernel"][1]),
      np.asarray(params["blocks_1"]["attn"]["qkv"]["kernel"]), atol=1e-6)
  bad = _config(num_train_steps=1, init_from=str(tmp_path / "init"))
  bad.model.hidden_size = 64
  bad.model.num_groups = 4
  with pytest.raises(checkpoint.CheckpointError, match="does not fit config.model"):
    train.train_and_evaluate(bad, str(tmp_path / "run2"))


@pytest.mark.parametrize("field,value,message", [
    ("data.resolution", 18, "config.data.resolution = 18"),
    ("data.name", "imagenet", "config.data.name = 'imagenet'"),
    ("model.num_classes", 1000, "config.model.num_classes = 1000"),
    ("model.num_groups", 3, "config.model.num_groups = 3"),
    ("optimizer.learning_rate", -1.0, "config.optimizer.learning_rate"),
    ("ema_decay", 1.0, "config.ema_decay"),
    ("diffusion.time_distribution", "beta", "config.diffusion.time_distribution"),
    ("model.remat_policy", "all", "config.model.remat_policy = 'all'"),
    ("model.attention_implementation", "cudnn", "cuDNN kernel needs a GPU"),
    ("profile.start_step", -1, "config.profile.start_step = -1"),
    ("profile.num_steps", 0, "config.profile.num_steps = 0"),
])
def test_bad_config_values_are_named(field, value, message):
  with pytest.raises(validation.ConfigError, match=message.replace(".", r"\.")):
    validation.validate_config(_config(**{field: value}))


def test_synthetic_data_fits_either_model_and_its_labels_the_model(tmp_path):
  validation.validate_config(_config(**{"data.name": "synthetic"}))
  with pytest.raises(validation.ConfigError, match=r"config\.data\.synthetic_num_classes = 11"):
    validation.validate_config(_config(**{"data.name": "synthetic",
                                          "data.synthetic_num_classes": 11}))
  from configs import tiny_t2i
  config = tiny_t2i.get_config()
  config.data.name = "synthetic"
  validation.validate_config(config, str(tmp_path))


def test_batch_must_divide_over_devices(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  with pytest.raises(validation.ConfigError, match="config.batch_size = 12.*multiple of 8"):
    validation.validate_config(_config(batch_size=12))


def test_unwritable_workdir_is_reported(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(validation.ConfigError, match="--workdir"):
    validation.validate_config(_config(), str(blocker / "sub"))


def test_main_starts_quietly_and_reports_bad_config_in_one_line(tmp_path):
  # As a user runs it: no JAX_PLATFORMS, libtpu installed. Off TPU hosts libtpu must not
  # be loaded (it prints its metadata lookups, or fails on another process's lock file).
  from pixnerd_jax.runtime import console
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  result = subprocess.run(_main_cmd(tmp_path, "--config.data.resolution=18"), cwd=ROOT,
                          capture_output=True, timeout=300, env=env)
  assert result.returncode == 1
  err = result.stderr.decode()
  assert err.strip().splitlines()[-1].startswith("error: config.data.resolution = 18")
  assert "Traceback" not in err
  if not console.host_has_tpu():
    for noise in ("TPU accelerator type", "INVALID_ARGUMENT", "backend 'tpu'", "libtpu"):
      assert noise not in err, err[-3000:]


def test_training_with_repa_logs_both_losses(tmp_path):
  from pixnerd_jax.models import dinov2
  dino = dinov2.DinoV2(hidden_size=32, num_layers=1, num_heads=2, pos_grid_size=4)
  dino_params = dino.init(jax.random.key(0), jnp.zeros((1, 56, 56, 3)))["params"]
  checkpoint.save_params(str(tmp_path / "dino"), dino_params,
                         dict(dinov2.config_dict(dino), architecture="dinov2"))
  config = _config(num_train_steps=2, checkpoint_every=2, log_every=1,
                   **{"repa.enabled": True, "repa.align_layer": 1,
                      "repa.dino_checkpoint": str(tmp_path / "dino")})
  state = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert set(state.aux_params) == {"proj_0_0", "proj_0_2", "proj_0_4"}
  assert state.aux_params["proj_0_4"]["kernel"].shape == (32, 32)
  # The projector trains: every one of its arrays moved from the run's initialisation, by
  # about two Adam steps of lr 1e-3 (so `initial` is that initialisation).
  from pixnerd_jax.training import repa
  initial = repa.init_projector(repa.Projector(out_size=dino.hidden_size),
                                jax.random.key(config.seed + 1), config.model.hidden_size)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       jax.device_get(state.aux_params), jax.device_get(initial))
  assert min(jax.tree.leaves(moved)) > 1e-6 and max(jax.tree.leaves(moved)) < 1e-2, moved
  _, saved = checkpoint.load_train_state(str(tmp_path / "run"))
  assert "aux_params" in saved and "proj_0_0" in saved["aux_params"]
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path / "run"))
  events.Reload()
  tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
  assert {"train/fm_loss", "train/repa_loss", "train/loss"} <= tags, tags
  _assert_export_reimports_bitwise(tmp_path, saved)


def _assert_export_reimports_bitwise(tmp_path, saved):
  """The trained workdir -> `convert export` (.ckpt and .safetensors) -> `convert
  checkpoint` gives back its EMA and online params and its REPA projector, bit for bit."""
  from pixnerd_jax import convert
  for out in ("exported.ckpt", "exported.safetensors"):
    assert convert.main(["export", f"--checkpoint={tmp_path / 'run'}",
                         f"--out={tmp_path / out}"]) == 0
  for flag, key in (("--ema", "ema_params"), ("--online", "params")):
    back = tmp_path / f"back{flag}"
    assert convert.main(["checkpoint", str(tmp_path / "exported.ckpt"), "--out", str(back),
                         flag]) == 0
    _assert_same_tree(checkpoint.load_params(str(back))[1], saved[key])
    _assert_same_tree(checkpoint.load_params(str(back / "repa_projector"))[1],
                      saved["aux_params"])
  from safetensors.numpy import load_file
  import torch
  from_torch = torch.load(tmp_path / "exported.ckpt", weights_only=True)["state_dict"]
  from_safetensors = load_file(str(tmp_path / "exported.safetensors"))
  assert sorted(from_torch) == sorted(from_safetensors)
  for k, v in from_safetensors.items():
    np.testing.assert_array_equal(from_torch[k].numpy(), v)


def test_repa_without_dino_weights_is_a_config_error():
  config = _config(**{"repa.enabled": True, "repa.align_layer": 1})
  with pytest.raises(validation.ConfigError, match="config.repa.dino_checkpoint"):
    validation.validate_config(config)


def test_fid_is_logged_during_training_when_configured(tmp_path):
  from pixnerd_jax.evaluation import inception
  inception.save_variables(str(tmp_path / "inception.npz"), inception.random_variables(0))
  np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))
  config = _config(num_train_steps=2, checkpoint_every=2, eval_every=1, eval_num_samples=4,
                   **{"fid.inception": str(tmp_path / "inception.npz"),
                      "fid.reference": str(tmp_path / "ref.npz")})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path / "run"))
  events.Reload()
  tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
  assert {"eval/fid_fid", "eval/fid_inception_score"} <= tags, tags


def test_grad_clipping_keeps_the_optimizer_state_and_clips():
  """Clipping on or off gives the same optimizer-state tree (the non-finite-loss advice
  to set grad_clip_norm resumes), and the moments see the clipped gradients."""
  config = _config()
  params = {"w": jnp.ones((3,))}
  plain, _ = train.create_optimizer(config)
  config.optimizer.grad_clip_norm = 0.5
  clipped, _ = train.create_optimizer(config)
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(clipped.init(params))
  grads = {"w": jnp.full((3,), 10.0)}
  _, state = clipped.update(grads, clipped.init(params), params)
  first_moment = jax.tree.leaves(state)[1]  # adam's mu after one step: (1 - b1) * grad
  np.testing.assert_allclose(
      float(jnp.linalg.norm(first_moment)), (1 - config.optimizer.b1) * 0.5, rtol=1e-5)
