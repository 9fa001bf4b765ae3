"""One- and few-step PixNerd-XL/16 on ImageNet 256 with MeanFlow (diffusion/meanflow.py).

Default: distil the released model, converted once with
  python -m pixnerd_jax.convert checkpoint <PixNerd-XL-16-256 .ckpt> --out weights/xl16_256
  python -m pixnerd_jax.main --config=configs/imagenet256_meanflow.py --workdir=gs://... \\
      --config.meanflow.teacher=weights/xl16_256
The student starts from the teacher's EMA weights; the teacher's CFG 3.5 on (0.1, 1) is
trained into the student, so sampling is 1-2 steps without CFG. From scratch (MeanFlow's
recipe, guidance omega 2 / kappa 0.5 in the target): --config.meanflow.teacher="".
"""

from configs import imagenet256


def get_config():
  config = imagenet256.get_config()
  config.model.average_velocity = True
  config.repa.enabled = False  # not wired into the MeanFlow step
  mf = config.meanflow
  mf.enabled = True
  mf.teacher = "weights/xl16_256"
  mf.teacher_guidance = config.sampling.guidance
  mf.teacher_guidance_interval_min = config.sampling.guidance_interval_min
  mf.teacher_guidance_interval_max = config.sampling.guidance_interval_max
  mf.omega, mf.kappa = 2.0, 0.5  # used from scratch only
  config.optimizer.b2 = 0.95
  config.num_train_steps = 200_000
  config.sampling.sampler = "meanflow"
  config.sampling.num_steps = 1
  config.sampling.guidance = 1.0
  return config
