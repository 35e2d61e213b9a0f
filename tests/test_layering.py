"""The layers of the house (docs/design.md), read from the source with `ast`; nothing is imported.

The graph's nodes are the first-party modules (models, tasks, trainer, bench, interactive, train);
an edge is any import of one by another, at module level or inside a function, and an attribute
use `pkg.sub.name` that reaches a submodule. Importing `a.b` counts as depending on `a.b`, not on
the package `a` whose `__init__` Python runs first (as import-linter and grimp count it).
"""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("models", "tasks", "trainer", "bench")
SCRIPTS = ("interactive", "train")
# (c): no Python module imports train.py (gin files name its functions); tests still may.
NOT_IMPORTING_TRAIN = ("models", "tasks", "trainer", "bench", "interactive")
# (d): module prefix -> the top-level modules it may not import.
FORBIDDEN = {
  "models": ("gin", "seqio", "tasks", "trainer"),
  "tasks": ("models", "trainer", "flax"),
}
# Command lines (`python -m models.formats`) may read a model gin file; library code may not.
ENTRY_POINTS_MAY_IMPORT = ("gin",)


@dataclasses.dataclass(frozen=True)
class Import:
  importer: str
  target: str  # a first-party module, or the dotted name of a third-party one
  line: int
  first_party: bool

  def where(self) -> str:
    return f"{module_path(self.importer)}:{self.line}"


def module_files() -> dict[str, str]:
  """First-party module name -> path relative to the repo."""
  out = {name: f"{name}.py" for name in SCRIPTS}
  for package in PACKAGES:
    for folder, dirs, files in os.walk(os.path.join(REPO, package)):
      dirs[:] = sorted(d for d in dirs if d != "__pycache__")
      rel = os.path.relpath(folder, REPO)
      for file in sorted(files):
        if file.endswith(".py"):
          parts = rel.split(os.sep) + ([] if file == "__init__.py" else [file[:-3]])
          out[".".join(parts)] = os.path.join(rel, file)
  return out


MODULES = module_files()


def module_path(name: str) -> str:
  return MODULES[name]


def is_package(name: str) -> bool:
  return MODULES[name].endswith("__init__.py")


def longest_module(dotted: str) -> str | None:
  """The longest prefix of `dotted` that is a first-party module."""
  parts = dotted.split(".")
  for end in range(len(parts), 0, -1):
    candidate = ".".join(parts[:end])
    if candidate in MODULES:
      return candidate
  return None


def private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class _Reader(ast.NodeVisitor):
  """Collects one module's imports and its uses of other modules' underscore names."""

  def __init__(self, module: str):
    self.module = module
    self.imports: list[Import] = []
    self.private_uses: list[tuple[int, str]] = []  # (line, "module._name")
    self.scopes: list[dict[str, str]] = [{}]  # name bound by an import -> first-party module

  def _add(self, target: str, line: int) -> None:
    first = longest_module(target)
    if first is not None:
      if first != self.module:
        self.imports.append(Import(self.module, first, line, True))
    else:
      self.imports.append(Import(self.module, target, line, False))

  def _scoped(self, node: ast.AST) -> None:
    self.scopes.append({})
    self.generic_visit(node)
    self.scopes.pop()

  visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _scoped

  def visit_Import(self, node: ast.Import) -> None:
    for alias in node.names:
      self._add(alias.name, node.lineno)
      bound = alias.asname or alias.name.split(".")[0]
      module = alias.name if alias.asname else alias.name.split(".")[0]
      if module in MODULES:
        self.scopes[-1][bound] = module

  def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
      package = self.module.split(".")
      if not is_package(self.module):
        package = package[:-1]
      package = package[: len(package) - (node.level - 1)]
      base = ".".join(package + ([base] if base else []))
    for alias in node.names:
      submodule = f"{base}.{alias.name}"
      if submodule in MODULES:
        self._add(submodule, node.lineno)
        self.scopes[-1][alias.asname or alias.name] = submodule
      else:
        self._add(base, node.lineno)
        if private(alias.name) and longest_module(base) not in (None, self.module):
          self.private_uses.append((node.lineno, f"{base}.{alias.name}"))

  def visit_Attribute(self, node: ast.Attribute) -> None:
    chain, value = [node.attr], node.value
    while isinstance(value, ast.Attribute):
      chain.append(value.attr)
      value = value.value
    if isinstance(value, ast.Name):
      module = next((s[value.id] for s in reversed(self.scopes) if value.id in s), None)
      if module is not None:
        names = list(reversed(chain))
        while names and f"{module}.{names[0]}" in MODULES:
          module = f"{module}.{names.pop(0)}"
          self._add(module, node.lineno)
        if names and private(names[0]) and module != self.module:
          self.private_uses.append((node.lineno, f"{module}.{names[0]}"))
        return  # the chain is read; its inner Attribute nodes are parts of it
    self.generic_visit(node)


