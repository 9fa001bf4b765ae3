"""Tests of the Grain training pipeline on the digits and folder sources."""

import os
import itertools

import jax
import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sk_datasets

from pixnerd_jax import data
from pixnerd_jax.data import folder
from tests import data_test_utils as utils


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def test_digits_batches_have_the_documented_shapes_and_ranges():
  it = data.create_train_iterator(utils.make_config(resolution=32),
                                  global_batch_size=16, seed=0)
  for batch in _take(it, 3):
    assert batch['image'].shape == (16, 32, 32, 3)
    assert batch['raw_image'].shape == (16, 32, 32, 3)
    assert batch['image'].dtype == batch['raw_image'].dtype == np.float32
    assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
    assert batch['num_skipped'] == 0
    assert 0.0 <= batch['raw_image'].min() and batch['raw_image'].max() <= 1.0
    assert set(batch['label']) <= set(range(10))
    np.testing.assert_allclose(batch['image'], batch['raw_image'] * 2 - 1,
                               atol=1e-6)
    # Grey replicated to RGB; real digits have ink (not blank images).
    np.testing.assert_array_equal(batch['raw_image'][..., 0],
                                  batch['raw_image'][..., 2])
    assert (batch['raw_image'].max(axis=(1, 2, 3)) > 0.5).all()


def test_digits_are_sklearn_digits_upsampled_with_float_bicubic():
  it = data.create_train_iterator(
      utils.make_config(resolution=16, shuffle=False), global_batch_size=8,
      seed=0)
  batch = next(it)
  sk = sk_datasets.load_digits()
  for i in range(8):
    grey = Image.fromarray(sk.images[i].astype(np.float32) / 16, mode='F')
    expected = np.clip(np.asarray(grey.resize((16, 16), Image.BICUBIC)), 0, 1)
    np.testing.assert_allclose(batch['raw_image'][i, ..., 1], expected,
                               atol=1e-6)
    assert batch['label'][i] == sk.target[i]


def test_same_seed_same_batches_other_seed_other_batches():
  config = utils.make_config()
  first = _take(data.create_train_iterator(config, global_batch_size=8,
                                           seed=3), 3)
  again = _take(data.create_train_iterator(config, global_batch_size=8,
                                           seed=3), 3)
  other = _take(data.create_train_iterator(config, global_batch_size=8,
                                           seed=4), 3)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0]['image'], other[0]['image'])


def test_epochs_cover_every_image_once_and_are_reshuffled(tmp_path):
  grey_to_label = utils.make_distinct_folder(tmp_path, 16)
  config = utils.make_config(name='folder', folder=str(tmp_path),
                             resolution=4)
  batches = _take(data.create_train_iterator(config, global_batch_size=8,
                                             seed=0), 4)
  epoch0 = utils.greys_of(batches[0]) + utils.greys_of(batches[1])
  epoch1 = utils.greys_of(batches[2]) + utils.greys_of(batches[3])
  assert sorted(epoch0) == sorted(epoch1) == sorted(grey_to_label)
  assert epoch0 != epoch1
  assert epoch0 != sorted(epoch0)  # Shuffled at all.
  for batch in batches:
    assert [grey_to_label[g] for g in utils.greys_of(batch)] == list(
        batch['label'])


def test_processes_read_disjoint_shards(tmp_path):
  utils.make_distinct_folder(tmp_path, 16)
  config = utils.make_config(name='folder', folder=str(tmp_path),
                             resolution=4)
  seen = []
  for process_index in range(2):
    it = data.create_train_iterator(
        config, global_batch_size=8, seed=0, process_index=process_index,
        process_count=2)
    batches = _take(it, 2)  # 2 x local batch 4 = half of the 16 images.
    assert all(b['image'].shape[0] == 4 for b in batches)
    seen.append(set(utils.greys_of(batches[0]) + utils.greys_of(batches[1])))
  assert len(seen[0]) == len(seen[1]) == 8
  assert not seen[0] & seen[1]


def test_random_flip_mirrors_some_images_deterministically():
  plain = next(data.create_train_iterator(
      utils.make_config(shuffle=False), global_batch_size=64, seed=0))
  config = utils.make_config(shuffle=False, random_flip=True)
  flipped = next(data.create_train_iterator(config, global_batch_size=64,
                                            seed=0))
  again = next(data.create_train_iterator(config, global_batch_size=64,
                                          seed=0))
  np.testing.assert_array_equal(flipped['image'], again['image'])
  same = [np.array_equal(f, p) for f, p in zip(flipped['image'],
                                                plain['image'])]
  mirrored = [np.array_equal(f, p[:, ::-1]) for f, p in zip(
      flipped['image'], plain['image'])]
  assert all(s or m for s, m in zip(same, mirrored))
  assert 10 < sum(m and not s for s, m in zip(same, mirrored)) < 54


