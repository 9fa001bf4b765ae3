"""PixNerd-XL/16 on ImageNet 256, the reference's hyperparameters (spec 4.3).

Global batch 256, AdamW 1e-4 (0.9, 0.999), no clipping, EMA 0.9999, logit-normal t,
label dropout 0.1, REPA at block 8 (weight 0.5); evaluation with Euler 100 steps,
CFG 3.5 on (0.1, 1.0). The released model trained 1.6 M steps.
"""

from configs import default
from configs import models


def get_config():
  config = default.get_config()
  config.model = models.get("XL/16", dtype="bfloat16")
  config.data.name = "tfds"
  config.data.tfds_name = "imagenet2012"
  config.data.split = "train"
  config.data.resolution = 256
  config.data.num_workers = 16
  config.batch_size = 256
  config.num_train_steps = 1_600_000
  config.optimizer.learning_rate = 1e-4
  config.ema_decay = 0.9999
  # REPA as the reference: DINOv2 ViT-B/14 patch tokens aligned after block 8, weight 0.5.
  # Set --config.repa.dino_checkpoint=DIR (from `python -m pixnerd_jax.convert_dinov2`).
  config.repa.enabled = True
  config.sampling.num_steps = 100
  config.sampling.guidance = 3.5
  config.sampling.guidance_interval_min = 0.1
  config.sampling.guidance_interval_max = 1.0
  config.log_every = 100
  config.checkpoint_every = 10_000
  config.sample_every = 10_000
  config.eval_every = 0  # FID comes from `pixnerd_jax.sample` + the FID tool
  config.grid_classes = 8
  return config
