"""The text-to-image model's frozen text encoder: Qwen3 weights, tokenizer, encoding.

Reads a Hugging Face folder, local or gs:// (nothing is downloaded from the Hub), e.g. `Qwen/Qwen3-1.7B` fetched
once with `huggingface-cli download Qwen/Qwen3-1.7B --local-dir weights/Qwen3-1.7B`:
  config.json                      architecture (models/qwen3.Qwen3Config)
  model.safetensors, or            weights; bf16, fp16 or fp32; keys with or without the
  model.safetensors.index.json     `model.` prefix (Qwen3ForCausalLM vs Qwen3Model saves);
    + its shards                   `lm_head.weight` is ignored, every other key must be used
  tokenizer.json                   the fast-tokenizer file, run with the `tokenizers` package
  tokenizer_config.json            its `pad_token` names the padding token

What it computes (spec 7.2): prompts tokenized, truncated and right-padded to exactly
max_length (128) tokens; Qwen3Model's last hidden state at every position (the mask
reaches Qwen, not PixNerd); optionally zero-padded or truncated on the channel axis to
the denoiser's text width (`embed_dim`). The unconditional input is the encoding of "".

  encoder, params = TextEncoder.from_pretrained("weights/Qwen3-1.7B")
  batch = encoder.tokenize(["a photo of a cat"])        # host side, numpy
  y = encoder.encode(params, **batch)                     # pure, jittable: (1, 128, 2048)
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from tokenizers import Tokenizer

from pixnerd_jax.models import qwen3
from pixnerd_jax.models.state_dict import ConversionError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
DOWNLOAD_HINT = ("huggingface-cli download Qwen/Qwen3-1.7B --local-dir weights/Qwen3-1.7B "
                 "(on a machine with internet)")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_IGNORED_KEYS = ("lm_head.weight",)  # Qwen3ForCausalLM's output head (tied to the embedding)
_PREFIX = "model."


def _dtype(name) -> Any:
  if name not in _DTYPES:
    raise ValueError(f"Text encoder dtype must be one of {sorted(_DTYPES)}, got {name!r}.")
  return _DTYPES[name]


def _is_file(path) -> bool:
  return epath.Path(path).is_file()


def _require_folder(folder: str) -> None:
  if not epath.Path(folder).is_dir():  # epath: local folders and gs:// alike
    raise FileNotFoundError(f"Text encoder folder not found: {folder!r}. Fetch it once with "
                            f"`{DOWNLOAD_HINT}` and point the config at that folder.")


def _read_json(path: str) -> dict:
  try:
    return json.loads(epath.Path(path).read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}).") from e


@contextlib.contextmanager
def _local_file(path: str) -> Iterator[str]:
  """A local path with the contents of `path`: itself when local, else a temporary copy
  (safetensors memory-maps files, which needs a local file; the copy is one shard)."""
  if os.path.isfile(path):
    yield path
    return
  folder = tempfile.mkdtemp(prefix="text_encoder_")
  try:
    local = os.path.join(folder, epath.Path(path).name)
    with epath.Path(path).open("rb") as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst, 64 << 20)
    yield local
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def read_config(folder: str) -> qwen3.Qwen3Config:
  """The Qwen3Config of a Hugging Face folder's config.json."""
  _require_folder(folder)
  path = os.path.join(folder, CONFIG_FILE)
  if not _is_file(path):
    raise FileNotFoundError(f"No {CONFIG_FILE} in the text encoder folder {folder!r}; it must "
                            "be a complete Hugging Face model folder.")
  try:
    return qwen3.Qwen3Config.from_dict(_read_json(path))
  except qwen3.Qwen3ConfigError:
    raise
  except ValueError as e:  # not JSON
    raise qwen3.Qwen3ConfigError(str(e)) from e


# ----------------------------------------------------------------------------- weights


