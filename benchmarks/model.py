"""Forward and forward+backward throughput of the PixNerd model.

  python benchmarks/model.py --preset S/8 --resolution 64 --batch 16 --num_classes 1000
  python benchmarks/model.py --preset XL/16 --resolution 64 --batch 2 --scan_blocks  # compile

Prints compile time and images/s (median over repeated timed runs after compile).
--scan_blocks and --remat_policy compare the trunk's compile and memory knobs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from benchmarks import common
from configs import models as presets
from pixnerd_jax.models import build_model, count_params, init_params
from pixnerd_jax.models.pixnerd import REMAT_POLICIES


def main():
  parser = common.model_parser(__doc__)
  parser.add_argument("--scan_blocks", action="store_true", help="nn.scan over DiT blocks")
  parser.add_argument("--remat_policy", default="none", choices=REMAT_POLICIES)
  args = parser.parse_args()

  model = build_model(presets.get(args.preset, num_classes=args.num_classes, dtype=args.dtype,
                                  scan_blocks=args.scan_blocks,
                                  remat_policy=args.remat_policy))
  rng = jax.random.key(0)
  x = jax.random.normal(rng, (args.batch, args.resolution, args.resolution, 3))
  t = jax.random.uniform(rng, (args.batch,))
  y = jax.random.randint(rng, (args.batch,), 0, args.num_classes)
  params = jax.jit(lambda key: init_params(model, key))(rng)

  forward = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))

  def loss(p, x, t, y):
    return jnp.mean(jnp.square(model.apply({"params": p}, x, t, y).astype(jnp.float32) - x))

  backward = jax.jit(jax.value_and_grad(loss))

  print(f"preset {args.preset}, {count_params(params):,} params, {args.resolution}px, "
        f"batch {args.batch}, {args.dtype}, scan_blocks={args.scan_blocks}, "
        f"remat={args.remat_policy}, {jax.devices()[0].device_kind} x{jax.device_count()}")
  for name, fn in (("forward", forward), ("forward+backward", backward)):
    compile_s, step_s = common.compile_and_time(fn, (params, x, t, y), args.repeats)
    print(f"{name:>17}: compile {compile_s:6.2f} s | step {step_s * 1e3:8.1f} ms | "
          f"{args.batch / step_s:8.1f} img/s")


if __name__ == "__main__":
  main()
