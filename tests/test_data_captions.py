"""Captioned (text-to-image) pipelines: caption folder, tar shards, digits captions."""

import io
import itertools
import json
import os
import pathlib

import jax
import numpy as np
from PIL import Image
import pytest

from pixnerd_jax import data
from pixnerd_jax.embedded import stand_in_text_encoder
from pixnerd_jax.data import caption_folder
from pixnerd_jax.data import caption_tar
from pixnerd_jax.data import digits_captions
from pixnerd_jax.data import loading
from pixnerd_jax.data import tar_index
from tests import data_test_utils as utils

GREY_TEXTS = [utils.caption_of_grey(g) for g in range(256)]


@pytest.fixture(scope='module')
def grey_tokenizer():
  return utils.make_tokenizer(GREY_TEXTS, max_length=4)


@pytest.fixture(scope='module')
def digits_tokenizer():
  return utils.make_tokenizer(digits_captions.all_captions(), max_length=12)


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _caption_greys(tokenizer, batch) -> list[int]:
  """The grey named by each row's caption ('grey <g>': token 1 is <g>)."""
  return [int(tokenizer.tokenizer.id_to_token(int(row[1])))
          for row in batch['input_ids']]


def _digit_texts(tokenizer, batch) -> list[str]:
  """Each row's caption, looked up among all the digit captions' token ids."""
  texts = digits_captions.all_captions()
  ids = tokenizer.tokenize(texts)['input_ids']
  by_ids = {tuple(row): text for row, text in zip(ids.tolist(), texts)}
  assert len(by_ids) == len(texts)  # No truncation collisions.
  return [by_ids[tuple(row)] for row in batch['input_ids'].tolist()]


def _assert_batches_equal(expected, actual):
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ----------------------------------------------------------------------------- caption folder


def test_caption_folder_pairs_images_with_captions_and_skips_bad_ones(
    tmp_path, grey_tokenizer):
  good = utils.make_caption_folder(tmp_path, num_good=8)
  paths, has_caption = caption_folder.scan_caption_folder(str(tmp_path))
  assert len(paths) == 11 and not any(p.endswith(('.txt', '.md')) for p in paths)
  assert has_caption.sum() == 10  # Only no_caption.png lacks its .txt.
  config = utils.make_config(name='caption_folder', folder=str(tmp_path),
                             resolution=8, shuffle=False)
  it = data.create_train_iterator(config, global_batch_size=4, seed=0,
                                  tokenizer=grey_tokenizer)
  batches = _take(it, 4)  # 16 good reads: two epochs of 8.
  greys = []
  for batch in batches:
    assert set(batch) == {'image', 'raw_image', 'input_ids', 'attention_mask',
                          'num_skipped'}
    assert batch['image'].shape == (4, 8, 8, 3)
    assert batch['input_ids'].shape == batch['attention_mask'].shape == (4, 4)
    assert batch['input_ids'].dtype == batch['attention_mask'].dtype == np.int32
    np.testing.assert_array_equal(batch['attention_mask'],
                                  [[1, 1, 0, 0]] * 4)
    # Each image comes with its own caption (its grey, named in words).
    assert utils.greys_of(batch) == _caption_greys(grey_tokenizer, batch)
    greys += utils.greys_of(batch)
  # The three bad examples sort first ('bad/'): skipped once per epoch.
  assert [int(b['num_skipped']) for b in batches] == [3, 0, 3, 0]
  expected = [good[p] for p in sorted(good)]
  assert greys == expected * 2


def test_caption_folder_uses_resize_and_center_crop_not_adm(tmp_path,
                                                            grey_tokenizer):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (37, 44, 3), np.uint8)
  (tmp_path / 'x.png').write_bytes(_png(pixels))
  (tmp_path / 'x.txt').write_text('grey 7')
  source = caption_folder.CaptionFolderSource(str(tmp_path), 16)
  out, caption, label = source.load(0, np.random.default_rng(0))
  assert caption == 'grey 7' and label is None
  # torchvision Resize(16): short side 37 -> 16, long side int(16 * 44 / 37)
  # = 19; CenterCrop(16): left = round(3 / 2) = 2 (the ADM crop uses 1).
  expected = np.asarray(Image.fromarray(pixels).resize(
      (19, 16), Image.BILINEAR))[:, 2:18]
  np.testing.assert_array_equal(out, expected)


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  return buffer.getvalue()


