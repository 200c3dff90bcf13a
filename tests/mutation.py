"""Mutation testing of the reliability core: `./run.sh mutants [MODULE...]`.

Each mutant is one small change to one function of TARGETS (a comparison turned, an arithmetic or
boolean operator swapped, a `not` dropped, an `if` negated, a number changed, a call statement
removed, `break` and `continue` swapped). It is killed when a test that runs the function fails.
The score is the share killed, timeouts counted as killed; mutants docs/testing.md lists as
equivalent (with the reason) leave the count.

Why not mutmut or cosmic-ray: mutmut 3 skips decorated functions (every `jax.jit`) and forks from a
process that holds JAX's threads; cosmic-ray restarts Python for every mutant, and a fresh JAX
costs seconds. Here one worker process imports JAX once, finds which tests run each target
function (a profiler over the fast tier's tests of that module), then for each mutant swaps the
function's code object in place (`__code__`, also under a `jax.jit`), clears JAX's in-memory caches
so the change is traced, runs only those tests in-process (`pytest.main`, stopping at the first
failure), and restores the code. The parent restarts the worker when a mutant hangs.

Not mutated: strings (messages), log calls, and the contents of f-strings.
"""

import ast
import copy
import dataclasses
import importlib
import inspect
import json
import pathlib
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
# module -> (the functions mutated, None for all but EXCLUDED; the tests that cover it)
TARGETS = {
    "mnist_jax.checkpoints": (None, ["tests/test_checkpoints.py", "tests/test_loop.py"]),
    "mnist_jax.workdir": (None, ["tests/test_workdir.py", "tests/test_loop.py"]),
    "mnist_jax.loop": (["_train_and_test", "_resume", "_train_epochs", "_StopSignals.__enter__",
                        "_StopSignals._handle", "_StopSignals.__exit__", "_restore_best"],
                       ["tests/test_loop.py", "tests/test_main.py"]),
    "mnist_jax.train": (["train_step", "_batch_metrics", "_mask", "summarize", "steps_per_epoch",
                         "_batched_indices", "train_epoch", "eval_step", "evaluate"],
                        ["tests/test_train.py", "tests/test_loop.py"]),
    "mnist_jax.replicas": (None, ["tests/test_replicas.py", "tests/test_sweeps.py"]),
}
EXCLUDED = {"_silence_orbax_failure_reports"}  # what it silences is cosmetic: reports at exit
LOG_CALLS = {"debug", "info", "warning", "error", "exception"}
EQUIVALENT_DOC = REPO / "docs" / "testing.md"


@dataclasses.dataclass(frozen=True)
class Mutant:
  module: str
  function: str  # qualified name: "Checkpointer.save"
  index: int  # among the function's mutants, in source order
  line: int
  change: str  # "a < b -> a <= b": the node before and after

  @property
  def key(self) -> str:
    return f"{self.module}:{self.function}:{self.change}"


# ---------------------------------------------------------------------------------------------
# Mutants


_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn,
          ast.NotIn: ast.In, ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div,
          ast.Div: ast.Mult, ast.FloorDiv: ast.Mult, ast.Mod: ast.Mult, ast.And: ast.Or,
          ast.Or: ast.And}


def _is_log_call(node) -> bool:
  return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr in LOG_CALLS and isinstance(node.func.value, ast.Name)
          and node.func.value.id == "log")


def _skipped(node, parents) -> bool:
  """Strings, f-strings and log calls are not mutated."""
  if isinstance(node, ast.Expr) and _is_log_call(node.value):
    return True
  for parent in parents:
    if isinstance(parent, ast.JoinedStr):
      return True
    if _is_log_call(parent):
      return True
  return False


