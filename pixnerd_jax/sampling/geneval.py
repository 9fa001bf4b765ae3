"""GenEval image generation in the layout GenEval's evaluator reads.

Input: GenEval's `evaluation_metadata.jsonl` (or the rephrased variant the reference
sampled from), one JSON object a line with at least "prompt" and "tag" (and "include",
... which the evaluator uses). Output, for prompt index i (the line number from 0) and
sample k (djghosh13/geneval, evaluation/evaluate_images.py):

  <out>/<i:05d>/metadata.jsonl          that line's object, as written in the input
  <out>/<i:05d>/samples/<k:04d>.png
  <out>/run.json                        the settings (the evaluator only opens digit folders)

Sample k of every prompt starts from the noise of index k (seeds 0..N-1 per prompt, as
the reference), so a prompt's images do not depend on the other prompts. A prompt is
finished when its metadata.jsonl exists (written after its samples).
"""

import json
import os
from typing import Sequence

from etils import epath

from pixnerd_jax.sampling import text_to_image

METADATA = "metadata.jsonl"


def read_metadata(path: str) -> list[dict]:
  """The objects of an evaluation_metadata.jsonl, each with a string "prompt"."""
  if not epath.Path(path).is_file():  # local or gs://
    raise FileNotFoundError(f"GenEval metadata not found: {path} (GenEval's "
                            "prompts/evaluation_metadata.jsonl).")
  entries = []
  with epath.Path(path).open("r", encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        entry = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number} is not a JSON object ({e}).") from e
      if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
        raise ValueError(f"{path}:{number} has no \"prompt\" string; is this GenEval's "
                         "evaluation_metadata.jsonl?")
      if not isinstance(entry.get("tag"), str):
        # GenEval's evaluator scores each image by its prompt's tag: without one the whole
        # run would be sampled and then fail to score.
        raise ValueError(f"{path}:{number} has no \"tag\" string (GenEval scores each "
                         "prompt by its tag, e.g. \"single_object\"); use GenEval's "
                         "prompts/evaluation_metadata.jsonl or give every line its tag.")
      entries.append(entry)
  if not entries:
    raise ValueError(f"{path} holds no prompts.")
  return entries


def prompt_dir(out: str, index: int) -> str:
  return os.path.join(out, f"{index:05d}")


def sample_path(out: str, index: int, k: int) -> str:
  return os.path.join(prompt_dir(out, index), "samples", f"{k:04d}.png")


def layout(out: str, metadata: Sequence[dict], samples_per_prompt: int = 4
           ) -> text_to_image.Layout:
  """The Layout of a GenEval run (see the module doc)."""
  n = samples_per_prompt

  def is_done(i):
    return (epath.Path(prompt_dir(out, i), METADATA).exists()
            and all(epath.Path(sample_path(out, i, k)).exists() for k in range(n)))

  def write(i, images):
    epath.Path(sample_path(out, i, 0)).parent.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
      text_to_image.save_png(sample_path(out, i, k), image)
    line = json.dumps(metadata[i], ensure_ascii=False) + "\n"
    text_to_image.write_atomic(os.path.join(prompt_dir(out, i), METADATA),
                            lambda tmp: _write_text(tmp, line))

  read_manifest, write_manifest = text_to_image.json_manifest(out)
  return text_to_image.Layout(prompts=[m["prompt"] for m in metadata], samples_per_prompt=n,
                           noise_index=lambda i, k: k, is_done=is_done, write=write,
                           read_manifest=read_manifest, write_manifest=write_manifest)


def _write_text(path: str, text: str) -> None:
  epath.Path(path).write_text(text, encoding="utf-8")
