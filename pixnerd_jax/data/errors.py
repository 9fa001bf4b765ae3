"""The error of data the user can fix (a folder, a shard, labels): its message names the
problem and the fix, and the entry points print it as one line."""


class DataError(ValueError):
  """Bad or unreadable training data; the message says what to change."""
