"""The package's imports flow one way: leaves (errors, paths) at the bottom, the programs on top."""
import ast
import graphlib
import pathlib

import mnist_jax

PACKAGE = pathlib.Path(mnist_jax.__file__).parent


def _import_graph() -> dict[str, set[str]]:
  """module -> the package modules it imports, every import statement counted (function-level
  ones too)."""
  modules = {f"mnist_jax.{path.stem}": path for path in PACKAGE.glob("*.py")
             if path.stem != "__init__"}
  graph = {}
  for name, path in modules.items():
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module:
        imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    graph[name] = {m for m in imported if m in modules and m != name}
  return graph


def _reachable(graph, start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for module in graph[todo.pop()] - seen:
      seen.add(module)
      todo.append(module)
  return seen


def test_the_package_has_no_import_cycle():
  graph = _import_graph()
  try:
    order = list(graphlib.TopologicalSorter(graph).static_order())
  except graphlib.CycleError as e:
    raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None
  assert set(order) == set(graph)


def test_leaves_import_nothing_of_the_package():
  graph = _import_graph()
  for leaf in ("mnist_jax.errors", "mnist_jax.paths"):
    assert not graph[leaf], (leaf, graph[leaf])


def test_validating_a_config_does_not_reach_the_checkpoint_library():
  """A typo in an override is refused without importing orbax (or the training loop)."""
  reached = _reachable(_import_graph(), "mnist_jax.validation")
  assert not reached & {"mnist_jax.checkpoints", "mnist_jax.loop", "mnist_jax.workdir"}, reached
