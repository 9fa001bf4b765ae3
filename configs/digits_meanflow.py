"""MeanFlow on the embedded digits: 1- and 2-step sampling (diffusion/meanflow.py).

From scratch:
  python -m pixnerd_jax.main --config=configs/digits_meanflow.py --workdir=workdirs/digits_mf
Distilled from the quick start's model (its EMA weights start the student; its CFG 4 on
(0.1, 1) is trained into the student, so sampling needs no CFG):
  python -m pixnerd_jax.main --config=configs/digits_meanflow.py \\
      --workdir=workdirs/digits_mf_distilled --config.meanflow.teacher=workdirs/digits
"""

from configs import digits


def get_config():
  config = digits.get_config()
  config.model.average_velocity = True
  mf = config.meanflow
  mf.enabled = True
  # Uniform (t, h) and half the batch at h > 0: few training steps reach the long
  # intervals (t near 0, h near 1) that 1-step sampling uses; MeanFlow's ImageNet recipe
  # (logit-normal, 75% at h = 0) is the default in configs/default.py.
  mf.time_distribution = "uniform"
  mf.equal_fraction = 0.5
  # From scratch: MeanFlow's CFG-in-target (omega, kappa) on the whole time range.
  mf.omega = 2.0
  mf.kappa = 0.5
  # Distillation (only with meanflow.teacher): the teacher's sampling guidance.
  mf.teacher_guidance = config.sampling.guidance
  mf.teacher_guidance_interval_min = config.sampling.guidance_interval_min
  mf.teacher_guidance_interval_max = config.sampling.guidance_interval_max
  config.optimizer.b2 = 0.95
  config.sampling.sampler = "meanflow"
  config.sampling.num_steps = 1
  config.sampling.guidance = 1.0  # trained in
  config.sampling.extra_eval_num_steps = (2, 4)  # also digits_accuracy_2_steps, _4_steps
  return config
