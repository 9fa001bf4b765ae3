"""Step-time overhead of REPA: DINOv2 ViT-B/14 target + projector on top of a PixNerd step.

  python benchmarks/repa.py --preset S/8 --resolution 64 --batch 16

Times jax.value_and_grad of a plain MSE on the PixNerd output (no REPA) against the same
plus the REPA loss (trunk features after block --align_layer, projector, frozen DINOv2
forward on the clean image). DINO's input is resized to 14 * H / p so its grid equals
PixNerd's (S/8 at 64 px: 112 px, 8x8 tokens); a second REPA row uses the reference's
fixed 14 * H / 16 (56 px, 4x4 tokens, trunk tokens truncated). DINO weights are random
unless --dino_checkpoint names a conversion (the timing does not depend on them).
Prints compile time and the median step time after compile.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import ml_collections

from benchmarks import common
from configs import models as presets
from pixnerd_jax.training import repa
from pixnerd_jax.models import build_model, count_params
from pixnerd_jax.models import dinov2


def main():
  parser = common.model_parser(__doc__)
  parser.add_argument("--align_layer", type=int, default=8)
  parser.add_argument("--dino_checkpoint", default="")
  args = parser.parse_args()

  model_cfg = presets.get(args.preset, num_classes=args.num_classes, dtype=args.dtype)
  plain = build_model(model_cfg)
  hooked = build_model(model_cfg, features_after_block=args.align_layer)
  rng = jax.random.key(0)
  x = jax.random.normal(rng, (args.batch, args.resolution, args.resolution, 3))
  t = jax.random.uniform(rng, (args.batch,))
  y = jax.random.randint(rng, (args.batch,), 0, args.num_classes)
  batch = {"raw_image": jax.random.uniform(rng, x.shape)}
  params = jax.jit(plain.init)(rng, x, t, y)["params"]

  if args.dino_checkpoint:
    config = ml_collections.ConfigDict({"repa": {"dino_checkpoint": args.dino_checkpoint}})
    dino, dino_params = repa.load_dino(config)
  else:
    dino = dinov2.DinoV2(**dinov2.VIT_B14)
    dino_params = jax.jit(dino.init)(rng, jnp.zeros((1, 224, 224, 3)))["params"]
  projector = repa.Projector(out_size=dino.hidden_size)
  proj_params = repa.init_projector(projector, rng, model_cfg.hidden_size)

  def mse(p):
    out = plain.apply({"params": p}, x, t, y)
    return jnp.mean(jnp.square(out.astype(jnp.float32) - x))

  def plain_step(p):
    return jax.value_and_grad(mse)(p)

  def repa_step(p, proj, dino_p, repa_patch):
    # As the trainer should: DINO params are an argument, the hook is built under jit.
    hook = repa.make_aux_loss_fn(dino, dino_p, projector, 0.5, patch_size=repa_patch)

    def loss(p, proj):
      out, inter = hooked.apply({"params": p}, x, t, y, mutable=["intermediates"])
      (features,) = inter["intermediates"]["trunk_features"]
      aux, _ = hook(proj, features, batch, None)
      return jnp.mean(jnp.square(out.astype(jnp.float32) - x)) + aux

    return jax.value_and_grad(loss, argnums=(0, 1))(p, proj)

  def dino_forward(dino_p, repa_patch):
    return repa.dino_target(dino, dino_p, batch["raw_image"], repa_patch)

  p = model_cfg.patch_size
  device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  print(f"preset {args.preset} ({count_params(params):,} params), {args.resolution}px, batch "
        f"{args.batch}, {args.dtype}, REPA after block {args.align_layer}; DINOv2 "
        f"{count_params(dino_params):,} params; {device}")
  rows = [("no REPA (MSE fwd+bwd)", plain_step, (params,))]
  for repa_patch in dict.fromkeys((p, 16)):
    size = repa.dino_size(args.resolution, args.resolution, repa_patch, dino.patch_size)[0]
    tokens = (size // dino.patch_size) ** 2
    label = f"DINO {size}px ({tokens} tok)"
    rows.append((f"REPA, {label}",
                 lambda a, b, c, rp=repa_patch: repa_step(a, b, c, rp),
                 (params, proj_params, dino_params)))
    rows.append((f"DINO forward only, {label}",
                 lambda a, rp=repa_patch: dino_forward(a, rp), (dino_params,)))
  base = None
  for name, fn, fn_args in rows:
    compile_s, step_s = common.compile_and_time(jax.jit(fn), fn_args, args.repeats)
    if base is None:
      base, extra = step_s, ""
    elif name.startswith("REPA"):
      extra = f" | overhead {100 * (step_s / base - 1):+6.1f}%"
    else:
      extra = f" | {100 * step_s / base:5.1f}% of the no-REPA step"
    print(f"{name:>38}: compile {compile_s:6.2f} s | step {step_s * 1e3:8.1f} ms{extra}")


if __name__ == "__main__":
  main()