def test_caption_folder_missing_or_empty_raises_naming_it(tmp_path,
                                                          grey_tokenizer):
  for folder, error, match in [
      (tmp_path / 'nope', FileNotFoundError, 'nope'),
      (tmp_path, ValueError, 'no image files')]:
    config = utils.make_config(name='caption_folder', folder=str(folder))
    with pytest.raises(error, match=match):
      data.create_train_iterator(config, global_batch_size=2, seed=0,
                                 tokenizer=grey_tokenizer)
  with pytest.raises(ValueError, match='config.data.folder'):
    data.create_train_iterator(utils.make_config(name='caption_folder'),
                               global_batch_size=2, seed=0,
                               tokenizer=grey_tokenizer)


# ----------------------------------------------------------------------------- tar shards


def _shard0_members():
  png = utils.grey_png
  return [
      ('k00.png', png(10)), ('k00.txt', b'grey 10\n'),
      ('k01.png', png(30)),
      ('k01.json', json.dumps({'caption': 'grey 30', 'url': 'x'}).encode()),
      ('k02.txt', b'grey 50'), ('k02.png', png(50)),  # Caption first.
      ('k03.png', png(70)), ('k03.json', b'{"text": "grey 70"}'),
      ('k04.png', png(90)),                                  # No caption.
      ('k05.png', png(110)[:40]), ('k05.txt', b'grey 110'),  # Truncated PNG.
      ('k06.txt', b'grey 250'),                              # No image.
      ('sub/k07.png', png(130)), ('sub/k07.json', b'{"prompt": "grey 130"}'),
      ('k08.png', png(140)), ('k08.json', b'{"caption": '),  # Bad JSON.
      ('k09.png', png(150)), ('k09.cls', b'3'), ('k09.txt', b'grey 150'),
      ('._k09.png', b'macOS metadata'),
  ]


SHARD0_GOOD = [10, 30, 50, 70, 130, 150]
SHARD0_BAD_KEYS = ('k04.png', 'k05.png', 'k08.png')


def _write_shards(root: pathlib.Path) -> str:
  utils.write_tar(root / 'shard-000.tar', _shard0_members())
  utils.write_tar(root / 'shard-001.tar', [
      member for grey in (170, 190, 210, 230)
      for member in ((f'k{grey}.webp', _webp(grey)),
                     (f'k{grey}.txt', f'grey {grey}'.encode()))])
  return str(root / 'shard-*.tar')


def _good_members(greys):
  return [member for grey in greys for member in (
      (f'k{grey:03d}.png', utils.grey_png(grey)),
      (f'k{grey:03d}.txt', utils.caption_of_grey(grey).encode()))]


def _webp(grey: int) -> bytes:
  buffer = io.BytesIO()
  Image.new('RGB', (12, 9), (grey,) * 3).save(buffer, format='WEBP',
                                              lossless=True)
  return buffer.getvalue()


def _tar_config(pattern, **overrides):
  return utils.make_config(name='caption_tar', tar_shards=pattern,
                           resolution=8, **overrides)


def test_caption_tar_reads_txt_and_json_captions_and_skips_damaged_members(
    tmp_path, grey_tokenizer):
  pattern = _write_shards(tmp_path)
  source = data.make_source(_tar_config(pattern))
  assert len(source) == 13  # Keys with an image member.
  names = [source.describe(i) for i in range(len(source))]
  assert names[4].endswith('shard-000.tar[k04.png]')
  assert names[6].endswith('[sub/k07.png]')
  it = data.create_train_iterator(_tar_config(pattern, shuffle=False),
                                  global_batch_size=5, seed=0,
                                  tokenizer=grey_tokenizer)
  batches = _take(it, 4)  # Two epochs of 10 good examples.
  greys = []
  for batch in batches:
    assert utils.greys_of(batch) == _caption_greys(grey_tokenizer, batch)
    greys += utils.greys_of(batch)
  assert greys == (SHARD0_GOOD + [170, 190, 210, 230]) * 2
  assert sum(int(b['num_skipped']) for b in batches) == 2 * len(SHARD0_BAD_KEYS)


