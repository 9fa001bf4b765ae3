"""Qwen3 text encoder: parity with transformers' Qwen3Model, the HF folder loader, the
tokenizer, and the unconditional (empty-prompt) encoding.

Everything is built here from tiny random configs (no downloads): a 2-layer Qwen3 with
grouped-query attention (4 query heads, 2 kv heads), saved with save_pretrained.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (CPU) is needed for Qwen3 parity tests")
transformers = pytest.importorskip(
    "transformers", reason="transformers is needed for Qwen3 parity tests (CI installs it)")

from flax import linen as nn  # pylint: disable=g-import-not-at-top
from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
from tokenizers import Regex, Tokenizer, decoders, models  # pylint: disable=g-import-not-at-top
from tokenizers import normalizers, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top

from pixnerd_jax.models import text_encoder  # pylint: disable=g-import-not-at-top

from pixnerd_jax.embedded import stand_in_text_encoder  # pylint: disable=g-import-not-at-top
from pixnerd_jax.models.state_dict import ConversionError  # pylint: disable=g-import-not-at-top
from pixnerd_jax.models import qwen3  # pylint: disable=g-import-not-at-top

TOLERANCE = 1e-4
LENGTH = 12
PAD_ID = 1
HF_CONFIG = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                 rope_theta=1000.0, max_position_embeddings=64, pad_token_id=PAD_ID,
                 eos_token_id=2)
CAPTIONS = ["A photo of a cat.", "a dog, sitting on the grass", "the digit 7 in red",
            "Two cats and one dog!", "a red car"]


def _tokenizer_vocab_100() -> Tokenizer:
  """A word-level tokenizer padded with filler words to the tiny model's 100 ids."""
  fillers = [f"w{i}" for i in range(100)]
  tok = stand_in_text_encoder.word_level_tokenizer(CAPTIONS + [" ".join(fillers)])
  vocab = tok.get_vocab()
  keep = {w: i for w, i in vocab.items() if i < 100}
  small = Tokenizer(models.WordLevel(keep, unk_token="[UNK]"))
  small.normalizer, small.pre_tokenizer = tok.normalizer, tok.pre_tokenizer
  small.add_special_tokens(["[PAD]", "[UNK]"])
  small.enable_padding(pad_id=0, pad_token="[PAD]")
  return small


@pytest.fixture(scope="module")
def hf_model():
  """A tiny Qwen3Model with every weight random (norms perturbed off their init of 1)."""
  torch.manual_seed(0)
  model = transformers.Qwen3Model(transformers.Qwen3Config(**HF_CONFIG)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      else:
        p.copy_(0.5 * torch.randn_like(p) / p.shape[-1] ** 0.5)
  assert model.config._attn_implementation == "sdpa"  # the default the reference runs
  return model


def _write_tokenizer(folder, tokenizer):
  tokenizer.save(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]"}, f)


@pytest.fixture(scope="module")
def folders(hf_model, tmp_path_factory):
  """HF folders of the same weights: one file, shards, and a Qwen3ForCausalLM save."""
  root = tmp_path_factory.mktemp("qwen3")
  tokenizer = _tokenizer_vocab_100()
  out = {}
  out["single"] = str(root / "single")
  hf_model.save_pretrained(out["single"], safe_serialization=True)
  out["sharded"] = str(root / "sharded")
  hf_model.save_pretrained(out["sharded"], safe_serialization=True, max_shard_size="40KB")
  causal = transformers.Qwen3ForCausalLM(hf_model.config).eval()
  causal.model.load_state_dict(hf_model.state_dict())
  out["causal_lm"] = str(root / "causal_lm")
  causal.save_pretrained(out["causal_lm"], safe_serialization=True)
  for folder in out.values():
    _write_tokenizer(folder, tokenizer)
  return out


def _batch():
  """Rows: no padding, partly padded, one real token, all padding (the empty prompt)."""
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 100, size=(4, LENGTH)).astype(np.int32)
  lengths = [LENGTH, 5, 1, 0]
  mask = (np.arange(LENGTH)[None] < np.array(lengths)[:, None]).astype(np.int32)
  ids = np.where(mask == 1, ids, PAD_ID).astype(np.int32)
  return ids, mask


