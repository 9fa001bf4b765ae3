"""REPA: align the trunk's features with a frozen DINOv2's patch tokens (spec 4.2).

The reference trains a projector on the residual stream after DiT block `align_layer`
so that it matches, token by token in cosine similarity, the final-norm patch tokens of
a frozen DINOv2 ViT-B/14 that sees the clean image; the loss joins the flow-matching
loss with weight 0.5.

Wiring (train.py's aux-loss hook): the projector params are trained beside the model's;
the DINOv2 params are frozen and should reach the jitted step as an argument, with the
hook built inside the step (`make_aux_loss_fn` only closes over what it is given). Closed
over from outside jit, 86M params would be baked into the program as constants.
"""

from typing import Any, Callable

from etils import epath
import jax
import jax.numpy as jnp
from flax import linen as nn

from pixnerd_jax.training import checkpoint
from pixnerd_jax.models import dinov2
from pixnerd_jax.models import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default
CONVERT_COMMAND = "python -m pixnerd_jax.convert_dinov2 dinov2_vitb14_pretrain.pth --out DIR"


class Projector(nn.Module):
  """Linear(D, D) - SiLU - Linear(D, D) - SiLU - Linear(D, out_size), torch default init.

  Layer names are those of the reference keys `proj.0.0`, `proj.0.2`, `proj.0.4` (the
  SiLUs are the odd indices), so `convert.extract_repa_projector` maps them directly.
  Attributes:
    hidden_size: width of the two hidden layers; None = the input width D (reference).
    out_size: the encoder's width (768 for ViT-B).
  """
  hidden_size: int | None = None
  out_size: int = 768

  @nn.compact
  def __call__(self, h):
    """h: (B, L, D) trunk features -> (B, L, out_size), float32."""
    dim = h.shape[-1]
    hidden = self.hidden_size or dim
    h = h.astype(jnp.float32)
    h = nn.silu(layers.torch_dense(hidden, dim, axes=("embed", "mlp"), name="proj_0_0")(h))
    h = nn.silu(layers.torch_dense(hidden, hidden, axes=("mlp", "embed"), name="proj_0_2")(h))
    return layers.torch_dense(self.out_size, hidden, axes=("embed", "embed_in"),
                              name="proj_0_4")(h)


def init_projector(projector: Projector, rng, hidden_size: int):
  """Fresh float32 projector params (logical-axis boxes removed) for D = hidden_size."""
  variables = projector.init(rng, jnp.zeros((1, 1, hidden_size), jnp.float32))
  return nn.meta.unbox(variables["params"])


def dino_size(height: int, width: int, patch_size: int = 16,
              dino_patch_size: int = 14) -> tuple[int, int]:
  """DINO input size whose token grid equals the PixNerd grid: int(14 * H / p) as reference."""
  return int(dino_patch_size * height / patch_size), int(dino_patch_size * width / patch_size)


def dino_inputs(raw_image, patch_size_pixnerd: int = 16, dino_patch_size: int = 14):
  """The encoder input of the reference: ImageNet normalisation, then bicubic resize.

  The resize is torch's F.interpolate(mode="bicubic", align_corners=False), no
  antialias (cubic a = -0.75), to (14 H / p, 14 W / p) so that DINO's token grid is
  PixNerd's (H / p, W / p); e.g. 256 -> 224 for p = 16, 64 -> 112 for p = 8.

  Args:
    raw_image: (B, H, W, 3) float in [0, 1].
  Returns:
    (B, 14 H / p, 14 W / p, 3) float32.
  """
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  x = (raw_image.astype(jnp.float32) - mean) / std
  height, width = dino_size(x.shape[1], x.shape[2], patch_size_pixnerd, dino_patch_size)
  return dinov2.resize_bicubic(x, height, width, axes=(1, 2))