def test_caption_tar_json_field_is_configurable(tmp_path, grey_tokenizer):
  utils.write_tar(tmp_path / 'a.tar', [
      ('k.png', utils.grey_png(60)),
      ('k.json', b'{"caption": "grey 1", "alt": "grey 60"}')])
  for field, expected in (('alt', 'grey 60'), ('caption', 'grey 1'),
                          ('missing', 'grey 1')):
    source = data.make_source(_tar_config(str(tmp_path / 'a.tar'),
                                          caption_field=field))
    assert source.load(0, np.random.default_rng(0))[1] == expected


def test_tar_index_skips_a_damaged_header_and_a_cut_short_shard(tmp_path):
  rng = np.random.default_rng(0)
  members = [m for i in range(4) for m in (
      (f'k{i}.txt', f'grey {i}'.encode()),
      (f'k{i}.png', _png(rng.integers(0, 256, (24, 24, 3), np.uint8))))]
  shard = tmp_path / 'damaged.tar'
  utils.write_tar(shard, members)
  import tarfile  # pylint: disable=g-import-not-at-top
  with tarfile.open(shard) as tar:
    offsets = {info.name: info.offset for info in tar}
  raw = bytearray(shard.read_bytes())
  raw[offsets['k1.png']:offsets['k1.png'] + 512] = b'\x07' * 512
  # Cut inside k3.png's data: listed, but reading it fails.
  shard.write_bytes(bytes(raw[:offsets['k3.png'] + 600]))
  index = tar_index.build_index(str(shard))
  keys = [e[0] for e in index['examples']]
  assert keys == ['k0', 'k2', 'k3']  # k1.png's header is gone; k2 recovered.
  assert index['ignored'] == {'caption_without_image': 1}  # k1.txt
  assert 'unexpected end of data' in index['error']
  source = caption_tar.CaptionTarSource(str(shard), 8)
  rng = np.random.default_rng(0)
  assert source.load(1, rng)[1] == 'grey 2'
  with pytest.raises(EOFError, match='cut short'):
    source.load(2, rng)


def test_tar_index_is_cached_beside_the_shard_and_rebuilt_on_change(
    tmp_path, monkeypatch):
  shard = tmp_path / 'one.tar'
  utils.write_tar(shard, [('a.png', utils.grey_png(10)), ('a.txt', b'x')])
  assert len(caption_tar.CaptionTarSource(str(shard), 8)) == 1
  cached = pathlib.Path(str(shard) + tar_index.INDEX_SUFFIX)
  index = json.loads(cached.read_text())
  assert index['shard_size'] == shard.stat().st_size
  assert index['examples'][0][0] == 'a'

  calls = []
  real_build = tar_index.build_index
  monkeypatch.setattr(tar_index, 'build_index',
                      lambda path: calls.append(path) or real_build(path))
  assert len(caption_tar.CaptionTarSource(str(shard), 8)) == 1
  assert not calls  # Read from the cache.

  utils.write_tar(shard, [('a.png', utils.grey_png(10)), ('a.txt', b'x'),
                          ('b.png', utils.grey_png(20)), ('b.txt', b'y')])
  assert len(caption_tar.CaptionTarSource(str(shard), 8)) == 2
  assert calls == [str(shard)]
  # Same size, new mtime: rebuilt as well.
  os.utime(shard, ns=(1, 1))
  caption_tar.CaptionTarSource(str(shard), 8)
  assert len(calls) == 2
  # A damaged index file is rebuilt, not fatal.
  cached.write_text('{"format": ')
  caption_tar.CaptionTarSource(str(shard), 8)
  assert len(calls) == 3 and json.loads(cached.read_text())['examples']


