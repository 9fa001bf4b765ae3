"""Every documented `python -m pixnerd_jax...` command runs as written.

The commands are read from the fenced code blocks of README.md and launch/README.md (a
line may hold several commands joined by `&&`; `\\` continues a line; `#` starts a
comment; inline code in prose is not a command). They run in one scratch directory, in
document order except that a command reading what another writes (its `--out`) runs
after it, so `convert checkpoint ... --out converted/xl256` feeds the commands that read
`converted/xl256`. Around them the test provides:

  PLACEHOLDERS  documented text standing for the user's own paths (`<data_dir>`, `DIR`,
                bucket paths), replaced by stand-ins in the scratch directory;
  STAND_INS     files the commands read that no documented command makes quickly
                (released checkpoints, pytorch-fid weights, the digits training workdir),
                made tiny under their documented names;
  RUNS          how each command runs fast: the flags added (`--dry_run` where the real
                run takes hours), and what it needs (libtpu).

A documented command that fails, names a placeholder the table does not know, or that
no RUNS rule covers fails the suite, saying which table to extend.
"""

import concurrent.futures
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests import doc_stand_ins

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DOCS = ("README.md", "launch/README.md")
PREFIX = "python -m pixnerd_jax"
TIMEOUT_S = 300

# Documented text -> its stand-in ({tmp}: the scratch directory), per token, as regexes.
PLACEHOLDERS = {
    r"<data_dir>": "{tmp}/tfds",                  # TFDS data_dir: tiny imagenet2012
    r"gs://bucket/(\w+)": "{tmp}/bucket/\\1",     # a bucket workdir: a local one
    r"(?<==)DIR$": "{tmp}/workdir",               # --workdir=DIR
    r"(?<==)/data/imagenet/train$": "{tmp}/imagenet/train",  # ImageNet-style image folder
    r"(?<==)/data/shards/\*\.tar$": "{tmp}/shards/*.tar",  # webdataset caption shards
    r"^\.\./shared/": "{shared}/",  # the reference fixtures beside the checkout
    r"(?<==)ELLA/dpg_bench/prompts$": "{tmp}/dpg_prompts",  # DPG-Bench's prompt folder
}
# Made before the commands run, for the placeholders above: path under {tmp} -> maker.
PLACEHOLDER_STAND_INS = {
    "tfds": doc_stand_ins.tfds_imagenet,
    "imagenet/train": doc_stand_ins.image_folder,
    "shards": doc_stand_ins.caption_tar_shards,
    "dpg_prompts": doc_stand_ins.dpg_prompt_folder,
}
# Set for every command. configs/imagenet512.py reads TFDS's default data_dir.
ENVIRONMENT = {"TFDS_DATA_DIR": "{tmp}/tfds"}

# Paths the commands read that no documented command makes (or only in a run of hours),
# made under their documented names in the scratch directory when a command names them.
STAND_INS = {
    "epoch=319-step=1600000_emainit.ckpt": doc_stand_ins.official_checkpoint,
    "model.ckpt": doc_stand_ins.official_t2i_checkpoint,  # the released text-to-image one
    "weights/Qwen3-1.7B": doc_stand_ins.text_encoder_folder,
    "fixture.npz": doc_stand_ins.reference_fixture,
    "dinov2_vitb14_pretrain.pth": doc_stand_ins.dinov2_hub_weights,
    "pt_inception-2015-12-05-6726825d.pth": doc_stand_ins.inception_weights,
    "VIRTUAL_imagenet256_labeled.npz": doc_stand_ins.reference_statistics,
    # `sample` runs as a dry run, so the .npz it would assemble is a stand-in too.
    "samples/xl256/samples_50000x256x256x3.npz": doc_stand_ins.sample_npz,
    # The quick start's output (15 minutes of training), read by `sample`.
    "workdirs/digits": doc_stand_ins.digits_workdir,
    "workdirs/digits_t2i": doc_stand_ins.digits_t2i_workdir,
    "workdirs/digits_mf": doc_stand_ins.digits_meanflow_workdir,
    # Text-to-image prompt sources: a prompt file, GenEval's metadata.
    "prompts.txt": doc_stand_ins.prompt_file,
    "evaluation_metadata_rephrased.jsonl": doc_stand_ins.geneval_metadata,
}