def test_folder_classes_sorted_and_bad_extensions_ignored(tmp_path):
  utils.make_mixed_folder(tmp_path)
  class_names, paths, labels = folder.scan_folder(str(tmp_path))
  assert class_names == ['ant', 'zebra']
  assert len(paths) == 10  # notes.txt is not listed.
  assert not any(p.endswith('.txt') for p in paths)
  assert list(labels) == [0] * 4 + [1] * 6


def test_folder_modes_decode_to_rgb(tmp_path):
  utils.make_mixed_folder(tmp_path)
  source = folder.FolderSource(str(tmp_path), 8)
  by_name = {source.path(i).rsplit('/', 1)[-1]: i for i in range(len(source))}
  expected = {'grey.png': (77, 77, 77), 'rgba.png': (1, 2, 3),
              'palette.png': (200, 40, 10)}
  for name, colour in expected.items():
    pixels, label = source.load(by_name[name])
    assert pixels.shape == (8, 8, 3) and label == 0
    np.testing.assert_array_equal(pixels, np.broadcast_to(colour, (8, 8, 3)))


def test_bad_files_are_skipped_counted_and_batches_stay_full(tmp_path):
  utils.make_mixed_folder(tmp_path)
  config = utils.make_config(name='folder', folder=str(tmp_path),
                             resolution=8, shuffle=False)
  source = folder.FolderSource(str(tmp_path), 8)
  is_bad = [source.path(i).endswith(utils.BAD_NAMES)
            for i in range(len(source))]
  assert sum(is_bad) == 3
  it = data.create_train_iterator(config, global_batch_size=4, seed=0)
  consumed = 0
  total_skipped = 0
  for batch in _take(it, 12):
    assert batch['image'].shape == (4, 8, 8, 3)
    assert np.isfinite(batch['image']).all()
    consumed += 4 + int(batch['num_skipped'])
    total_skipped += int(batch['num_skipped'])
  # Unshuffled: stream position p is file p % len(source).
  expected = sum(is_bad[p % len(source)] for p in range(consumed))
  assert total_skipped == expected >= 9  # 48 good reads span >4 epochs.


def test_all_files_bad_stop_after_a_bounded_run_quoting_the_first_causes(tmp_path):
  """150 unreadable files: one DataError after MAX_CONSECUTIVE_SKIPS + 1 reads (not a
  warning per file of the epoch), quoting the first files and their errors."""
  from pixnerd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  for i in range(150):
    (tmp_path / 'a').mkdir(exist_ok=True)
    (tmp_path / 'a' / f'{i:03d}.png').write_bytes(b'junk')
  it = data.create_train_iterator(
      utils.make_config(name='folder', folder=str(tmp_path), shuffle=False),
      global_batch_size=2, seed=0)
  with pytest.raises(data.DataError) as e:
    next(it)
  message = str(e.value)
  assert message.startswith(f'{pipeline.MAX_CONSECUTIVE_SKIPS + 1} consecutive examples '
                            'failed to load'), message
  assert '000.png: UnidentifiedImageError' in message and '002.png' in message
  assert '003.png' not in message and len(message) < 1200


def test_only_unreadable_files_are_skipped_a_bug_propagates():
  from pixnerd_jax.data import batching, loading  # pylint: disable=g-import-not-at-top

  class Source:
    def __init__(self, error):
      self.error = error
    def load(self, index):
      raise self.error
    def describe(self, index):
      return f'file {index}'

  skipped = loading.LoadExample(Source(OSError('truncated')), random_flip=False, seed=0)(0, 7)
  assert isinstance(skipped, batching.Skipped) and 'file 7: OSError: truncated' in skipped.reason
  with pytest.raises(KeyError):
    loading.LoadExample(Source(KeyError('label')), random_flip=False, seed=0)(0, 7)


def test_missing_root_raises_file_not_found(tmp_path):
  missing = tmp_path / 'nope'
  with pytest.raises(FileNotFoundError, match='nope'):
    data.create_train_iterator(
        utils.make_config(name='folder', folder=str(missing)),
        global_batch_size=2, seed=0)


def test_empty_class_folder_raises_naming_it(tmp_path):
  utils.make_distinct_folder(tmp_path, 4)
  (tmp_path / 'empty_class').mkdir()
  (tmp_path / 'empty_class' / 'readme.txt').write_text('no images here')
  with pytest.raises(data.DataError, match='empty_class'):
    data.create_train_iterator(
        utils.make_config(name='folder', folder=str(tmp_path)),
        global_batch_size=2, seed=0)


def test_root_without_class_folders_raises(tmp_path):
  utils.save_image(tmp_path / 'loose.png', Image.new('RGB', (8, 8)))
  with pytest.raises(data.DataError, match='no class sub-folders'):
    data.create_train_iterator(
        utils.make_config(name='folder', folder=str(tmp_path)),
        global_batch_size=2, seed=0)


