"""The training loop's console: one progress line per log interval, and its ETA.

    step 500/3000  loss 0.1934  4.9 steps/s  313 img/s  ETA 9m05s (3 evaluations left)

Steps/s and images/s count training time only: the time spent writing sample grids and
evaluating is measured and left out, so an evaluation does not read as a slowdown. The
ETA is the training still to do at that speed plus the grids and evaluations still to
come, each at the duration its kind last took (per sample); kinds not yet seen are named
instead of guessed. Optional fields (`OPTIONAL_FIELDS`, e.g. MFU) are appended when the
interval's metrics hold them.
"""

import dataclasses
import sys
import time

import jax

# (metric key in the interval's scalars, format of its value on the progress line).
def _flop_rate(tflops: float) -> str:
  # Accelerators run at tens to hundreds of TFLOP/s; a CPU at a few GFLOP/s or less.
  if tflops >= 0.1:
    return f"{tflops:.1f} TFLOP/s/device"
  return f"{tflops * 1e3:.3g} GFLOP/s/device"


OPTIONAL_FIELDS = (
    ("tflops_per_device", _flop_rate),
    ("mfu", "MFU {:.1%}".format),
)
MAX_LINE = 200


def say(text: str) -> None:
  """A line for the person at the console (process 0 only), on stderr beside the logs."""
  if jax.process_index() == 0:
    print(text, file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
  """4 -> '4s', 545 -> '9m05s', 7380 -> '2h03m'."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(step: int, total_steps: int, scalars: dict, steps_per_sec: float,
                  images_per_sec: float, eta: str) -> str:
  """The one line of a log interval; `scalars` holds the interval's mean metrics."""
  fields = [f"step {step}/{total_steps}", f"loss {scalars['loss']:.4f}",
            f"{steps_per_sec:.2f} steps/s", f"{images_per_sec:.0f} img/s"]
  fields += [fmt(scalars[key]) for key, fmt in OPTIONAL_FIELDS if key in scalars]
  fields.append(f"ETA {eta}")
  return "  ".join(fields)[:MAX_LINE]


def metrics_line(step: int, kind: str, metrics: dict) -> str:
  """'step 1000 eval: accuracy 0.275, frechet_distance 41.2'."""
  values = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
  return f"step {step} {kind}: {values}"[:MAX_LINE]


@dataclasses.dataclass
class Evaluations:
  """When the loop samples: grids every sample_every steps and at the end, evaluations
  every eval_every steps (not at the last one) and a final one; sample counts of each."""
  total_steps: int
  sample_every: int
  eval_every: int
  grid_samples: int
  eval_samples: int
  final_eval_samples: int

  def left_after(self, step: int) -> dict[str, int]:
    """{kind: samples still to generate after `step`} for kinds with any left, and
    {kind + '_count': how many}."""
    def multiples(every, last_included):
      if not every:
        return 0
      end = self.total_steps if last_included else self.total_steps - 1
      return max(0, end // every - step // every)
    grids = multiples(self.sample_every, True)
    if self.sample_every and self.total_steps % self.sample_every:
      grids += 1  # the grid at the last step
    grids += 1  # samples_final.png
    evals = multiples(self.eval_every, False)
    left = {"grid": grids * self.grid_samples, "grid_count": grids,
            "eval": evals * self.eval_samples, "eval_count": evals}
    if self.final_eval_samples:
      left.update(final=self.final_eval_samples, final_count=1)
    return left


class Progress:
  """Training speed without the evaluations, and an ETA with them.

  The loop calls `interval(step)` at each log interval and wraps each grid or evaluation
  in `with progress.sampling(kind, num_samples):`.
  """

  def __init__(self, evaluations: Evaluations, batch_size: int, start_step: int,
               clock=time.perf_counter):
    self._evaluations = evaluations
    self._batch_size = batch_size
    self._clock = clock
    self._interval_start = clock()
    self._interval_step = start_step
    self._excluded = 0.0
    self._seconds_per_sample = {}  # kind -> latest measured duration / samples
    self.train_steps_per_sec = None

  def restart(self, step: int) -> None:
    """Starts the interval afresh at `step` (after the first step: leaves its compile out)."""
    self._interval_start, self._interval_step, self._excluded = self._clock(), step, 0.0

  def sampling(self, kind: str, num_samples: int):
    return _Timed(self, kind, num_samples)

  def _record(self, kind: str, num_samples: int, seconds: float) -> None:
    self._excluded += seconds
    if num_samples:
      self._seconds_per_sample[kind] = seconds / num_samples
      # The final evaluation samples as the periodic ones do.
      if kind == "eval":
        self._seconds_per_sample.setdefault("final", seconds / num_samples)

  def interval(self, step: int) -> dict[str, float]:
    """Ends the interval at `step`: {'steps_per_sec': all wall time,
    'train_steps_per_sec': without grids and evaluations, 'train_images_per_sec'}."""
    now = self._clock()
    wall = max(now - self._interval_start, 1e-9)
    steps = step - self._interval_step
    train_time = max(wall - self._excluded, 1e-9)
    self.train_steps_per_sec = steps / train_time
    self._interval_start, self._interval_step, self._excluded = now, step, 0.0
    return {"steps_per_sec": steps / wall, "train_steps_per_sec": self.train_steps_per_sec,
            "train_images_per_sec": self.train_steps_per_sec * self._batch_size}

  def eta(self, step: int) -> str:
    """Time left after `step`: training at the latest speed plus the sampling to come."""
    if not self.train_steps_per_sec:
      return "?"
    seconds = (self._evaluations.total_steps - step) / self.train_steps_per_sec
    unknown = []
    left = self._evaluations.left_after(step)
    for kind in ("grid", "eval", "final"):
      if not left.get(kind):
        continue
      if kind in self._seconds_per_sample:
        seconds += left[kind] * self._seconds_per_sample[kind]
      else:
        count = left[f"{kind}_count"]
        unknown.append({"grid": f"{count} sample grid{'s' * (count > 1)}",
                        "eval": f"{count} evaluation{'s' * (count > 1)}",
                        "final": "the final evaluation"}[kind])
    text = format_duration(seconds)
    return f"{text} + {' and '.join(unknown)}" if unknown else text


class _Timed:

  def __init__(self, progress: Progress, kind: str, num_samples: int):
    self._progress, self._kind, self._num_samples = progress, kind, num_samples

  def __enter__(self):
    self._start = self._progress._clock()  # pylint: disable=protected-access
    return self

  def __exit__(self, *exc):
    seconds = self._progress._clock() - self._start  # pylint: disable=protected-access
    self._progress._record(self._kind, self._num_samples, seconds)  # pylint: disable=protected-access
