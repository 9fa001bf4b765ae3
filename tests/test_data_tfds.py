"""The TFDS source, on a tiny ArrayRecord dataset built offline in the test."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from pixnerd_jax import data
from tests import data_test_utils as utils

NUM_GOOD = 10
BAD_KEY = 4  # Example 4 holds bytes that are not an image.
BAD_BYTES = b'definitely not a PNG'


def _grey(i: int) -> int:
  return 20 * i + 7


class PixnerdTestImages(tfds.core.GeneratorBasedBuilder):
  """Solid-grey images of assorted sizes; one corrupt record."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(num_classes=3),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(NUM_GOOD + 1):
      if i == BAD_KEY:
        # A file object is stored as-is, so this lands as a corrupt record.
        yield i, {'image': io.BytesIO(BAD_BYTES), 'label': 0}
        continue
      grey = _grey(i)
      image = np.full((12 + i, 20 - i, 3), grey, np.uint8)
      yield i, {'image': image, 'label': grey % 3}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  builder = PixnerdTestImages(data_dir=str(data_dir),
                              file_format='array_record')
  builder.download_and_prepare()
  return str(data_dir)


def _record_greys(tfds_dir) -> list:
  """Grey of each stored record in record order (None: the corrupt one).

  TFDS stores examples in an order of its own (hashed keys), so it is read
  back directly, decoding with PIL independently of the pipeline.
  """
  records = tfds.data_source(
      'pixnerd_test_images', split='train', data_dir=tfds_dir,
      download=False, decoders={'image': tfds.decode.SkipDecoding()})
  greys = []
  for i in range(len(records)):
    encoded = records[i]['image']
    if encoded == BAD_BYTES:
      greys.append(None)
    else:
      greys.append(int(np.asarray(Image.open(io.BytesIO(encoded)))[0, 0, 0]))
  return greys


def _config(tfds_dir, **overrides):
  return utils.make_config(name='tfds', tfds_name='pixnerd_test_images',
                           data_dir=tfds_dir, resolution=8, **overrides)


def test_tfds_records_are_read_cropped_and_the_corrupt_one_skipped(tfds_dir):
  source = data.make_source(_config(tfds_dir))
  assert len(source) == NUM_GOOD + 1
  it = data.create_train_iterator(_config(tfds_dir, shuffle=False),
                                  global_batch_size=4, seed=0)
  greys = []
  skipped = 0
  for _ in range(5):  # 20 good reads: the corrupt record is met twice.
    batch = next(it)
    assert batch['image'].shape == (4, 8, 8, 3)
    assert batch['label'].dtype == np.int32
    assert batch['image'].min() >= -1 and batch['image'].max() <= 1
    batch_greys = utils.greys_of(batch)
    assert [g % 3 for g in batch_greys] == list(batch['label'])
    greys += batch_greys
    skipped += int(batch['num_skipped'])
  assert skipped == 2
  order = [g for g in _record_greys(tfds_dir) if g is not None]
  assert sorted(order) == sorted(
      _grey(i) for i in range(NUM_GOOD + 1) if i != BAD_KEY)
  assert greys == (order * 2)[:20]


def test_tfds_shuffled_epoch_covers_all_good_records(tfds_dir):
  it = data.create_train_iterator(_config(tfds_dir), global_batch_size=5,
                                  seed=0)
  greys = utils.greys_of(next(it)) + utils.greys_of(next(it))
  assert sorted(greys) == sorted(
      _grey(i) for i in range(NUM_GOOD + 1) if i != BAD_KEY)


def test_unprepared_imagenet_explains_how_to_prepare(tmp_path):
  config = utils.make_config(name='tfds', tfds_name='imagenet2012',
                             data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    data.create_train_iterator(config, global_batch_size=8, seed=0)
  message = str(error.value)
  assert f'tfds build imagenet2012 --data_dir={tmp_path}' in message
  assert f'{tmp_path}/downloads/manual/' in message
  assert 'ILSVRC2012_img_train.tar' in message
  assert 'ILSVRC2012_img_val.tar' in message


def test_unknown_dataset_and_split_raise_value_error(tfds_dir):
  with pytest.raises(ValueError, match='no_such_dataset_xyz'):
    data.make_source(utils.make_config(
        name='tfds', tfds_name='no_such_dataset_xyz', data_dir=tfds_dir))
  with pytest.raises(ValueError, match='validation'):
    data.make_source(_config(tfds_dir, split='validation'))
