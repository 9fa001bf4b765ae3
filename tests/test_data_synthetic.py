"""data.name = 'synthetic': batches drawn on the devices, checkpointable."""

import grain
import jax
import ml_collections
import numpy as np
import pytest
from etils import epath

from pixnerd_jax import data


def _config(**overrides):
  fields = dict(name="synthetic", resolution=8, synthetic_num_classes=3)
  return ml_collections.ConfigDict(dict(fields, **overrides))


class _Tokenizer:
  def tokenize(self, texts):
    n = len(texts)
    return {"input_ids": np.tile(np.arange(5, dtype=np.int32), (n, 1)),
            "attention_mask": np.ones((n, 5), np.int32)}


def test_labelled_batches_are_global_device_arrays_in_range():
  it = data.create_train_iterator(_config(), global_batch_size=4, seed=1)
  batch = next(it)
  assert batch.pop(data.NUM_SKIPPED_KEY) == 0
  assert set(batch) == {"image", "raw_image", "label"}
  assert all(isinstance(v, jax.Array) for v in batch.values())
  assert batch["image"].shape == (4, 8, 8, 3) and batch["label"].shape == (4,)
  image = np.asarray(batch["image"])
  assert image.min() >= -1 and image.max() <= 1 and image.std() > 0.3
  np.testing.assert_allclose(np.asarray(batch["raw_image"]), (image + 1) / 2)
  labels = np.asarray(next(it)["label"])
  assert labels.min() >= 0 and labels.max() < 3
  # make_global_batch passes them on (resharding only if the sharding differs).
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  out = data.make_global_batch(batch, sharding)
  np.testing.assert_array_equal(np.asarray(out["image"]), image)
  assert out["image"].sharding == sharding


def test_captioned_batches_hold_the_caption_tokens():
  it = data.create_train_iterator(_config(), global_batch_size=2, seed=0,
                                  tokenizer=_Tokenizer())
  batch = next(it)
  assert "label" not in batch
  np.testing.assert_array_equal(np.asarray(batch["input_ids"]), [list(range(5))] * 2)
  assert np.asarray(batch["attention_mask"]).shape == (2, 5)


def test_resumes_from_a_checkpoint_with_the_next_batch(tmp_path):
  it = data.create_train_iterator(_config(), global_batch_size=2, seed=3)
  next(it)
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), args=data.iterator_checkpoint_args(it))
  expected = [np.asarray(next(it)["image"]) for _ in range(2)]
  fresh = data.create_train_iterator(_config(), global_batch_size=2, seed=3)
  handler.restore(epath.Path(tmp_path), args=data.iterator_checkpoint_args(fresh, restore=True))
  for image in expected:
    np.testing.assert_array_equal(np.asarray(next(fresh)["image"]), image)
  other_seed = data.create_train_iterator(_config(), global_batch_size=2, seed=4)
  assert not np.array_equal(np.asarray(next(other_seed)["image"]), expected[0])


def test_bad_class_count_is_named():
  with pytest.raises(ValueError, match="synthetic_num_classes"):
    data.create_train_iterator(_config(synthetic_num_classes=0), global_batch_size=2)
