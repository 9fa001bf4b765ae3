"""The embedded digits as a text-to-image dataset: captions from templates.

Each example's caption is one of TRAIN_TEMPLATES filled with its digit, drawn
from (seed, stream position), so an image meets different phrasings in
different epochs. HELD_OUT_TEMPLATES are never used in training: sampling from
`held_out_captions()` and classifying the samples with the digits judge tests
whether the model follows the digit in an unseen phrasing.

    tokenizer = stand_in_text_encoder.word_level_tokenizer(caption_vocabulary())
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
    # Longer ones that put the digit later, after words it must learn to look past: the
    # short ones alone leave the model lost when a held-out prefix comes first.
    'a black and white photo of the number {word}',
    'an old scan of a handwritten {digit}',
    'here is the digit {word}, drawn with a pen',
    'a blurry handwritten number {digit}',
    'someone wrote the number {word} on paper',
    'a grey image showing the handwritten digit {word}',
    'the figure {digit}',
    'a quick sketch of a {word}',
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
  build a tokenizer that knows every word (tests)."""
  return [fill(template, label)
          for template in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES
          for label in range(digits.NUM_CLASSES)]


# A word must occur in this many training templates to get a token of its own.
MIN_TEMPLATES_PER_WORD = 2


def _template_words(template: str) -> set[str]:
  """The lower-case words and punctuation marks of `template`, every digit filled in."""
  return {word for label in range(digits.NUM_CLASSES)
          for word in _WORD_PATTERN.findall(fill(template, label).lower())}


def caption_vocabulary() -> tuple[str, ...]:
  """The stand-in tokenizer's words: those of at least MIN_TEMPLATES_PER_WORD
  training templates (every digit word and numeral among them), sorted.

  The rest (words of a single training template, and the held-out templates'
  words) become [UNK], as rare words do in a word-level vocabulary. The random
  stand-in encoder knows nothing of meaning, so a word never met in training
  would be a token the model has never learnt to ignore; [UNK] is one it has
  met in many phrasings. The held-out templates play no part in the vocabulary.
  """
  templates_per_word = {}
  for template in TRAIN_TEMPLATES:
    for word in _template_words(template):
      templates_per_word[word] = templates_per_word.get(word, 0) + 1
  return tuple(sorted(word for word, count in templates_per_word.items()
                      if count >= MIN_TEMPLATES_PER_WORD))


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