def _mutations(function: ast.AST):
  """(node, replacement) pairs: every mutation of the function's body."""
  stack = [(function, ())]
  while stack:
    node, parents = stack.pop()
    for child in reversed(list(ast.iter_child_nodes(node))):
      stack.append((child, parents + (node,)))
    if node is function or _skipped(node, parents + (node,)):
      continue
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _SWAPS:
      yield node, ast.Compare(node.left, [_SWAPS[type(node.ops[0])]()], node.comparators)
    elif isinstance(node, ast.BinOp) and type(node.op) in _SWAPS:
      yield node, ast.BinOp(node.left, _SWAPS[type(node.op)](), node.right)
    elif isinstance(node, ast.BoolOp):
      yield node, ast.BoolOp(_SWAPS[type(node.op)](), node.values)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
      yield node, node.operand
    elif isinstance(node, ast.Constant) and type(node.value) in (bool, int, float):
      value = node.value
      new = ast.Constant((not value) if isinstance(value, bool) else
                         value + 1 if isinstance(value, int) else (value * 2 or 1.0))
      if isinstance(parents[-1], ast.keyword):  # named, so that the mutant's name tells which
        yield parents[-1], ast.keyword(parents[-1].arg, new)
      else:
        yield node, new
    elif isinstance(node, (ast.If, ast.While)) and not isinstance(node.test, (ast.Compare,
                                                                             ast.UnaryOp)):
      yield node, type(node)(ast.UnaryOp(ast.Not(), node.test), node.body, node.orelse)
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
      yield node, ast.Pass()
    elif isinstance(node, ast.Break):
      yield node, ast.Continue()
    elif isinstance(node, ast.Continue):
      yield node, ast.Break()


def _replace(tree, old, new):
  """A copy of `tree` with `old` (a node of it) replaced by `new`."""
  class Swap(ast.NodeTransformer):
    def generic_visit(self, node):
      if node is old:
        return new
      return super().generic_visit(node)
  return ast.fix_missing_locations(Swap().visit(copy.deepcopy(tree, {id(old): old})))


def _functions(module_name: str, wanted):
  """(qualname, FunctionDef) of the module's functions and methods to mutate."""
  tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
  for node in tree.body:
    defs = ([(node.name, node)] if isinstance(node, ast.FunctionDef) else
            [(f"{node.name}.{f.name}", f) for f in node.body if isinstance(f, ast.FunctionDef)]
            if isinstance(node, ast.ClassDef) else [])
    for name, function in defs:
      if (name in wanted) if wanted is not None else name.split(".")[-1] not in EXCLUDED:
        yield name, function


def mutants(module_name: str) -> list[tuple[Mutant, ast.FunctionDef]]:
  wanted, _ = TARGETS[module_name]
  out = []
  for name, function in _functions(module_name, wanted):
    for index, (old, new) in enumerate(_mutations(function)):
      mutated = _replace(function, old, new)
      before = ast.unparse(old).splitlines()[0][:60]
      after = ast.unparse(new).splitlines()[0][:60]
      out.append((Mutant(module_name, name, index, old.lineno, f"{before} -> {after}"), mutated))
  return out


def equivalent() -> dict[str, str]:
  """docs/testing.md's table of equivalent mutants: `| module:function:change | reason |`."""
  rows = re.findall(r"^\| `(mnist_jax\.[^`]+)` \| (.+?) \|$", EQUIVALENT_DOC.read_text(), re.M)
  return dict(rows)


# ---------------------------------------------------------------------------------------------
# The worker: one process, JAX imported once


def _target(module, qualname):
  obj = module
  for part in qualname.split("."):
    obj = getattr(obj, part)
  obj = getattr(obj, "__func__", obj)
  return getattr(obj, "__wrapped__", obj)  # under jax.jit


class _Tracer:
  """Which tests call which target functions (a profiler; JAX's caches cleared before each test,
  so that a function traced by an earlier test is traced again)."""

  def __init__(self, codes):
    self.codes, self.current, self.calls = codes, None, {}

  def profile(self, frame, event, arg):
    del arg
    if event == "call" and frame.f_code in self.codes and self.current:
      self.calls.setdefault(self.codes[frame.f_code], set()).add(self.current)

  def pytest_runtest_setup(self, item):
    import jax  # pylint: disable=import-outside-toplevel
    jax.clear_caches()
    self.current = item.nodeid

  def pytest_runtest_teardown(self, item):
    del item
    self.current = None


def _pytest(args, plugins=()) -> int:
  import pytest  # pylint: disable=import-outside-toplevel
  return int(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--no-header",
                          "-W", "ignore", *args], plugins=list(plugins)))