def hf_layout(config: qwen3.Qwen3Config) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """HF key (no prefix) -> (Flax param path, HF tensor shape) for every param of the model.

  Flax `.../kernel` is the HF `.../weight` transposed; `embed_tokens/embedding` is
  `embed_tokens.weight`; norm weights keep their name. `layers_N` is `layers.N`.
  """
  shapes = traverse_util.flatten_dict(qwen3.param_shapes(qwen3.Qwen3Model(config)))
  layout = {}
  for path, shape in shapes.items():
    modules = [f"layers.{p[len('layers_'):]}" if p.startswith("layers_") else p
               for p in path[:-1]]
    hf_shape = tuple(shape.shape)
    if path[-1] == "kernel":
      hf_shape = hf_shape[::-1]
    layout[".".join(modules + ["weight"])] = (path, hf_shape)
  return layout


def weight_files(folder: str) -> list[str]:
  """The safetensors files of a folder: the shards named by the index, or the single file."""
  _require_folder(folder)
  index = os.path.join(folder, WEIGHTS_INDEX_FILE)
  if _is_file(index):
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, Mapping) or not weight_map:
      raise ConversionError(f"{index} has no weight_map; re-save the model with "
                            "save_pretrained(safe_serialization=True).")
    files = [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
    absent = [os.path.basename(f) for f in files if not _is_file(f)]
    if absent:
      raise FileNotFoundError(f"{index} names shards that are not in {folder!r}: {absent}.")
    return files
  single = os.path.join(folder, WEIGHTS_FILE)
  if _is_file(single):
    return [single]
  raise FileNotFoundError(f"No {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in {folder!r} (only "
                          "safetensors are read; re-save .bin weights with "
                          "save_pretrained(safe_serialization=True)).")


def _listing(items: Sequence[str], limit: int = 6) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def load_params(folder: str, config: qwen3.Qwen3Config, dtype: str = "bfloat16") -> dict:
  """Flax params for Qwen3Model(config) from the folder's safetensors, as numpy arrays.

  Args:
    dtype: "bfloat16" keeps (or casts to) bf16 params, as the reference runs the encoder;
      "float32" upcasts. bf16 tensors are read through ml_dtypes' bfloat16.
  Raises:
    ConversionError listing every missing, unexpected, duplicated or mis-shaped key.
  """
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  target = np.dtype(_dtype(dtype))
  layout = hf_layout(config)
  flat, unexpected, misshaped, duplicated = {}, [], [], []
  seen = set()  # HF keys found, whatever their shape
  for path in weight_files(folder):
    with _local_file(path) as local, safe_open(local, framework="numpy") as f:
      for file_key in f.keys():
        key = file_key[len(_PREFIX):] if file_key.startswith(_PREFIX) else file_key
        if key in _IGNORED_KEYS:
          continue
        if key not in layout:
          unexpected.append(file_key)
          continue
        param_path, hf_shape = layout[key]
        if key in seen:
          duplicated.append(file_key)
          continue
        seen.add(key)
        shape = tuple(f.get_slice(file_key).get_shape())
        if shape != hf_shape:
          misshaped.append(f"{file_key} {shape} (config.json needs {hf_shape})")
          continue
        value = np.asarray(f.get_tensor(file_key)).astype(target, copy=False)
        flat[param_path] = np.ascontiguousarray(value.T) if param_path[-1] == "kernel" else value
  missing = [key for key in layout if key not in seen]
  problems = [f"{name} [{_listing(keys)}]" for name, keys in
              (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
               ("duplicated", duplicated)) if keys]
  if problems:
    raise ConversionError(f"The weights in {folder!r} do not match its {CONFIG_FILE}: "
                          + "; ".join(problems) + ".")
  return traverse_util.unflatten_dict(flat)


def params_to_hf(params) -> dict[str, np.ndarray]:
  """Flax params -> HF Qwen3Model state dict (no prefix), e.g. to save a folder."""
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    modules = [f"layers.{p[len('layers_'):]}" if p.startswith("layers_") else p
               for p in path[:-1]]
    value = np.asarray(value)
    out[".".join(modules + ["weight"])] = np.ascontiguousarray(
        value.T if path[-1] == "kernel" else value)
  return out


# ----------------------------------------------------------------------------- tokenizer


def _token_name(entry) -> str | None:
  """tokenizer_config.json writes special tokens as strings or AddedToken dicts."""
  if isinstance(entry, Mapping):
    return entry.get("content")
  return entry if isinstance(entry, str) else None


def find_pad_id(folder: str, tokenizer: Tokenizer) -> int:
  """The padding id: tokenizer_config.json's pad_token, else tokenizer.json's padding,
  else config.json's pad_token_id, else its eos_token_id."""
  tok_config = os.path.join(folder, TOKENIZER_CONFIG_FILE)
  if _is_file(tok_config):
    name = _token_name(_read_json(tok_config).get("pad_token"))
    if name is not None:
      pad_id = tokenizer.token_to_id(name)
      if pad_id is None:
        raise ValueError(f"{tok_config} names pad_token {name!r}, which is not in the "
                         f"vocabulary of {TOKENIZER_FILE}.")
      return pad_id
  if tokenizer.padding is not None:
    return int(tokenizer.padding["pad_id"])
  config_path = os.path.join(folder, CONFIG_FILE)
  config = _read_json(config_path) if _is_file(config_path) else {}
  for field in ("pad_token_id", "eos_token_id"):
    value = config.get(field)
    if isinstance(value, (list, tuple)):
      value = value[0] if value else None
    if value is not None:
      return int(value)
  raise ValueError(f"No padding token for {folder!r}: set pad_token in {TOKENIZER_CONFIG_FILE} "
                   f"(Qwen uses \"<|endoftext|>\") or pad_token_id in {CONFIG_FILE}.")


def load_tokenizer(folder: str) -> tuple[Tokenizer, int]:
  """(tokenizer, pad id) of a Hugging Face folder."""
  _require_folder(folder)
  path = os.path.join(folder, TOKENIZER_FILE)
  if not _is_file(path):
    raise FileNotFoundError(f"No {TOKENIZER_FILE} in the text encoder folder {folder!r} (the "
                            "fast-tokenizer file every Qwen3 release ships).")
  tokenizer = Tokenizer.from_str(epath.Path(path).read_text(encoding="utf-8"))
  return tokenizer, find_pad_id(folder, tokenizer)




# ----------------------------------------------------------------------------- encoder


class TextEncoder:
  """A frozen Qwen3 text encoder: tokenizer settings + the Flax module (params apart).

  Attributes:
    model: the Qwen3Model module (its dtype is the compute dtype).
    max_length: tokens per prompt (padded/truncated to exactly this).
    embed_dim: output channels; the hidden state is zero-padded or truncated to it
      (None = hidden_size), as the reference does for the denoiser's txt_embed_dim.
    pad_id: the padding token id.
  """

  def __init__(self, model: qwen3.Qwen3Model, tokenizer: Tokenizer, pad_id: int,
               max_length: int = 128, embed_dim: int | None = None):
    config = model.config
    if max_length < 1 or max_length > config.max_position_embeddings:
      raise ValueError(f"Text encoder max_length={max_length} must be in "
                       f"[1, max_position_embeddings={config.max_position_embeddings}].")
    if embed_dim is not None and embed_dim < 1:
      raise ValueError(f"Text encoder embed_dim={embed_dim} must be positive (or None).")
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > config.vocab_size:  # jnp.take would silently clip the extra ids
      raise ValueError(f"The tokenizer has {vocab} tokens but the model's vocab_size is "
                       f"{config.vocab_size}; they come from different models.")
    if not 0 <= pad_id < vocab:
      raise ValueError(f"Pad id {pad_id} is not a token of the tokenizer ({vocab} tokens).")
    self.model = model
    self.max_length = int(max_length)
    self.embed_dim = embed_dim
    self.pad_id = int(pad_id)
    # A private copy: the same truncation and padding transformers' tokenizer applies for
    # (texts, padding="max_length", truncation=True, max_length=max_length), right side.
    self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
    self.tokenizer.enable_truncation(self.max_length, stride=0, strategy="longest_first",
                                     direction="right")
    self.tokenizer.enable_padding(direction="right", pad_id=self.pad_id,
                                  pad_token=tokenizer.id_to_token(self.pad_id),
                                  length=self.max_length)
    self._jit_encode = jax.jit(self.encode)
    self._unconditional = None  # (params it was computed with, (1, L, E) numpy)

  @property
  def config(self) -> qwen3.Qwen3Config:
    return self.model.config

  @property
  def out_dim(self) -> int:
    return self.embed_dim or self.config.hidden_size

  @classmethod
  def from_pretrained(cls, folder: str, dtype: str = "bfloat16", *, max_length: int = 128,
                      embed_dim: int | None = None) -> tuple["TextEncoder", dict]:
    """(encoder, params) from a local Hugging Face Qwen3 folder (see the module doc).

    dtype sets both the params and the compute ("bfloat16" as the reference, "float32").
    """
    config = read_config(folder)
    tokenizer, pad_id = load_tokenizer(folder)
    params = load_params(folder, config, dtype)
    model = qwen3.Qwen3Model(config, dtype=_dtype(dtype), param_dtype=_dtype(dtype))
    encoder = cls(model, tokenizer, pad_id, max_length, embed_dim)
    return encoder, jax.tree.map(jnp.asarray, params)

  @classmethod
  def random(cls, config: qwen3.Qwen3Config, tokenizer: Tokenizer, seed: int = 0,
             dtype: str = "float32", *, pad_id: int | None = None, max_length: int = 128,
             embed_dim: int | None = None) -> tuple["TextEncoder", dict]:
    """(encoder, params) with fixed random weights (HF's init), e.g. a stand-in encoder.

    pad_id defaults to the tokenizer's padding id (word_level_tokenizer sets one).
    """
    if pad_id is None:
      if tokenizer.padding is None:
        raise ValueError("TextEncoder.random needs pad_id, or a tokenizer with padding "
                         "enabled (word_level_tokenizer enables it).")
      pad_id = tokenizer.padding["pad_id"]
    model = qwen3.Qwen3Model(config, dtype=_dtype(dtype), param_dtype=_dtype(dtype))
    params = qwen3.init_params(model.clone(param_dtype=jnp.float32), jax.random.key(seed))
    params = jax.tree.map(lambda x: x.astype(_dtype(dtype)), params)
    return cls(model, tokenizer, pad_id, max_length, embed_dim), params

  def tokenize(self, texts: Sequence[str] | str) -> dict[str, np.ndarray]:
    """Prompts -> input_ids and attention_mask, each (B, max_length) int32 numpy.

    Same ids as transformers' AutoTokenizer(texts, padding="max_length", truncation=True,
    max_length=max_length) on the same folder; "" gives an all-padding row.
    """
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
      raise TypeError(f"tokenize takes strings; got {bad[:3]}.")
    encodings = self.tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], np.int32).reshape(len(texts), self.max_length)
    mask = np.array([e.attention_mask for e in encodings], np.int32).reshape(ids.shape)
    return {"input_ids": ids, "attention_mask": mask}

  def encode(self, params, input_ids, attention_mask):
    """Pure and jittable: (B, L) ids and {0, 1} mask -> (B, L, out_dim) in compute dtype.

    Every position is returned, padding included; channels zero-padded/truncated to
    embed_dim. Gradients are stopped (the encoder is frozen).
    """
    hidden = self.model.apply({"params": params}, jnp.asarray(input_ids, jnp.int32),
                              jnp.asarray(attention_mask, jnp.int32))
    width = hidden.shape[-1]
    if self.out_dim < width:
      hidden = hidden[..., :self.out_dim]
    elif self.out_dim > width:
      hidden = jnp.pad(hidden, ((0, 0), (0, 0), (0, self.out_dim - width)))
    return jax.lax.stop_gradient(hidden)

  def encode_texts(self, params, texts: Sequence[str]) -> np.ndarray:
    """Host-side convenience: tokenize, encode (jitted), fetch. (B, L, out_dim) numpy."""
    batch = self.tokenize(texts)
    return np.asarray(jax.device_get(self._jit_encode(params, **batch)))

  def unconditional(self, params) -> np.ndarray:
    """The encoding of "" (the reference's unconditional input), (1, L, out_dim) numpy.

    Computed once per params object and cached on the host.
    """
    if self._unconditional is None or self._unconditional[0] is not params:
      self._unconditional = (params, self.encode_texts(params, [""]))
    return self._unconditional[1]

  def save_pretrained(self, folder: str, params) -> None:
    """Writes a Hugging Face folder (config.json, model.safetensors, tokenizer files)
    that transformers' Qwen3Model/AutoTokenizer and `from_pretrained` read back."""
    from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
    root = epath.Path(folder)  # local or gs://
    root.mkdir(parents=True, exist_ok=True)
    state = params_to_hf(jax.device_get(params))
    dtype = {str(np.dtype(v.dtype)) for v in state.values()}
    config = self.config.to_hf_dict()
    config.update(pad_token_id=self.pad_id, dtype=dtype.pop() if len(dtype) == 1 else "float32")
    (root / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    (root / WEIGHTS_FILE).write_bytes(save(state, metadata={"format": "pt"}))
    plain = Tokenizer.from_str(self.tokenizer.to_str())
    plain.no_truncation()
    plain.no_padding()
    (root / TOKENIZER_FILE).write_text(plain.to_str(), encoding="utf-8")
    # The generic fast tokenizer class, so that AutoTokenizer runs tokenizer.json as it is
    # (without it, model_type qwen3 selects Qwen2Tokenizer, which rebuilds a byte-level BPE).
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "pad_token": self.tokenizer.id_to_token(self.pad_id),
                  "padding_side": "right",
                  "model_max_length": self.config.max_position_embeddings}
    (root / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tok_config, indent=2),
                                              encoding="utf-8")


