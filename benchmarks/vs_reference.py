"""Our train step and CFG sampling step against the official PyTorch model, side by side.

  python benchmarks/vs_reference.py                                  # ours only, no torch
  python benchmarks/vs_reference.py --reference /path/to/PixNerd     # both, alternating
  python benchmarks/vs_reference.py --reference DIR --preset S/8 --resolution 64 --batch 16 \
      --rounds 2 --repeats 5 --modes train,sample --threads 2

Modes, on the same settings (model preset, resolution, batch, classes, threads):
  train   one optimizer update: flow-matching objective (logit-normal t, label dropout 0.1),
          forward, backward, AdamW (lr 1e-4, no weight decay) and the EMA update. Ours is
          `train.build_train_program(...).step`, the trainer's jitted step, with the XLA
          flags the training entry point sets (pixnerd_jax/runtime/xla_cpu_flags.py); the
          reference is the official model class with its trainer's maths and
          torch.optim.AdamW.
  sample  one Euler step with classifier-free guidance (3.5): the doubled [uncond; cond]
          batch through the model, guidance, x + v dt. Each side holds the params only,
          as a sampling process does.

Each side runs in its own process (ours never imports torch; the reference never imports
JAX), pinned to the same cores. After a warm-up (which includes our compile), the sides
take turns: a round is `--repeats` timed steps of ours, then of the reference, so that
drifting load on a shared machine hits both alike. Printed per round: median step time,
images/s and the ratio (ours / reference images/s); then the median over rounds, and
each process's peak resident memory (VmHWM): over its whole life (imports, compile,
steps) and over the timed steps only (the peak is reset after the warm-up).

--reference DIR is a checkout of the official repository (github.com/MCG-NJU/PixNerd);
the model class is imported from DIR/src/models/transformer/pixnerd_c2i.py with torch
(CPU). With --dtype bfloat16 ours computes in bfloat16 (params and optimizer state stay
float32) and the reference runs under torch.autocast("cpu", bfloat16).
"""

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("train", "sample")
GUIDANCE = 3.5
SAMPLE_T = 0.5   # inside the guidance interval (0.1, 1): every step runs the doubled batch
SAMPLE_DT = 0.01


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference", default=None,
                      help="checkout of the official PixNerd repository (needs torch)")
  parser.add_argument("--preset", default="S/8")
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--modes", default="train,sample",
                      help=f"comma-separated, from {','.join(MODES)}")
  parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per mode")
  parser.add_argument("--repeats", type=int, default=5, help="timed steps per side per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
  parser.add_argument("--threads", type=int, default=0,
                      help="cores for each side (0: all this process may use)")
  parser.add_argument("--reference_optimizer", default="default",
                      choices=["default", "foreach", "fused"],
                      help="torch AdamW implementation (default: what the reference gets)")
  args = parser.parse_args(argv)
  args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  for mode in args.modes:
    if mode not in MODES:
      parser.error(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}.")
  if args.reference is not None:
    model_file = os.path.join(args.reference, "src", "models", "transformer", "pixnerd_c2i.py")
    if not os.path.isfile(model_file):
      parser.error(f"--reference {args.reference}: {model_file} not found; pass the root of "
                   "a checkout of the official PixNerd repository.")
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      parser.error("--reference needs torch: pip install torch==2.13.0 --index-url "
                   "https://download.pytorch.org/whl/cpu")
  if args.resolution % _preset_fields(args.preset)["patch_size"]:
    parser.error(f"--resolution {args.resolution} is not divisible by the patch size of "
                 f"{args.preset}.")
  return args


def _preset_fields(preset: str) -> dict:
  sys.path.insert(0, ROOT)
  from configs import models as presets  # pylint: disable=g-import-not-at-top
  try:
    return dict(presets.get(preset))
  except ValueError as e:
    raise SystemExit(f"--preset: {e}") from None


# ----------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return 0


def _reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


# ----------------------------------------------------------------------------- our side


def _our_step(args, mode: str):
  """(step() -> None that runs one step and waits for it, description)."""
  sys.path.insert(0, ROOT)
  # The comparison is on this machine's CPU; JAX_PLATFORMS=... set by the user still wins
  # (and keeps an installed libtpu from probing for TPUs).
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # As the trainer's entry point does (console.quiet_start): XLA's per-step scratch
  # stays mapped instead of being page-faulted in at every step (host_malloc.py).
  from pixnerd_jax.runtime import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.for_cpu_backend(os.environ["JAX_PLATFORMS"])
  if mode == "train":  # as the training entry point does (console.quiet_start)
    from pixnerd_jax.runtime import xla_cpu_flags  # pylint: disable=g-import-not-at-top
    xla_cpu_flags.for_cpu_training(os.environ["JAX_PLATFORMS"])
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from pixnerd_jax import models  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.runtime import mesh as sharding  # pylint: disable=g-import-not-at-top

  program, images, labels = common.c2i_train_program(args)
  mesh = program.mesh
  activation = sharding.activate(mesh)
  activation.__enter__()  # the worker keeps the mesh active for its whole life
  desc = f"jax {jax.__version__}, {jax.devices()[0].device_kind}"

  if mode == "train":
    state = jax.jit(program.make_state, out_shardings=program.state_sharding)()
    batch = jax.device_put({"image": images, "label": labels}, program.batch_sharding)
    holder = {"state": state}

    def step():
      new_state, metrics = program.step(holder["state"], batch, None)
      jax.block_until_ready((new_state, metrics))
      holder["state"] = new_state
    return step, desc

  # A sampling process holds the (EMA) params only, as sample.py loads them.
  model = program.model
  params = jax.jit(lambda: models.init_params(model, jax.random.key(0)))()

  euler_cfg_step = common.cfg_euler_step(model, SAMPLE_T, SAMPLE_DT, GUIDANCE)

  noise = jax.random.normal(jax.random.key(0), images.shape, jnp.float32)

  def step():
    jax.block_until_ready(euler_cfg_step(params, noise, labels))
  return step, desc


# ----------------------------------------------------------------------------- reference


def _reference_step(args, mode: str):
  """The official model in PyTorch with the reference trainer's maths, NCHW."""
  import copy  # pylint: disable=g-import-not-at-top
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.abspath(args.reference))
  from src.models.transformer.pixnerd_c2i import PixNerDiT  # pylint: disable=g-import-not-at-top

  fields = _preset_fields(args.preset)
  torch.manual_seed(0)
  net = PixNerDiT(in_channels=fields["in_channels"], num_groups=fields["num_groups"],
                  hidden_size=fields["hidden_size"], hidden_size_x=fields["hidden_size_x"],
                  nerf_mlpratio=fields["nerf_mlpratio"], num_blocks=fields["num_blocks"],
                  num_cond_blocks=fields["num_cond_blocks"], patch_size=fields["patch_size"],
                  num_classes=args.num_classes)
  shape = (args.batch, fields["in_channels"], args.resolution, args.resolution)
  images = torch.rand(shape) * 2 - 1
  labels = torch.randint(0, args.num_classes, (args.batch,))
  if args.dtype == "bfloat16":
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
  else:
    autocast = contextlib.nullcontext
  desc = f"torch {torch.__version__}, {torch.get_num_threads()} threads"

  if mode == "train":
    ema = copy.deepcopy(net).requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    ema_params = list(ema.parameters())
    kwargs = {"foreach": True} if args.reference_optimizer == "foreach" else (
        {"fused": True} if args.reference_optimizer == "fused" else {})
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **kwargs)
    decay = 0.9999

    def step():
      # REPATrainer._impl_trainstep with lognorm_t, the linear scheduler, constant weight,
      # and BaseTrainer's label dropout (null class = num_classes).
      with autocast():
        drop = torch.rand(args.batch) < 0.1
        y = torch.where(drop, torch.full_like(labels, args.num_classes), labels)
        t = torch.randn(args.batch).sigmoid()
        noise = torch.randn_like(images)
        t_ = t.view(-1, 1, 1, 1)
        x_t = t_ * images + (1 - t_) * noise
        target = images - noise
        out = net(x_t, t, y)
        loss = ((out - target) ** 2).mean()
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      with torch.no_grad():  # SimpleEMA.ema_step
        torch._foreach_mul_(ema_params, decay)  # pylint: disable=protected-access
        torch._foreach_add_(ema_params, params, alpha=1.0 - decay)  # pylint: disable=protected-access
    return step, desc

  net.requires_grad_(False).eval()
  noise = torch.randn(shape)
  cond = torch.cat([torch.full_like(labels, args.num_classes), labels])

  def step():
    # EulerSampler._impl_sampling, one step inside the guidance interval.
    with torch.no_grad(), autocast():
      t = torch.full((args.batch,), SAMPLE_T)
      out = net(torch.cat([noise, noise]), t.repeat(2), cond)
      uncond, cond_out = out.chunk(2, dim=0)
      v = uncond + GUIDANCE * (cond_out - uncond)
      return noise + v * SAMPLE_DT
  return step, desc


