"""The tfds_captions source, on a tiny ArrayRecord dataset built offline in the test."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pixnerd_jax import data
from tests import data_test_utils as utils

NUM_RECORDS = 9
EMPTY_KEY = 2    # Example 2 has an empty (whitespace) caption.
CORRUPT_KEY = 5  # Example 5 holds bytes that are not an image.


def _grey(i: int) -> int:
  return 20 * i + 15


class PixnerdTestCaptions(tfds.core.GeneratorBasedBuilder):
  """Solid-grey images named 'photo', with one and with several captions."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'photo': tfds.features.Image(shape=(None, None, 3)),
            'caption': tfds.features.Text(),
            'alternatives': tfds.features.Sequence(
                {'text': tfds.features.Text()}),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(NUM_RECORDS):
      grey = _grey(i)
      photo = np.full((10 + i, 16 - i, 3), grey, np.uint8)
      if i == CORRUPT_KEY:
        photo = io.BytesIO(b'not a PNG at all')  # Stored as-is.
      caption = ' \n' if i == EMPTY_KEY else utils.caption_of_grey(grey)
      # Two phrasings naming the same grey: 'grey <g>' and 'gray <g>'.
      yield i, {'photo': photo, 'caption': caption, 'alternatives': {
          'text': [f'grey {grey}', f'gray {grey}']}}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds_captions')
  PixnerdTestCaptions(data_dir=str(data_dir),
                      file_format='array_record').download_and_prepare()
  return str(data_dir)


@pytest.fixture(scope='module')
def tokenizer():
  return utils.make_tokenizer(
      [f'{w} {g}' for w in ('grey', 'gray') for g in range(256)], max_length=4)


def _config(tfds_dir, **overrides):
  fields = dict(name='tfds_captions', tfds_name='pixnerd_test_captions',
                data_dir=tfds_dir, image_feature='photo', resolution=8)
  return utils.make_config(**{**fields, **overrides})


def _captions(tokenizer, batch):
  """(first word, grey) of each row's caption."""
  vocab = tokenizer.tokenizer
  return [(vocab.id_to_token(int(row[0])), int(vocab.id_to_token(int(row[1]))))
          for row in batch['input_ids']]


def _record_is_bad(tfds_dir) -> list[bool]:
  """Per stored record (TFDS orders them by hashed key), whether it is bad."""
  records = tfds.data_source(
      'pixnerd_test_captions', split='train', data_dir=tfds_dir,
      download=False, decoders={'photo': tfds.decode.SkipDecoding()})
  return [records[i]['photo'] == b'not a PNG at all' or
          not records[i]['caption'].strip() for i in range(len(records))]


def test_tfds_captions_pair_images_and_skip_bad_records(tfds_dir, tokenizer):
  it = data.create_train_iterator(_config(tfds_dir, shuffle=False),
                                  global_batch_size=7, seed=0,
                                  tokenizer=tokenizer)
  good = {_grey(i) for i in range(NUM_RECORDS)} - {_grey(EMPTY_KEY),
                                                    _grey(CORRUPT_KEY)}
  consumed = skipped = 0
  for _ in range(3):
    batch = next(it)
    assert set(batch) == {'image', 'raw_image', 'input_ids',
                          'attention_mask', 'num_skipped'}
    assert batch['image'].shape == (7, 8, 8, 3)
    captions = _captions(tokenizer, batch)
    assert [g for _, g in captions] == utils.greys_of(batch)
    assert {w for w, _ in captions} == {'grey'}
    assert set(utils.greys_of(batch)) == good
    skipped += int(batch['num_skipped'])
    consumed += 7 + int(batch['num_skipped'])
  is_bad = _record_is_bad(tfds_dir)
  assert sum(is_bad) == 2
  # Unshuffled: stream position p is record p % NUM_RECORDS.
  assert skipped == sum(is_bad[p % NUM_RECORDS] for p in range(consumed)) >= 4


def test_tfds_captions_draw_one_of_several_captions(tfds_dir, tokenizer):
  config = _config(tfds_dir, text_feature='alternatives/text')
  it = data.create_train_iterator(config, global_batch_size=7, seed=0,
                                  tokenizer=tokenizer)
  words = []
  for batch in [next(it) for _ in range(4)]:
    captions = _captions(tokenizer, batch)
    assert [g for _, g in captions] == utils.greys_of(batch)
    words += [w for w, _ in captions]
  # The empty caption is not among the alternatives: only the corrupt image
  # is skipped. Both phrasings occur.
  assert 6 < words.count('gray') < 22 and words.count('grey') + words.count(
      'gray') == 28


def test_tfds_captions_missing_feature_names_the_config_fields(tfds_dir,
                                                              tokenizer):
  with pytest.raises(ValueError, match='text_feature'):
    data.make_source(_config(tfds_dir, text_feature='title'))
  with pytest.raises(ValueError, match="'image'"):
    data.make_source(_config(tfds_dir, image_feature='image'))