def test_tar_index_goes_to_the_cache_dir_when_the_shard_dir_is_read_only(
    tmp_path, monkeypatch):
  shard = tmp_path / 'shards' / 'one.tar'
  utils.write_tar(shard, [('a.png', utils.grey_png(10)), ('a.txt', b'x')])
  cache_dir = tmp_path / 'cache'
  real_write = tar_index._write_atomic  # pylint: disable=protected-access

  def write(path, index):
    # Tests run as root, for whom chmod does not stop writes: refuse here.
    if pathlib.Path(path).parent == shard.parent:
      raise PermissionError(13, 'Read-only file system', path)
    real_write(path, index)

  monkeypatch.setattr(tar_index, '_write_atomic', write)
  config = _tar_config(str(shard), index_cache_dir=str(cache_dir))
  assert len(data.make_source(config)) == 1
  assert not pathlib.Path(str(shard) + tar_index.INDEX_SUFFIX).exists()
  [cached] = cache_dir.iterdir()
  assert cached.name.endswith('-one.tar' + tar_index.INDEX_SUFFIX)
  monkeypatch.setattr(tar_index, 'build_index', _fail)
  assert len(data.make_source(config)) == 1  # Found in the cache dir.


def _fail(*args):
  raise AssertionError(f'unexpected call {args}')


def test_tar_shard_errors_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing-here'):
    data.make_source(_tar_config(str(tmp_path / 'nothing-here-*.tar')))
  with pytest.raises(ValueError, match='tar_shards'):
    data.make_source(_tar_config(''))
  import gzip  # pylint: disable=g-import-not-at-top
  utils.write_tar(tmp_path / 'plain.tar', [('a.png', utils.grey_png(1)),
                                           ('a.txt', b'x')])
  (tmp_path / 'packed.tar').write_bytes(
      gzip.compress((tmp_path / 'plain.tar').read_bytes()))
  # One compressed shard among good ones is skipped with a warning...
  pattern = f'{tmp_path}/plain.tar,{tmp_path}/packed.tar'
  assert len(data.make_source(_tar_config(pattern))) == 1
  # ...but a dataset of them says what is wrong.
  with pytest.raises(ValueError, match='gzip-compressed'):
    data.make_source(_tar_config(str(tmp_path / 'packed.tar')))


# ----------------------------------------------------------------------------- digits captions


def test_digit_caption_templates_and_held_out_split():
  assert len(digits_captions.TRAIN_TEMPLATES) >= 8
  assert len(digits_captions.HELD_OUT_TEMPLATES) >= 3
  assert any('{word}' in t for t in digits_captions.TRAIN_TEMPLATES)
  assert any('{digit}' in t for t in digits_captions.TRAIN_TEMPLATES)
  assert digits_captions.training_captions(7)[:2] == ['a handwritten seven',
                                                      'the digit 7']
  train = {c for d in range(10) for c in digits_captions.training_captions(d)}
  held_out, labels = digits_captions.held_out_captions()
  assert len(held_out) == len(set(held_out)) == 10 * len(
      digits_captions.HELD_OUT_TEMPLATES)
  assert not train & set(held_out)
  assert labels.dtype == np.int32 and sorted(set(labels)) == list(range(10))
  for caption, label in zip(held_out, labels):
    assert (digits_captions.DIGIT_WORDS[label] in caption.split() or
            str(label) in caption.replace(',', ' ').split())
  # The stand-in's vocabulary: words of two or more training templates. Every
  # digit, as word and numeral, keeps its own token; a word of one training
  # template or of the held-out ones only becomes [UNK].
  vocabulary = digits_captions.caption_vocabulary()
  tokenizer = stand_in_text_encoder.word_level_tokenizer(vocabulary)
  assert set(tokenizer.get_vocab()) - {'[PAD]', '[UNK]'} == set(vocabulary)
  assert set(digits_captions.DIGIT_WORDS) | {str(d) for d in range(10)} <= set(vocabulary)
  assert {'handwritten', 'number', 'digit', ','} <= set(vocabulary)
  assert not {'picture', 'small', 'drawing', 'sketch', 'pen'} & set(vocabulary)
  assert tokenizer.encode('a small drawing of the digit seven').tokens == [
      'a', '[UNK]', '[UNK]', 'of', 'the', 'digit', 'seven']
  # [UNK] is met in training (single-template words), not only at evaluation.
  unk = tokenizer.token_to_id('[UNK]')
  train = [digits_captions.fill(t, 0) for t in digits_captions.TRAIN_TEMPLATES]
  assert 4 <= sum(unk in tokenizer.encode(c).ids for c in train) < len(train)


