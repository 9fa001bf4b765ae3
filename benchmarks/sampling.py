"""Sampling throughput: images/s of a full sampler run, compile time reported apart.

  python benchmarks/sampling.py                      # S/8 at 64 px, batch 16, Euler 100
  python benchmarks/sampling.py --preset XL/16 --resolution 256 --dtype bfloat16  # on a GPU

Defaults are the reference's ImageNet sampler (Euler, 100 steps, CFG 3.5 on the interval
(0.1, 1)) on the S/8-64 setting. It times the sampler twice: skipping the unconditional
half outside the guidance interval (ours) and always running the doubled batch (the
reference), and prints the forward-pass count of each.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top

from benchmarks import common
from configs import models as presets
from pixnerd_jax.diffusion import samplers
from pixnerd_jax.models import build_model, count_params, init_params


def main():
  parser = common.model_parser(__doc__, repeats=2)
  parser.add_argument("--sampler", default="euler", choices=samplers.SAMPLERS)
  parser.add_argument("--num_steps", type=int, default=100)
  parser.add_argument("--guidance", type=float, default=3.5)
  parser.add_argument("--interval", type=float, nargs=2, default=(0.1, 1.0))
  parser.add_argument("--order", type=int, default=2, help="AdamLM order")
  parser.add_argument("--no_compare", action="store_true",
                      help="skip the always-doubled (reference) variant")
  args = parser.parse_args()

  model = build_model(presets.get(args.preset, num_classes=args.num_classes, dtype=args.dtype))
  params = jax.jit(init_params, static_argnums=0)(model, jax.random.key(0))
  shape = (args.batch, args.resolution, args.resolution, model.in_channels)
  noise = jax.random.normal(jax.random.key(1), shape)
  labels = jax.random.randint(jax.random.key(2), (args.batch,), 0, args.num_classes)
  settings = dict(sampler=args.sampler, num_steps=args.num_steps, guidance=args.guidance,
                  guidance_interval=tuple(args.interval), order=args.order)
  cost = samplers.forward_cost(**settings)
  print(f"preset {args.preset}, {count_params(params):,} params, {args.resolution}px, "
        f"batch {args.batch}, {args.dtype}, {args.sampler} {args.num_steps} steps, CFG "
        f"{args.guidance} on {tuple(args.interval)}, {jax.devices()[0].device_kind} "
        f"x{jax.device_count()}", flush=True)
  print(f"model calls {cost['calls']}, guided {cost['guided_calls']}: images evaluated per "
        f"sample {cost['images']} (skipping) vs {cost['images_always_doubled']} (always "
        f"doubled): {100 * cost['saving']:.1f}% fewer", flush=True)

  variants = {}
  for skip in (True,) if args.no_compare else (True, False):
    fn = jax.jit(lambda p, x, y, skip=skip: samplers.sample(
        lambda x, t, y: model.apply({"params": p}, x, t, y), x, y,
        null_class=model.num_classes, skip_unguided=skip, **settings))
    start = time.perf_counter()
    variants[skip] = fn.lower(params, noise, labels).compile()
    print(f"{'skip unguided' if skip else 'always doubled':>15}: compile "
          f"{time.perf_counter() - start:6.1f} s", flush=True)
  # Alternate the variants so that drifting machine load affects both alike.
  times = {skip: [] for skip in variants}
  for _ in range(args.repeats):
    for skip, compiled in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, noise, labels))
      times[skip].append(time.perf_counter() - start)
  for skip, runs in times.items():
    run_s = statistics.median(runs)
    print(f"{'skip unguided' if skip else 'always doubled':>15}: run {run_s:8.2f} s "
          f"(median of {len(runs)}) | {args.batch / run_s:8.3f} img/s", flush=True)
  if len(times) == 2:
    saved = 1 - statistics.median(times[True]) / statistics.median(times[False])
    print(f"time saved by skipping: {100 * saved:.1f}% (forward-pass count predicts "
          f"{100 * cost['saving']:.1f}%)")


if __name__ == "__main__":
  main()