def test_fewer_examples_than_a_global_batch_raises(tmp_path):
  utils.make_distinct_folder(tmp_path, 6)
  with pytest.raises(ValueError, match='fewer than one global batch'):
    data.create_train_iterator(
        utils.make_config(name='folder', folder=str(tmp_path)),
        global_batch_size=8, seed=0)


def test_batch_must_divide_over_processes():
  with pytest.raises(ValueError, match='multiple'):
    data.create_train_iterator(utils.make_config(), global_batch_size=9,
                               seed=0, process_index=0, process_count=2)


def test_unknown_source_name_raises():
  with pytest.raises(ValueError, match='imagenet_folder'):
    data.create_train_iterator(utils.make_config(name='imagenet_folder'),
                               global_batch_size=8, seed=0)


def test_make_global_batch_shards_the_batch_axis():
  devices = np.array(jax.devices())
  mesh = jax.sharding.Mesh(devices, ('data',))
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data'))
  local = next(data.create_train_iterator(
      utils.make_config(resolution=8), global_batch_size=4 * len(devices),
      seed=0))
  global_batch = data.make_global_batch(local, sharding)
  assert set(global_batch) == {'image', 'raw_image', 'label'}
  for key, value in global_batch.items():
    assert isinstance(value, jax.Array)
    assert value.sharding == sharding
    np.testing.assert_array_equal(np.asarray(value), local[key])


def test_more_classes_than_the_model_is_refused_when_the_source_is_built(tmp_path):
  """4 class folders for num_classes=2 would train into NaN; num_classes=3 would train
  label 3 as the null class. Named at build time: label, class name, counts."""
  for name in ('a', 'b', 'c', 'd'):
    utils.save_image(tmp_path / name / '0.png', Image.new('RGB', (8, 8)))
  config = utils.make_config(name='folder', folder=str(tmp_path))
  for num_classes, label in ((2, 2), (3, 3)):
    with pytest.raises(data.DataError, match=(
        rf"has 4 classes \(labels 0..3\), config.model.num_classes={num_classes}: label "
        rf"{label} \('{'abcd'[label]}'\) and above .* --config.model.num_classes=4")):
      data.create_train_iterator(config, global_batch_size=2, seed=0,
                                 num_classes=num_classes)
  next(data.create_train_iterator(config, global_batch_size=2, seed=0, num_classes=4))


def test_file_names_that_are_not_utf8_are_read(tmp_path):
  """A Latin-1 'café.png' (byte 0xe9) in a folder, a caption folder and a tar shard
  name: read like any other file instead of aborting the run."""
  from pixnerd_jax.data import caption_folder, folder, tar_index  # pylint: disable=g-import-not-at-top
  latin1 = os.fsdecode(b'caf\xe9')
  (tmp_path / 'images' / 'a').mkdir(parents=True)
  (tmp_path / 'images' / 'a' / f'{latin1}.png').write_bytes(utils.grey_png(77))
  source = folder.FolderSource(str(tmp_path / 'images'), 8)
  pixels, label = source.load(0)
  assert label == 0 and pixels[0, 0, 0] == 77
  (tmp_path / 'captioned').mkdir()
  (tmp_path / 'captioned' / f'{latin1}.png').write_bytes(utils.grey_png(77))
  (tmp_path / 'captioned' / f'{latin1}.txt').write_text('grey 77')
  pixels, caption, _ = caption_folder.CaptionFolderSource(
      str(tmp_path / 'captioned'), 8).load(0, np.random.default_rng(0))
  assert caption == 'grey 77' and pixels[0, 0, 0] == 77
  assert len(tar_index.index_paths(str(tmp_path / f'{latin1}.tar'))) == 2


def test_hosts_that_see_different_data_all_stop(tmp_path, monkeypatch):
  """A shard unreadable on one host changes that host's source length: every process
  gets the same DataError (simulated: the other host saw one example fewer)."""
  from pixnerd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  utils.make_distinct_folder(tmp_path, 4)
  source = pipeline.make_source(utils.make_config(name='folder', folder=str(tmp_path)))
  config = utils.make_config(name='folder', folder=str(tmp_path))
  monkeypatch.setattr(pipeline, '_gather_from_processes',
                      lambda seen: np.stack([seen, seen]))
  pipeline.check_hosts_agree(source, config)
  monkeypatch.setattr(pipeline, '_gather_from_processes',
                      lambda seen: np.stack([seen, seen - [1, 0]]))
  with pytest.raises(data.DataError, match=r"process 0: 4 examples, process 1: 3 "
                     r"examples.*Make the same data readable on every host"):
    pipeline.check_hosts_agree(source, config)
