"""Defaults for every knob; other configs import this and override.

  python -m pixnerd_jax.main --config=configs/digits.py --workdir=/tmp/digits \
      --config.batch_size=64
"""

import ml_collections
from ml_collections import config_dict

from configs import models


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = models.get("S/16")

  # Mesh axis sizes over all devices (-1: the rest). data: plain data parallelism;
  # fsdp: params/optimizer/EMA sharded too; tensor: attention/MLP widths split.
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  config.data = ml_collections.ConfigDict(dict(
      # Class-labelled: digits | tfds | folder. Captioned (text-to-image):
      # digits_captions | caption_folder | caption_tar | tfds_captions. Either:
      # synthetic (random images made on the devices, for timing the step alone).
      name="digits",
      tfds_name="imagenet2012",
      # TFDS data_dir; unset (None): TFDS's default (~/tensorflow_datasets).
      data_dir=config_dict.placeholder(str),
      split="train",
      folder="",              # root/<class>/*.jpg (folder); root/**/x.jpg + x.txt (caption_folder)
      tar_shards="",          # caption_tar: glob of webdataset .tar shards, e.g. /data/x-*.tar
      caption_field="caption",  # caption_tar: key.json field (else "caption", "text", "prompt")
      index_cache_dir="",     # caption_tar: where shard indices go when the shard's folder is
                              # read-only ("" = ~/.cache/pixnerd_jax/tar_index)
      image_feature="image",  # tfds_captions: the image and caption features
      text_feature="caption",
      resolution=32,
      random_flip=False,      # the reference does not flip
      shuffle=True,
      num_workers=0,          # Grain worker processes per host; batches depend on it
      num_threads=8,          # decoding threads per worker (PIL releases the GIL)
      prefetch_buffer_size=2, # local batches read ahead
      synthetic_num_classes=10,  # synthetic: labels drawn from 0..n-1
  ))

  config.batch_size = 64      # global, over all hosts and devices
  config.num_train_steps = 1000

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip_norm=0.0,     # 0 = no clipping (the reference's ImageNet setting)
      schedule="constant",    # constant | cosine (cosine decays to min_lr_ratio * lr)
      warmup_steps=0,
      min_lr_ratio=0.0,
  ))
  config.ema_decay = 0.9999
  # > 0: use min(ema_decay, (1 + step) / (ema_warmup + step)) so short runs average less.
  config.ema_warmup = 0

  config.diffusion = ml_collections.ConfigDict(dict(
      time_distribution="logit_normal",  # logit_normal | uniform
      time_mean=0.0,
      time_std=1.0,
      time_shift=1.0,
      label_dropout=0.1,
  ))

  # Representation alignment (REPA); its loss joins through train.py's aux-loss hook.
  # dino_checkpoint: a DIR from `python -m pixnerd_jax.convert_dinov2` (DINOv2 ViT-B/14).
  config.repa = ml_collections.ConfigDict(dict(enabled=False, align_layer=8, weight=0.5,
                                               dino_checkpoint=""))

  # The frozen text encoder of text-to-image models (model.conditioning = "text").
  # path: a local Hugging Face Qwen3 folder (Qwen/Qwen3-1.7B for XXL/16), or "" with
  # stand_in = True: a small Qwen3-architecture network with fixed random weights and a
  # tokenizer built from the training captions, saved to <workdir>/text_encoder (the
  # embedded digits job; it runs offline). Captions become max_length tokens.
  # stand_in_init_std: the std of the stand-in's normal init (Hugging Face's default 0.02).
  config.text_encoder = ml_collections.ConfigDict(dict(
      path="", stand_in=False, stand_in_layers=2, stand_in_init_std=0.02,
      dtype="bfloat16", max_length=128, caption_dropout=0.1))

  # Sampler used for image grids and evaluation (EMA weights).
  config.sampling = ml_collections.ConfigDict(dict(
      sampler="euler",        # euler | heun | adamlm | meanflow (average-velocity models)
      order=2,                # adamlm order (1-4)
      num_steps=50,
      guidance=2.0,
      guidance_interval_min=0.1,
      guidance_interval_max=1.0,
      timeshift=1.0,
      last_step=config_dict.placeholder(float),  # unset: 1 / num_steps
      exact_heun=False,       # heun: no velocity reuse between steps
      step_fn="ode",          # euler: ode | sde_mean | sde | sde_preserve (spec 5.1)
      # Text models: ';'-separated prompts for the sample grids (digits_captions: held-out
      # captions when empty).
      prompts="",
  ))

  # An XProf trace of steps start_step .. start_step + num_steps - 1 into
  # <workdir>/plugins/profile (TensorBoard's profile tab); 0 = none. all_hosts: every
  # process traces, not only process 0 (into <workdir>/process_<i>/plugins/profile).
  config.profile = ml_collections.ConfigDict(dict(start_step=0, num_steps=3,
                                                  all_hosts=False))

  config.log_every = 50
  config.checkpoint_every = 500
  config.keep_checkpoints = 3
  config.sample_every = 500     # sample grid to TensorBoard
  config.eval_every = 500       # judge metrics (digits) on EMA samples; 0 = off
  config.eval_num_samples = 200
  config.final_eval_num_samples = 1000
  config.grid_classes = 10      # rows of the sample grid (one class per row)
  # FID during training (any dataset): converted FID-Inception weights (.npz from
  # `python -m pixnerd_jax.evaluation.inception`) and reference statistics (an ADM
  # VIRTUAL_*.npz with mu/sigma, or an .npz of images). Empty: no FID.
  config.fid = ml_collections.ConfigDict(dict(inception="", reference=""))

  # MeanFlow (average-velocity) training instead of flow matching; needs
  # model.average_velocity. (t, h): two logit-normal (or uniform) draws, t the smaller,
  # h = 0 for equal_fraction of the batch; loss weight 1 / (L + loss_eps)^loss_power.
  # Guidance is trained in: omega, kappa on [guidance_interval_min, max] (from data), or,
  # with `teacher` (a training workdir, whose EMA params are read with config.model, or a
  # params checkpoint from `convert checkpoint`), the frozen teacher's CFG velocity with
  # teacher_guidance on its strict interval; the student starts from the teacher.
  config.meanflow = ml_collections.ConfigDict(dict(
      enabled=False,
      time_distribution="logit_normal",
      time_mean=0.4,
      time_std=1.0,
      equal_fraction=0.75,
      # Fractions aimed at the few-step sampler's grids of grid_num_steps steps (after
      # equal_fraction): exactly on a grid step, or ending on one (diffusion/meanflow.py).
      grid_fraction=0.0,
      grid_end_fraction=0.0,
      grid_num_steps=(1, 2, 4),
      loss_power=1.0,
      loss_eps=0.01,
      omega=1.0,
      kappa=0.0,
      guidance_interval_min=0.0,
      guidance_interval_max=1.0,
      teacher="",
      teacher_guidance=1.0,
      teacher_guidance_interval_min=0.0,
      teacher_guidance_interval_max=1.0,
      # Distillation: this leading fraction of the batch regresses the teacher's own
      # trajectory over a grid step (teacher_ode_steps Heun steps) instead of the JVP target.
      teacher_ode_fraction=0.0,
      teacher_ode_steps=8,
  ))

  # A params checkpoint (from `convert checkpoint` or a training run) to start from.
  config.init_from = ""
  return config
