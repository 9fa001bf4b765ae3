"""Foreign weight files (torch pickles, safetensors, .npz) as flat numpy state dicts, and
the error for weights that do not fit a model.

Torch pickles are read with `weights_only=True` only: no arbitrary code is unpickled.
"""

import os
import zipfile
from typing import Mapping

import numpy as np

from pixnerd_jax.runtime import console

TORCH_INSTALL_HINT = (
    "Reading torch checkpoints (.ckpt/.pt/.pth) needs PyTorch. Install the CPU build with "
    "`pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu` "
    "(or convert the file to .safetensors/.npz on a machine that has torch).")


class ConversionError(ValueError):
  """The checkpoint does not match the model; the message says which keys."""


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a flat {key: float32 array} mapping from any supported file format."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".ckpt", ".pt", ".pth", ".bin"):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(TORCH_INSTALL_HINT) from e
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types
      raise ConversionError(
          f"Could not read {path} as a torch checkpoint with weights_only=True: the file is "
          "corrupt, or it holds Python objects beyond tensors; re-save its state_dict with "
          f"torch.save(model.state_dict(), ...). ({console.summary(e, 200)})") from e
    if isinstance(obj, Mapping) and "state_dict" in obj:
      obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
      raise ConversionError(f"{path} does not hold a state_dict (got {type(obj).__name__}).")
    return {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}
  if ext == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
    except Exception as e:  # safetensors raises its own error type for damaged headers
      raise ConversionError(f"Could not read {path} as safetensors: the file is damaged or "
                            f"incomplete; download it again. ({console.summary(e, 200)})") from e
  if ext == ".npz":
    try:
      with np.load(path, allow_pickle=False) as data:
        # A fixture keeps its weights under sd/ next to its inputs and outputs.
        if any(k.startswith("sd/") for k in data.files):
          return {k[3:]: np.asarray(data[k], np.float32) for k in data.files
                  if k.startswith("sd/")}
        return {k: np.asarray(data[k], np.float32) for k in data.files
                if data[k].dtype.kind == "f" and not _is_fixture_array(k)}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      raise ConversionError(f"Could not read {path} as .npz: the file is damaged or "
                            f"incomplete; write it again. ({console.summary(e, 200)})") from e
  raise ConversionError(
      f"Unsupported checkpoint extension {ext!r} for {path}: expected .ckpt, .pt, .pth, "
      ".safetensors or .npz.")


def _is_fixture_array(key: str) -> bool:
  return key in ("x", "t", "out", "noise", "sample_out")
