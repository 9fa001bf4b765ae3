"""The training console's progress line: training-only speed, an ETA with the evaluations."""

from pixnerd_jax.training import progress


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _digits_like():
  # 3000 steps; a grid (80 samples) every 1000 and at the end; an evaluation of 200
  # samples at 1000 and 2000; a final one of 500.
  return progress.Evaluations(total_steps=3000, sample_every=1000, eval_every=1000,
                              grid_samples=80, eval_samples=200, final_eval_samples=500)


def test_evaluations_left_count_grids_evaluations_and_the_final_ones():
  left = _digits_like().left_after(0)
  assert left["grid_count"] == 4 and left["eval_count"] == 2 and left["final_count"] == 1
  left = _digits_like().left_after(2000)
  assert left["grid_count"] == 2 and left["eval_count"] == 0 and left["final"] == 500


def test_speed_leaves_out_sampling_and_the_eta_counts_what_is_to_come():
  clock = _Clock()
  timing = progress.Progress(_digits_like(), batch_size=64, start_step=0, clock=clock)
  clock.now = 100.0  # 500 steps in 100 s
  speed = timing.interval(500)
  assert speed["train_steps_per_sec"] == speed["steps_per_sec"] == 5.0
  assert timing.eta(500).startswith("8m20s + 4 sample grids and 2 evaluations and the final")
  for kind, samples, seconds in (("grid", 80, 8.0), ("eval", 200, 40.0)):
    with timing.sampling(kind, samples):
      clock.now += seconds
  clock.now += 100.0  # 500 more steps of training
  speed = timing.interval(1000)
  assert speed["train_steps_per_sec"] == 5.0 and speed["train_images_per_sec"] == 320.0
  assert abs(speed["steps_per_sec"] - 500 / 148) < 1e-9  # the TensorBoard scalar as before
  # 2000 steps at 5/s, 3 grids at 0.1 s/sample, 1 evaluation and the final at 0.2 s/sample.
  assert timing.eta(1000) == progress.format_duration(400 + 3 * 8 + 40 + 100)


def test_progress_line_is_short_and_takes_optional_fields():
  scalars = {"loss": 0.19341, "grad_norm": 0.5}
  line = progress.progress_line(500, 3000, scalars, 4.93, 315.5, "9m05s")
  assert line == "step 500/3000  loss 0.1934  4.93 steps/s  316 img/s  ETA 9m05s"
  scalars.update(tflops_per_device=1.234, mfu=0.0312)
  line = progress.progress_line(500, 3000, scalars, 4.93, 315.5, "9m05s")
  assert "1.2 TFLOP/s/device  MFU 3.1%  ETA" in line
  scalars.update(tflops_per_device=3.4e-5)  # a CPU: GFLOP/s rather than 0.0 TFLOP/s
  del scalars["mfu"]
  line = progress.progress_line(500, 3000, scalars, 4.93, 315.5, "9m05s")
  assert "0.034 GFLOP/s/device  ETA" in line
  assert progress.metrics_line(1000, "eval", {"digits_accuracy": 0.275}) == (
      "step 1000 eval: digits_accuracy 0.275")
  assert [progress.format_duration(s) for s in (4, 545, 7380)] == ["4s", "9m05s", "2h03m"]


def test_start_line_says_where_the_weights_come_from():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.runtime import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.training import run_record  # pylint: disable=g-import-not-at-top
  config, mesh = tiny.get_config(), mesh_lib.create_mesh()
  first = lambda step: run_record.start_line(config, "w", 10, mesh, step).splitlines()[0]
  assert "6 steps from scratch," in first(0)
  assert "6 steps from step 4," in first(4)
  config.init_from = "converted/xl256"
  assert "from the params of converted/xl256," in first(0)
  config.meanflow.enabled, config.meanflow.teacher = True, "workdirs/digits"
  assert "from the MeanFlow teacher's weights," in first(0)
