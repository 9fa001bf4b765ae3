"""Text-to-image sampling throughput, and the memory of high-resolution decoding.

  python benchmarks/sampling_t2i.py                       # tiny_t2i trained at 16 px: 16 and 64 px
  python benchmarks/sampling_t2i.py --preset XXL/16 --resolution 512 --sizes 512x512 1024x1024 \
      --batch 4 --dtype bfloat16                          # on a GPU
  python benchmarks/sampling_t2i.py --memory --preset XXL/16 --resolution 512 --sizes 1024x1024 \
      --trunk_blocks 1 --text_blocks 1                    # the field decoder's memory, any host

Throughput: the reference's SFT sampler (AdamLM order 2, 25 steps, CFG 4 on (0, 1),
timeshift 3; flags change it) with random params and random text features: the text
encoder runs once per prompt outside the loop and is not timed. Sizes other than the
trained resolution use the heavy decoder; compile time is reported apart.

Memory (--memory): one guided model call (the doubled [uncond; cond] batch) at each size,
with the neural field whole and in chunks of --field_chunk_pixels pixels, each in a fresh
process: XLA's temporary buffers of the compiled call, and the peak measured while it
runs (GPU: the allocator's peak bytes; CPU: the process's peak resident set, next to its
size before the call). --trunk_blocks / --text_blocks shrink the trunk (the field
decoder's shapes do not depend on it) so that the XXL/16 decoder fits a small host.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from configs import models as presets
from pixnerd_jax.sampling import text_to_image as sample_t2i
from pixnerd_jax.diffusion import samplers
from pixnerd_jax.models import build_model, count_params, init_params

GIB = 1024 ** 3


def _size(text: str) -> tuple[int, int]:
  height, width = text.lower().split("x")
  return int(height), int(width)


def parse_args(argv=None):
  parser = common.model_parser(__doc__, repeats=2)
  parser.set_defaults(preset="tiny_t2i", resolution=16, batch=16)
  parser.add_argument("--sizes", nargs="+", default=None,
                      help="output HxW sizes (default: the resolution and 4x it)")
  parser.add_argument("--sampler", default="adamlm", choices=samplers.SAMPLERS)
  parser.add_argument("--num_steps", type=int, default=25)
  parser.add_argument("--guidance", type=float, default=4.0)
  parser.add_argument("--timeshift", type=float, default=3.0)
  parser.add_argument("--order", type=int, default=2, help="AdamLM order")
  parser.add_argument("--field_chunk_pixels", type=int, nargs="+",
                      default=[sample_t2i.DEFAULT_FIELD_CHUNK_PIXELS],
                      help="field chunk sizes to time (0 = unchunked); --memory adds 0")
  parser.add_argument("--trunk_blocks", type=int, default=None,
                      help="DiT blocks (default: the preset's)")
  parser.add_argument("--text_blocks", type=int, default=None,
                      help="text refine blocks (default: the preset's)")
  parser.add_argument("--param_dtype", default="float32", choices=["float32", "bfloat16"],
                      help="bfloat16 halves the params (XXL/16 on a small host)")
  parser.add_argument("--scan_blocks", action="store_true", help="nn.scan over the DiT blocks")
  parser.add_argument("--memory", action="store_true",
                      help="measure one guided call's memory instead of timing sampling")
  parser.add_argument("--no_run", action="store_true",
                      help="--memory: compile only (XLA's temporaries, no measured peak)")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def build(args):
  overrides = dict(dtype=args.dtype)
  base = presets.get(args.preset)
  if args.trunk_blocks is not None:
    overrides.update(num_cond_blocks=args.trunk_blocks,
                     num_blocks=args.trunk_blocks + base.num_blocks - base.num_cond_blocks)
  if args.text_blocks is not None:
    overrides.update(num_text_blocks=args.text_blocks)
  model = build_model(presets.get(args.preset, scan_blocks=args.scan_blocks, **overrides),
                      param_dtype=jnp.dtype(args.param_dtype))
  if model.conditioning != "text":
    raise SystemExit(f"--preset {args.preset} is not a text-to-image preset (tiny_t2i, XXL/16).")
  params = jax.jit(init_params, static_argnums=0)(model, jax.random.key(0))
  return model, params


def _text(model, batch, seed):
  shape = (batch, model.txt_max_length, model.txt_embed_dim)
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def throughput(args):
  model, params = build(args)
  settings = samplers.settings_from_config(dict(
      sampler=args.sampler, num_steps=args.num_steps, guidance=args.guidance,
      guidance_interval_min=0.0, guidance_interval_max=1.0, timeshift=args.timeshift,
      order=args.order))
  cost = samplers.forward_cost(**settings)
  print(f"preset {args.preset}, {count_params(params):,} params, trained at "
        f"{args.resolution}px, batch {args.batch}, {args.dtype}, {args.sampler} "
        f"{args.num_steps} steps, CFG {args.guidance}, shift {args.timeshift}: "
        f"{cost['images']} image-evaluations per sample; {jax.devices()[0].device_kind} "
        f"x{jax.device_count()}", flush=True)
  text, null = _text(model, args.batch, 1), _text(model, 1, 2)
  sizes = [_size(s) for s in args.sizes] if args.sizes else [
      (args.resolution, args.resolution), (4 * args.resolution, 4 * args.resolution)]
  for height, width in sizes:
    for chunk_pixels in args.field_chunk_pixels:
      sized = sample_t2i.model_for_size(model, args.resolution, height, width, chunk_pixels)
      noise = sample_t2i.noise_for(0, np.arange(args.batch), (height, width, 3))
      fn = jax.jit(lambda p, x, y, n, m=sized: samplers.sample(
          lambda x, t, y: m.apply({"params": p}, x, t, y), x, y, null_class=n, **settings))
      compile_s, run_s = common.compile_and_time(fn, (params, noise, text, null),
                                                 args.repeats)
      print(f"{height}x{width}: field {_field_mode(sized, args)} | compile "
            f"{compile_s:6.1f} s | run {run_s:8.2f} s | {args.batch / run_s:8.3f} img/s",
            flush=True)


def _field_mode(model, args) -> str:
  """How the field runs in a guided call (2 x batch images)."""
  patches = 2 * args.batch * (args.resolution // model.patch_size) ** 2
  chunk = model.decoder_chunk_size
  if not chunk or patches <= chunk:
    return f"whole ({patches} patches)"
  return f"in {-(-patches // chunk)} chunks of {chunk} patches"


def memory_child(args):
  """One guided call at args.child = "HxW:chunk_pixels"; prints a JSON line."""
  size, chunk_pixels = args.child.split(":")
  height, width = _size(size)
  model, params = build(args)
  sized = sample_t2i.model_for_size(model, args.resolution, height, width, int(chunk_pixels))
  batch = 2 * args.batch  # [uncond; cond]
  x = jax.random.normal(jax.random.key(0), (batch, height, width, 3))
  t = jnp.full((batch,), 0.5)
  y = _text(model, batch, 1)
  fn = jax.jit(lambda p, x, t, y: sized.apply({"params": p}, x, t, y))
  compiled = fn.lower(params, x, t, y).compile()
  analysis = compiled.memory_analysis()
  temp = getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None
  result = dict(size=size, field=_field_mode(sized, args), temp_bytes=temp,
                params=count_params(params))
  if not args.no_run:
    rss_before = _rss_bytes()
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x, t, y))
    result.update(seconds=time.perf_counter() - start, rss_before_bytes=rss_before,
                  peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  device_peak_bytes=(jax.devices()[0].memory_stats() or {}).get(
                      "peak_bytes_in_use"))
  print(json.dumps(result), flush=True)


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(args, argv):
  sizes = args.sizes or [f"{4 * args.resolution}x{4 * args.resolution}"]
  chunks = sorted(set([0] + args.field_chunk_pixels))
  print(f"preset {args.preset} (trunk blocks {args.trunk_blocks or 'as preset'}, text "
        f"blocks {args.text_blocks or 'as preset'}), trained at {args.resolution}px, one "
        f"guided call on {args.batch} image(s) (batch {2 * args.batch}), {args.dtype}, "
        f"{jax.devices()[0].device_kind}", flush=True)
  for size in sizes:
    for chunk in chunks:
      done = subprocess.run([sys.executable, os.path.abspath(__file__), *argv,
                             f"--child={size}:{chunk}"], capture_output=True, text=True)
      lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
      if done.returncode or not lines:
        print(f"{size} chunk {chunk}: failed\n{done.stderr[-2000:]}", flush=True)
        continue
      r = json.loads(lines[-1])
      fmt = lambda b: "-" if b is None else f"{b / GIB:.2f} GiB"
      line = (f"{size}: field_chunk_pixels {chunk or 'off'}, field {r['field']} | XLA "
              f"temporaries {fmt(r['temp_bytes'])}")
      if "seconds" in r:
        line += (f" | device peak {fmt(r['device_peak_bytes'])} | host RSS before "
                 f"{fmt(r['rss_before_bytes'])}, peak {fmt(r['peak_rss_bytes'])} | call "
                 f"{r['seconds']:.2f} s")
      print(line + f" ({r['params']:,} params)", flush=True)


def main():
  argv = sys.argv[1:]
  args = parse_args(argv)
  if args.child:
    memory_child(args)
  elif args.memory:
    memory(args, [a for a in argv if a != "--memory"])
  else:
    throughput(args)


if __name__ == "__main__":
  main()
