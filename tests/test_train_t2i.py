"""Text-to-image training through the same trainer: captions, the frozen text encoder in
the step, caption dropout, exact resume, config errors."""

import functools
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny_t2i
from pixnerd_jax import data
from pixnerd_jax.training import checkpoint
from pixnerd_jax.models import text_encoder
from pixnerd_jax.embedded import stand_in_text_encoder
from pixnerd_jax.training import train
from pixnerd_jax.training import validation
from test_train import (_assert_readable_console, _assert_same_tree,
                        _run_until_checkpoint_then_signal)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  config = tiny_t2i.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _stand_in(tmp_path, config):
  folder = str(tmp_path / "encoder")
  stand_in_text_encoder.create_stand_in(folder, data.caption_vocabulary(config.data),
                               hidden_size=config.model.txt_embed_dim, num_layers=1,
                               max_length=config.text_encoder.max_length, seed=0)
  return text_encoder.load_for_run(config.text_encoder.to_dict() | {"path": folder},
                                   config.model.txt_embed_dim)


def test_caption_dropout_gives_exactly_the_empty_prompt_features(tmp_path):
  config = _config()
  encoder, params = _stand_in(tmp_path, config)
  batch = encoder.tokenize(["a handwritten seven", "the digit 3", "number one"])
  empty = encoder.tokenize([""])
  kept = train.text_condition(jax.random.key(0), batch, params, text_encoder=encoder,
                              empty_prompt=empty, dropout=0.0)
  dropped = train.text_condition(jax.random.key(0), batch, params, text_encoder=encoder,
                                 empty_prompt=empty, dropout=0.9999)
  np.testing.assert_allclose(kept, encoder.encode(params, **batch), atol=1e-6)
  np.testing.assert_allclose(dropped, np.broadcast_to(encoder.unconditional(params),
                                                      dropped.shape), atol=1e-6)
  half = train.text_condition(jax.random.key(3), dict(
      input_ids=np.repeat(batch["input_ids"][:1], 400, 0),
      attention_mask=np.repeat(batch["attention_mask"][:1], 400, 0)), params,
                              text_encoder=encoder, empty_prompt=empty, dropout=0.1)
  is_dropped = np.abs(np.asarray(half) - np.asarray(kept[:1])).max(axis=(1, 2)) > 1e-6
  assert 20 <= is_dropped.sum() <= 60  # ~10% of 400


def test_loss_goes_down_on_captioned_digits(tmp_path):
  config = _config()
  encoder, text_params = _stand_in(tmp_path, config)
  model = train.create_model(config)
  tx, schedule = train.create_optimizer(config)
  state = train.create_train_state(train.init_params(model, 0), tx)
  step = jax.jit(functools.partial(
      train.train_step, model=model, tx=tx, schedule=schedule, config=config,
      text_encoder=encoder, empty_prompt=encoder.tokenize([""])))
  it = data.create_train_iterator(config.data, global_batch_size=32, seed=0, tokenizer=encoder)
  losses = []
  for _ in range(60):
    batch = next(it)
    assert batch["input_ids"].shape == (32, config.text_encoder.max_length)
    state, metrics = step(state, {k: batch[k] for k in ("image", "input_ids",
                                                         "attention_mask")},
                          {"text": text_params})
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:5]), losses
  # The captions reach the prediction: on a fresh batch, the same noisy images with the
  # captions rolled onto other images predict differently (a model that ignored its text
  # would give the same velocities). After 60 steps the loss hardly tells the two apart
  # yet (1.3714 against 1.3722 at t = 0.2), so the prediction itself is compared, at a
  # noise level where the caption is most of what the model knows.
  change = _caption_change(model, state.params, encoder, text_params, next(it), t=0.2)
  assert change > 0.01, change  # 0.039 measured; exactly 0 without the text


def _caption_change(model, params, encoder, text_params, batch, t: float) -> float:
  """mean |v(true captions) - v(captions rolled by one image)| / mean |v(true captions)|
  at time t, on the same noisy images."""
  from pixnerd_jax.diffusion import objective  # pylint: disable=import-outside-toplevel
  images = jax.numpy.asarray(batch["image"])
  times = jax.numpy.full((images.shape[0],), t)
  x_t, _ = objective.interpolate(images, jax.random.normal(jax.random.key(5), images.shape),
                                 times)
  text = encoder.encode(text_params, batch["input_ids"], batch["attention_mask"])
  true = model.apply({"params": params}, x_t, times, text)
  rolled = model.apply({"params": params}, x_t, times, jax.numpy.roll(text, 1, axis=0))
  return float(jax.numpy.abs(true - rolled).mean() / jax.numpy.abs(true).mean())


def _main_cmd(workdir, *overrides):
  return [sys.executable, "-m", "pixnerd_jax.main", "--config=configs/tiny_t2i.py",
          f"--workdir={workdir}", *overrides]


