"""Forward and forward+backward throughput of the PixNerd model.

  python benchmarks/model.py --preset S/8 --resolution 64 --batch 16 --num_classes 1000
  python benchmarks/model.py --preset XL/16 --resolution 64 --batch 2 --scan_blocks  # compile

Prints compile time and images/s (median over repeated timed runs after compile).
--scan_blocks and --remat_policy compare the trunk's compile and memory knobs.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from configs import models as presets
from pixnerd_jax.models import build_model, count_params, init_params
from pixnerd_jax.models.pixnerd import REMAT_POLICIES


def _time(fn, *args, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="S/8")
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--repeats", type=int, default=10)
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
    start = time.perf_counter()
    compiled = fn.lower(params, x, t, y).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params, x, t, y))  # warm-up
    step_s = _time(compiled, params, x, t, y, repeats=args.repeats)
    print(f"{name:>17}: compile {compile_s:6.2f} s | step {step_s * 1e3:8.1f} ms | "
          f"{args.batch / step_s:8.1f} img/s")


if __name__ == "__main__":
  main()