def cosine_similarity(a, b, eps: float = COSINE_EPS):
  """torch's cosine_similarity over the last axis: a.b / (max(|a|, eps) max(|b|, eps)).

  max(|a|, eps) is taken as sqrt(max(|a|^2, eps^2)): the same value, and a zero vector
  gets a zero gradient instead of NaN.
  """
  norm_a = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1), eps * eps))
  norm_b = jnp.sqrt(jnp.maximum(jnp.sum(b * b, axis=-1), eps * eps))
  return jnp.sum(a * b, axis=-1) / (norm_a * norm_b)


def cosine_loss(projected, target):
  """mean(1 - cos(projected, target)) over all tokens; inputs (B, N, C)."""
  return jnp.mean(1.0 - cosine_similarity(projected, target))


def dino_target(dino_model: dinov2.DinoV2, dino_params, raw_image, patch_size: int = 16):
  """Frozen DINOv2 patch tokens of the clean image: (B, N_dino, hidden), no gradient."""
  images = dino_inputs(raw_image, patch_size, dino_model.patch_size)
  tokens = dino_model.apply({"params": jax.lax.stop_gradient(dino_params)}, images)
  return jax.lax.stop_gradient(tokens)


def make_aux_loss_fn(dino_model: dinov2.DinoV2, dino_params, projector: Projector,
                     weight: float, *, patch_size: int = 16) -> Callable:
  """The REPA loss as train.py's aux-loss hook.

  Args:
    dino_model, dino_params: the frozen encoder (from `load_dino`). Build the hook
      inside the jitted step from traced params (see the module docstring).
    projector: the Projector whose params the hook receives as `aux_params`.
    weight: the REPA loss weight (config.repa.weight; 0.5 in the reference).
    patch_size: PixNerd's patch size (config.model.patch_size), for the DINO input size.
  Returns:
    aux_loss_fn(aux_params, features, batch, rng) -> (weight * cos_loss,
    {"repa_loss": cos_loss}); features (B, L, D) after the align block, batch with
    'raw_image' (B, H, W, 3) in [0, 1]; rng is unused (the loss is deterministic).
  """

  def aux_loss_fn(aux_params, features, batch, rng):
    del rng
    target = dino_target(dino_model, dino_params, batch["raw_image"], patch_size)
    projected = projector.apply({"params": aux_params}, features)
    # As the reference: if the grids differ, align the first N_dino tokens.
    projected = projected[:, :target.shape[1]]
    if projected.shape[1] != target.shape[1]:
      raise ValueError(f"REPA: {projected.shape[1]} trunk tokens but {target.shape[1]} DINO "
                       "tokens; the DINO grid must not exceed the PixNerd grid.")
    loss = cosine_loss(projected, target)
    return weight * loss, {"repa_loss": loss}

  return aux_loss_fn


def load_dino(config) -> tuple[dinov2.DinoV2, Any]:
  """(DinoV2 module, params) from the DIR in config.repa.dino_checkpoint.

  DIR is what `python -m pixnerd_jax.convert_dinov2` writes.
  """
  directory = config.repa.get("dino_checkpoint", "") if hasattr(config.repa, "get") else ""
  if not directory or not epath.Path(directory).is_dir():  # local or gs://
    where = f"{directory!r} does not exist" if directory else "it is not set"
    raise FileNotFoundError(
        f"REPA needs the DINOv2 weights in config.repa.dino_checkpoint, but {where}. Download "
        "the torch-hub dinov2_vitb14 weights (dinov2_vitb14_pretrain.pth) or Hugging Face "
        f"facebook/dinov2-base, convert them with `{CONVERT_COMMAND}`, and set "
        "--config.repa.dino_checkpoint=DIR.")
  model_cfg, params = checkpoint.load_params(directory)
  if model_cfg.pop("architecture", None) != "dinov2":
    raise checkpoint.CheckpointError(
        f"config.repa.dino_checkpoint={directory} is not a DINOv2 conversion (its model.json "
        f"has no architecture 'dinov2'); make one with `{CONVERT_COMMAND}`.")
  model = dinov2.DinoV2(**model_cfg)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  return model, params
