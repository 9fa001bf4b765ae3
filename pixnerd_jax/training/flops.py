"""FLOPs of the train step, the chips' peak rates, and the utilisation (MFU) they give.

The step's FLOPs are counted once per compiled program. XLA's cost analysis of the
compiled step is used where it sees every FLOP; it does not where the model runs
  * scan_blocks: the trunk is a while loop, whose body XLA counts once, not per trip;
  * cuDNN or splash (Pallas) attention: custom calls, which XLA counts as zero FLOPs.
There the analytic count of the model (matmuls from the shapes, `train_step_flops`) is
used instead. The log says which count a run uses.
"""

import dataclasses

import jax

from pixnerd_jax.models import layers

# Peak dense bf16 matmul FLOP/s of one JAX device, by jax's device_kind. Vendors quote the
# sparse rate too; these are the dense figures.
PEAK_BF16_FLOPS = {
    # https://cloud.google.com/tpu/docs/v4 : 275 TFLOP/s bf16 per chip.
    "TPU v4": 275e12,
    # https://cloud.google.com/tpu/docs/v5e : 197 TFLOP/s bf16 per chip.
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    # https://cloud.google.com/tpu/docs/v5p : 459 TFLOP/s bf16 per chip.
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    # https://cloud.google.com/tpu/docs/v6e : 918 TFLOP/s bf16 per chip (Trillium).
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    # https://www.nvidia.com/en-us/data-center/a100/ : 312 TFLOP/s bf16 tensor core, dense.
    "NVIDIA A100": 312e12,
    # https://www.nvidia.com/en-us/data-center/h100/ : bf16 with sparsity 1979 (SXM),
    # 1513 (PCIe), 1671 (NVL) TFLOP/s; dense is half.
    "NVIDIA H100": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    # https://www.nvidia.com/en-us/data-center/h200/ : same tensor cores as the H100 SXM,
    # 1979 sparse, 989 dense.
    "NVIDIA H200": 989e12,
    # https://www.nvidia.com/en-us/data-center/hgx/ : HGX B200, 36 PFLOP/s bf16 with
    # sparsity for 8 GPUs, so 2.25 PFLOP/s dense per GPU.
    "NVIDIA B200": 2250e12,
}


