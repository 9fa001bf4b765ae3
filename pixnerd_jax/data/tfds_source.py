"""TFDS source: random access into a prepared ArrayRecord dataset.

Records need an `image` (encoded image) and a `label` feature. Images are read
as their encoded bytes (`SkipDecoding`) and decoded with PIL, so they get the
exact preprocessing of the folder source (and of the reference).
"""

import numpy as np

from pixnerd_jax.data import preprocess


def _prepare_instructions(name: str, data_dir) -> str:
  data_dir_flag = data_dir or '~/tensorflow_datasets'
  text = (
      f'Prepare it once with:\n  tfds build {name} --data_dir={data_dir_flag}'
      ' --file_format=array_record\n')
  if name.split(':')[0].split('/')[0] == 'imagenet2012':
    text += (
        'imagenet2012 cannot be downloaded automatically: put the manually '
        'downloaded ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into '
        f'{data_dir_flag}/downloads/manual/ before running the command.\n')
  text += ('Then set config.data.data_dir to that --data_dir (or leave it '
           'None for ~/tensorflow_datasets).')
  return text


class TfdsSource:
  """Random-access source over `tfds.data_source(name, split=...)`."""

  def __init__(self, name: str, split: str, data_dir, resolution: int):
    # Imported here: TFDS pulls in heavy modules that the digits and folder
    # sources do not need.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self._name, self._split, self._data_dir = name, split, data_dir
    self._resolution = resolution
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(
          f'config.data.tfds_name={name!r} is not a known TFDS dataset and '
          f'is not prepared under data_dir={data_dir!r}.\n'
          + _prepare_instructions(name, data_dir)) from e
    if not builder.is_prepared():
      raise FileNotFoundError(
          f'TFDS dataset {name!r} is not prepared in {builder.data_dir!r} '
          f'(config.data.data_dir={data_dir!r}).\n'
          + _prepare_instructions(name, data_dir))
    file_format = builder.info.file_format
    if file_format is None or file_format.value != 'array_record':
      raise ValueError(
          f'TFDS dataset {name!r} in {builder.data_dir!r} is stored as '
          f'{file_format}, but random access needs ArrayRecord. Rebuild it '
          f'into another data_dir with --file_format=array_record.\n'
          + _prepare_instructions(name, data_dir))
    if split not in builder.info.splits:
      raise ValueError(
          f'config.data.split={split!r} is not a split of {name!r}; '
          f'available: {sorted(builder.info.splits.keys())}.')
    features = builder.info.features
    for key in ('image', 'label'):
      if key not in features:
        raise ValueError(f'TFDS dataset {name!r} has no {key!r} feature '
                         f'(features: {list(features.keys())}).')
    self._length = builder.info.splits[split].num_examples
    self.num_classes = getattr(features['label'], 'num_classes', None)
    self._source = None

  def _data_source(self):
    # Opened lazily (and again in each worker process): the open ArrayRecord
    # readers are not pickled.
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._source = tfds.data_source(
          self._name, split=self._split, data_dir=self._data_dir,
          download=False, decoders={'image': tfds.decode.SkipDecoding()})
    return self._source

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_source'] = None
    return state

  def __len__(self) -> int:
    return self._length

  def load(self, index: int) -> tuple[np.ndarray, int]:
    """Returns uint8 (S, S, 3) and the label of record `index`."""
    record = self._data_source()[index]
    return (preprocess.decode_and_crop(record['image'], self._resolution),
            int(record['label']))

  def describe(self, index: int) -> str:
    return f'{self._name}/{self._split}[{index}]'
