"""Where the CPU train step's (or CFG sampling step's) wall time goes, by part of the model.

  python benchmarks/profile_step.py                       # train step, S/8, 64 px, batch 16
  python benchmarks/profile_step.py --mode sample         # one CFG Euler step
  python benchmarks/profile_step.py --top 30 --trace_dir /tmp/trace   # keep the trace

Runs the step of benchmarks/vs_reference.py (the trainer's jitted step, or the CFG Euler
step) under the JAX profiler. The train step is profiled without the training entry
point's XLA flag (xla_cpu_flags.py): it changes the step's memory, not its speed, but
the reduction kernels it selects record so many profiler events that a traced step
takes twice as long and the shares below would be distorted. XLA:CPU records
every thunk it runs (a fused kernel, a GEMM, a copy), and runs independent thunks at the
same time on its thread pool, so their durations overlap; each moment of wall time is
split equally among the thunks running then, which makes the parts add up to the step.
Each thunk is mapped through the compiled HLO to the model code that emitted it (its
op_name) and counted in one part:
  trunk dense GEMMs        qkv, projections, SwiGLU, adaLN, patch and time embedders
  attention matmuls        the per-head q k^T and p v batched matmuls
  field weight generator   the Linear that makes every patch's field weights
  field MLP matmuls        the rest of the neural field's matmul kernels: its per-patch
                           (P x dx) @ (dx x hidden) products, embedder and output layer
                           (XLA may fuse them into one kernel named after the last)
  other GEMMs              the rest of XLA's matmul kernels (norm-weight gradients)
  optimizer + EMA          AdamW and the EMA update (train only)
  elementwise, copies      everything else: norms, activations, RoPE, softmax, layouts
Printed: milliseconds per step and share per part (fwd/bwd for training; the time when no
thunk runs is dispatch and synchronisation), then the most
expensive thunks with their HLO shape and op_name.
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The CPU backend only, decided before anything imports JAX (an installed libtpu would
# otherwise probe for TPUs); JAX_PLATFORMS set by the user still wins.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Trace events that are not thunks: the executor, Python frames, the runtime.
_NOT_THUNKS = ("ThunkExecutor", "$", "PjitFunction", "SlinkyThreadPool", "CommonPjRt",
               "ParseArguments", "Handle inputs", "end:")
_GEMM_THUNKS = ("ynn_fusion", "dot")


def parse_args(argv=None):
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  parser = common.model_parser(__doc__, repeats=3)
  parser.add_argument("--mode", default="train", choices=["train", "sample"])
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps before tracing")
  parser.add_argument("--top", type=int, default=15, help="thunks listed by time")
  parser.add_argument("--trace_dir", default=None, help="keep the profiler trace here")
  args = parser.parse_args(argv)
  common.check_model_args(parser, args)
  return args


def wall_time_by_thunk(events, steps: int) -> tuple[dict, float]:
  """Splits wall time among concurrently running thunks.

  Args:
    events: trace events (dicts with name, ts, dur in microseconds, ph 'X').
    steps: how many steps the trace holds.
  Returns:
    ({thunk name: ms per step}, ms per step with no thunk running).
  """
  thunks = [e for e in events if e.get("ph") == "X" and not e["name"].startswith(_NOT_THUNKS)]
  edges = sorted([(e["ts"], 1, e["name"]) for e in thunks] +
                 [(e["ts"] + e["dur"], -1, e["name"]) for e in thunks])
  active = collections.Counter()
  share = collections.Counter()
  idle, last = 0.0, edges[0][0] if edges else 0.0
  for ts, delta, name in edges:
    running = sum(active.values())
    if running:
      for other, count in active.items():
        if count:
          share[other] += (ts - last) * count / running
    else:
      idle += ts - last
    last = ts
    active[name] += delta
  per_step = 1e3 * steps
  return {k: v / per_step for k, v in share.items()}, idle / per_step


def hlo_instructions(hlo_text: str) -> dict:
  """{instruction name: (shape, op_name)} from a compiled module's text."""
  out = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ", line)
    if match and match.group(1) not in out:
      op = re.search(r'op_name="([^"]*)"', line)
      out[match.group(1)] = (match.group(2), op.group(1) if op else "")
  return out


