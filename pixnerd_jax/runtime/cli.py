"""Command-line parsing for the absl entry points (main, sample, aot).

`run(main)` is `app.run(main)`, except that a bad command line ends with one line on
stderr and exit code 2, never a traceback: an unknown config field names the closest
real one (`config.optimizer.lr does not exist; did you mean
config.optimizer.learning_rate?`), a value of the wrong type names the field and its
type, and a config file that does not load, an unknown flag or a missing one say so.
"""

import difflib
import os
import re
import sys
from typing import Sequence

from absl import app
from absl import flags
import ml_collections
# The config flag's own module: is_config_flag and the file parser are not re-exported.
from ml_collections.config_flags import config_flags
from ml_collections.config_flags import config_path

USAGE_ERROR = 2  # exit code for a bad command line (absl's own parser uses 1)


def run(main) -> None:
  """app.run(main) with `parse_flags` as the flag parser."""
  app.run(main, flags_parser=parse_flags)


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS):
  """Parses argv into flag_values; on a bad command line prints one line, exits 2.

  Returns:
    The arguments left after the flags (argv[0] first), as absl's parser does.
  """
  try:
    remaining = flag_values(argv)
    for name in _config_flag_names(flag_values):
      value = flag_values[name].value
      problem = value is not None and _load_problem(value, _config_argument(argv, name), name)
      if problem:
        raise _CommandLineError(problem)
    return remaining
  except _CommandLineError as e:
    message = str(e)
  # absl raises flags.Error; ml_collections raises AttributeError/KeyError for unknown
  # fields, IOError for a config file that is missing, and whatever a config file's own
  # code raises while it loads. All of them are command-line problems at this point.
  except Exception as e:  # pylint: disable=broad-except
    try:
      message = explain(e, argv, flag_values)
    except Exception:  # pylint: disable=broad-except  (never hide the error behind another)
      message = _one_line(str(e) or type(e).__name__)
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


class _CommandLineError(Exception):
  pass


def explain(error: Exception, argv: Sequence[str], flag_values: flags.FlagValues) -> str:
  """One line saying what is wrong with argv, given the error parsing it raised."""
  for name in _config_flag_names(flag_values):
    path = _config_argument(argv, name)
    if path is None:
      continue
    config, problem = _load_config(path, name)
    if problem:
      return problem
    for field, _ in _overrides(argv, name):
      problem = field_problem(config, field, name)
      if problem:
        return problem
    # Every field exists, so the error is about a value (or a field of an unsupported
    # type): absl says "flag --config.a.b=v: <reason>".
    match = re.match(rf"flag --({re.escape(name)}\.([\w.]+))=(.*?): (.*)", str(error), re.S)
    if match:
      flag, field, value, reason = match.groups()
      if "Non-boolean argument" in reason:
        reason = "use true or false"
      return (f"{flag}={value}: expected {_describe_type(config, field)} "
              f"({_one_line(reason)}); {flag} is now {_current(config, field)!r}")
    match = re.search(rf"Type (.+) of field ({re.escape(name)}\.[\w.]+) is not supported",
                      str(error))
    if match:
      return (f"{match.group(2)} cannot be set from the command line: it is None in the "
              "config and has no declared type. Declare it in the config file as "
              "ml_collections.config_dict.placeholder(TYPE).")
  required = re.match(r"flag (--\w+)=None: Flag --\w+ must have a value other than None",
                      str(error))
  if required:
    return f"{required.group(1)} is required; see --help"
  return _one_line(str(error) or type(error).__name__)


def field_problem(config: ml_collections.ConfigDict, field: str, name: str = "config"):
  """Why `name.field` is not a field of config (with the closest real one), or None."""
  parts = field.split(".")
  node = config
  for i, part in enumerate(parts):
    here = ".".join([name] + parts[:i])
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      return (f"{name}.{field} does not exist: {here} is {type(node).__name__} "
              f"{node!r}, not a group of fields")
    if part not in node:
      suggestion = _closest(config, parts, i, name)
      wrong = f"{name}.{field} does not exist"
      if suggestion:
        return f"{wrong}; did you mean {suggestion}?"
      return f"{wrong}; the fields of {here} are: {', '.join(sorted(node.keys()))}"
    node = node[part]
  return None


def leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Dotted paths of every leaf (non-ConfigDict value) of config."""
  out = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out += leaf_paths(value, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}")
  return out


# ----------------------------------------------------------------------------- suggestions


def _initials(name: str) -> str:
  return "".join(word[0] for word in name.split("_") if word)


def _similarity(typed: str, candidate: str) -> float:
  """How likely `candidate` is what was meant by `typed` (0..1)."""
  typed, candidate = typed.lower(), candidate.lower()
  if typed == candidate:
    return 1.0
  if len(typed) > 1 and typed == _initials(candidate):  # lr -> learning_rate
    return 0.95
  if candidate.startswith(typed) or typed.startswith(candidate):  # batch -> batch_size
    return 0.9
  return difflib.SequenceMatcher(None, typed, candidate).ratio()


def _closest(config, parts: list[str], i: int, name: str) -> str | None:
  """The most likely intended full path when parts[i] is not a key of its parent."""
  parent = config
  for part in parts[:i]:
    parent = parent[part]
  rest = parts[i + 1:]
  scored = []
  for key in parent.keys():
    score = _similarity(parts[i], key)
    candidate = ".".join(parts[:i] + [key] + rest)
    if rest and not _exists(config, candidate):
      candidate, score = ".".join(parts[:i] + [key]), score * 0.9
    scored.append((score, candidate))
  # The same name elsewhere (a field given without its group: learning_rate ->
  # optimizer.learning_rate).
  tail = ".".join(parts[i:])
  for path in leaf_paths(config):
    if path.endswith("." + tail):
      scored.append((0.92, path))
  if not scored:
    return None
  score, best = max(scored)
  return f"{name}.{best}" if score >= 0.6 else None


def _exists(config, path: str) -> bool:
  node = config
  for part in path.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return False
    node = node[part]
  return True


# ----------------------------------------------------------------------------- argv


def _config_flag_names(flag_values: flags.FlagValues) -> list[str]:
  """Names of the flags defined with config_flags.DEFINE_config_file."""
  return [name for name, flag in flag_values._flags().items()  # pylint: disable=protected-access
          if flag.name == name and config_flags.is_config_flag(flag)
          and isinstance(flag.parser, config_flags.ConfigFileFlagParser)]


def _config_argument(argv: Sequence[str], name: str) -> str | None:
  """The value of --name=PATH or --name PATH in argv (the last one), or None."""
  value = None
  for i, arg in enumerate(argv):
    match = re.fullmatch(rf"--?{re.escape(name)}(?:=(.*))?", arg)
    if match:
      value = match.group(1) if match.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else None)
  return value


def _overrides(argv: Sequence[str], name: str) -> list[tuple[str, str | None]]:
  """(field path, value) of every --name.a.b=value (or --[no]name.a.b) in argv."""
  out = []
  for arg in argv:
    match = re.fullmatch(rf"--?(?:no)?{re.escape(name)}\.([^=]+)(?:=(.*))?", arg, re.S)
    if match:
      out.append((match.group(1), match.group(2)))
  return out


def _load_config(path: str, name: str):
  """(config, None) or (None, why it does not load)."""
  try:
    config = config_flags.ConfigFileFlagParser(name, lock_config=False).parse(path)
  except Exception as e:  # pylint: disable=broad-except  (the config file's own code)
    return None, _load_problem(None, path, name, e)
  problem = _load_problem(config, path, name)
  return (None, problem) if problem else (config, None)


def _load_problem(config, path: str | None, name: str, error: Exception | None = None):
  """Why --name=path gave no ConfigDict, or None when it did."""
  if error is None:
    if isinstance(config, ml_collections.ConfigDict):
      return None
    try:  # ml_collections keeps a load failure until the config is first used
      config.keys()
      return None
    except Exception as e:  # pylint: disable=broad-except
      error = e
  file = (path or "").split(":", 1)[0]
  if not os.path.isfile(file):
    return f"--{name}={path}: no such file (give the path of a config, e.g. configs/digits.py)"
  text = str(error)
  if "Traceback (most recent call last)" in text:  # ml_collections appends the traceback
    text = text.strip().splitlines()[-1]
  return f"--{name}={path}: the config file does not load: {type(error).__name__}: " + (
      _one_line(text))


def _describe_type(config, field: str) -> str:
  try:
    kind = config_path.get_type(field, config)
  except Exception:  # pylint: disable=broad-except
    return "of unknown type"
  name = getattr(kind, "__name__", str(kind))
  return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _current(config, field: str):
  try:
    return config_path.get_value(field, config)
  except Exception:  # pylint: disable=broad-except
    return None


def _one_line(text: str) -> str:
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return " ".join(lines)[:500]
