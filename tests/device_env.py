"""Environments for subprocesses that simulate several CPU devices."""

import os


def with_cpu_devices(count: int, **extra: str) -> dict:
  """os.environ plus `count` host-platform devices. XLA_FLAGS is extended, not replaced,
  so the subprocess compiles with the session's flags (tests/conftest.py) and its results
  compare bitwise with this process's."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
  return dict(os.environ, XLA_FLAGS=flags.strip(), **extra)