def test_killed_t2i_run_resumes_bitwise_identical(tmp_path):
  overrides = ["--config.num_train_steps=30", "--config.checkpoint_every=5",
               "--config.log_every=5"]
  reference = tmp_path / "reference"
  train.train_and_evaluate(_config(num_train_steps=30, checkpoint_every=5, log_every=5),
                           str(reference))
  assert (reference / text_encoder.STAND_IN_DIR / "config.json").is_file()
  interrupted = tmp_path / "interrupted"
  code, _ = _run_until_checkpoint_then_signal(_main_cmd(interrupted, *overrides),
                                              interrupted, signal.SIGKILL)
  assert code == -signal.SIGKILL
  stopped_at, _ = checkpoint.load_train_state(str(interrupted))
  assert stopped_at < 30
  resumed = subprocess.run(_main_cmd(interrupted, *overrides), cwd=ROOT, capture_output=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
  # The t2i job's console reads like the class-conditional one (tests/test_train.py).
  _assert_readable_console(resumed.stdout.decode() + resumed.stderr.decode(),
                           first_step=stopped_at + 5 - stopped_at % 5)
  step_a, state_a = checkpoint.load_train_state(str(reference))
  step_b, state_b = checkpoint.load_train_state(str(interrupted))
  assert step_a == step_b == 30
  for key in ("params", "ema_params", "opt_state"):
    _assert_same_tree(state_a[key], state_b[key])


def test_final_grid_and_held_out_evaluation_are_written(tmp_path):
  config = _config(num_train_steps=2, checkpoint_every=2, sample_every=2,
                   final_eval_num_samples=20, grid_classes=3)
  train.train_and_evaluate(config, str(tmp_path))
  from PIL import Image
  grid = Image.open(tmp_path / "samples_final.png")
  assert grid.size[0] >= 8 * 16 and grid.size[1] >= 3 * 16
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
  assert "final/digits_accuracy" in tags, tags


@pytest.mark.parametrize("config_fn,field,value,message", [
    ("t2i", "data.name", "digits", "has class labels, but model.conditioning='text'"),
    ("c2i", "data.name", "digits_captions", "has captions, but model.conditioning='class'"),
    ("t2i", "text_encoder.stand_in", False, "a text-to-image model needs a text encoder"),
    ("t2i", "text_encoder.path", "/nonexistent/qwen3", "no such folder"),
    ("t2i", "text_encoder.max_length", 12, "as many tokens as model.txt_max_length=16"),
    ("t2i", "text_encoder.stand_in_init_std", 0.0, "must be positive"),
])
def test_t2i_config_errors_are_named(config_fn, field, value, message):
  if config_fn == "t2i":
    config = _config(**{field: value})
  else:
    from configs import tiny
    config = tiny.get_config()
    config.data.name = value
  with pytest.raises(validation.ConfigError, match=message.replace(".", r"\.")):
    validation.validate_config(config)


def test_stand_in_weights_are_drawn_with_the_configured_std(tmp_path):
  from safetensors.numpy import load_file
  stds = {}
  for std in (0.02, 0.005):
    folder = tmp_path / str(std)
    stand_in_text_encoder.create_stand_in(str(folder), ["a", "seven", "7"], hidden_size=64,
                                 num_layers=1, max_length=16, seed=0, init_std=std)
    weights = load_file(str(folder / "model.safetensors"))
    kernel = next(v for k, v in weights.items() if k.endswith("mlp.up_proj.weight"))
    stds[std] = float(np.std(kernel))
  assert abs(stds[0.02] - 0.02) < 0.002 and abs(stds[0.005] - 0.005) < 0.0005, stds


def test_stand_in_is_written_atomically_and_a_half_written_one_is_replaced(
    tmp_path, monkeypatch):
  """A run killed while writing its stand-in leaves no <workdir>/text_encoder; a half
  folder left by a killed older version (config.json only) is rewritten, not trusted."""
  config = _config()
  folder = tmp_path / text_encoder.STAND_IN_DIR
  real_create = stand_in_text_encoder.create_stand_in

  def killed_after_config(path, *args, **kwargs):
    pathlib.Path(path).mkdir(parents=True)
    (pathlib.Path(path) / text_encoder.CONFIG_FILE).write_text("{}")
    raise KeyboardInterrupt  # the kill, between config.json and tokenizer.json

  monkeypatch.setattr(stand_in_text_encoder, "create_stand_in", killed_after_config)
  with pytest.raises(KeyboardInterrupt):
    stand_in_text_encoder.write_for_run(config, str(tmp_path))
  assert not folder.exists()

  folder.mkdir()
  (folder / text_encoder.CONFIG_FILE).write_text("{}")
  monkeypatch.setattr(stand_in_text_encoder, "create_stand_in", real_create)
  stand_in_text_encoder.write_for_run(config, str(tmp_path))
  encoder, _ = text_encoder.load_for_run(config.text_encoder, config.model.txt_embed_dim,
                                         str(tmp_path))
  assert encoder.tokenize(["a seven"])["input_ids"].shape[0] == 1
  assert not (tmp_path / f"{text_encoder.STAND_IN_DIR}.partial").exists()
