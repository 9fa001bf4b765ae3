"""The command line: every config field is settable, bad overrides get one line."""

import inspect
import pathlib
import subprocess
import sys

from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_path
import pytest

from configs import default
from pixnerd_jax.runtime import cli
from pixnerd_jax.diffusion import samplers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config_files() -> list[pathlib.Path]:
  """Every configs/*.py that defines get_config() (models.py holds presets only)."""
  return [p for p in sorted((ROOT / "configs").glob("*.py"))
          if "def get_config(" in p.read_text()]


def _parse(argv: list[str]):
  """argv through the entry points' parser, on fresh flags: (config, exit code, stderr)."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  try:
    cli.parse_flags(argv, flag_values)
  except SystemExit as e:
    return None, e.code
  return flag_values.config, 0


def _override(value_type, current):
  """(command-line text, the value it must give) for a field of `value_type`."""
  if value_type is bool:
    return str(not current).lower(), not current
  if value_type is int:
    return str((current or 0) + 3), (current or 0) + 3
  if value_type is float:
    return repr((current or 0.0) + 0.25), (current or 0.0) + 0.25
  if value_type is str:
    return f"{current or ''}_set", f"{current or ''}_set"
  if value_type is tuple:
    return repr(tuple(current) + (7,)), tuple(current) + (7,)
  return None


def test_config_files_are_found():
  names = {p.name for p in _config_files()}
  assert {"default.py", "digits.py", "tiny.py", "imagenet256.py", "imagenet512.py"} <= names
  assert "models.py" not in names


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: p.name)
def test_every_config_field_can_be_set_from_the_command_line(path):
  module = {}
  exec(compile(path.read_text(), str(path), "exec"), module)  # pylint: disable=exec-used
  assert not [p for p in inspect.signature(module["get_config"]).parameters.values()
              if p.default is p.empty], (
      f"{path.name}: get_config() takes arguments; teach this test which values to try")
  config = module["get_config"]()
  argv, expected, problems = ["prog", f"--config={path}"], {}, []
  for field in cli.leaf_paths(config):
    value_type = config_path.get_type(field, config)
    override = _override(value_type, config_path.get_value(field, config))
    if override is None:
      problems.append(
          f"config.{field} ({value_type.__name__}, default "
          f"{config_path.get_value(field, config)!r}) cannot be set from the command line"
          + (": declare it as ml_collections.config_dict.placeholder(TYPE)"
             if value_type is type(None) else "; teach _override its type"))
      continue
    argv.append(f"--config.{field}={override[0]}")
    expected[field] = override[1]
  assert not problems, f"{path.name}:\n" + "\n".join(problems)
  assert len(expected) > 50  # the walk reached every block

  parsed, code = _parse(argv)
  assert code == 0, f"{path.name}: the overrides did not parse (see stderr)"
  for field, value in expected.items():
    got = config_path.get_value(field, parsed)
    assert got == value and type(got) is type(value), (field, got, value)


def test_unset_fields_are_none_by_default_and_take_values():
  config = default.get_config()
  assert config.data.data_dir is None
  assert config.model.attention_implementation is None
  assert config.sampling.last_step is None
  assert samplers.settings_from_config(config.sampling)["last_step"] is None
  # The three commands: fields that default to None, set from the command line.
  parsed, code = _parse(["prog", "--config=configs/imagenet256.py",
                         "--config.data.data_dir=/data/tfds",
                         "--config.model.attention_implementation=cudnn",
                         "--config.sampling.last_step=0.04"])
  assert code == 0
  assert parsed.data.data_dir == "/data/tfds"
  assert parsed.model.attention_implementation == "cudnn"
  assert samplers.settings_from_config(parsed.sampling)["last_step"] == 0.04
  assert dict(parsed.model)["attention_implementation"] == "cudnn"  # model.json / build_model


@pytest.mark.parametrize("override, message", [
    ("--config.optimizer.lr=1",
     "error: config.optimizer.lr does not exist; did you mean config.optimizer.learning_rate?"),
    ("--config.optimizr.learning_rate=1",
     "did you mean config.optimizer.learning_rate?"),
    ("--config.learning_rate=1", "did you mean config.optimizer.learning_rate?"),
    ("--config.batch=4", "did you mean config.batch_size?"),
    ("--config.model.attention=cudnn", "did you mean config.model.attention_implementation?"),
    ("--config.optimizer.frobnicate=1", "the fields of config.optimizer are: b1, b2, eps"),
    ("--config.seed.x=1", "config.seed.x does not exist: config.seed is int 0"),
    ("--config.optimizer.learning_rate=fast",
     "config.optimizer.learning_rate=fast: expected a float (could not convert"),
    ("--config.mesh.fsdp=1.5", "config.mesh.fsdp=1.5: expected an int"),
    ("--config.repa.enabled=maybe", "config.repa.enabled=maybe: expected a bool"),
    ("--frobnicate=1", "error: Unknown command line flag 'frobnicate'"),
])
def test_bad_overrides_get_one_line_naming_the_field(override, message, capsys):
  _, code = _parse(["prog", "--config=configs/tiny.py", "--workdir=/tmp/w", override])
  err = capsys.readouterr().err
  assert code == cli.USAGE_ERROR == 2
  assert message in err
  assert err.count("\n") == 1 and "Traceback" not in err, err


def test_config_files_that_do_not_load_are_named(tmp_path, capsys):
  _, code = _parse(["prog", "--config=configs/nope.py", "--config.seed=1"])
  assert code == 2 and "--config=configs/nope.py: no such file" in capsys.readouterr().err
  _, code = _parse(["prog", "--config=configs/nope.py"])
  assert code == 2 and "--config=configs/nope.py: no such file" in capsys.readouterr().err
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  return undefined_name\n")
  _, code = _parse(["prog", f"--config={broken}"])
  err = capsys.readouterr().err
  assert code == 2 and "does not load: NameError: name 'undefined_name'" in err
  assert err.count("\n") == 1


def test_a_field_left_none_without_a_type_is_explained(tmp_path, capsys):
  untyped = tmp_path / "untyped.py"
  untyped.write_text("import ml_collections\n\ndef get_config():\n"
                     "  return ml_collections.ConfigDict(dict(data_dir=None))\n")
  _, code = _parse(["prog", f"--config={untyped}", "--config.data_dir=/x"])
  err = capsys.readouterr().err
  assert code == 2
  assert "config.data_dir cannot be set from the command line" in err
  assert "ml_collections.config_dict.placeholder(TYPE)" in err


def test_suggestions():
  config = default.get_config()
  assert cli.field_problem(config, "optimizer.learning_rate") is None
  assert "did you mean config.ema_decay?" in cli.field_problem(config, "ema_decy")
  assert "did you mean config.data.num_workers?" in cli.field_problem(config, "data.workers")
  assert "did you mean" not in cli.field_problem(config, "zzz")
  assert isinstance(config, ml_collections.ConfigDict)


def test_main_reports_a_misspelt_field_in_one_line():
  result = subprocess.run(
      [sys.executable, "-m", "pixnerd_jax.main", "--config=configs/tiny.py",
       "--workdir=/tmp/never_made", "--config.optimizer.lr=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr == ("error: config.optimizer.lr does not exist; did you mean "
                           "config.optimizer.learning_rate?\n")
  assert not pathlib.Path("/tmp/never_made").exists()
