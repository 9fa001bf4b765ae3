"""The embedded digits as a text-to-image dataset: captions from templates.

Each example's caption is one of TRAIN_TEMPLATES filled with its digit, drawn
from (seed, stream position), so an image meets different phrasings in
different epochs. HELD_OUT_TEMPLATES are never used in training: sampling from
`held_out_captions()` and classifying the samples with the digits judge tests
whether the model follows the digit in an unseen phrasing.

    tokenizer = text_encoder.word_level_tokenizer(all_captions())
"""

import re

import numpy as np

from pixnerd_jax.data import digits

DIGIT_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven',
               'eight', 'nine')

# {word}: 'seven'; {digit}: '7'. Some name the digit in words, some in numerals.
TRAIN_TEMPLATES = (
    'a handwritten {word}',
    'the digit {digit}',
    'number {word}, drawn by hand',
    'a handwritten digit {digit}',
    'the number {word}',
    'digit {word}',
    'an image of the digit {digit}',
    'the handwritten number {word}',
    'a hand-drawn {digit}',
    '{word}',
    '{digit}',
    'a scanned {word}, written by hand',
)

HELD_OUT_TEMPLATES = (
    'a picture of the number {word}',
    '{digit}, handwritten',
    'a small drawing of the digit {word}',
    'number {digit} written by hand',
)

# How `word_level_tokenizer` (BertPreTokenizer) splits text: runs of word
# characters, and each punctuation mark on its own.
_WORD_PATTERN = re.compile(r'\w+|[^\w\s]')


def fill(template: str, label: int) -> str:
  """The caption of digit `label` (0..9) in `template`."""
  return template.format(word=DIGIT_WORDS[label], digit=str(label))


def training_captions(label: int) -> list[str]:
  """Every training caption of digit `label`, in TRAIN_TEMPLATES order."""
  return [fill(template, label) for template in TRAIN_TEMPLATES]


def held_out_captions() -> tuple[list[str], np.ndarray]:
  """Evaluation prompts: every held-out template for every digit.

  Returns:
    (captions, int32 labels), len(HELD_OUT_TEMPLATES) * 10 of each, template
    by template, digits 0..9 within each.
  """
  pairs = [(fill(template, label), label) for template in HELD_OUT_TEMPLATES
           for label in range(digits.NUM_CLASSES)]
  return [c for c, _ in pairs], np.asarray([l for _, l in pairs], np.int32)


def evaluation_captions(num: int) -> tuple[list[str], np.ndarray]:
  """The first `num` of `held_out_captions()`, cycled when num exceeds them.

  Any 10 consecutive prompts cover every digit once, so sample grids and
  judge evaluations are class-balanced.
  """
  captions, labels = held_out_captions()
  picks = np.arange(num) % len(captions)
  return [captions[i] for i in picks], labels[picks]


def all_captions() -> list[str]:
  """Every caption the templates can make (training and held out), e.g. to
  build the word-level tokenizer of the stand-in text encoder."""
  return [fill(template, label)
          for template in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES
          for label in range(digits.NUM_CLASSES)]


def caption_vocabulary() -> tuple[str, ...]:
  """The sorted lower-case words and punctuation marks of `all_captions()`."""
  return tuple(sorted({word for caption in all_captions()
                       for word in _WORD_PATTERN.findall(caption.lower())}))


def sample_caption(label: int, rng: np.random.Generator) -> str:
  """A training caption of digit `label`, its template drawn with `rng`."""
  return fill(TRAIN_TEMPLATES[int(rng.integers(len(TRAIN_TEMPLATES)))], label)


class DigitsCaptionSource:
  """The digits source with a templated caption per example and its label."""

  def __init__(self, resolution: int):
    self._digits = digits.DigitsSource(resolution)

  def __len__(self) -> int:
    return len(self._digits)

  def load(self, index: int,
           rng: np.random.Generator) -> tuple[np.ndarray, str, int]:
    """float32 (S, S, 3) in [0, 1], a caption drawn with `rng`, the label."""
    pixels, label = self._digits.load(index)
    return pixels, sample_caption(label, rng), label

  def describe(self, index: int) -> str:
    return self._digits.describe(index)
