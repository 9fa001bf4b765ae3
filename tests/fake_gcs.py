"""A fake gs:// for tests: `gs://<bucket>/...` is served from a local folder.

etils.epath reads gs:// through a backend per URI scheme (tf.io.gfile when TensorFlow is
installed); Orbax reads arrays through TensorStore's GCS driver and asks the bucket's
layout through google-cloud-storage. All are redirected to
`<root>/<bucket>/...`, so code that handles gs:// paths through epath and Orbax works
end to end, while `os.path`, `open` and `pathlib` see no such file (as on a real bucket).
"""

import contextlib
import os
from unittest import mock

from etils.epath import backend
from etils.epath import gpath

PREFIX = "gs://"


class FakeBucketBackend(backend._OsPathBackend):  # pylint: disable=protected-access
  """epath's local backend with gs://<bucket>/<key> mapped to <root>/<bucket>/<key>."""

  def __init__(self, root):
    self.root = os.fspath(root)

  def local(self, path) -> str:
    path = os.fspath(path)
    if path.startswith(self.root + os.sep):  # the base class calls its own methods
      return path
    if not path.startswith(PREFIX):
      raise AssertionError(f"the fake bucket only serves {PREFIX} paths, got {path}")
    return os.path.join(self.root, path[len(PREFIX):])

  def _remote(self, path) -> str:
    return PREFIX + os.path.relpath(path, self.root)

  def open(self, path, mode):
    return super().open(self.local(path), mode)

  def exists(self, path):
    return super().exists(self.local(path))

  def isdir(self, path):
    return super().isdir(self.local(path))

  def listdir(self, path):
    return super().listdir(self.local(path))

  def glob(self, path):
    return [self._remote(p) for p in super().glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for folder, dirs, files in super().walk(self.local(top), top_down=top_down,
                                            on_error=on_error):
      yield self._remote(folder), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None):
    return super().makedirs(self.local(path), exist_ok=exist_ok)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    return super().mkdir(self.local(path), exist_ok=exist_ok)

  def rmtree(self, path):
    return super().rmtree(self.local(path))

  def remove(self, path):
    return super().remove(self.local(path))

  def rename(self, path, dst):
    return super().rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    return super().replace(self.local(path), self.local(dst))

  def copy(self, path, dst, *, overwrite):
    return super().copy(self.local(path), self.local(dst), overwrite=overwrite)

  def stat(self, path):
    return super().stat(self.local(path))


@contextlib.contextmanager
def fake_gcs(root):
  """Within: gs://<bucket>/... is <root>/<bucket>/... for epath and Orbax."""
  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=import-outside-toplevel
  bucket = FakeBucketBackend(root)

  def kvstore(path):
    return {"driver": "file", "path": bucket.local(path)}

  with mock.patch.dict(gpath._PREFIX_TO_BACKEND, {"gs": bucket}), \
       mock.patch.object(gpath, "_is_tf_installed", lambda: False), \
       mock.patch.object(gcs_utils, "get_kvstore_for_gcs", kvstore), \
       mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False):
    yield bucket