# ----------------------------------------------------------------------------- workers


def _worker(side: str, mode: str, args, conn):
  """Builds one side's step, then answers 'run N' requests with N step times."""
  try:
    if args.threads:
      os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    if side == "reference":
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(len(os.sched_getaffinity(0)))
    start = time.perf_counter()
    step, desc = (_our_step if side == "ours" else _reference_step)(args, mode)
    step()  # compiles ours
    first_s = time.perf_counter() - start
    if side == "ours":
      # As the trainer does after its first step: give back what the compile left free.
      from pixnerd_jax.runtime import host_malloc  # pylint: disable=g-import-not-at-top
      host_malloc.release_free_memory()
    for _ in range(args.warmup):
      step()
    conn.send(("ready", desc, first_s))
    peak_before_gib = _status_kib("VmHWM") / 2**20
    reset = _reset_peak_rss()
    while True:
      request = conn.recv()
      if request is None:
        break
      times, cpu = [], []
      faults_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      for _ in range(request):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
      faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start) / request
      conn.send((times, cpu, faults))
    peak_steps_gib = _status_kib("VmHWM") / 2**20
    conn.send((peak_steps_gib if reset else None, max(peak_before_gib, peak_steps_gib)))
  except Exception as e:  # pylint: disable=broad-except
    conn.send(("error", f"{type(e).__name__}: {e}"))
    raise