def worker(module_name: str, skip: int) -> None:
  """Run the module's mutants from number `skip` on, printing one JSON line per mutant."""
  import threading  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  module = importlib.import_module(module_name)
  todo = mutants(module_name)
  names = sorted({m.function for m, _ in todo})
  codes = {_target(module, name).__code__: name for name in names}
  tracer = _Tracer(codes)
  _, test_files = TARGETS[module_name]
  sys.setprofile(tracer.profile)
  threading.setprofile(tracer.profile)
  started = time.monotonic()
  baseline = _pytest(test_files, [tracer])
  sys.setprofile(None)
  threading.setprofile(None)
  print(json.dumps({"baseline": baseline, "seconds": time.monotonic() - started}), flush=True)
  if baseline != 0:
    return
  for number, (mutant, tree) in enumerate(todo):
    if number < skip:
      continue
    function = _target(module, mutant.function)
    tests = sorted(tracer.calls.get(mutant.function, ()))
    result = {"number": number, **dataclasses.asdict(mutant), "tests": len(tests)}
    namespace = dict(module.__dict__)
    code = ast.Module([_undecorated(tree)], [])
    exec(compile(code, inspect.getsourcefile(module), "exec"), namespace)  # pylint: disable=exec-used
    new = namespace[tree.name].__code__
    if not tests:
      result["outcome"] = "not covered"
    elif new.co_freevars != function.__code__.co_freevars:
      result["outcome"] = "not applicable"
    else:
      original, started = function.__code__, time.monotonic()
      function.__code__ = new
      jax.clear_caches()
      try:
        code = _pytest(["-x", *tests])
      finally:
        function.__code__ = original
        jax.clear_caches()
      result["outcome"] = "survived" if code == 0 else "killed"
      result["seconds"] = time.monotonic() - started
    print(json.dumps(result), flush=True)


def _undecorated(function: ast.FunctionDef) -> ast.FunctionDef:
  copied = copy.copy(function)
  copied.decorator_list = []
  return copied


# ---------------------------------------------------------------------------------------------
# The command


def run(module_name: str, timeout: float, results: list[dict]) -> None:
  """All of a module's mutants, in a worker restarted after a mutant that hangs or crashes it
  (which counts as killed: a timeout)."""
  import selectors  # pylint: disable=import-outside-toplevel
  todo = mutants(module_name)
  skip = 0
  while skip < len(todo):
    process = subprocess.Popen([sys.executable, __file__, "--worker", module_name, str(skip)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    wait = 3600.0  # the baseline: the module's tests under the profiler
    while True:
      if not selector.select(wait):
        process.kill()  # the mutant being tested hangs
        break
      line = process.stdout.readline()
      if not line:
        break  # the worker ended
      if not line.startswith("{"):
        continue
      record = json.loads(line)
      wait = timeout
      if "baseline" in record:
        if record["baseline"] != 0:
          raise SystemExit(f"{module_name}: the tests fail without any mutant; fix them first.")
        print(f"  baseline: {record['seconds']:.0f} s", flush=True)
        continue
      results.append(record)
      skip = record["number"] + 1
      print(f"  {skip}/{len(todo)} {record['outcome']:>13}  {record['function']}: "
            f"{record['change']}", flush=True)
    process.wait()
    if skip < len(todo):
      results.append({"number": skip, **dataclasses.asdict(todo[skip][0]), "outcome": "timeout"})
      print(f"  {skip + 1}/{len(todo)}       timeout  {todo[skip][0].function}", flush=True)
      skip += 1


def main(argv) -> int:
  if argv[:1] == ["--worker"]:
    worker(argv[1], int(argv[2]))
    return 0
  modules = [f"mnist_jax.{m}" for m in argv] or list(TARGETS)
  started, equivalents, lines = time.monotonic(), equivalent(), []
  out = REPO / "runs" / "mutants"
  out.mkdir(parents=True, exist_ok=True)
  totals = {"killed": 0, "counted": 0}
  for module_name in modules:
    print(f"{module_name}: {len(mutants(module_name))} mutants")
    results = []
    run(module_name, timeout=300, results=results)
    counted = [r for r in results if f"{r['module']}:{r['function']}:{r['change']}" not in equivalents
               and r["outcome"] != "not applicable"]
    killed = sum(r["outcome"] in ("killed", "timeout") for r in counted)
    totals["killed"] += killed
    totals["counted"] += len(counted)
    lines.append(f"{module_name}: {killed} of {len(counted)} killed "
                 f"({100 * killed / max(1, len(counted)):.1f}%), "
                 f"{len(results) - len(counted)} equivalent or not applicable")
    for r in counted:
      if r["outcome"] in ("survived", "not covered"):
        lines.append(f"  {r['outcome']}: `{r['module']}:{r['function']}:{r['change']}` "
                     f"(line {r['line']})")
    (out / f"{module_name}.json").write_text(json.dumps(results, indent=1))
  score = 100 * totals["killed"] / max(1, totals["counted"])
  lines.append(f"Score: {totals['killed']} of {totals['counted']} mutants killed ({score:.1f}%), "
               f"in {(time.monotonic() - started) / 60:.0f} min.")
  (out / "report.txt").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