def _model_of(params_checkpoint: str):
  """Flags setting config.model to a params checkpoint's architecture (its model.json)."""
  def flags(tmp: pathlib.Path) -> list[str]:
    model = json.loads((tmp / params_checkpoint / "model.json").read_text())
    return [f"--config.model.{k}={v}" for k, v in sorted(model.items())]
  return flags


def _needs_libtpu(argv):
  del argv
  if importlib.util.find_spec("libtpu") is None:
    return "libtpu is not installed (pip install -r requirements-test.txt)"
  return None


def _needs_data_source(argv):
  """Skips a training command whose config's dataset this checkout does not have yet."""
  from pixnerd_jax.runtime import cli  # pylint: disable=g-import-not-at-top
  from pixnerd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  path = next(t.split("=", 1)[1] for t in argv if t.startswith("--config="))
  config, _ = cli._load_config(str(ROOT / path), "config")  # pylint: disable=protected-access
  name = next((t.split("=", 1)[1] for t in argv if t.startswith("--config.data.name=")),
              config.data.name)
  if name not in pipeline.SOURCE_NAMES:
    return (f"config.data.name={name!r} is not implemented in this checkout yet "
            f"(pixnerd_jax/data has {pipeline.SOURCE_NAMES})")
  return None


def _needs_files(argv):
  """Skips a command naming files beside the checkout (../shared) that are absent."""
  missing = [t for t in argv if t.startswith(str(SHARED))
             and not os.path.exists(t)]
  return f"{missing[0]} is absent (CI provides ../shared)" if missing else None


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str              # regex searched in the documented command
  extra: tuple = ()         # flags appended (str, or callable(tmp) -> list of str)
  expect: str | None = None  # regex the command's stdout must match
  needs: object = None      # callable(argv) -> reason to skip, or None
  why: str = ""


DRY_RUN_OK = r"(?m)^dry run\s+OK"
# Dry runs of the XL and XXL configs trace their trunk scanned: tracing 28 unrolled blocks
# is most of a dry run (~25 s of CPU each, a dozen commands), and the scanned trunk is the
# same blocks (tests/test_models.py checks the two agree).
SCANNED = "--config.model.scan_blocks=True"
# First match wins. Every documented command must match one.
RUNS = (
    Rule(r"^python -m pixnerd_jax\.main .*--config\.init_from=converted/xl256\b",
         ("--dry_run", _model_of("converted/xl256")), DRY_RUN_OK, needs=_needs_data_source,
         why="training takes days; the converted checkpoint comes from the tiny stand-in "
             "official checkpoint, so config.model is set to its architecture"),
    Rule(r"^python -m pixnerd_jax\.main .*--config\.meanflow\.teacher=converted/xl256\b",
         ("--dry_run", _model_of("converted/xl256")), DRY_RUN_OK, needs=_needs_data_source,
         why="distillation takes days; the student gets the stand-in teacher's architecture"),
    Rule(r"^python -m pixnerd_jax\.main --config=configs/digits", ("--dry_run",), DRY_RUN_OK,
         needs=_needs_data_source,
         why="the quick starts' trainings take minutes; their models are small, traced as "
             "documented (their workdirs' checkpoints have the per-block layout)"),
    Rule(r"^python -m pixnerd_jax\.main ", ("--dry_run", SCANNED), DRY_RUN_OK,
         needs=_needs_data_source,
         why="training takes hours to days; the dry run loads, reads and traces everything "
             "(the trunk scanned, see SCANNED)"),
    Rule(r"^python -m pixnerd_jax\.sample ", ("--dry_run",), DRY_RUN_OK,
         why="50,000 samples take hours; the dry run loads the checkpoint, traces the sampler"),
    Rule(r"^python -m pixnerd_jax\.aot ", ("--dry_run", SCANNED),
         r"(?m)^dry run\s+the step lowered",
         needs=_needs_libtpu, why="XLA's TPU compile of XL/16 takes minutes"),
    Rule(r"^python -m pixnerd_jax\.(convert|convert_dinov2|evaluation\.inception|"
         r"evaluation\.fid) ", needs=_needs_files,
         why="runs as documented on the stand-ins, in seconds"),
)


# ----------------------------------------------------------------------------- extraction


