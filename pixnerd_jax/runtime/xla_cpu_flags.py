"""XLA flags the trainer sets for itself on the CPU backend.

XLA:CPU hands reductions to YNNPACK fusions by default. Those take their inputs
materialised, so in the train step's backward every RMSNorm's broadcast rsqrt and
weight become (rows, features) buffers that stay alive until the gradient needs them:
for the S/8 step at batch 16 the scratch is 914 MB with them and 666 MB with reductions
left to XLA's own emitter (benchmarks/vs_reference.py: the same speed, peak resident
memory below the official PyTorch process's). Forward-only programs (sampling) run
~4% slower that way, so only the training entry point asks for it.

XLA reads XLA_FLAGS once, when JAX creates its first backend: call this before that.
A user's own setting of the same flag wins.
"""

import os

YNN_REDUCE_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
_FLAG_NAME = YNN_REDUCE_FLAG.split("=", 1)[0]


def for_cpu_training(platforms: str | None) -> bool:
  """Appends YNN_REDUCE_FLAG to XLA_FLAGS when `platforms` (JAX's comma-separated list;
  None or '' = JAX's default) puts the CPU first and the user has not set the flag.
  True if the flag is now in XLA_FLAGS because of this call or an earlier one."""
  if not platforms or platforms.split(",")[0].strip() != "cpu":
    return False
  current = os.environ.get("XLA_FLAGS", "")
  if _FLAG_NAME in current:
    return YNN_REDUCE_FLAG in current.split()
  os.environ["XLA_FLAGS"] = f"{current} {YNN_REDUCE_FLAG}".strip()
  return True