def _hf_forward(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(),
                attention_mask=torch.from_numpy(mask).long()).last_hidden_state
  return out.numpy()


# ----------------------------------------------------------------------------- config


def test_config_reads_hf_fields_and_defaults():
  d = dict(HF_CONFIG, model_type="qwen3")
  config = qwen3.Qwen3Config.from_dict(d)
  assert (config.head_dim, config.num_key_value_heads, config.rope_theta) == (16, 2, 1000.0)
  # transformers >= 5 writes rope_parameters; it wins over a stale top-level rope_theta.
  d5 = dict(d, rope_theta=5.0, rope_parameters={"rope_type": "default", "rope_theta": 7.0})
  assert qwen3.Qwen3Config.from_dict(d5).rope_theta == 7.0
  # An absent head_dim is HF's Qwen3Config default (128), not hidden / heads (16).
  no_head_dim = {k: v for k, v in d.items() if k != "head_dim"}
  assert qwen3.Qwen3Config.from_dict(no_head_dim).head_dim == 128
  assert transformers.Qwen3Config(**no_head_dim).head_dim == 128
  assert qwen3.Qwen3Config.from_dict({**d, "num_key_value_heads": None}).num_key_value_heads == 4
  # to_hf_dict round-trips through transformers' config.
  hf = transformers.Qwen3Config(**config.to_hf_dict())
  assert (hf.head_dim, hf.rope_parameters["rope_theta"], hf.num_key_value_heads) == (16, 1000.0, 2)


@pytest.mark.parametrize("field,value,match", [
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "rope_scaling"),
    ("rope_parameters", {"rope_type": "linear", "factor": 2.0}, "rope_parameters"),
    ("use_sliding_window", True, "use_sliding_window"),
    ("attention_bias", True, "attention_bias"),
    ("model_type", "qwen2", "model_type"),
])
def test_config_rejects_unsupported(field, value, match):
  with pytest.raises(qwen3.Qwen3ConfigError, match=match):
    qwen3.Qwen3Config.from_dict({**HF_CONFIG, field: value})


def test_qwen3_1_7b_param_count_and_axes():
  """Built from the real config with jax.eval_shape: nothing is allocated."""
  c = qwen3.QWEN3_1_7B
  per_layer = (c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
               + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size + 2 * c.head_dim)
  expected = c.vocab_size * c.hidden_size + c.num_hidden_layers * per_layer + c.hidden_size
  assert qwen3.count_params(c) == expected == 1_720_574_976
  boxed = qwen3.boxed_param_shapes(qwen3.Qwen3Model(c))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  names = {x.names for x in leaves}
  assert names == {("vocab", "embed"), ("embed", "qkv"), ("heads", "embed"), ("embed", "mlp"),
                   ("mlp", "embed"), ("norm",)}


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", ["single", "sharded", "causal_lm"])
def test_parity_with_hf_every_position(hf_model, folders, kind):
  if kind == "sharded":
    assert os.path.exists(os.path.join(folders[kind], "model.safetensors.index.json"))
  if kind == "causal_lm":
    keys = load_file(os.path.join(folders[kind], "model.safetensors"))
    assert "model.norm.weight" in keys
  encoder, params = text_encoder.TextEncoder.from_pretrained(folders[kind], "float32",
                                                             max_length=LENGTH)
  ids, mask = _batch()
  want = _hf_forward(hf_model, ids, mask)
  got = np.asarray(jax.jit(encoder.encode)(params, ids, mask))
  err = np.abs(got - want).max(axis=(1, 2))
  print(f"{kind}: fp32 max abs err per row (full, partial, 1 token, all padding): {err}")
  assert got.shape == (4, LENGTH, 64) and got.dtype == np.float32
  assert err.max() <= TOLERANCE


