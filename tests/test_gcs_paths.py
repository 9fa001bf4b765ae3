"""User paths on object stores (gs://): text encoder folders, checkpoints, sampling --out
and the config checks all go through etils.epath and Orbax, never os.path or open.

tests/fake_gcs.py serves gs://<bucket>/... from a local folder to epath and Orbax only:
code that reached for os.path, open or pathlib would find nothing there.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from configs import tiny
from configs import tiny_t2i
from pixnerd_jax.models import build_model, param_shapes
from pixnerd_jax.models import dinov2
from pixnerd_jax.models import text_encoder
from pixnerd_jax.sampling import class_conditional
from pixnerd_jax.sampling import geneval
from pixnerd_jax.sampling import text_to_image
from pixnerd_jax.sampling.trained_params import load_checkpoint
from pixnerd_jax.training import checkpoint
from pixnerd_jax.training import dry_run
from pixnerd_jax.training import repa
from pixnerd_jax.training import train
from pixnerd_jax.training import validation
from tests import fake_gcs
from tests.test_sample_t2i import PROMPTS, make_tiny_t2i_checkpoint

SAMPLER = dict(sampler="euler", num_steps=2, guidance=2.0)


@pytest.fixture
def bucket(tmp_path):
  """gs://bkt/... is tmp_path/buckets/bkt/... within the test."""
  with fake_gcs.fake_gcs(tmp_path / "buckets") as backend:
    yield lambda path: backend.local(path)


def _random_params(model, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32),
                      param_shapes(model))


def test_a_text_to_image_checkpoint_on_gs_samples_into_gs_as_a_local_one(bucket, tmp_path):
  """The checkpoint, its text encoder folder, the prompt file, GenEval metadata and --out
  all on gs://: the same images as the same run on local paths."""
  config = tiny_t2i.get_config()
  local = make_tiny_t2i_checkpoint(str(tmp_path / "ckpt"), config)
  remote = make_tiny_t2i_checkpoint("gs://bkt/ckpt", config)
  assert not os.path.exists(remote) and os.path.isdir(bucket(remote))
  assert text_to_image.is_text_checkpoint(remote, tiny.get_config())  # read model.json

  folder = os.path.join(remote, text_encoder.STAND_IN_DIR)
  encoder, params = text_encoder.TextEncoder.from_pretrained(folder, "float32", max_length=16)
  _, local_params = text_encoder.TextEncoder.from_pretrained(
      os.path.join(local, text_encoder.STAND_IN_DIR), "float32", max_length=16)
  jax.tree.map(np.testing.assert_array_equal, params, local_params)
  assert encoder.tokenize(PROMPTS[0])["attention_mask"].sum() == len(PROMPTS[0].split())

  prompts_file = "gs://bkt/prompts.txt"
  text_to_image.write_atomic(prompts_file,
                             lambda tmp: text_to_image._write_lines(tmp, PROMPTS[:2]))
  runs = {}
  for name, ckpt, out in (("local", local, str(tmp_path / "out")),
                          ("gs", remote, "gs://bkt/out")):
    text_to_image.run_text(config, ckpt, out, prompts_file=prompts_file if name == "gs" else None,
                           prompts=None if name == "gs" else PROMPTS[:2], samples_per_prompt=1,
                           batch_size=2, **SAMPLER)
    root = bucket(out) if name == "gs" else out
    runs[name] = [np.asarray(Image.open(text_to_image.image_path(root, i, 0))) for i in range(2)]
    assert os.path.exists(os.path.join(root, "grid.png"))
  np.testing.assert_array_equal(runs["gs"], runs["local"])

  metadata = "gs://bkt/evaluation_metadata.jsonl"
  text_to_image.write_atomic(metadata, lambda tmp: text_to_image._write_lines(
      tmp, ['{"tag": "single_object", "prompt": "a blue dog"}']))
  assert [m["prompt"] for m in geneval.read_metadata(metadata)] == ["a blue dog"]


def test_class_checkpoints_on_gs_sample_into_gs_as_local_ones(bucket, tmp_path):
  config = tiny.get_config()
  model = build_model(config.model)
  params = _random_params(model, 0)
  model_config = {k: v for k, v in config.model.items() if k != "preset"}
  checkpoint.save_params(str(tmp_path / "ckpt"), params, model_config)
  checkpoint.save_params("gs://bkt/ckpt", params, model_config)
  # A training workdir too: its EMA params.
  state = train.create_train_state(_random_params(model, 1), train.create_optimizer(config)[0])
  with checkpoint.create_manager("gs://bkt/run", config) as manager:
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  _, ema, source = load_checkpoint("gs://bkt/run", config)
  assert source == "EMA params of step 3 in gs://bkt/run"
  jax.tree.map(np.testing.assert_array_equal, ema, jax.device_get(state.ema_params))

  kw = dict(num_samples=4, batch_size=4, chunk_size=2, **SAMPLER)
  local = class_conditional.run(config, str(tmp_path / "ckpt"), str(tmp_path / "out"), **kw)
  remote = class_conditional.run(config, "gs://bkt/ckpt", "gs://bkt/out", **kw)
  assert remote.startswith("gs://bkt/out/") and not os.path.exists(remote)
  with np.load(local) as a, np.load(bucket(remote)) as b:
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
  assert sorted(os.listdir(bucket("gs://bkt/out"))) == sorted(os.listdir(tmp_path / "out"))
  # A restart with other settings is refused from the gs:// run.json.
  with pytest.raises(ValueError, match="other settings"):
    class_conditional.run(config, "gs://bkt/ckpt", "gs://bkt/out", **dict(kw, seed=1))


def test_config_checks_and_repa_inputs_read_gs_folders(bucket, tmp_path):
  config = tiny_t2i.get_config()
  make_tiny_t2i_checkpoint("gs://bkt/ckpt", config)
  config.text_encoder.stand_in = False
  config.text_encoder.path = "gs://bkt/ckpt/text_encoder"
  validation.validate_config(config, "gs://bkt/workdir")
  config.text_encoder.path = "gs://bkt/absent"
  with pytest.raises(validation.ConfigError, match="text_encoder.path.*no such folder"):
    validation.validate_config(config)

  # REPA: the DINOv2 conversion, and init_from's projector beside its params.
  dino = dinov2.DinoV2(hidden_size=32, num_layers=1, num_heads=2, pos_grid_size=4)
  dino_params = dino.init(jax.random.key(0), np.zeros((1, 56, 56, 3), np.float32))["params"]
  checkpoint.save_params("gs://bkt/dino", dino_params,
                         dict(dinov2.config_dict(dino), architecture="dinov2"))
  config = tiny.get_config()
  config.repa.enabled, config.repa.align_layer = True, 1
  config.repa.dino_checkpoint = "gs://bkt/dino"
  loaded_model, _ = repa.load_dino(config)
  assert loaded_model == dino
  model = build_model(config.model)
  checkpoint.save_params("gs://bkt/init", _random_params(model, 0),
                         {k: v for k, v in config.model.items() if k != "preset"})
  projector = repa.init_projector(repa.Projector(out_size=dino.hidden_size),
                                  jax.random.key(1), config.model.hidden_size)
  checkpoint.save_params(f"gs://bkt/init/{checkpoint.REPA_PROJECTOR_DIR}", projector, {})
  config.init_from = "gs://bkt/init"
  summary = dry_run.train(config, "gs://bkt/run")
  assert summary["start"] == ("params and EMA from gs://bkt/init (they match config.model), "
                              "REPA projector too")