# ----------------------------------------------------------------------------- runs

STAND_IN_DIR = "text_encoder"  # <workdir>/text_encoder: a training run's stand-in encoder


def folder_for_run(text_encoder_config, workdir: str | None = None) -> str:
  """The Hugging Face folder a run's text encoder lives in.

  config.text_encoder.path when set; else the stand-in a training run saved in
  <workdir>/text_encoder. Raises FileNotFoundError saying which to provide.
  """
  path = text_encoder_config.get("path", "")
  if path:
    _require_folder(path)
    return path
  if workdir and _is_file(os.path.join(workdir, STAND_IN_DIR, CONFIG_FILE)):
    return os.path.join(workdir, STAND_IN_DIR)
  where = f" and {os.path.join(workdir, STAND_IN_DIR)} does not exist" if workdir else ""
  raise FileNotFoundError(
      f"No text encoder: config.text_encoder.path is empty{where}. Set "
      f"--config.text_encoder.path to a local Qwen3 folder ({DOWNLOAD_HINT}).")


def load_for_run(text_encoder_config, txt_embed_dim: int, workdir: str | None = None):
  """(encoder, params) for a text-to-image run: its folder, dtype and max_length, the
  output width padded/truncated to the denoiser's txt_embed_dim."""
  folder = folder_for_run(text_encoder_config, workdir)
  return TextEncoder.from_pretrained(
      folder, text_encoder_config.get("dtype", "bfloat16"),
      max_length=int(text_encoder_config.get("max_length", 128)), embed_dim=txt_embed_dim)






