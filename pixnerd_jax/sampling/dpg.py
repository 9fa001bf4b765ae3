"""DPG-Bench image generation in the form DPG-Bench's scorer reads.

Input: a folder of prompt files `<name>.txt`, one prompt each (the official
repository's `dpg_bench/prompts/`, 1,065 files). Output: for each, `<out>/<name>.png`, a
2 x 2 grid without padding of 4 samples of size S x S, sample k at row k // 2, column
k % 2: the crops (0, 0, S, S), (S, 0, 2S, S), (0, S, S, 2S), (S, S, 2S, 2S) that
TencentQQGYLab/ELLA's dpg_bench/compute_dpg_bench.py cuts with `--resolution S
--pic-num 4`, which looks each file's questions up by its name.

The scorer lists every file of the folder, so nothing else is written there: each PNG
carries the run's settings in a text chunk ("pixnerd"), which a restart checks. Sample k
starts from the noise of index k (seeds 0..3 per prompt, as the reference); a prompt is
finished when its PNG exists.
"""

import json
import os
from typing import Sequence

from etils import epath
import numpy as np
from PIL import Image

from pixnerd_jax.sampling import text_to_image

SAMPLES_PER_PROMPT = 4
PNG_TEXT_KEY = "pixnerd"


def read_prompts(folder: str) -> tuple[list[str], list[str]]:
  """(names, prompts) of the folder's `<name>.txt` files, sorted by name; each file's text,
  whitespace-stripped."""
  if not epath.Path(folder).is_dir():  # local or gs://
    raise FileNotFoundError(f"DPG-Bench prompt folder not found: {folder} (the official "
                            "repository's dpg_bench/prompts/).")
  names = sorted(p.name[:-len(".txt")] for p in epath.Path(folder).iterdir()
                 if p.name.endswith(".txt"))
  if not names:
    raise ValueError(f"{folder} has no <name>.txt prompt files.")
  prompts = []
  for name in names:
    prompt = epath.Path(folder, f"{name}.txt").read_text(encoding="utf-8").strip()
    if not prompt:
      raise ValueError(f"{os.path.join(folder, name + '.txt')} is empty.")
    prompts.append(prompt)
  return names, prompts


def grid_2x2(images: np.ndarray) -> np.ndarray:
  """(4, S, S, C) -> (2S, 2S, C): sample k at row k // 2, column k % 2, no padding."""
  if images.shape[0] != SAMPLES_PER_PROMPT:
    raise ValueError(f"A DPG-Bench grid holds {SAMPLES_PER_PROMPT} images, got "
                     f"{images.shape[0]}.")
  rows = [np.concatenate(list(images[r * 2:r * 2 + 2]), axis=1) for r in range(2)]
  return np.concatenate(rows, axis=0)


def image_path(out: str, name: str) -> str:
  return os.path.join(out, f"{name}.png")


def read_png_manifest(path: str) -> dict | None:
  """The settings a PNG of ours carries (without its prompt), or None."""
  with epath.Path(path).open("rb") as f, Image.open(f) as image:
    text = getattr(image, "text", {}).get(PNG_TEXT_KEY)
  if text is None:
    return None
  manifest = json.loads(text)
  manifest.pop("prompt", None)
  return manifest


def layout(out: str, names: Sequence[str], prompts: Sequence[str], manifest: dict
           ) -> text_to_image.Layout:
  """The Layout of a DPG-Bench run (see the module doc); `manifest` goes into each PNG."""
  if manifest["samples_per_prompt"] != SAMPLES_PER_PROMPT:
    raise ValueError(f"DPG-Bench's scorer reads a 2x2 grid: {SAMPLES_PER_PROMPT} samples "
                     f"per prompt, not {manifest['samples_per_prompt']}.")
  if manifest["height"] != manifest["width"]:
    raise ValueError(f"DPG-Bench's scorer cuts square crops: height ({manifest['height']}) "
                     f"and width ({manifest['width']}) must be equal.")

  def write(i, images):
    text = json.dumps(dict(manifest, prompt=prompts[i]), sort_keys=True)
    text_to_image.save_png(image_path(out, names[i]), grid_2x2(images), {PNG_TEXT_KEY: text})

  def read_manifest():
    for name in names:
      if epath.Path(image_path(out, name)).exists():
        return read_png_manifest(image_path(out, name)) or {"note": "a PNG not made here"}
    return None

  return text_to_image.Layout(prompts=list(prompts), samples_per_prompt=SAMPLES_PER_PROMPT,
                           noise_index=lambda i, k: k,
                           is_done=lambda i: epath.Path(image_path(out, names[i])).exists(),
                           write=write, read_manifest=read_manifest,
                           write_manifest=lambda manifest: None)
