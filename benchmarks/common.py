"""Helpers shared by the benchmark scripts: model flags and timing."""

import argparse
import statistics
import time

import jax


def model_parser(description: str, repeats: int = 10) -> argparse.ArgumentParser:
  """A parser with the model/input flags every benchmark takes."""
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="S/8")
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--repeats", type=int, default=repeats,
                      help="timed runs after compile (median)")
  return parser


def median_seconds(fn, *args, repeats: int) -> float:
  """Median wall time of fn(*args), waiting for the result each time."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def compile_and_time(jitted, args, repeats: int) -> tuple[float, float]:
  """(compile seconds, median step seconds) of a jitted function, after one warm-up."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))  # warm-up
  return compile_s, median_seconds(compiled, *args, repeats=repeats)
