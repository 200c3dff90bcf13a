"""Mutation testing of the reliability core: `./run.sh mutants [MODULE...]`.

Each mutant is one small change to one function of TARGETS (a comparison turned, an arithmetic or
boolean operator swapped, a `not` dropped, an `if` negated, a number changed, a call statement
removed, `break` and `continue` swapped). It is killed when a test that runs the function fails.
The score is the share killed, timeouts counted as killed; mutants docs/testing.md lists as
equivalent (with the reason) leave the count.

Why not mutmut or cosmic-ray: mutmut 3 skips decorated functions (every `jax.jit`) and forks from a
process that holds JAX's threads; cosmic-ray restarts Python for every mutant, and a fresh JAX
costs seconds. Here one worker process imports JAX once, finds which tests run each target
function and how long each takes (a profiler over the fast tier's tests of that module), then for
each mutant swaps the function's code object and defaults in place (also under a `jax.jit`), clears
JAX's in-memory caches when JAX traces that function (so that the change is traced again), runs
only those tests in-process, fastest first (`pytest.main`, stopping at the first failure), and
restores the code. The parent restarts the worker when a mutant hangs.

Not mutated: strings (messages), log calls, the contents of f-strings, and EXCLUDED functions and
their calls.
"""

import ast
import copy
import dataclasses
import hashlib
import importlib
import inspect
import json
import os
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
    "mnist_jax.loop": (["_train_and_test", "_resume", "_train_epochs", "_skip_checkpoint",
                        "_StopSignals.__enter__", "_StopSignals._handle", "_StopSignals.__exit__",
                        "_restore_best"],
                       ["tests/test_loop.py", "tests/test_main.py"]),
    "mnist_jax.train": (["train_step", "_batch_metrics", "_mask", "summarize", "steps_per_epoch",
                         "_batched_indices", "train_epoch", "eval_step", "evaluate"],
                        ["tests/test_train.py", "tests/test_loop.py", "tests/test_sweeps.py"]),
    "mnist_jax.replicas": (None, ["tests/test_replicas.py", "tests/test_sweeps.py"]),
}
# Neither mutated nor their calls removed: what it silences is cosmetic (orbax's reports at exit),
# installed once per process, so the worker's baseline has installed it before any mutant runs.
EXCLUDED = {"_silence_orbax_failure_reports"}
LOG_CALLS = {"debug", "info", "warning", "error", "exception"}
EQUIVALENT_DOC = REPO / "docs" / "testing.md"


@dataclasses.dataclass(frozen=True)
class Mutant:
  module: str
  function: str  # qualified name: "Checkpointer.save"
  index: int  # among the function's mutants, in source order
  line: int
  change: str  # "a < b -> a <= b": the node before and after
  function_hash: str  # of the function's source: a result holds while the function is unchanged



def key(record: dict) -> str:
  """A mutant's name in reports and in docs/testing.md: "module:function#index:change" (the
  index tells apart the same change at two places of one function)."""
  return f"{record['module']}:{record['function']}#{record['index']}:{record['change']}"


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
  """Strings, f-strings, log calls and calls of EXCLUDED functions are not mutated."""
  if isinstance(node, ast.Expr) and _is_log_call(node.value):
    return True
  if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
      and isinstance(node.value.func, ast.Name) and node.value.func.id in EXCLUDED):
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
    function_hash = hashlib.sha256(ast.unparse(function).encode()).hexdigest()[:16]
    for index, (old, new) in enumerate(_mutations(function)):
      mutated = _replace(function, old, new)
      before = ast.unparse(old).splitlines()[0][:60]
      after = ast.unparse(new).splitlines()[0][:60]
      out.append((Mutant(module_name, name, index, old.lineno, f"{before} -> {after}",
                         function_hash), mutated))
  return out


