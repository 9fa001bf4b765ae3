"""DINOv2 weights (torch hub or Hugging Face) to Flax params for REPA; the command is
`python -m pixnerd_jax.convert_dinov2` (its docstring says which files it reads)."""

import json
import os
import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from pixnerd_jax.training import checkpoint
from pixnerd_jax.models.state_dict import ConversionError, load_state_dict
from pixnerd_jax.models import dinov2

# Keys of the checkpoints that the encoder's forward does not use.
_UNUSED = ("mask_token",)  # masked-image-modelling token (pretraining only)
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _find_weights(src: str) -> str:
  """A weights file: SRC itself, or the Hugging Face weights file in folder SRC."""
  if os.path.isdir(src):
    for name in _HF_WEIGHT_FILES:
      if os.path.exists(os.path.join(src, name)):
        return os.path.join(src, name)
    raise FileNotFoundError(f"No {' or '.join(_HF_WEIGHT_FILES)} in the folder {src}.")
  return src


def _strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops the `dinov2.` (HF task models) or `model.` wrapper prefix, if every key has it."""
  for prefix in ("dinov2.", "model.", "backbone."):
    if state_dict and all(k.startswith(prefix) for k in state_dict):
      return {k[len(prefix):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def is_huggingface(state_dict: Mapping[str, Any]) -> bool:
  return any(k.startswith(("embeddings.", "encoder.layer.")) for k in state_dict)


# HF layer key (after `encoder.layer.N.`) -> torch-hub key (after `blocks.N.`).
_HF_LAYER_RENAMES = {
    "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "attention.output.dense": "attn.proj",  # the Hub files' (transformers < 5) name
    "attention.o_proj": "attn.proj",        # transformers >= 5
    "layer_scale1": "ls1", "layer_scale2": "ls2",
}
_HF_LEAVES = {"weight": "weight", "bias": "bias", "lambda1": "gamma"}
_HF_QKV = {  # q, k, v parts of the fused hub `attn.qkv`, in its row order
    "attention.attention.query": 0, "attention.attention.key": 1,
    "attention.attention.value": 2, "attention.q_proj": 0, "attention.k_proj": 1,
    "attention.v_proj": 2,
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
}


def huggingface_to_hub(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames a Hugging Face Dinov2Model state_dict to the torch-hub key layout.

  The separate query/key/value projections are stacked into the hub's fused qkv.
  Unknown keys are kept under their own names, so the converter reports them.
  """
  out, qkv = {}, {}
  for key, value in state_dict.items():
    if key in _HF_TOP:
      out[_HF_TOP[key]] = value
      continue
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", key)
    if m:
      layer, module, leaf = m.groups()
      if module in _HF_QKV:
        qkv.setdefault((layer, leaf), [None] * 3)[_HF_QKV[module]] = value
        continue
      if module in _HF_LAYER_RENAMES:
        out[f"blocks.{layer}.{_HF_LAYER_RENAMES[module]}.{_HF_LEAVES[leaf]}"] = value
        continue
    out[key] = value
  for (layer, leaf), parts in qkv.items():
    if any(p is None for p in parts):
      absent = [n for n, p in zip(("query", "key", "value"), parts) if p is None]
      raise ConversionError(f"encoder.layer.{layer}.attention: the {leaf} of {absent} is "
                            "missing.")
    out[f"blocks.{layer}.attn.qkv.{leaf}"] = np.concatenate(parts, axis=0)
  return out