def test_all_padding_row_follows_sdpa_not_eager(hf_model, folders):
  """HF's SDPA gives fully masked queries a zero attention output; eager averages V."""
  encoder, params = text_encoder.TextEncoder.from_pretrained(folders["single"], "float32",
                                                             max_length=LENGTH)
  ids, mask = _batch()
  got = np.asarray(encoder.encode(params, ids, mask))
  eager = transformers.Qwen3Model.from_pretrained(folders["single"],
                                                  attn_implementation="eager").eval()
  want_eager = _hf_forward(eager, ids, mask)
  assert np.abs(got[:3] - want_eager[:3]).max() <= TOLERANCE  # rows with a real token agree
  assert np.abs(got[3] - want_eager[3]).max() > 0.1  # the all-padding row does not
  # With no attention at all, every position of "" holds the same vector.
  assert np.abs(got[3] - got[3, :1]).max() <= 1e-5


def test_bfloat16_close_to_float32(folders):
  enc32, p32 = text_encoder.TextEncoder.from_pretrained(folders["single"], "float32",
                                                        max_length=LENGTH)
  enc16, p16 = text_encoder.TextEncoder.from_pretrained(folders["single"], "bfloat16",
                                                        max_length=LENGTH)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
  ids, mask = _batch()
  y32 = np.asarray(enc32.encode(p32, ids, mask))
  y16 = enc16.encode(p16, ids, mask)
  assert y16.dtype == jnp.bfloat16
  dev = np.abs(np.asarray(y16, np.float32) - y32)
  print(f"bf16 vs fp32: max abs {dev.max():.4f}, mean abs {dev.mean():.5f}, "
        f"output scale (mean abs) {np.abs(y32).mean():.3f}")
  assert dev.max() < 0.15 and dev.mean() < 0.02
  # The reference runs HF's model cast to bf16: ours is as close to it as to fp32.
  hf16 = transformers.Qwen3Model.from_pretrained(folders["single"]).to(torch.bfloat16).eval()
  with torch.no_grad():
    want16 = hf16(input_ids=torch.from_numpy(ids).long(),
                  attention_mask=torch.from_numpy(mask).long()).last_hidden_state
  dev_hf = np.abs(np.asarray(y16, np.float32) - want16.float().numpy())
  print(f"bf16 vs HF bf16: max abs {dev_hf.max():.4f}, mean abs {dev_hf.mean():.5f}")
  assert dev_hf.max() < 0.15 and dev_hf.mean() < 0.02


def test_embed_dim_pads_or_truncates_channels(folders):
  base, params = text_encoder.TextEncoder.from_pretrained(folders["single"], "float32",
                                                          max_length=LENGTH)
  ids, mask = _batch()
  y = np.asarray(base.encode(params, ids, mask))
  for dim in (80, 32):
    enc = text_encoder.TextEncoder(base.model, base.tokenizer, base.pad_id, LENGTH, dim)
    out = np.asarray(enc.encode(params, ids, mask))
    assert out.shape == (4, LENGTH, dim)
    np.testing.assert_array_equal(out[..., :min(dim, 64)], y[..., :dim])
    if dim > 64:
      assert not out[..., 64:].any()


# ----------------------------------------------------------------------------- loader errors


def _copy_with_state(src, dst, edit):
  os.makedirs(dst)
  shutil.copy(os.path.join(src, "config.json"), dst)
  state = load_file(os.path.join(src, "model.safetensors"))
  edit(state)
  save_file(state, os.path.join(dst, "model.safetensors"))
  return dst