@dataclasses.dataclass(frozen=True)
class Command:
  doc: str
  line: int
  text: str  # as documented (continuations joined, comment dropped)

  @property
  def id(self) -> str:
    return f"{self.doc}:{self.line}:{self.text.split()[2]}"

  @property
  def tokens(self) -> list[str]:
    return shlex.split(self.text)


def documented_commands() -> list[Command]:
  commands = []
  for doc in DOCS:
    text = (ROOT / doc).read_text()
    for block in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
      first_line = text[:block.start()].count("\n") + 2
      logical, start = "", None
      for offset, raw in enumerate(block.group(1).splitlines()):
        start = first_line + offset if start is None else start
        if raw.rstrip().endswith("\\"):
          logical += raw.rstrip()[:-1] + " "
          continue
        logical += raw
        tokens = shlex.split(logical, comments=True) if logical.strip() else []
        # Split at `&&` tokens; shlex.join keeps quoted arguments whole (--prompt="a cat").
        parts = " ".join("\0" if t == "&&" else shlex.quote(t) for t in tokens).split(" \0 ")
        for part in parts:
          if part.startswith(PREFIX):
            commands.append(Command(doc, start, part))
        logical, start = "", None
  return commands


COMMANDS = documented_commands()


def rule_for(command: Command) -> Rule | None:
  return next((r for r in RUNS if re.search(r.pattern, command.text)), None)


def substitute(command: Command, tmp: pathlib.Path) -> list[str]:
  """The command's argv with placeholders replaced; fails on one the table lacks."""
  argv = []
  for token in command.tokens:
    for pattern, replacement in PLACEHOLDERS.items():
      token = re.sub(pattern, replacement.format(tmp=tmp, shared=SHARED), token)
    leftover = re.search(r"<[^>]*>|gs://|\b[A-Z]{3,}\b", token)
    if leftover:
      pytest.fail(f"{command.id}: `{command.text}` holds the placeholder {leftover.group()!r}"
                  " that tests/test_docs.py does not know; add it to PLACEHOLDERS (and its "
                  "stand-in to PLACEHOLDER_STAND_INS).")
    argv.append(token)
  return argv


def _outputs(argv: list[str]) -> set[str]:
  out = set()
  for i, token in enumerate(argv):
    if token == "--out" and i + 1 < len(argv):
      out.add(argv[i + 1])
    elif token.startswith("--out="):
      out.add(token.split("=", 1)[1])
  return out


def _reads(argv: list[str], path: str) -> bool:
  values = [t.split("=", 1)[-1] for t in argv[3:]]
  return any(v == path or v.startswith(path.rstrip("/") + "/") for v in values)


def run_order(argvs: dict[Command, list[str]]) -> list[tuple[Command, list[Command]]]:
  """Commands in document order, each after the commands whose --out it reads."""
  producers = {c: [d for d in COMMANDS
                   if d != c and any(_reads(argvs[c], o) for o in _outputs(argvs[d]))]
               for c in COMMANDS}
  ordered, placed = [], set()
  while len(ordered) < len(COMMANDS):
    ready = [c for c in COMMANDS if c not in placed
             and all(p in placed for p in producers[c])]
    assert ready, f"documented commands read each other's outputs in a cycle: {producers}"
    ordered.append((ready[0], producers[ready[0]]))
    placed.add(ready[0])
  return ordered


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass
class Result:
  argv: list[str]
  skipped: str | None = None
  returncode: int | None = None
  stdout: str = ""
  stderr: str = ""
  seconds: float = 0.0


