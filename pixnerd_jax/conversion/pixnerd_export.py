"""Our params back to the official PixNerd format: the inverse of pixnerd_weights.

A training workdir's online params become `denoiser.*`, its EMA `ema_denoiser.*` and its
REPA projector `diffusion_trainer.proj.*`; a params checkpoint (`convert checkpoint`
output) has one set of weights, written under both prefixes. Torch layouts throughout
(Linear weights (out, in)), float32. Written as .safetensors (no torch needed) or as a
Lightning-style .ckpt ({"state_dict": ..., "global_step": ...}) that the official
loading paths read (Lightning's ckpt_path, app.py's copy of `ema_denoiser.*`).
"""

import os
import re
from typing import Mapping

import numpy as np
from flax import traverse_util

from pixnerd_jax.conversion.pixnerd_weights import (EMA_PREFIX, ONLINE_PREFIX, REPA_PREFIX,
                                                    flax_path)
from pixnerd_jax.models import unstack_dit_blocks
from pixnerd_jax.models.state_dict import TORCH_INSTALL_HINT, ConversionError
from pixnerd_jax.training import checkpoint

FORMATS = (".safetensors", ".ckpt")
_INDEXED = re.compile(r"^(.+?)((?:_\d+)+)$")  # 'blocks_3' -> 'blocks', '_3'


def torch_key(path: tuple[str, ...]) -> str:
  """A Flax param path -> its official key; the inverse of pixnerd_weights.flax_path.

  ('blocks_3', 'attn', 'qkv', 'kernel') -> 'blocks.3.attn.qkv.weight'; a trailing _N of a
  module name is its index in a torch Sequential/ModuleList.
  """
  if len(path) == 1:
    return path[0]
  names = []
  for name in path[:-1]:
    match = _INDEXED.match(name)
    names.append(match.group(1) + match.group(2).replace("_", ".") if match else name)
  leaf = path[-1]
  if leaf == "embedding_table":
    return ".".join(names + [leaf, "weight"])
  return ".".join(names + ["weight" if leaf == "kernel" else leaf])


def to_torch_array(path: tuple[str, ...], value) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if value.ndim == 2 and path[-1] == "kernel":
    return np.ascontiguousarray(value.T)  # Dense (in, out) -> torch Linear (out, in)
  return value


def params_to_state_dict(params, prefix: str = "") -> dict[str, np.ndarray]:
  """Flax params (either block layout) -> {prefix + official key: float32 array}."""
  flat = traverse_util.flatten_dict(unstack_dit_blocks(params))
  out = {}
  for path, value in flat.items():
    key = torch_key(path)
    array = to_torch_array(path, value)
    # The import's mapping must bring the key back to this path.
    if flax_path(key, array.ndim) != path:
      raise ConversionError(f"No official key for the param {'/'.join(path)} (tried "
                            f"{key!r}); it is not part of the PixNerd model.")
    out[prefix + key] = array
  return out


def projector_state_dict(aux_params) -> dict[str, np.ndarray]:
  """REPA projector params ('proj_0_0' ...) -> `diffusion_trainer.proj.*`."""
  flat = traverse_util.flatten_dict(aux_params)
  return {REPA_PREFIX + torch_key(path)[len("proj."):]: to_torch_array(path, value)
          for path, value in flat.items()}


def exported_state_dict(checkpoint_dir: str, step: int | None = None):
  """(state_dict with official prefixes, description, step) of a training workdir or a
  params checkpoint (step 0)."""
  if os.path.exists(os.path.join(checkpoint_dir, checkpoint.MODEL_JSON)):
    if step is not None:
      raise checkpoint.CheckpointError(
          f"{checkpoint_dir} is a params checkpoint: --step applies to training workdirs.")
    _, params = checkpoint.load_params(checkpoint_dir)
    state = {**params_to_state_dict(params, ONLINE_PREFIX),
             **params_to_state_dict(params, EMA_PREFIX)}
    projector_dir = os.path.join(checkpoint_dir, checkpoint.REPA_PROJECTOR_DIR)
    if os.path.isdir(projector_dir):
      state.update(projector_state_dict(checkpoint.load_params(projector_dir)[1]))
    return state, f"params checkpoint {checkpoint_dir} (as both online and EMA weights)", 0
  if not os.path.isdir(os.path.join(checkpoint_dir, "checkpoints")):
    raise checkpoint.CheckpointError(
        f"{checkpoint_dir} is neither a training workdir (no checkpoints/) nor a params "
        f"checkpoint (no {checkpoint.MODEL_JSON}).")
  step, train_state = checkpoint.load_train_state(checkpoint_dir, step)
  state = {**params_to_state_dict(train_state["params"], ONLINE_PREFIX),
           **params_to_state_dict(train_state["ema_params"], EMA_PREFIX)}
  if train_state.get("aux_params"):
    state.update(projector_state_dict(train_state["aux_params"]))
  return state, f"step {step} of {checkpoint_dir}", step


def write(state_dict: Mapping[str, np.ndarray], out: str, global_step: int = 0) -> None:
  """Writes OUT as .safetensors, or as a Lightning-style .ckpt (needs torch)."""
  ext = os.path.splitext(out)[1].lower()
  if ext not in FORMATS:
    raise ConversionError(f"--out={out}: the file name must end in {' or '.join(FORMATS)}.")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if ext == ".safetensors":
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, out)
    return
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(TORCH_INSTALL_HINT.replace("Reading", "Writing") + " Or write "
                      ".safetensors, which needs no torch.") from e
  torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
              "global_step": int(global_step), "epoch": 0}, out)


def export_checkpoint(checkpoint_dir: str, out: str, step: int | None = None) -> str:
  """Exports a workdir or params checkpoint to OUT; returns what was exported."""
  if os.path.splitext(out)[1].lower() not in FORMATS:
    raise ConversionError(f"--out={out}: the file name must end in {' or '.join(FORMATS)}.")
  state_dict, description, global_step = exported_state_dict(checkpoint_dir, step)
  write(state_dict, out, global_step=global_step)
  return f"{description}: {len(state_dict)} tensors"