def equivalent() -> dict[str, str]:
  """docs/testing.md's table of equivalent mutants: `| module:function#index:change | reason |`."""
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
  """Which tests call which target functions, and how long each test takes (a profiler; JAX's
  caches cleared before each test, so that a function traced by an earlier test is traced again).

  `traced` holds the functions that JAX traces (called inside `jit`, `vmap`, `scan`, ...): only
  their mutants need JAX's caches cleared, since compiled code holds what they computed. A mutant
  of a function that runs in Python keeps the caches, which saves most tests their compilation."""

  def __init__(self, codes):
    from jax._src import core  # pylint: disable=import-outside-toplevel
    self.codes, self.current, self.calls, self.traced, self.seconds = codes, None, {}, set(), {}
    self._top_level = core.trace_ctx.is_top_level

  def profile(self, frame, event, arg):
    del arg
    if event == "call" and frame.f_code in self.codes and self.current:
      name = self.codes[frame.f_code]
      self.calls.setdefault(name, set()).add(self.current)
      if not self._top_level():
        self.traced.add(name)

  def pytest_runtest_setup(self, item):
    import jax  # pylint: disable=import-outside-toplevel
    jax.clear_caches()
    self.current = item.nodeid

  def pytest_runtest_teardown(self, item):
    del item
    self.current = None

  def pytest_runtest_logreport(self, report):
    self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration


def _pytest(args, plugins=()) -> int:
  import pytest  # pylint: disable=import-outside-toplevel
  return int(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--no-header",
                          "-W", "ignore", *args], plugins=list(plugins)))


def _digest(todo) -> str:
  """Of a module's list of mutants: a worker restarted after the module was edited would number
  other mutants than its parent."""
  return hashlib.sha256(json.dumps([dataclasses.asdict(m) for m, _ in todo]).encode()).hexdigest()


def worker(module_name: str, numbers: list[int], digest: str) -> None:
  """Run the module's mutants of these numbers, printing one JSON line per mutant."""
  import threading  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  module = importlib.import_module(module_name)
  todo = mutants(module_name)
  if _digest(todo) != digest:
    print(json.dumps({"changed": True}), flush=True)
    return
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
  for number in numbers:
    mutant, tree = todo[number]
    function = _target(module, mutant.function)
    # The fastest tests first: a mutant most tests kill dies sooner.
    tests = sorted(tracer.calls.get(mutant.function, ()), key=lambda t: tracer.seconds.get(t, 0))
    traced = mutant.function in tracer.traced
    result = {"number": number, **dataclasses.asdict(mutant), "tests": len(tests)}
    namespace = dict(module.__dict__)
    code = ast.Module([_undecorated(tree)], [])
    exec(compile(code, inspect.getsourcefile(module), "exec"), namespace)  # pylint: disable=exec-used
    mutated = namespace[tree.name]
    if not tests:
      result["outcome"] = "not covered"
    elif mutated.__code__.co_freevars != function.__code__.co_freevars:
      result["outcome"] = "not applicable"
    else:
      # Default values live beside the code: a mutant of a default swaps them too.
      parts = ("__code__", "__defaults__", "__kwdefaults__")
      original, started = [getattr(function, a) for a in parts], time.monotonic()
      for a in parts:
        setattr(function, a, getattr(mutated, a))
      if traced:
        jax.clear_caches()
      try:
        code = _pytest(["-x", *tests])
      finally:
        for a, value in zip(parts, original):
          setattr(function, a, value)
        if traced:
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


def run(module_name: str, numbers: list[int], timeout: float, results: list[dict]) -> None:
  """The module's mutants of these numbers, in a worker restarted after a mutant that hangs or
  crashes it (which counts as killed: a timeout)."""
  import selectors  # pylint: disable=import-outside-toplevel
  todo = mutants(module_name)
  left = list(numbers)
  while left:
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker", module_name, ",".join(map(str, left)),
         _digest(todo)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    # Until the next JSON record: the baseline (the module's tests under the profiler), then each
    # mutant. Other output (pytest's, a hanging mutant's training log) does not extend it. Read
    # in chunks, never by line: a hanging test leaves pytest's line of dots without its newline.
    deadline, pending, ended = time.monotonic() + 3600.0, b"", False
    while not ended:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not selector.select(remaining):
        process.kill()  # the mutant being tested hangs
        break
      chunk = os.read(process.stdout.fileno(), 1 << 16)
      ended = not chunk  # the worker ended
      *lines, pending = (pending + chunk).split(b"\n")
      for line in lines:
        if not line.startswith(b"{"):
          continue
        record = json.loads(line)
        if "changed" in record:
          raise SystemExit(f"{module_name} was edited during the run: run it again.")
        if "baseline" in record:
          if record["baseline"] != 0:
            raise SystemExit(f"{module_name}: the tests fail without any mutant; fix them first.")
          print(f"  baseline: {record['seconds']:.0f} s", flush=True)
          # A mutant runs at most the baseline's tests: twice its time is a hang, even on cores
          # that other work shares.
          timeout = max(timeout, 2 * record["seconds"])
          deadline = time.monotonic() + timeout
          continue
        deadline = time.monotonic() + timeout
        results.append(record)
        left.remove(record["number"])
        _print(record, len(todo))
    process.wait()
    if left:
      number = left.pop(0)
      results.append({"number": number, **dataclasses.asdict(todo[number][0]),
                      "outcome": "timeout"})
      _print(results[-1], len(todo))


