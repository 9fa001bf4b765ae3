"""A stand-in text encoder for the embedded text-to-image job, which has no pretrained one.

It has the real encoder's form (a Hugging Face folder: config.json, model.safetensors,
tokenizer.json) and runs through the same code (`models.text_encoder.TextEncoder`, the
Flax Qwen3); only the weights are random and the tokenizer is word-level over the
training captions. A run with `config.text_encoder.stand_in` writes one to
<workdir>/text_encoder (`write_for_run`), which sampling then reads like any folder.
"""

import collections
import os
import shutil
from typing import Iterable

import jax
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from pixnerd_jax import data as data_lib
from pixnerd_jax.models import qwen3
from pixnerd_jax.models.text_encoder import (CONFIG_FILE, STAND_IN_DIR, TOKENIZER_FILE,
                                             WEIGHTS_FILE, TextEncoder)


def word_level_tokenizer(texts: Iterable[str], *, min_count: int = 1, pad_token: str = "[PAD]",
                         unk_token: str = "[UNK]") -> Tokenizer:
  """A small word-level tokenizer over a caption vocabulary (for stand-in encoders).

  Lowercases, splits on whitespace and punctuation (each punctuation mark is a token),
  ids 0 = pad_token, 1 = unk_token, then the words seen at least `min_count` times, most
  frequent first (ties alphabetical). Padding to the longest is enabled with pad_token,
  so the pad id travels inside tokenizer.json. Save with `tokenizer.save(path)`.
  """
  normalizer = normalizers.Lowercase()
  pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  counts = collections.Counter()
  for text in texts:
    counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
  words = sorted((w for w, c in counts.items() if c >= min_count and w not in
                  (pad_token, unk_token)), key=lambda w: (-counts[w], w))
  vocab = {pad_token: 0, unk_token: 1}
  vocab.update({w: i + 2 for i, w in enumerate(words)})
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unk_token))
  tokenizer.normalizer = normalizer
  tokenizer.pre_tokenizer = pre_tokenizer
  tokenizer.add_special_tokens([pad_token, unk_token])
  tokenizer.enable_padding(pad_id=0, pad_token=pad_token)
  return tokenizer


def stand_in_config(hidden_size: int, vocab_size: int, num_layers: int,
                    max_length: int, init_std: float = 0.02) -> qwen3.Qwen3Config:
  """A small Qwen3 architecture for stand-in encoders: head dim 16, half as many kv heads."""
  heads = max(2, hidden_size // 16)
  return qwen3.Qwen3Config(
      vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=3 * hidden_size,
      num_hidden_layers=num_layers, num_attention_heads=heads,
      num_key_value_heads=max(1, heads // 2), head_dim=hidden_size // heads,
      max_position_embeddings=max(max_length, 128), rope_theta=10000.0,
      initializer_range=init_std)


def create_stand_in(folder: str, vocabulary: Iterable[str], *, hidden_size: int,
                    num_layers: int, max_length: int, seed: int,
                    init_std: float = 0.02) -> None:
  """Writes a stand-in encoder to `folder`: a word-level tokenizer over `vocabulary` and
  a Qwen3-architecture network with fixed random weights (normal(init_std), `seed`).

  The real code path runs on it (tokenizer.json, safetensors, the same Flax Qwen3), only
  the weights are not pretrained; it lets the embedded digits job run offline. A smaller
  init_std keeps each token's own embedding dominant over what random attention mixes
  in from its neighbours (that mixing grows as init_std squared, the embedding as
  init_std), so a word means nearly the same thing in any phrasing.
  """
  tokenizer = word_level_tokenizer(vocabulary)
  config = stand_in_config(hidden_size, tokenizer.get_vocab_size(with_added_tokens=True),
                           num_layers, max_length, init_std)
  encoder, params = TextEncoder.random(config, tokenizer, seed, dtype="float32",
                                       max_length=max_length)
  encoder.save_pretrained(folder, params)


def write_for_run(config, workdir: str) -> str:
  """Process 0 writes the run's stand-in to <workdir>/text_encoder from the data's caption
  vocabulary, once (a resumed run reuses it); every process waits for it. Returns the
  folder."""
  te = config.text_encoder
  folder = os.path.join(workdir, STAND_IN_DIR)
  complete = all(os.path.isfile(os.path.join(folder, name))
                 for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE))
  if jax.process_index() == 0 and not complete:
    # Written beside, then renamed: a run killed mid-write leaves no half folder that
    # the restart would take for the encoder (the stand-in is a function of the seed
    # and the captions, so an incomplete one left by older versions is rewritten).
    partial = f"{folder}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    create_stand_in(partial, data_lib.caption_vocabulary(config.data),
                    hidden_size=config.model.txt_embed_dim,
                    num_layers=int(te.stand_in_layers), max_length=int(te.max_length),
                    seed=config.seed, init_std=float(te.get("stand_in_init_std", 0.02)))
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(partial, folder)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("text encoder stand-in written")
  return folder