def test_digits_captions_batches_are_deterministic_training_captions(
    digits_tokenizer):
  config = utils.make_config(name='digits_captions', resolution=8,
                             shuffle=False)

  def two_batches(seed):
    it = data.create_train_iterator(config, global_batch_size=64, seed=seed,
                                    tokenizer=digits_tokenizer)
    return _take(it, 2)

  first, again, other = two_batches(0), two_batches(0), two_batches(1)
  assert set(first[0]) == set(data.batch_keys(config)) | {'num_skipped'}
  assert data.batch_keys(config) == ('image', 'raw_image', 'input_ids',
                                     'attention_mask', 'label')
  _assert_batches_equal(first, again)
  held_out = set(digits_captions.held_out_captions()[0])
  for batch in first + other:
    for text, label in zip(_digit_texts(digits_tokenizer, batch),
                           batch['label']):
      assert text in digits_captions.training_captions(int(label))
      assert text not in held_out
  # Another seed: the same (unshuffled) images, other captions.
  np.testing.assert_array_equal(first[0]['image'], other[0]['image'])
  differ = np.any(first[0]['input_ids'] != other[0]['input_ids'], axis=1)
  assert differ.mean() > 0.7  # 1 - 1/len(TRAIN_TEMPLATES) expected.


def test_digit_captions_vary_by_epoch_and_use_every_training_template():
  source = digits_captions.DigitsCaptionSource(8)
  n = len(source)
  load = loading.LoadCaptionedExample(source, random_flip=False, seed=0)
  epoch0 = [str(load(p, p)['caption']) for p in range(n)]
  epoch1 = [str(load(n + p, p)['caption']) for p in range(n)]
  assert epoch0 == [str(load(p, p)['caption']) for p in range(n)]
  assert len(set(epoch0)) == 10 * len(digits_captions.TRAIN_TEMPLATES)
  differ = np.mean([a != b for a, b in zip(epoch0, epoch1)])
  assert 0.85 < differ < 0.99  # 1 - 1/len(TRAIN_TEMPLATES) of them, about.


# ----------------------------------------------------------------------------- API


def test_tokenizer_required_for_captions_and_refused_for_classes(
    digits_tokenizer):
  with pytest.raises(ValueError, match='tokenizer='):
    data.create_train_iterator(utils.make_config(name='digits_captions'),
                               global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match='class-labelled'):
    data.create_train_iterator(utils.make_config(name='digits'),
                               global_batch_size=8, seed=0,
                               tokenizer=digits_tokenizer)
  with pytest.raises(TypeError, match='no tokenize method'):
    data.create_train_iterator(utils.make_config(name='digits_captions'),
                               global_batch_size=8, seed=0, tokenizer=object())
  assert data.batch_keys(utils.make_config(name='digits')) == data.BATCH_KEYS
  assert data.batch_keys(utils.make_config(name='caption_tar')) == (
      data.CAPTION_BATCH_KEYS)


class _RaggedTokenizer:
  """Pads to the longest caption of each batch (so L varies): refused."""

  def tokenize(self, texts):
    length = max(len(t.split()) for t in texts)
    ids = np.ones((len(texts), length), np.int32)
    return {'input_ids': ids, 'attention_mask': ids}


