"""host_malloc: a large block freed by a worker thread is handed back without page
faults (as XLA:CPU's per-step scratch is), and only on the CPU backend."""

import os
import subprocess
import sys

import pytest

from pixnerd_jax.runtime import host_malloc

# A child process (mallopt settings last for a process's life): a worker thread mallocs
# 256 MiB, touches every page, frees it, three times; prints the page faults of the last.
_CHILD = r"""
import ctypes, resource, sys, threading
sys.path.insert(0, sys.argv[1])
from pixnerd_jax.runtime import host_malloc
print("applied", host_malloc.keep_freed_memory())
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 256 << 20
faults = []
def run():
  for _ in range(3):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
worker = threading.Thread(target=run)
worker.start()
worker.join()
print("faults", faults[-1])
"""


def _child_faults(keep: str) -> tuple[str, int]:
  env = dict(os.environ, **{host_malloc.ENV: keep})
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _CHILD, root], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  return out[1], int(out[3])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_scratch_is_reused_without_page_faults():
  applied, faults = _child_faults("1")
  assert applied == "True"
  assert faults < 1000, faults  # 256 MiB is 65536 pages of 4 KiB
  applied, faults = _child_faults("0")  # the default glibc behaviour, for contrast
  assert applied == "False"
  assert faults > 30000, faults


def test_only_when_the_cpu_backend_comes_first(monkeypatch):
  calls = []
  monkeypatch.setattr(host_malloc, "keep_freed_memory", lambda: calls.append(1) or True)
  assert not host_malloc.for_cpu_backend(None)
  assert not host_malloc.for_cpu_backend("tpu,cpu")
  assert not host_malloc.for_cpu_backend("cuda,cpu")
  assert host_malloc.for_cpu_backend("cpu")
  assert calls == [1]


_TRIM_CHILD = r"""
import ctypes, sys, threading
sys.path.insert(0, sys.argv[1])
from pixnerd_jax.runtime import host_malloc
print("before", host_malloc.release_free_memory())
host_malloc.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def rss_mib():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) // 1024
# Many mid-sized blocks, as a compile leaves behind: freed, they stay resident.
blocks = [libc.malloc(1 << 20) for _ in range(300)]
for b in blocks:
  ctypes.memset(b, 1, 1 << 20)
for b in blocks:
  libc.free(b)
kept = rss_mib()
print("after", host_malloc.release_free_memory(), kept - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_release_gives_back_what_the_settings_keep():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _TRIM_CHILD, root], check=True,
                       env=dict(os.environ, **{host_malloc.ENV: "1"}),
                       capture_output=True, text=True).stdout.split()
  assert out[:2] == ["before", "False"]  # nothing to do without the settings
  assert out[2:4] == ["after", "True"]
  assert int(out[4]) > 200, out  # of the 300 MiB freed, most leave the process