def _run(argv: list[str], tmp: pathlib.Path, env: dict) -> Result:
  started = time.perf_counter()
  proc = subprocess.run([sys.executable] + argv[1:], cwd=tmp, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT_S)
  return Result(argv, returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                seconds=time.perf_counter() - started)


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory) -> dict[str, Result]:
  started = time.perf_counter()
  tmp = tmp_path_factory.mktemp("docs")
  (tmp / "configs").symlink_to(ROOT / "configs")
  if any(rule_for(c) is None for c in COMMANDS):
    return {}  # test_every_command_has_a_rule_and_known_placeholders says which
  argvs = {c: substitute(c, tmp) for c in COMMANDS}
  skips = {c: rule_for(c).needs(argvs[c]) if rule_for(c).needs else None for c in COMMANDS}
  runnable = [argvs[c] for c in COMMANDS if not skips[c]]
  # Stand-ins are made only for the commands that will run.
  environment = {k: v.format(tmp=tmp) for k, v in ENVIRONMENT.items()}
  for relative, maker in PLACEHOLDER_STAND_INS.items():
    if any(str(tmp / relative) in token
           for token in [t for argv in runnable for t in argv] + list(environment.values())):
      maker(tmp / relative)
  unavailable = {}
  for name, maker in STAND_INS.items():
    if any(_reads(argv, name) or name in argv for argv in runnable):
      if not maker(tmp / name):
        unavailable[name] = (maker.__doc__ or "").strip().splitlines()[0]
  print(f"stand-ins made in {time.perf_counter() - started:.1f} s")
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **environment)

  results, futures = {}, {}

  def job(command: Command, producers: list[Command]) -> Result:
    rule = rule_for(command)
    argv = argvs[command]
    for producer in producers:
      futures[producer].result()
      if results[producer.id].returncode != 0:
        return Result(argv, skipped=f"not run: it reads the output of {producer.id}, "
                                    "which did not succeed")
    missing = [n for n in unavailable if _reads(argv, n) or n in argv]
    if skips[command] or missing:
      return Result(argv, skipped=skips[command] or f"stand-in {missing[0]} unavailable "
                                                    f"here: {unavailable[missing[0]]}")
    for extra in rule.extra:
      argv = argv + (extra(tmp) if callable(extra) else [extra])
    return _run(argv, tmp, env)

  order = run_order(argvs)
  # Two at a time: most of each is single-threaded (imports, tracing). Submitted in run
  # order, so a command waits only on commands already started.
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    for command, producers in order:
      def run_and_record(command=command, producers=producers):
        results[command.id] = job(command, producers)
      futures[command] = pool.submit(run_and_record)
    for future in futures.values():
      future.result()
  for command in COMMANDS:  # shown with -s
    result = results[command.id]
    print(f"{result.seconds:6.1f} s  exit {result.returncode}  {command.id}  "
          f"{result.skipped or ''}")
  return results


# ----------------------------------------------------------------------------- tests


def test_the_documented_commands_are_found():
  texts = [c.text for c in COMMANDS]
  assert ("python -m pixnerd_jax.main --config=configs/digits.py --workdir=workdirs/digits"
          in texts)  # the quick start, from a line of `&&`-joined commands
  assert any(t.startswith("python -m pixnerd_jax.sample --config=configs/digits.py "
                          "--checkpoint=workdirs/digits --num_samples=1000") for t in texts)
  assert "python -m pixnerd_jax.convert verify fixture.npz" in texts  # comment dropped
  assert {c.doc for c in COMMANDS} == set(DOCS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.id)
def test_every_command_has_a_rule_and_known_placeholders(command, tmp_path):
  assert rule_for(command) is not None, (
      f"{command.id}: no rule in tests/test_docs.py RUNS says how to run `{command.text}`. "
      "Add one (the flags that make it fast, e.g. --dry_run), and stand-ins for the files "
      "it reads to STAND_INS.")
  substitute(command, tmp_path)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.id)
def test_documented_command_runs(command, doc_runs):
  result = doc_runs.get(command.id)
  assert result is not None, "some documented command has no RUNS rule (see the test above)"
  if result.skipped:
    pytest.skip(result.skipped)
  rule = rule_for(command)
  shown = shlex.join(result.argv)
  assert result.returncode == 0, (
      f"{command.id}: the documented command `{command.text}` failed (exit "
      f"{result.returncode}) as `{shown}`:\n{result.stderr[-3000:]}\n{result.stdout[-2000:]}"
      "\nIf it reads a file that no documented command makes, add a stand-in to STAND_INS "
      "in tests/test_docs.py.")
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  if rule.expect:
    assert re.search(rule.expect, result.stdout), (shown, result.stdout[-3000:])


def test_ci_runs_the_readme_test_command():
  """The README's test command is the one .ci/run runs (CI's verdict is on that command)."""
  def pytest_command(text):
    lines = [part.strip() for line in text.splitlines() for part in line.split("&&")
             if part.strip().startswith("python -m pytest")]
    assert len(lines) == 1, lines
    return lines[0]
  assert (pytest_command((ROOT / "README.md").read_text()) ==
          pytest_command((ROOT / ".ci" / "run").read_text()))
