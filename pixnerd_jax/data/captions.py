"""Caption text handling: cleaning, JSON caption fields, host-side tokenization.

Tokenization runs per batch on the training thread, after Grain's worker
processes (see `TokenizeCaptions`), so any tokenizer object works, picklable or
not, and the workers ship only images and caption strings.
"""

import json
from typing import Protocol, Sequence

import numpy as np

# JSON fields tried, in this order after the configured one, for webdataset
# `key.json` captions (LAION uses "caption", others "text" or "prompt").
JSON_CAPTION_FIELDS = ('caption', 'text', 'prompt')


class Tokenizer(Protocol):
  """What the pipeline needs to tokenize captions (TextEncoder satisfies it)."""

  def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Captions -> `input_ids` and `attention_mask`, each (B, L) int."""
    ...


def clean_caption(text: str) -> str:
  """Strips surrounding whitespace; an empty caption is an error.

  The reference keeps a sidecar file's text verbatim (a trailing newline
  included, which a BPE tokenizer turns into a token); stripping it is what
  the caption means. An empty caption would silently train the conditional
  model on unconditional inputs, so it is skipped like an unreadable image.

  Raises:
    ValueError: the caption is empty or only whitespace.
  """
  text = text.strip()
  if not text:
    raise ValueError('empty caption')
  return text


def decode_text(data: bytes) -> str:
  """UTF-8 bytes (a BOM allowed) -> cleaned caption; raises on bad bytes."""
  return clean_caption(data.decode('utf-8-sig'))


def caption_from_json(data: bytes, field: str = 'caption') -> str:
  """The caption in a JSON object: `field`, else the first of
  JSON_CAPTION_FIELDS present.

  Raises:
    ValueError: not a JSON object, no caption field, or not a string.
  """
  record = json.loads(data.decode('utf-8-sig'))
  if not isinstance(record, dict):
    raise ValueError(f'caption JSON is a {type(record).__name__}, not an '
                     'object')
  for name in (field,) + JSON_CAPTION_FIELDS:
    if name in record:
      value = record[name]
      if not isinstance(value, str):
        raise ValueError(f'caption JSON field {name!r} is a '
                         f'{type(value).__name__}, not a string')
      return clean_caption(value)
  raise ValueError(f'caption JSON has none of the fields '
                   f'{list(dict.fromkeys((field,) + JSON_CAPTION_FIELDS))} '
                   f'(it has {sorted(record)[:8]})')


def token_length(tokenizer: Tokenizer) -> int:
  """Checks `tokenizer` on one caption and returns its fixed length L.

  Raises:
    TypeError: `tokenizer` lacks `tokenize`, or returns the wrong things.
  """
  if not callable(getattr(tokenizer, 'tokenize', None)):
    raise TypeError(
        f'The tokenizer ({type(tokenizer).__name__}) has no tokenize method; '
        'pass an object with tokenize(list[str]) -> {"input_ids", '
        '"attention_mask"}, e.g. pixnerd_jax.models.text_encoder.TextEncoder.')
  out = _tokenized(tokenizer, ['a caption'])
  return out['input_ids'].shape[1]


def _tokenized(tokenizer: Tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
  out = tokenizer.tokenize(texts)
  if not isinstance(out, dict) or not {'input_ids', 'attention_mask'} <= set(out):
    raise TypeError('tokenizer.tokenize must return a dict with input_ids and '
                    f'attention_mask; got {type(out).__name__} '
                    f'{sorted(out) if isinstance(out, dict) else ""}.')
  ids = np.asarray(out['input_ids'])
  mask = np.asarray(out['attention_mask'])
  if ids.shape != mask.shape or ids.ndim != 2 or ids.shape[0] != len(texts):
    raise TypeError(
        f'tokenizer.tokenize({len(texts)} texts) returned input_ids '
        f'{ids.shape} and attention_mask {mask.shape}; both must be '
        f'({len(texts)}, max_length).')
  return {'input_ids': ids.astype(np.int32), 'attention_mask':
          mask.astype(np.int32)}


class TokenizeCaptions:
  """Batch stage: `caption` (B,) strings -> `input_ids`, `attention_mask`.

  Runs after the worker processes, on the training thread, so the tokenizer is
  never pickled (a TextEncoder holds a Flax module and jitted functions) and
  any object with `tokenize` works. The cost is small and overlaps the
  asynchronously dispatched train step: `encode_batch` is Rust, parallel over
  the batch; measured with a word-level TextEncoder at max_length 128 on 2
  busy cores: 1.4 ms for 32 LAION-length captions, 12-23 ms for 256.
  """

  def __init__(self, tokenizer: Tokenizer, length: int):
    """`length`: the L every batch must have (from `token_length`)."""
    self._tokenizer = tokenizer
    self._length = length

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(batch)
    texts = [str(text) for text in out.pop('caption')]
    tokens = _tokenized(self._tokenizer, texts)
    if tokens['input_ids'].shape[1] != self._length:
      # A varying L would recompile the train step on every new length.
      raise ValueError(
          f'The tokenizer returned {tokens["input_ids"].shape[1]} tokens per '
          f'caption, earlier {self._length}: it must pad and truncate to a '
          'fixed max_length (TextEncoder does).')
    out.update(tokens)
    return out