def infer_config(hub: Mapping[str, np.ndarray], num_heads: int | None = None,
                 interpolate_offset: float = 0.1) -> dict[str, Any]:
  """Reads the architecture off a torch-hub-layout state_dict."""
  try:
    hidden, channels, patch, _ = hub["patch_embed.proj.weight"].shape
    num_positions = hub["pos_embed"].shape[-2] - 1
    mlp_hidden = hub["blocks.0.mlp.fc1.weight"].shape[0]
  except KeyError as e:
    raise ConversionError(f"Not a DINOv2 ViT state_dict: key {e.args[0]!r} is missing.") from e
  if any(k.startswith("register_tokens") for k in hub):
    raise ConversionError("This is a DINOv2 with registers (`register_tokens`); REPA uses "
                          "dinov2_vitb14 without registers.")
  layers = sorted({int(m.group(1)) for k in hub if (m := re.match(r"blocks\.(\d+)\.", k))})
  if layers != list(range(len(layers))):
    raise ConversionError(f"Blocks must be numbered 0..n-1 (block_chunks=0), found {layers}.")
  num_heads = num_heads or hidden // 64
  if hidden % num_heads:
    raise ConversionError(f"hidden size {hidden} is not divisible by num_heads {num_heads}.")
  try:
    grid = dinov2.grid_size(int(num_positions))
  except ValueError as e:
    raise ConversionError(f"pos_embed: {e}") from e
  return dict(in_channels=int(channels), patch_size=int(patch), hidden_size=int(hidden),
              num_layers=len(layers), num_heads=int(num_heads),
              mlp_ratio=float(mlp_hidden / hidden), layer_norm_eps=1e-6,
              pos_grid_size=grid, interpolate_offset=float(interpolate_offset))


def _flax_entry(key: str, value: np.ndarray):
  """torch-hub key -> (Flax param path, array in the Flax layout)."""
  if key == "cls_token":
    return ("cls_token",), value.reshape(-1)
  if key == "pos_embed":
    return ("pos_embed",), value.reshape(-1, value.shape[-1])
  if key == "patch_embed.proj.weight":  # (D, C, p, p) -> (p, p, C, D)
    return ("patch_embed", "kernel"), np.transpose(value, (2, 3, 1, 0))
  if key == "patch_embed.proj.bias":
    return ("patch_embed", "bias"), value
  parts = key.split(".")
  if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
    parts = [f"blocks_{parts[1]}"] + parts[2:]
  *modules, leaf = parts
  if leaf == "weight" and value.ndim == 2:
    return tuple(modules) + ("kernel",), np.ascontiguousarray(value.T)  # (out,in)->(in,out)
  if leaf == "weight" and modules[-1].startswith("norm"):
    return tuple(modules) + ("scale",), value
  return tuple(modules) + (leaf,), value


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], num_heads: int | None = None,
                         interpolate_offset: float = 0.1):
  """A DINOv2 state_dict (torch-hub or Hugging Face keys) -> (model config, Flax params).

  Raises ConversionError naming unexpected keys, shape mismatches and params left empty.
  """
  state_dict = _strip_prefix(state_dict)
  hub = huggingface_to_hub(state_dict) if is_huggingface(state_dict) else dict(state_dict)
  model_cfg = infer_config(hub, num_heads, interpolate_offset)
  expected = traverse_util.flatten_dict(dinov2.param_shapes(dinov2.DinoV2(**model_cfg)))
  filled, unexpected, mismatched = {}, [], []
  for key, value in hub.items():
    if key in _UNUSED:
      continue
    path, array = _flax_entry(key, np.asarray(value, np.float32))
    if path not in expected:
      unexpected.append(key)
    elif tuple(array.shape) != tuple(expected[path].shape):
      mismatched.append(f"{key}: checkpoint {value.shape} vs model {expected[path].shape}")
    else:
      filled[path] = array
  missing = sorted("/".join(p) for p in expected if p not in filled)
  problems = []
  if unexpected:
    problems.append(f"unexpected keys: {sorted(unexpected)}")
  if mismatched:
    problems.append(f"shape mismatches: {mismatched}")
  if missing:
    problems.append(f"model params not filled: {missing}")
  if problems:
    raise ConversionError("The checkpoint does not match DINOv2 " + json.dumps(model_cfg)
                          + ": " + "; ".join(problems))
  return model_cfg, traverse_util.unflatten_dict(filled)


def _heads_from_hf_config(weights_path: str) -> int | None:
  path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("num_attention_heads")


def convert(src: str, out: str, num_heads: int | None = None,
            interpolate_offset: float = 0.1) -> dict[str, Any]:
  """Converts SRC (file or HF folder) to a params checkpoint in OUT; returns the config."""
  weights = _find_weights(src)
  state_dict = load_state_dict(weights)
  num_heads = num_heads or _heads_from_hf_config(weights)
  model_cfg, params = state_dict_to_params(state_dict, num_heads, interpolate_offset)
  checkpoint.save_params(out, params, dict(model_cfg, architecture="dinov2"))
  return model_cfg