@pytest.mark.parametrize("case,match", [
    ("missing", r"missing \[layers\.1\.mlp\.up_proj\.weight\]"),
    ("unexpected", r"unexpected \[layers\.0\.self_attn\.q_proj\.bias\]"),
    ("misshaped", r"mis-shaped \[norm\.weight \(63,\) \(config\.json needs \(64,\)\)\]"),
])
def test_loader_key_errors(folders, tmp_path, case, match):
  edits = {
      "missing": lambda s: s.pop("layers.1.mlp.up_proj.weight"),
      "unexpected": lambda s: s.update(
          {"layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}),
      "misshaped": lambda s: s.update({"norm.weight": np.ones(63, np.float32)}),
  }
  folder = _copy_with_state(folders["single"], str(tmp_path / case), edits[case])
  config = text_encoder.read_config(folder)
  with pytest.raises(ConversionError, match=match) as info:
    text_encoder.load_params(folder, config, "float32")
  assert "\n" not in str(info.value)
  other = {"missing", "unexpected", "mis-shaped"} - {case.replace("misshaped", "mis-shaped")}
  assert not any(f"{name} [" in str(info.value) for name in other)


def test_loader_file_errors(folders, tmp_path):
  absent = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="folder not found: .*nope.*huggingface-cli"):
    text_encoder.TextEncoder.from_pretrained(absent)
  no_config = str(tmp_path / "no_config")
  shutil.copytree(folders["single"], no_config)
  os.remove(os.path.join(no_config, "config.json"))
  with pytest.raises(FileNotFoundError, match="No config.json in the text encoder folder"):
    text_encoder.TextEncoder.from_pretrained(no_config)
  no_weights = str(tmp_path / "no_weights")
  shutil.copytree(folders["single"], no_weights)
  os.remove(os.path.join(no_weights, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="No model.safetensors or model.safetensors.index"):
    text_encoder.TextEncoder.from_pretrained(no_weights)
  no_shard = str(tmp_path / "no_shard")
  shutil.copytree(folders["sharded"], no_shard)
  shard = sorted(f for f in os.listdir(no_shard) if f.startswith("model-"))[0]
  os.remove(os.path.join(no_shard, shard))
  with pytest.raises(FileNotFoundError, match=f"not in .*{shard}"):
    text_encoder.TextEncoder.from_pretrained(no_shard)


# ----------------------------------------------------------------------------- tokenizer


def _hf_tokenize(folder, texts, length):
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  out = tok(texts, padding="max_length", truncation=True, max_length=length)
  return (np.array(out["input_ids"], np.int32), np.array(out["attention_mask"], np.int32))


TEXTS = ["A photo of a cat.", "", "the DIGIT 7, in red!", "unknown words here",
         "a dog sitting on the grass and a cat sitting on the grass too, next to a red car"]


def test_word_level_tokenizer_matches_transformers(tmp_path):
  tok = stand_in_text_encoder.word_level_tokenizer(CAPTIONS)
  vocab = tok.get_vocab()
  assert (vocab["[PAD]"], vocab["[UNK]"], vocab["a"]) == (0, 1, 2)  # "a" is the most frequent
  assert tok.encode("A cat.").tokens == ["a", "cat", "."]
  config = qwen3.Qwen3Config.from_dict(HF_CONFIG)
  encoder, params = text_encoder.TextEncoder.random(config, tok, seed=0, max_length=10)
  folder = str(tmp_path / "wordlevel")
  encoder.save_pretrained(folder, params)
  batch = encoder.tokenize(TEXTS)
  want_ids, want_mask = _hf_tokenize(folder, TEXTS, 10)
  np.testing.assert_array_equal(batch["input_ids"], want_ids)
  np.testing.assert_array_equal(batch["attention_mask"], want_mask)
  assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].shape == (5, 10)
  assert batch["attention_mask"][4].all()  # truncated at max_length
  assert list(batch["attention_mask"][0]) == [1] * 6 + [0] * 4  # right padding
  assert list(batch["input_ids"][0, 6:]) == [0] * 4
  assert not batch["attention_mask"][1].any() and not batch["input_ids"][1].any()  # ""
  assert (batch["input_ids"][3] == 1).sum() == 3  # [UNK]
  # The folder loads back (pad id from tokenizer_config.json) with the same params.
  again, params2 = text_encoder.TextEncoder.from_pretrained(folder, "float32", max_length=10)
  assert again.pad_id == 0
  np.testing.assert_array_equal(again.tokenize(TEXTS)["input_ids"], batch["input_ids"])
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_saved_random_encoder_matches_transformers(tmp_path):
  """save_pretrained writes a folder that HF's Qwen3Model runs to the same outputs."""
  tok = _tokenizer_vocab_100()
  config = qwen3.Qwen3Config.from_dict(HF_CONFIG)
  encoder, params = text_encoder.TextEncoder.random(config, tok, seed=3, max_length=LENGTH)
  folder = str(tmp_path / "random")
  encoder.save_pretrained(folder, params)
  hf = transformers.Qwen3Model.from_pretrained(folder, dtype=torch.float32).eval()
  batch = encoder.tokenize(TEXTS)
  want = _hf_forward(hf, batch["input_ids"], batch["attention_mask"])
  got = encoder.encode_texts(params, TEXTS)
  assert np.abs(got - want).max() <= TOLERANCE


# Qwen2/3's pre-tokenizer split pattern (its tokenizer.json; transformers' Qwen2Tokenizer).
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def test_qwen_style_bpe_matches_qwen2tokenizer(tmp_path):
  """A byte-level BPE built like Qwen's, loaded by transformers as Qwen2Tokenizer (which
  rebuilds its own pipeline from the vocab and merges): the ids must still agree."""
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CAPTIONS * 20 + ["the quick brown fox jumps over 1234 lazy dogs"],
                          trainer)
  folder = str(tmp_path / "qwen_bpe")
  os.makedirs(folder)
  tok.save(os.path.join(folder, "tokenizer.json"))
  added = {str(tok.token_to_id(s)): {"content": s, "special": True, "normalized": False,
                                     "lstrip": False, "rstrip": False, "single_word": False}
           for s in specials}
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "Qwen2Tokenizer", "pad_token": "<|endoftext|>",
               "eos_token": "<|im_end|>", "bos_token": None, "unk_token": None,
               "added_tokens_decoder": added, "model_max_length": 131072}, f)
  assert type(transformers.AutoTokenizer.from_pretrained(folder)).__name__ == "Qwen2Tokenizer"
  texts = ["A photo of a cat.", "", "caf\u00e9 vs cafe\u0301, 2024!\n  new  line",
           "<|im_start|>user a red car<|im_end|>", "dogs " * 40]
  config = qwen3.Qwen3Config.from_dict({**HF_CONFIG, "vocab_size": 512})
  encoder = text_encoder.TextEncoder(qwen3.Qwen3Model(config), tok,
                                     text_encoder.find_pad_id(folder, tok), max_length=16)
  assert encoder.pad_id == tok.token_to_id("<|endoftext|>")
  batch = encoder.tokenize(texts)
  want_ids, want_mask = _hf_tokenize(folder, texts, 16)
  np.testing.assert_array_equal(batch["input_ids"], want_ids)
  np.testing.assert_array_equal(batch["attention_mask"], want_mask)


