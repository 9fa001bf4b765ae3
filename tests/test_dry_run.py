"""--dry_run: what it checks, what it reports, and that it trains and writes nothing."""

import json
import os

import jax
import numpy as np
import optax
import pytest

from configs import tiny
from pixnerd_jax import data, models
from pixnerd_jax.sampling import class_conditional
from pixnerd_jax.training import checkpoint
from pixnerd_jax.training import dry_run
from pixnerd_jax.training import train
from pixnerd_jax.training import validation
from tests import data_test_utils


def _random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32),
                      models.param_shapes(train.create_model(config)))


def _workdir_with_checkpoint(config, path, step=3, tx=None):
  """A training workdir holding one checkpoint of `config` (random params, no training);
  its optimizer state from `tx` when given."""
  tx = tx or train.create_optimizer(config)[0]
  state = train.create_train_state(_random_params(config), tx)
  iterator = data.create_train_iterator(config.data, global_batch_size=config.batch_size,
                                        seed=config.seed)
  manager = checkpoint.create_manager(str(path), config)
  checkpoint.save(manager, step, state.replace(step=state.step + step), iterator)
  manager.wait_until_finished()
  manager.close()


def test_reports_the_model_batch_and_memory_and_writes_nothing(tmp_path, capsys):
  config = tiny.get_config()
  summary = dry_run.train(config, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert summary["num_params"] == models.count_params(_random_params(config)) == 57_675
  assert summary["start"] == "fresh initialisation from seed 0"
  assert summary["batch_shapes"] == {"image": (8, 16, 16, 3), "label": (8,)}
  assert summary["metrics"] == ["fm_loss", "grad_norm", "learning_rate", "loss"]
  # float32 params, EMA and two Adam moments, on one device.
  assert summary["state_bytes_per_device"] >= 4 * 4 * summary["num_params"]
  assert summary["memory"] is None
  for key in ("config", "devices", "model", "data", "train step", "per device", "dry run"):
    assert f"\n{key:<15} " in "\n" + out
  assert "57,675 params" in out and "dry run         OK" in out
  assert os.listdir(tmp_path / "run") == []  # the workdir is checked, not written


def test_compile_adds_xla_memory_analysis(tmp_path, capsys):
  summary = dry_run.train(tiny.get_config(), str(tmp_path), compile_step=True)
  assert summary["memory"]["total"] > summary["memory"]["temporaries"] > 0
  assert "XLA memory      per device: arguments" in capsys.readouterr().out


def test_finds_the_checkpoint_to_resume_and_checks_it_fits(tmp_path):
  config = tiny.get_config()
  _workdir_with_checkpoint(config, tmp_path)
  summary = dry_run.train(config, str(tmp_path))
  assert summary["start"] == ("resumes from the checkpoint of step 3 (params and optimizer "
                              "state match the config)")
  config.model.hidden_size, config.model.num_groups = 64, 4
  with pytest.raises(checkpoint.CheckpointError, match="does not fit config.model"):
    dry_run.train(config, str(tmp_path))


def test_checks_the_optimizer_state_of_the_checkpoint_it_would_resume(tmp_path):
  """An optimizer state of another structure (here optax.chain's, as clipping used to
  write) is refused by the dry run as the run's restore would refuse it."""
  config = tiny.get_config()
  other_tx = optax.chain(optax.clip_by_global_norm(1.0), train.create_optimizer(config)[0])
  _workdir_with_checkpoint(config, tmp_path, tx=other_tx)
  with pytest.raises(checkpoint.CheckpointError, match="written with another config"):
    dry_run.train(config, str(tmp_path))


def test_loads_init_from_and_checks_it_fits(tmp_path):
  config = tiny.get_config()
  checkpoint.save_params(str(tmp_path / "init"), _random_params(config), dict(config.model))
  config.init_from = str(tmp_path / "init")
  summary = dry_run.train(config, str(tmp_path / "run"))
  assert summary["start"].startswith(f"params and EMA from {tmp_path / 'init'}")
  config.model.hidden_size_x = 16
  with pytest.raises(checkpoint.CheckpointError, match="does not fit config.model"):
    dry_run.train(config, str(tmp_path / "run"))


def test_finds_what_the_run_would_trip_over(tmp_path, capsys):
  config = tiny.get_config()
  config.data.resolution = 18  # not a multiple of the patch size
  assert dry_run.report_errors(dry_run.train, config, str(tmp_path)) == 1
  assert "error: config.data.resolution = 18" in capsys.readouterr().err
  # A folder with 2 classes for a 1-class model: refused where the source is built.
  data_test_utils.make_distinct_folder(tmp_path / "folder", num_images=16)
  config = tiny.get_config()
  config.data.name, config.data.folder = "folder", str(tmp_path / "folder")
  config.model.num_classes = 1
  with pytest.raises(data.DataError, match=r"has 2 classes \(labels 0..1\), "
                     r"config.model.num_classes=1: label 1 \('odd'\)"):
    dry_run.train(config, str(tmp_path / "run"))
  config.data.folder = str(tmp_path / "missing")
  assert dry_run.report_errors(dry_run.train, config, str(tmp_path / "run")) == 1
  assert "missing' does not exist" in capsys.readouterr().err


def test_sample_dry_run_plans_and_traces_without_writing(tmp_path, capsys):
  config = tiny.get_config()
  checkpoint.save_params(str(tmp_path / "ckpt"), _random_params(config),
                         {k: v for k, v in config.model.items() if k != "preset"})
  out = tmp_path / "samples"
  plan = class_conditional.dry_run_report(config, str(tmp_path / "ckpt"), str(out), num_samples=25,
                               batch_size=4, chunk_size=10, sampler="heun", num_steps=3)
  assert plan["chunks"] == 3 and plan["done"] == 0 and plan["per_call"] == 4
  assert plan["out_shape"] == (4, 16, 16, 3)
  assert plan["settings"]["sampler"] == "heun" and plan["settings"]["num_steps"] == 3
  assert "dry run         OK" in capsys.readouterr().out
  assert not out.exists()
  # An --out holding samples made with other settings is refused, as the real run does.
  os.makedirs(out)
  (out / class_conditional.MANIFEST).write_text(json.dumps({"num_samples": 99}))
  with pytest.raises(dry_run.DryRunError, match="holds samples made with other settings"):
    class_conditional.dry_run_report(config, str(tmp_path / "ckpt"), str(out), num_samples=25)


def test_validation_still_runs_first():
  config = tiny.get_config()
  config.optimizer.learning_rate = -1.0
  with pytest.raises(validation.ConfigError, match="config.optimizer.learning_rate"):
    dry_run.train(config, "/tmp/unused_dry_run_workdir")


def test_sampling_reads_only_the_params_it_samples_with(tmp_path, monkeypatch):
  """A workdir's EMA (or online) params are read alone: not the optimizer's moments."""
  from pixnerd_jax.sampling import trained_params  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  _workdir_with_checkpoint(config, tmp_path)
  step, full = checkpoint.load_train_state(str(tmp_path))
  step_ema, ema_only = checkpoint.load_train_state(str(tmp_path), only=("ema_params",))
  assert step == step_ema == 3 and set(ema_only) == {"ema_params"}
  for a, b in zip(jax.tree.leaves(full["ema_params"]), jax.tree.leaves(ema_only["ema_params"]),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  read = []
  real = checkpoint.load_train_state
  monkeypatch.setattr(checkpoint, "load_train_state",
                      lambda *a, **k: read.append(k.get("only")) or real(*a, **k))
  trained_params.load_checkpoint(str(tmp_path), config)
  trained_params.load_checkpoint(str(tmp_path), config, online=True)
  assert read == [("ema_params",), ("params",)]