def read(module: str) -> _Reader:
  with open(os.path.join(REPO, module_path(module)), encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=module_path(module))
  reader = _Reader(module)
  reader.visit(tree)
  return reader


READERS = {module: read(module) for module in MODULES}


def first_party_graph() -> dict[str, dict[str, Import]]:
  """importer -> {imported module: the first import of it (for its line)}."""
  graph: dict[str, dict[str, Import]] = {module: {} for module in MODULES}
  for reader in READERS.values():
    for imp in reader.imports:
      if imp.first_party:
        graph[imp.importer].setdefault(imp.target, imp)
  return graph


def cycles(graph: dict[str, dict[str, Import]]) -> Iterator[tuple[list[Import], set[str]]]:
  """One shortest cycle (as its edges) per strongly connected component of several modules,
  with the component (every module on some cycle with it)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  components: list[set[str]] = []

  def connect(v: str) -> None:  # Tarjan's algorithm
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      components.append(component)

  for v in sorted(graph):
    if v not in index:
      connect(v)
  for component in components:
    if len(component) < 2:
      continue
    start = min(component)
    # Shortest path from `start` back to itself inside the component (breadth-first).
    previous: dict[str, Import] = {}
    frontier = [start]
    while frontier and start not in previous:
      following = []
      for v in frontier:
        for w, imp in sorted(graph[v].items()):
          if w in component and w not in previous:
            previous[w] = imp
            following.append(w)
      frontier = following
    path, v = [], start
    while True:
      path.append(previous[v])
      v = previous[v].importer
      if v == start:
        break
    yield list(reversed(path)), component


def describe(cycle: list[Import], component: set[str]) -> str:
  hops = " -> ".join(f"{imp.importer} ({imp.where()})" for imp in cycle)
  more = component - {imp.importer for imp in cycle}
  also = f"\n  and on cycles with them: {', '.join(sorted(more))}" if more else ""
  return f"{hops} -> {cycle[0].importer}{also}"


def under(module: str, prefixes: tuple[str, ...]) -> bool:
  return any(module == p or module.startswith(f"{p}.") for p in prefixes)


def test_the_graph_sees_every_layer():
  graph = first_party_graph()
  assert {"models.layers", "tasks.vocab", "tasks.corpora.fetch", "trainer.state"} <= set(graph)
  assert "tasks.registry" in graph["tasks.pipeline"]  # module level
  assert "tasks.vocab" in graph["trainer.mesh"]  # inside a function


def test_no_import_cycles():
  found = [describe(*cycle) for cycle in cycles(first_party_graph())]
  assert not found, "import cycles (importer (file:line) -> ...):\n" + "\n".join(found)


def test_no_module_uses_another_modules_private_names():
  found = [
    f"{module_path(module)}:{line} uses {name}"
    for module, reader in READERS.items()
    for line, name in reader.private_uses
  ]
  assert not found, "underscore names used across modules:\n" + "\n".join(found)


def test_only_gin_imports_train():
  found = [
    f"{imp.where()} imports train"
    for reader in READERS.values()
    for imp in reader.imports
    if imp.target == "train" and under(imp.importer, NOT_IMPORTING_TRAIN)
  ]
  assert not found, "\n".join(found)


def test_layers_import_only_what_they_may():
  found = [
    f"{imp.where()} ({imp.importer}) imports {imp.target}"
    for reader in READERS.values()
    for imp in reader.imports
    for layer, forbidden in FORBIDDEN.items()
    if under(imp.importer, (layer,))
    and under(imp.target, forbidden)
    and not (imp.importer.endswith(".__main__") and under(imp.target, ENTRY_POINTS_MAY_IMPORT))
  ]
  assert not found, "\n".join(found)