def _print(record: dict, total: int) -> None:
  print(f"  {record['number'] + 1}/{total} {record['outcome']:>13}  {record['function']}: "
        f"{record['change']}", flush=True)


def _carried(module_name: str, out: pathlib.Path, equivalents: dict) -> dict[tuple, dict]:
  """What --survivors takes from the module's last run, by (function, its hash, index, change):
  the killed mutants, since tests only ever get added and a mutant of an unchanged function stays
  killed, and those listed as equivalent. Timeouts are tested again: on cores shared with other
  work, a slow survivor can pass for a hang."""
  path = out / f"{module_name}.json"
  if not path.exists():
    return {}
  return {(r["function"], r.get("function_hash"), r["index"], r["change"]): r
          for r in json.loads(path.read_text())
          if r["outcome"] == "killed" or key(r) in equivalents}


def _count(module_name: str, results: list[dict], equivalents: dict, totals: dict,
           lines: list[str]) -> None:
  """The module's line of the report, its survivors listed; adds to `totals`."""
  counted = [r for r in results if key(r) not in equivalents and r["outcome"] != "not applicable"]
  killed = sum(r["outcome"] in ("killed", "timeout") for r in counted)
  totals["killed"] += killed
  totals["counted"] += len(counted)
  lines.append(f"{module_name}: {killed} of {len(counted)} killed "
               f"({100 * killed / max(1, len(counted)):.1f}%), "
               f"{len(results) - len(counted)} equivalent or not applicable")
  for r in counted:
    if r["outcome"] in ("survived", "not covered", "timeout"):
      outcome = "timeout (counted as killed)" if r["outcome"] == "timeout" else r["outcome"]
      lines.append(f"  {outcome}: `{key(r)}` (line {r['line']})")


def main(argv) -> int:
  if argv[:1] == ["--worker"]:
    worker(argv[1], [int(n) for n in argv[2].split(",")], argv[3])
    return 0
  survivors_only, report_only = "--survivors" in argv, "--report" in argv
  modules = ([f"mnist_jax.{m}" for m in argv if m not in ("--survivors", "--report")]
             or list(TARGETS))
  started, equivalents, lines = time.monotonic(), equivalent(), []
  out = REPO / "runs" / "mutants"
  out.mkdir(parents=True, exist_ok=True)
  totals = {"killed": 0, "counted": 0}
  for module_name in modules:
    if report_only:  # the last runs' results, counted against today's list of equivalents
      results = json.loads((out / f"{module_name}.json").read_text())
      _count(module_name, results, equivalents, totals, lines)
      continue
    todo = mutants(module_name)
    carried = _carried(module_name, out, equivalents) if survivors_only else {}
    results, numbers = [], []
    for number, (m, _) in enumerate(todo):
      before = carried.get((m.function, m.function_hash, m.index, m.change))
      if before is not None:
        results.append({**before, "number": number, "line": m.line})
      else:
        numbers.append(number)
    print(f"{module_name}: {len(todo)} mutants"
          + (f", {len(results)} killed or equivalent in the last run" if survivors_only else ""),
          flush=True)
    run(module_name, numbers, timeout=300, results=results)
    results.sort(key=lambda r: r["number"])
    (out / f"{module_name}.json").write_text(json.dumps(results, indent=1))
    _count(module_name, results, equivalents, totals, lines)
  score = 100 * totals["killed"] / max(1, totals["counted"])
  lines.append(f"Score: {totals['killed']} of {totals['counted']} mutants killed ({score:.1f}%)"
               + (", the last runs' results." if report_only else
                  f", in {(time.monotonic() - started) / 60:.0f} min"
                  + (" (the survivors of the last run)." if survivors_only else ".")))
  (out / "report.txt").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
