"""A window of train steps traced with jax.profiler (config.profile).

The trace goes to <workdir>/plugins/profile/<run>/, where TensorBoard's profile plugin
(and XProf) look for it: `tensorboard --logdir <workdir>`, tab PROFILE. With all_hosts in
a multi-process run, process i writes under <workdir>/process_<i>/ instead: trace files
are named after the host, and processes sharing a host name (several per machine,
containers) would overwrite each other's.
"""

import os

from absl import logging
import jax


class ProfileWindow:
  """Starts a trace before step `start_step` runs and stops it once step
  start_step + num_steps - 1 has finished on the device; process 0 only unless
  all_hosts. start_step 0 traces nothing."""

  def __init__(self, profile_config, workdir: str):
    self._start = int(profile_config.get("start_step", 0)) if profile_config else 0
    self._last = self._start + int(profile_config.get("num_steps", 1)) - 1 if self._start else 0
    all_hosts = bool(profile_config.get("all_hosts", False)) if profile_config else False
    self._enabled = self._start > 0 and (all_hosts or jax.process_index() == 0)
    if all_hosts and jax.process_count() > 1:
      workdir = os.path.join(workdir, f"process_{jax.process_index()}")
    self._workdir = workdir
    self.tracing = False

  def before_step(self, step: int) -> None:
    if self._enabled and step == self._start and not self.tracing:
      jax.profiler.start_trace(self._workdir)
      self.tracing = True
      logging.info("Profiling steps %d-%d into %s/plugins/profile.", self._start,
                   self._last, self._workdir)

  def after_step(self, step: int, outputs) -> None:
    """outputs: the step's results, waited for so the trace holds the whole step."""
    if self.tracing and step >= self._last:
      self.stop(outputs)

  def stop(self, outputs=None) -> None:
    if not self.tracing:
      return
    if outputs is not None:
      jax.block_until_ready(outputs)
    jax.profiler.stop_trace()
    self.tracing = False
    logging.info("Profile written to %s/plugins/profile; view it with `tensorboard "
                 "--logdir %s` (PROFILE tab) or XProf.", self._workdir, self._workdir)