def peak_flops(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of a device, or None when its kind is not in the table.

  NVIDIA kinds carry a form factor ('NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-40GB'),
  so the longest table entry the kind starts with wins.
  """
  kind = device_kind.strip()
  if kind in PEAK_BF16_FLOPS:
    return PEAK_BF16_FLOPS[kind]
  matches = [k for k in PEAK_BF16_FLOPS if k.startswith("NVIDIA") and kind.startswith(k)]
  return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


# ----------------------------------------------------------------------------- analytic


def forward_flops(model_fields, batch: int, height: int, width: int) -> dict[str, float]:
  """Forward matmul FLOPs of one PixNerd pass (c2i or t2i) by part; a multiply-add is 2.

  Counted from the shapes of the model's matmuls (the plain-decoder model, as trained):
  the trunk's dense layers per token, attention scores and values, the per-image adaLN
  and embedders, the neural field's weight generator per patch and its MLP per pixel.
  Elementwise work (norms, activations, the optimizer) is left out: it is a few percent.
  """
  f = dict(model_fields)
  p, d = f["patch_size"], f["hidden_size"]
  dx, c = f["hidden_size_x"], f.get("in_channels", 3)
  field_hidden = dx * f["nerf_mlpratio"]
  tokens = (height // p) * (width // p)
  patches = batch * tokens
  pixels_per_patch = p * p
  trunk_blocks = f["num_cond_blocks"]
  field_blocks = f["num_blocks"] - trunk_blocks
  text = f.get("conditioning", "class") == "text"
  # c2i: w1, w3, w2 at the 2/3-rule width; t2i: w12 (2 x 4D) and w3 (4D -> D).
  mlp = 3 * d * (4 * d) if text else 3 * d * layers.swiglu_hidden_size(d)
  parts = {
      "timestep embedder": batch * 2 * (256 * d + d * d),
      "patch embedder": patches * 2 * c * pixels_per_patch * d,
      "trunk dense (qkv, proj, MLP)": trunk_blocks * patches * 2 * (4 * d * d + mlp),
      "trunk attention (scores, values)": trunk_blocks * batch * 4 * tokens * tokens * d,
      "adaLN modulation": trunk_blocks * batch * 2 * 6 * d * d,
      "field weight generator": field_blocks * patches * 2 * d * (2 * dx * field_hidden),
      "field MLP (per-pixel)": field_blocks * patches * pixels_per_patch * 2 * (
          2 * dx * field_hidden),
      "field in/out": patches * pixels_per_patch * 2 * (c * dx + dx * c),
  }
  if text:
    length, embed = f["txt_max_length"], f["txt_embed_dim"]
    text_blocks = f["num_text_blocks"]
    text_tokens = batch * length
    parts["text embedder"] = text_tokens * 2 * embed * d
    parts["text refine blocks"] = text_blocks * (
        text_tokens * 2 * (4 * d * d + 3 * d * (4 * d)) + batch * 4 * length * length * d
        + batch * 2 * 6 * d * d)
    # The trunk's keys and values also cover the text: kv_y per text token per block and
    # the image queries' scores/values over it.
    parts["trunk text keys/values"] = trunk_blocks * (
        text_tokens * 2 * 2 * d * d + batch * 4 * tokens * length * d)
  return {k: float(v) for k, v in parts.items()}


def train_step_flops(model_fields, batch: int, height: int, width: int,
                     frozen_forward: float = 0.0, extra_forwards: float = 0.0) -> float:
  """Analytic FLOPs of one train step over the global batch: forward + backward (twice
  the forward: gradients of inputs and of weights) of the model, plus `extra_forwards`
  more model forwards without gradient (MeanFlow's target pass and guidance), plus the
  forward of frozen networks (REPA's DINOv2, the text encoder) given as
  `frozen_forward`."""
  return (3.0 + extra_forwards) * sum(
      forward_flops(model_fields, batch, height, width).values()) + float(frozen_forward)


def meanflow_extra_forwards(meanflow_config) -> float:
  """Model forwards a MeanFlow step adds to flow matching's: the target's JVP (the
  primal and the tangent, about two forwards) and, with a teacher or with omega/kappa
  guidance, a doubled [cond; uncond] forward (two more; a teacher of another size is
  counted at the student's size)."""
  if not meanflow_config.get("enabled", False):
    return 0.0
  guided = bool(meanflow_config.get("teacher")) or not (
      meanflow_config.omega == 1.0 and meanflow_config.kappa == 0.0)
  return 2.0 + (2.0 if guided else 0.0)


def frozen_forward_flops(params, tokens: int) -> float:
  """About 2 FLOPs per weight per token: the forward of a frozen transformer's dense
  layers (its attention scores left out) over `tokens` tokens in all."""
  weights = sum(int(x.size) for x in jax.tree.leaves(params) if getattr(x, "ndim", 0) >= 2)
  return 2.0 * weights * tokens


# ----------------------------------------------------------------------------- the step


def xla_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled program, per device (the SPMD-partitioned program)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends have none
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def xla_undercounts(model_fields) -> str | None:
  """Why XLA's count misses FLOPs of this model, or None when it sees them all."""
  f = dict(model_fields)
  if f.get("scan_blocks"):
    return "scan_blocks (XLA counts the scanned block once)"
  if f.get("attention_implementation") in ("splash", "cudnn"):
    return (f"{f['attention_implementation']} attention (a custom call XLA does not "
            "count)")
  return None


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one train step on one device, and where the number comes from."""
  per_device: float
  source: str        # "XLA cost analysis" or "analytic (...)"
  peak: float | None  # the device's peak bf16 FLOP/s, None if not in the table

  def tflops_and_mfu(self, steps_per_second: float) -> dict[str, float]:
    """{'tflops_per_device': ..., 'mfu': ...}; mfu only when the peak is known."""
    rate = self.per_device * steps_per_second
    out = {"tflops_per_device": rate / 1e12}
    if self.peak:
      out["mfu"] = rate / self.peak
    return out

  def describe(self) -> str:
    peak = (f"peak {self.peak / 1e12:.0f} TFLOP/s bf16 per device" if self.peak else
            "peak unknown for this device kind, so no MFU")
    return (f"FLOPs per train step per device: {self.per_device:.4g} ({self.source}); "
            f"{peak}")


def count_step_flops(compiled, model_fields, *, global_batch: int, height: int,
                     width: int, num_devices: int, device_kind: str,
                     frozen_forward: float = 0.0, extra_forwards: float = 0.0) -> StepFlops:
  """The FLOPs one device does per train step: XLA's count of `compiled` unless the model
  hides FLOPs from it (xla_undercounts), then the analytic count spread over the devices."""
  reason = xla_undercounts(model_fields)
  counted = None if reason else xla_flops(compiled)
  if counted:
    source = "XLA cost analysis"
  else:
    analytic = train_step_flops(model_fields, global_batch, height, width, frozen_forward,
                                extra_forwards)
    counted = analytic / num_devices
    source = (f"analytic count: {reason} hides FLOPs from XLA's cost analysis" if reason
              else "analytic count: XLA gave no cost analysis")
  step = StepFlops(per_device=counted, source=source, peak=peak_flops(device_kind))
  return step


def for_train_step(program, config, state, batch, frozen_params) -> StepFlops:
  """StepFlops of a TrainProgram's step. Call it after the step has run once: the lower
  and compile here then hit jit's cache instead of compiling again."""
  compiled = program.step.lower(state, batch, frozen_params).compile()
  resolution = int(config.data.resolution)
  tokens = config.batch_size * (resolution // config.model.patch_size) ** 2
  frozen = 0.0
  if "dino" in frozen_params:
    frozen += frozen_forward_flops(frozen_params["dino"], tokens)
  if "text" in frozen_params:
    frozen += frozen_forward_flops(frozen_params["text"],
                                   config.batch_size * config.text_encoder.max_length)
  return count_step_flops(compiled, config.model, global_batch=config.batch_size,
                          height=resolution, width=resolution,
                          num_devices=program.mesh.devices.size,
                          device_kind=jax.devices()[0].device_kind, frozen_forward=frozen,
                          extra_forwards=meanflow_extra_forwards(config.meanflow))