class Side:
  """One side's worker process for one mode."""

  def __init__(self, side: str, mode: str, args):
    self.name = side
    ctx = multiprocessing.get_context("spawn")
    self.conn, child = ctx.Pipe()
    self.process = ctx.Process(target=_worker, args=(side, mode, args, child), daemon=True)
    self.process.start()
    reply = self._recv()
    _, self.desc, self.first_s = reply
    self.times = []   # per round, a list of step seconds (wall)
    self.cpu = []     # per round, a list of step seconds of CPU time (all threads)
    self.faults = []  # per round, page faults (minor) per step

  def _recv(self):
    reply = self.conn.recv()
    if isinstance(reply, tuple) and reply and reply[0] == "error":
      self.process.join()
      raise SystemExit(f"{self.name}: {reply[1]}")
    return reply

  def run(self, repeats: int) -> list[float]:
    self.conn.send(repeats)
    times, cpu, faults = self._recv()
    self.times.append(times)
    self.cpu.append(cpu)
    self.faults.append(faults)
    return times

  def close(self):
    self.conn.send(None)
    self.peak_steps_gib, self.peak_life_gib = self._recv()
    self.process.join()


def _img_s(batch: int, times: list[float]) -> float:
  return batch / statistics.median(times)


def run_mode(mode: str, args) -> dict:
  sides = [Side("ours", mode, args)]
  if args.reference:
    sides.append(Side("reference", mode, args))
  for side in sides:
    print(f"  {side.name:>9}: {side.desc}; first step (incl. compile) {side.first_s:.1f} s",
          flush=True)
  for r in range(args.rounds):
    line = []
    for side in sides:
      times = side.run(args.repeats)
      line.append(f"{side.name} {statistics.median(times) * 1e3:7.1f} ms "
                  f"{_img_s(args.batch, times):6.2f} img/s (CPU "
                  f"{statistics.median(side.cpu[-1]) * 1e3:.0f} ms, "
                  f"{side.faults[-1]:.0f} page faults)")
    if len(sides) == 2:
      ratio = _img_s(args.batch, sides[0].times[-1]) / _img_s(args.batch, sides[1].times[-1])
      line.append(f"ratio {ratio:.2f}x")
    print(f"  round {r + 1}: " + " | ".join(line), flush=True)
  for side in sides:
    side.close()
  return {side.name: side for side in sides}


def main(argv=None):
  args = parse_args(argv)
  print(f"preset {args.preset}, {args.num_classes} classes, {args.resolution} px, batch "
        f"{args.batch}, {args.dtype}, threads {args.threads or len(os.sched_getaffinity(0))}, "
        f"{args.rounds} rounds x {args.repeats} steps per side", flush=True)
  if args.reference:
    print(f"reference: {os.path.abspath(args.reference)} (AdamW: "
          f"{args.reference_optimizer})", flush=True)
  summary = []
  for mode in args.modes:
    print(f"{mode}:", flush=True)
    sides = run_mode(mode, args)
    for name, side in sides.items():
      rates = [_img_s(args.batch, t) for t in side.times]
      steps = "-" if side.peak_steps_gib is None else f"{side.peak_steps_gib:.2f}"
      summary.append(f"| {mode} | {name} | {statistics.median(rates):.2f} "
                     f"({min(rates):.2f}-{max(rates):.2f}) | {side.peak_life_gib:.2f} | "
                     f"{steps} |")
    if len(sides) == 2:
      ratios = [_img_s(args.batch, a) / _img_s(args.batch, b)
                for a, b in zip(sides["ours"].times, sides["reference"].times)]
      summary.append(f"| {mode} | ratio | {statistics.median(ratios):.2f}x "
                     f"({min(ratios):.2f}-{max(ratios):.2f}) | | |")
  print("\n| mode | side | img/s, median of rounds (range) | peak RSS GiB | peak RSS GiB, "
        "timed steps |")
  print("|---|---|---|---|---|")
  print("\n".join(summary))


if __name__ == "__main__":
  main()
