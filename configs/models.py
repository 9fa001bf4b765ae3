"""Model presets. Field names follow the reference constructor (PixNerDiT).

L/16 and XL/16 are the released ImageNet models and XXL/16 the released text-to-image
one (spec 7.1); S and B are our smaller settings with the same block layout; tiny and
tiny_t2i are for tests.
"""

import ml_collections
from ml_collections import config_dict

_PRESETS = {
    # name: (patch_size, hidden_size, num_groups, hidden_size_x, num_blocks, num_cond_blocks)
    "tiny": (4, 32, 2, 8, 3, 2),
    "S/8": (8, 384, 6, 32, 12, 10),
    "S/16": (16, 384, 6, 64, 12, 10),
    "B/16": (16, 768, 12, 64, 12, 10),
    "L/16": (16, 1024, 16, 64, 24, 22),
    "XL/16": (16, 1152, 16, 64, 30, 26),
    "tiny_t2i": (4, 32, 2, 8, 3, 2),
    "XXL/16": (16, 1536, 24, 64, 18, 16),
}
# Text-to-image presets: name -> (txt_embed_dim, txt_max_length, num_text_blocks). The
# text encoder's hidden size is txt_embed_dim (Qwen3-1.7B: 2048).
_TEXT = {
    "tiny_t2i": (32, 16, 1),
    "XXL/16": (2048, 128, 4),
}


def names():
  return sorted(_PRESETS)


def get(name: str = "XL/16", **overrides) -> ml_collections.ConfigDict:
  """The model config block for a preset; keyword overrides replace fields."""
  if name not in _PRESETS:
    raise ValueError(f"Unknown model preset {name!r}; choose one of {names()}.")
  patch, hidden, heads, hidden_x, blocks, cond_blocks = _PRESETS[name]
  cfg = ml_collections.ConfigDict(dict(
      preset=name,
      in_channels=3,
      patch_size=patch,
      hidden_size=hidden,
      num_groups=heads,
      hidden_size_x=hidden_x,
      nerf_mlpratio=2,
      num_blocks=blocks,
      num_cond_blocks=cond_blocks,
      num_classes=1000,
      max_freqs=8,
      # "class" (labels) or "text" (text-encoder features; the t2i presets).
      conditioning="class",
      # Compute dtype; params and optimizer state stay float32.
      dtype="float32",
      # Unset (None): XLA's attention (on CPU with a faster hand-written backward); "xla":
      # jax.nn's XLA attention as is; "cudnn": the fused cuDNN kernel (GPU, bf16);
      # "splash": the Pallas splash kernel (TPU; recommended at 512 px and for t2i).
      attention_implementation=config_dict.placeholder(str),
      # Backward-pass recomputation: none | decoder | blocks | dots_saveable.
      remat_policy="none",
      # One nn.scan over the DiT blocks (stacked params): compiles one block, not 26.
      scan_blocks=False,
      # MeanFlow's average-velocity model (a second, zero-initialised timestep embedder
      # for the interval h); set by the meanflow configs.
      average_velocity=False,
  ))
  if name in _TEXT:
    cfg.conditioning = "text"
    cfg.txt_embed_dim, cfg.txt_max_length, cfg.num_text_blocks = _TEXT[name]
  for key, value in overrides.items():
    cfg[key] = value
  return cfg
