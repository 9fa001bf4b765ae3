"""TFDS sources: random access into a prepared ArrayRecord dataset.

`tfds`: records need an `image` (encoded image) and a `label` feature.
`tfds_captions`: an image and a text feature, named by config.data.
image_feature / text_feature. Images are read as their encoded bytes
(`SkipDecoding`) and decoded with PIL, so they get the exact preprocessing of
the folder sources (and of the reference).
"""

import numpy as np

from pixnerd_jax.data import captions
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


def _prepared_builder(name: str, split: str, data_dir,
                      features: tuple[str, ...], hint: str = ''):
  """The TFDS builder of `name`, checked: prepared as ArrayRecord, with `split`
  and the top-level `features` (`hint` ends that error). Raises ValueError /
  FileNotFoundError."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
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
  for key in features:
    if key not in builder.info.features:
      raise ValueError(
          f'TFDS dataset {name!r} has no {key!r} feature (features: '
          f'{list(builder.info.features.keys())}).{hint}')
  return builder


class _RandomAccess:
  """`tfds.data_source(...)` opened lazily, and again in each worker process
  (the open ArrayRecord readers are not pickled)."""

  def __init__(self, name: str, split: str, data_dir, image_feature: str):
    self._name, self._split, self._data_dir = name, split, data_dir
    self._image_feature = image_feature
    self._source = None

  def _data_source(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      self._source = tfds.data_source(
          self._name, split=self._split, data_dir=self._data_dir,
          download=False,
          decoders={self._image_feature: tfds.decode.SkipDecoding()})
    return self._source

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_source'] = None
    return state

  def describe(self, index: int) -> str:
    return f'{self._name}/{self._split}[{index}]'


class TfdsSource(_RandomAccess):
  """Random-access source over `tfds.data_source(name, split=...)`."""

  def __init__(self, name: str, split: str, data_dir, resolution: int):
    # TFDS is imported inside: it pulls in heavy modules that the digits and
    # folder sources do not need.
    super().__init__(name, split, data_dir, 'image')
    self._resolution = resolution
    builder = _prepared_builder(name, split, data_dir, ('image', 'label'))
    self._length = builder.info.splits[split].num_examples
    self.num_classes = getattr(builder.info.features['label'], 'num_classes',
                               None)

  def __len__(self) -> int:
    return self._length

  def load(self, index: int) -> tuple[np.ndarray, int]:
    """Returns uint8 (S, S, 3) and the label of record `index`."""
    record = self._data_source()[index]
    return (preprocess.decode_and_crop(record['image'], self._resolution),
            int(record['label']))


class TfdsCaptionSource(_RandomAccess):
  """Random-access source of (image, caption) records of a TFDS dataset.

  `text_feature` may name a nested field with '/' (`captions/text` in
  coco_captions); a record holding several captions gets one drawn with the
  position's generator, so every epoch can pair an image with another one.
  Images get the caption data's Resize + CenterCrop.
  """

  def __init__(self, name: str, split: str, data_dir, resolution: int, *,
               image_feature: str = 'image', text_feature: str = 'caption'):
    super().__init__(name, split, data_dir, image_feature)
    self._resolution = resolution
    self._text_path = tuple(p for p in text_feature.split('/') if p)
    if not self._text_path:
      raise ValueError('config.data.text_feature is empty; name the TFDS '
                       "caption feature, e.g. 'caption' or 'captions/text'.")
    builder = _prepared_builder(
        name, split, data_dir, (image_feature, self._text_path[0]),
        ' Set config.data.image_feature and config.data.text_feature.')
    self._length = builder.info.splits[split].num_examples

  def __len__(self) -> int:
    return self._length

  def load(self, index: int,
           rng: np.random.Generator) -> tuple[np.ndarray, str, None]:
    """Returns uint8 (S, S, 3), the caption and no label of record `index`."""
    record = self._data_source()[index]
    text = record
    for part in self._text_path:
      text = text[part]
    if not isinstance(text, (bytes, str)):
      texts = list(text)  # A sequence of captions: draw one.
      if not texts:
        raise ValueError('the record has no captions')
      text = texts[int(rng.integers(len(texts)))]
    if isinstance(text, bytes):
      text = text.decode('utf-8')
    caption = captions.clean_caption(str(text))
    pixels = preprocess.decode_resize_crop(record[self._image_feature],
                                           self._resolution)
    return pixels, caption, None
