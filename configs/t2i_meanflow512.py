"""Few-step text-to-image PixNerd-XXL/16 at 512 px: MeanFlow distilled from the SFT model.

  python -m pixnerd_jax.main --config=configs/t2i_meanflow512.py --workdir=gs://... \\
      --config.meanflow.teacher=weights/t2i_sft512 --config.text_encoder.path=...
The teacher (a t2i_sft512 workdir or a converted official checkpoint) samples with CFG 4
and timeshift 3; its CFG is trained into the student (caption dropout 0.1 still teaches the
empty prompt). Sampling: 2 meanflow steps on the teacher's shifted grid, no CFG.
"""

from configs import t2i_sft512


def get_config():
  config = t2i_sft512.get_config()
  config.model.average_velocity = True
  config.repa.enabled = False
  mf = config.meanflow
  mf.enabled = True
  mf.teacher = "weights/t2i_sft512"
  mf.teacher_guidance = config.sampling.guidance
  mf.teacher_guidance_interval_min = config.sampling.guidance_interval_min
  mf.teacher_guidance_interval_max = config.sampling.guidance_interval_max
  config.optimizer.b2 = 0.95
  config.num_train_steps = 40_000
  config.sampling.sampler = "meanflow"
  config.sampling.num_steps = 2
  config.sampling.guidance = 1.0
  return config
