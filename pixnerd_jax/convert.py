"""Convert official PixNerd checkpoints to Flax params, and verify a conversion.

  python -m pixnerd_jax.convert checkpoint SRC --out DIR [--ema|--online]
  python -m pixnerd_jax.convert verify FIXTURE.npz
  python -m pixnerd_jax.convert export --checkpoint=DIR --out=FILE.safetensors|FILE.ckpt

SRC may be a Lightning `.ckpt`, a `.pt`/`.pth` state_dict, `.safetensors` or `.npz`.
Torch pickles are read with `weights_only=True` only: no arbitrary code is unpickled.
`export` is the way back: a training workdir (online, EMA, REPA projector) or a params
checkpoint to the official key names, as .safetensors or (with torch) a Lightning .ckpt.
"""

import argparse
import json
import sys

from absl import logging

from pixnerd_jax import models
from pixnerd_jax.conversion.pixnerd_export import export_checkpoint
from pixnerd_jax.conversion.pixnerd_weights import convert_checkpoint, verify_fixture
from pixnerd_jax.models.state_dict import ConversionError
from pixnerd_jax.runtime import console
from pixnerd_jax.training import checkpoint


@console.entry_point(known=(ConversionError, checkpoint.CheckpointError, OSError, ImportError,
                       KeyError), code=2)
def main(argv=None) -> int:
  console.quiet_start()
  parser = argparse.ArgumentParser(prog="python -m pixnerd_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  ckpt = sub.add_parser("checkpoint", help="official weights -> Orbax Flax params")
  ckpt.add_argument("src", help=".ckpt, .pt/.pth, .safetensors or .npz")
  ckpt.add_argument("--out", required=True, help="output directory (Orbax checkpoint)")
  which = ckpt.add_mutually_exclusive_group()
  which.add_argument("--ema", dest="use_ema", action="store_true", default=True,
                     help="read ema_denoiser.* (default)")
  which.add_argument("--online", dest="use_ema", action="store_false",
                     help="read denoiser.* (the online weights)")
  ver = sub.add_parser("verify", help="check a conversion against reference outputs")
  ver.add_argument("fixture", help="an official-code fixture .npz (c2i, samplers or t2i "
                   "format; see ../shared/reference/fixtures/README.md)")
  ver.add_argument("--forward_tol", type=float, default=1e-4)
  ver.add_argument("--sample_tol", type=float, default=1e-3)
  exp = sub.add_parser("export", help="our params -> official key names (.safetensors/.ckpt)")
  exp.add_argument("--checkpoint", required=True,
                   help="a training workdir (has checkpoints/) or a params checkpoint")
  exp.add_argument("--out", required=True,
                   help="FILE.safetensors, or FILE.ckpt (Lightning-style; needs torch)")
  exp.add_argument("--step", type=int, default=None,
                   help="workdir only: which checkpoint (default: the newest)")
  for command in (ckpt, ver, exp):
    command.add_argument("--verbose", action="store_true",
                         help="print the full traceback of an error")
  args = parser.parse_args(argv)
  if args.verbose:
    logging.set_verbosity(logging.DEBUG)
  if args.command == "checkpoint":
    model_cfg = convert_checkpoint(args.src, args.out, use_ema=args.use_ema)
    n = models.count_params(checkpoint.load_params(args.out)[1])
    print(f"wrote {args.out}: {n:,} params, model {json.dumps(model_cfg)}")
    return 0
  if args.command == "export":
    print(f"wrote {args.out}: {export_checkpoint(args.checkpoint, args.out, args.step)}")
    return 0
  return 0 if verify_fixture(args.fixture, args.forward_tol, args.sample_tol) else 1


if __name__ == "__main__":
  sys.exit(main())
