"""PixNerd-XXL/16 text-to-image pretraining at 256 px: the reference's stage 1 (spec 7.5).

AdamW 2e-4 (0.9, 0.95), no weight decay, gradient clipping 1.0, EMA 0.9999, logit-normal
t shifted by 2.0, caption dropout 0.1 to the empty prompt, REPA after block 6 (weight
0.5), 200k steps; evaluation Euler 100 steps, CFG 4.0 with no interval. Text encoder:
frozen Qwen3-1.7B (--config.text_encoder.path). The reference ran 96 images per GPU on an
unstated number of GPUs; 8 hosts' worth (768) is our default, change batch_size to match
yours. It trained in bf16-true (bf16 weights and AdamW state); we keep float32 master
weights and optimizer state with bf16 compute, the safer choice (spec 10.20).
Data: webdataset tar shards of image + caption (--config.data.tar_shards=GLOB); the
reference's pretraining data is not public.
"""

from configs import default
from configs import models


def get_config():
  config = default.get_config()
  config.model = models.get("XXL/16", dtype="bfloat16")
  config.data.name = "caption_tar"
  config.data.tar_shards = ""
  config.data.resolution = 256
  config.data.num_workers = 16
  config.text_encoder.path = ""   # a local Qwen/Qwen3-1.7B folder
  config.text_encoder.dtype = "bfloat16"
  config.text_encoder.max_length = 128
  config.text_encoder.caption_dropout = 0.1
  config.batch_size = 768
  config.num_train_steps = 200_000
  config.optimizer.learning_rate = 2e-4
  config.optimizer.b2 = 0.95
  config.optimizer.grad_clip_norm = 1.0
  config.ema_decay = 0.9999
  config.diffusion.time_shift = 2.0
  config.repa.enabled = True
  config.repa.align_layer = 6
  config.repa.weight = 0.5
  config.sampling.sampler = "euler"
  config.sampling.num_steps = 100
  config.sampling.guidance = 4.0
  config.sampling.guidance_interval_min = 0.0
  config.sampling.guidance_interval_max = 1.0
  config.sampling.timeshift = 1.0
  config.sampling.prompts = ("a photo of a cat sitting on a sofa; a red car parked by the sea; "
                             "a bowl of fruit on a wooden table; a mountain lake at sunrise")
  config.grid_classes = 4
  config.log_every = 100
  config.checkpoint_every = 20_000
  config.sample_every = 10_000
  config.eval_every = 0  # GenEval / DPG-Bench come from `pixnerd_jax.sample`
  config.final_eval_num_samples = 0
  return config
