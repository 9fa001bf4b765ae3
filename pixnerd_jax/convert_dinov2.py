"""Convert DINOv2 weights (torch hub or Hugging Face) to Flax params for REPA.

  python -m pixnerd_jax.convert_dinov2 dinov2_vitb14_pretrain.pth --out converted/dinov2_vitb14
  python -m pixnerd_jax.convert_dinov2 dinov2-base/model.safetensors --out converted/dinov2_vitb14

SRC is the official torch-hub checkpoint (`.pth`: `blocks.0.attn.qkv.weight`,
`pos_embed`, ...) or a Hugging Face `facebook/dinov2-base` file (`.safetensors` or
`.bin`: `embeddings.cls_token`, `encoder.layer.0.attention.attention.query.weight`, ...;
the renamed `attention.q_proj` layout of transformers >= 5 is read too), or a folder
holding one. Both become one Flax layout, written with `checkpoint.save_params` (read
it with `checkpoint.load_params` or `repa.load_dino`). Torch pickles are read with
`weights_only=True` only.

The head count is not stored in the weights: it is read from a Hugging Face
`config.json` beside SRC if there is one, else taken as hidden_size / 64 (true of every
DINOv2 size); `--num_heads` overrides it. `--interpolate_offset` chooses how the
position embedding is resampled for other input sizes: 0.1 (default) as the torch-hub
model the reference's REPA uses, 0.0 as Hugging Face's Dinov2Model.
"""

import argparse
import json
import sys

import numpy as np
from flax import traverse_util

from pixnerd_jax.conversion.dinov2_weights import convert
from pixnerd_jax.models.state_dict import ConversionError
from pixnerd_jax.training import checkpoint


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pixnerd_jax.convert_dinov2",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="torch-hub .pth, HF .safetensors/.bin, or an HF folder")
  parser.add_argument("--out", required=True, help="output directory (Orbax params)")
  parser.add_argument("--num_heads", type=int, default=None,
                      help="attention heads (default: config.json beside SRC, else D/64)")
  parser.add_argument("--interpolate_offset", type=float, default=0.1,
                      help="0.1: torch-hub position-embedding resampling (the reference); "
                           "0.0: Hugging Face's")
  args = parser.parse_args(argv)
  try:
    model_cfg = convert(args.src, args.out, args.num_heads, args.interpolate_offset)
  except (ConversionError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  _, params = checkpoint.load_params(args.out)
  n = sum(int(np.size(x)) for x in traverse_util.flatten_dict(params).values())
  print(f"wrote {args.out}: {n:,} params, DINOv2 {json.dumps(model_cfg)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