def test_a_tokenizer_without_fixed_length_is_refused():
  it = data.create_train_iterator(
      utils.make_config(name='digits_captions', resolution=8),
      global_batch_size=16, seed=0, tokenizer=_RaggedTokenizer())
  with pytest.raises(ValueError, match='fixed max_length'):
    _take(it, 3)


# One worker process: the caption sources and the (unpickled) tokenizer stage
# work with workers; digits_captions without workers.
@pytest.mark.parametrize('name,num_workers', [('digits_captions', 0),
                                              ('caption_tar', 1)])
def test_captioned_iterator_resumes_bitwise(tmp_path, grey_tokenizer,
                                            digits_tokenizer, name,
                                            num_workers):
  if name == 'caption_tar':
    config = _tar_config(_write_shards(tmp_path), num_workers=num_workers)
    tokenizer = grey_tokenizer
  else:
    config = utils.make_config(name=name, resolution=8,
                               num_workers=num_workers, random_flip=True)
    tokenizer = digits_tokenizer
  it = data.create_train_iterator(config, global_batch_size=4, seed=1,
                                  tokenizer=tokenizer)
  before = _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = data.create_train_iterator(config, global_batch_size=4, seed=1,
                                     tokenizer=tokenizer)
  fresh.set_state(state)
  _assert_batches_equal(expected, _take(fresh, 3))
  assert not np.array_equal(before[0]['input_ids'], expected[0]['input_ids'])
  assert all(type(v) is np.ndarray for b in before for v in b.values())
  for iterator in (it, fresh):
    iterator.close()


@pytest.mark.parametrize('name', ['digits_captions', 'caption_tar'])
def test_process_batches_assemble_the_single_process_batch(
    tmp_path, grey_tokenizer, digits_tokenizer, name):
  if name == 'caption_tar':
    # Clean shards: a skipped example is replaced from the host's own later
    # rows, so with bad examples the batches depend on the host count.
    utils.write_tar(tmp_path / 'a.tar', _good_members(range(10, 90, 10)))
    utils.write_tar(tmp_path / 'b.tar', _good_members(range(100, 180, 10)))
    config = _tar_config(f'{tmp_path}/a.tar,{tmp_path}/b.tar')
    tokenizer = grey_tokenizer
  else:
    config = utils.make_config(name=name, resolution=8)
    tokenizer = digits_tokenizer
  single = data.create_train_iterator(config, global_batch_size=8, seed=3,
                                      process_index=0, process_count=1,
                                      tokenizer=tokenizer)
  parts = [data.create_train_iterator(config, global_batch_size=8, seed=3,
                                      process_index=i, process_count=2,
                                      tokenizer=tokenizer) for i in range(2)]
  for _ in range(3):
    whole = next(single)
    pieces = [next(p) for p in parts]
    for key in data.batch_keys(config):
      np.testing.assert_array_equal(
          whole[key], np.concatenate([p[key] for p in pieces]), err_msg=key)


def test_make_global_batch_takes_the_caption_keys(digits_tokenizer):
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec('data'))
  config = utils.make_config(name='digits_captions', resolution=8)
  local = next(data.create_train_iterator(
      config, global_batch_size=4 * len(jax.devices()), seed=0,
      tokenizer=digits_tokenizer))
  batch = data.make_global_batch(local, sharding, keys=data.batch_keys(config))
  assert set(batch) == set(data.batch_keys(config))
  for key, value in batch.items():
    np.testing.assert_array_equal(np.asarray(value), local[key])


def test_sources_without_any_caption_raise(tmp_path):
  utils.save_image(tmp_path / 'f' / 'a.png', Image.new('RGB', (4, 4)))
  (tmp_path / 'f' / 'a.caption').write_text('not the .txt sidecar')
  with pytest.raises(ValueError, match='has a caption file'):
    data.make_source(utils.make_config(name='caption_folder',
                                       folder=str(tmp_path / 'f')))
  utils.write_tar(tmp_path / 'a.tar', [('a.png', utils.grey_png(1)),
                                       ('a.caption', b'x')])
  with pytest.raises(ValueError, match='has a caption member'):
    data.make_source(_tar_config(str(tmp_path / 'a.tar')))
