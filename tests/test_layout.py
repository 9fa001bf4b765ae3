"""The package's shape: entry points at the root, one-way imports between subpackages."""

import ast
import collections
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pixnerd_jax"
ENTRY_POINTS = {"main", "sample", "convert", "convert_dinov2", "aot"}
# Lowest first: a subpackage may import its own modules and those of lower ones only.
LAYERS = ("runtime", "models", "diffusion", "data", "evaluation", "embedded", "training",
          "conversion", "sampling")


def _modules():
  """{dotted module name: path} of every module in the package."""
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
  """The package modules `name` imports (anywhere in the file, lazy imports included)."""
  package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("pixnerd_jax"))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      if base.startswith("pixnerd_jax"):
        for alias in node.names:
          full = f"{base}.{alias.name}"
          found.add(full if full in modules else base)
  return found - {name}


def _where(module: str) -> str | None:
  """The subpackage of a module, or None at the root."""
  parts = module.split(".")
  return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_package_root_holds_the_entry_points_only():
  root = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
  assert root == ENTRY_POINTS
  folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
  assert folders == set(LAYERS)


def test_imports_run_one_way():
  modules = _modules()
  rank = {layer: i for i, layer in enumerate(LAYERS)}
  upward = []
  for name, path in sorted(modules.items()):
    for target in _imports(name, path, modules):
      if target.split(".")[-1] in ENTRY_POINTS and target.count(".") == 1:
        upward.append(f"{name} imports the entry point {target}")
        continue
      here, there = _where(name), _where(target)
      if here is None or there is None or here == there:
        continue
      if rank[there] > rank[here]:
        upward.append(f"{name} ({here}) imports {target} ({there}), a higher layer")
  assert not upward, "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
  # The rule above must be able to fail: an import of training from models is caught.
  fake = tmp_path / "pixnerd_jax" / "models" / "bad.py"
  fake.parent.mkdir(parents=True)
  fake.write_text("from pixnerd_jax.training import train\nfrom pixnerd_jax import sample\n")
  modules = {"pixnerd_jax.training.train": None, "pixnerd_jax.sample": None}
  found = _imports("pixnerd_jax.models.bad", fake, modules)
  assert found == {"pixnerd_jax.training.train", "pixnerd_jax.sample"}
  assert LAYERS.index(_where("pixnerd_jax.training.train")) > LAYERS.index(
      _where("pixnerd_jax.models.bad"))


def test_one_module_per_name():
  names = collections.Counter(n.split(".")[-1] for n in _modules() if n.count(".") >= 1)
  assert {n for n, c in names.items() if c > 1} == set()