def test_pad_id_fallbacks(tmp_path):
  tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "<eos>": 2}, unk_token="[UNK]"))
  folder = str(tmp_path / "pads")
  os.makedirs(folder)
  with pytest.raises(ValueError, match="No padding token"):
    text_encoder.find_pad_id(folder, tok)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"eos_token_id": [2, 5]}, f)
  assert text_encoder.find_pad_id(folder, tok) == 2
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"pad_token": {"content": "a"}}, f)
  assert text_encoder.find_pad_id(folder, tok) == 1
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
    json.dump({"pad_token": "<pad>"}, f)
  with pytest.raises(ValueError, match="pad_token '<pad>', which is not in the vocabulary"):
    text_encoder.find_pad_id(folder, tok)


def test_tokenizer_larger_than_model_vocab_is_rejected():
  tok = stand_in_text_encoder.word_level_tokenizer([" ".join(f"w{i}" for i in range(200))])
  with pytest.raises(ValueError, match="tokenizer has 202 tokens but the model's vocab_size"):
    text_encoder.TextEncoder.random(qwen3.Qwen3Config.from_dict(HF_CONFIG), tok, max_length=8)


# ----------------------------------------------------------------------------- unconditional


def test_unconditional_is_the_empty_prompt_and_cached(folders):
  encoder, params = text_encoder.TextEncoder.from_pretrained(folders["single"], "float32",
                                                             max_length=LENGTH)
  empty = encoder.tokenize([""])
  assert encoder.pad_id == 0  # tokenizer_config.json's "[PAD]" wins over pad_token_id=1
  assert not empty["attention_mask"].any() and not empty["input_ids"].any()
  uncond = encoder.unconditional(params)
  assert uncond.shape == (1, LENGTH, 64) and isinstance(uncond, np.ndarray)
  np.testing.assert_array_equal(uncond, np.asarray(encoder.encode(params, **empty)))
  assert encoder.unconditional(params) is uncond  # cached
  other = jax.tree.map(lambda x: x * 1.5, params)
  assert not np.allclose(encoder.unconditional(other), uncond)  # new params, new value