def part_of(thunk: str, op_name: str, mode: str) -> str:
  """The model part a thunk belongs to (see the module doc)."""
  gemm = thunk.startswith(_GEMM_THUNKS) and "reduce" not in op_name
  if mode == "train" and "PixNerDiT" not in op_name and (
      "add" in op_name or "integer_pow" in op_name or op_name == ""):
    part = "optimizer + EMA"
  elif gemm and "param_generator" in op_name:
    part = "field weight generator"
  elif gemm and "_neural_field" in op_name:
    part = "field MLP matmuls"
  elif gemm and re.search(r"bh[qk][dqk],bh[qk][dk]->", op_name):
    part = "attention matmuls"
  elif gemm and re.search(
      r"/(qkv|qkv_x|kv_y|proj|w1|w2|w3|w12|adaLN_modulation_0|mlp_0|mlp_2)/", op_name):
    part = "trunk dense GEMMs"
  elif gemm:
    part = "other GEMMs"
  else:
    part = "elementwise, copies"
  if mode == "train" and part != "optimizer + EMA":
    part += " (bwd)" if "transpose(" in op_name else " (fwd)"
  return part


def main(argv=None):
  args = parse_args(argv)
  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.runtime import host_malloc
  host_malloc.for_cpu_backend(os.environ["JAX_PLATFORMS"])
  import jax
  from benchmarks import common
  from pixnerd_jax import models
  from pixnerd_jax.runtime import mesh as sharding
  # pylint: enable=g-import-not-at-top

  program, images, labels = common.c2i_train_program(args)
  with sharding.activate(program.mesh):
    if args.mode == "train":
      state = jax.jit(program.make_state, out_shardings=program.state_sharding)()
      batch = jax.device_put({"image": images, "label": labels}, program.batch_sharding)
      compiled = program.step.lower(state, batch, None).compile()
      holder = {"state": state}

      def step():
        holder["state"], metrics = compiled(holder["state"], batch, None)
        jax.block_until_ready((holder["state"], metrics))
    else:
      params = jax.jit(lambda: models.init_params(program.model, jax.random.key(0)))()
      compiled = common.cfg_euler_step(program.model).lower(params, images, labels).compile()

      def step():
        jax.block_until_ready(compiled(params, images, labels))

    for _ in range(args.warmup):
      step()
    host_malloc.release_free_memory()
    start = time.perf_counter()
    for _ in range(args.repeats):
      step()
    step_ms = (time.perf_counter() - start) / args.repeats * 1e3
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="pixnerd_profile_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(args.repeats):
        step()

  files = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True))
  if not files:
    raise SystemExit(f"The profiler wrote no perfetto trace under {trace_dir}.")
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_thunk, idle_ms = wall_time_by_thunk(events, args.repeats)
  instructions = hlo_instructions(compiled.as_text())
  parts = collections.Counter()
  for thunk, ms in per_thunk.items():
    parts[part_of(thunk, instructions.get(thunk, ("", ""))[1], args.mode)] += ms
  traced_ms = sum(per_thunk.values()) + idle_ms

  print(f"{args.mode} step, {args.preset}, {args.resolution} px, batch {args.batch}, "
        f"{args.dtype}, {len(os.sched_getaffinity(0))} CPU(s): {step_ms:.1f} ms untraced, "
        f"{traced_ms:.1f} ms traced ({idle_ms:.1f} ms with no thunk running)")
  print(f"\n{'part':34s} {'ms/step':>8s} {'share':>6s}")
  parts["(no thunk running)"] = idle_ms
  for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
    print(f"{part:34s} {ms:8.1f} {100 * ms / traced_ms:5.1f}%")
  print(f"\ntop {args.top} thunks (ms/step, HLO shape, op_name):")
  for thunk, ms in sorted(per_thunk.items(), key=lambda kv: -kv[1])[:args.top]:
    shape, op_name = instructions.get(thunk, ("?", "?"))
    print(f"{ms:7.2f} {thunk:28s} {shape:24s} {op_name[:100]}")
  if args.trace_dir:
    print(f"\ntrace kept in {trace_dir} (TensorBoard's profile plugin or ui.perfetto.dev)")


if __name__ == "__main__":
  main()
