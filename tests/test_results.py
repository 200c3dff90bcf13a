"""mnist_jax.results: the committed runs, the tables generated from them, saving a run."""

import json
import pathlib
import re

import pytest

from conftest import REPO, assert_clear_error, fake_run, run_program
from mnist_jax import config as config_lib
from mnist_jax import paths, results
from mnist_jax import workdir as workdir_lib
from mnist_jax.errors import ResultError


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
  """An empty experiments/results/ of the test's own (published.toml copied in)."""
  directory = tmp_path / "results"
  directory.mkdir()
  (directory / "published.toml").write_text(results.PUBLISHED.read_text())
  monkeypatch.setattr(paths, "RESULTS_DIR", directory)
  results.load.cache_clear()
  yield directory
  results.load.cache_clear()


def adam_mlp(seed=0, num_seeds=1):
  config = config_lib.load("adam_mlp")
  config.seed, config.num_seeds, config.data.source = seed, num_seeds, "idx"
  return config


def vmapped_summary(accuracies, first_seed=0):
  return {"test_accuracy": sum(accuracies) / len(accuracies), "test_loss": 0.1,
          "replicas": [{"seed": first_seed + k, "test_accuracy": a, "test_loss": 0.1}
                       for k, a in enumerate(accuracies)]}


def test_the_committed_tables_regenerate_byte_identical_from_the_files():
  assert results.tables(check=True) == [], (
      "a generated table differs from experiments/results/: run python -m mnist_jax.results tables")


def test_every_table_in_the_results_and_the_readme_is_generated_or_marked_typed():
  """A table is generated from the files, or the line before it says its runs have no files."""
  for path in results.MARKDOWN_FILES:
    generated, previous = False, ""
    for line in path.read_text().splitlines():
      if line.startswith("<!-- table:"):
        generated = True
      elif line.startswith("<!-- end table"):
        generated = False
      elif line.startswith("|") and not previous.startswith("|") and not generated:
        assert previous.startswith(results.UNGENERATED_MARKS), (
            f"{path.name}: a table neither generated nor marked typed: {line}")
      if line.strip():
        previous = line


def test_save_copies_the_result_files_and_never_replaces_a_committed_run(results_dir, tmp_path):
  run = fake_run(tmp_path / "runs" / "a", adam_mlp(0, 3), vmapped_summary([0.97, 0.975, 0.972]),
                 environment={"data_source": "idx"})
  (run / "checkpoints").mkdir()
  saved = results.save(run)
  assert saved == results_dir / "adam_mlp" / "seeds-0-2"
  assert sorted(p.name for p in saved.iterdir()) == sorted(workdir_lib.RESULT_FILES)
  assert results.load("adam_mlp").result.error().n == 3
  with pytest.raises(ResultError, match="already exists: a committed run is never replaced"):
    results.save(run)
  # Seeds 0-2 again in another run: the same seed would count twice.
  twin = fake_run(tmp_path / "runs" / "b", adam_mlp(1), {"test_accuracy": 0.97, "test_loss": 0.1})
  with pytest.raises(Exception, match="Seed 1 is in both"):
    results.save(twin)
  assert not (results_dir / "adam_mlp" / "seed-1").exists()


@pytest.mark.parametrize("problem", ["unfinished", "sweep", "other_config"])
def test_save_refuses_what_is_not_a_result_in_one_paragraph(results_dir, tmp_path, problem):
  config, summary = adam_mlp(), {"test_accuracy": 0.97, "test_loss": 0.1}
  if problem == "unfinished":
    summary = None
  elif problem == "sweep":
    config.sweep.optimizer.learning_rate = (1e-3, 2e-3)
  else:
    config.train.epochs = 3
  run = fake_run(tmp_path / "run", config, summary)
  result = run_program("results", "save", str(run))
  expected = {"unfinished": "has not finished", "sweep": "is a sweep (of optimizer.learning_rate)",
              "other_config": "differs from adam_mlp in train.epochs (3 this run, 5 adam_mlp)"}
  assert_clear_error(result, 1, expected[problem])
  assert list(results_dir.iterdir()) == [results_dir / "published.toml"]
  if problem == "other_config":  # a variant is saved under a name of its own
    assert run_program("results", "save", str(run), "--name=adam_mlp-3epochs").returncode == 0
    assert (results_dir / "adam_mlp-3epochs" / "seed-0" / "summary.json").is_file()


def test_the_generated_tables_show_each_seed_the_spread_and_where_they_ran(results_dir, tmp_path):
  environment = {"from_epoch": 0, "commit": {"sha": "abcdef0123", "modified": False},
                 "versions": {"jax": "0.10.2"}, "device": {"platform": "cpu", "kind": "cpu",
                                                           "count": 1, "processes": 1},
                 "cpu": {"model": "AMD EPYC", "cores": 2}, "data_source": "idx"}
  results.save(fake_run(tmp_path / "a", adam_mlp(0, 5),
                        vmapped_summary([0.9743, 0.9751, 0.9735, 0.9760, 0.9748]),
                        environment=environment))
  section = results.seeds_section("adam_mlp")
  assert "| 0 | `" in section and "| 2.57% | 0.9743 | 0.1000 | 3 | 7 | 2.0 |" in section
  assert "| **mean** |  | **2.526%** | 0.97474 |" in section
  assert "| std (n - 1) |  | 0.093 | 0.00093 |" in section
  assert ("Seeds 0-4: jax 0.10.2, 1 CPU (AMD EPYC, 2 cores), idx source, commit abcdef0."
          in section)
  assert "python -m mnist_jax.main --config=adam_mlp --config.data.source=idx --config.num_seeds=5" \
      in section
  summary = results.summary_table()
  assert ("| `adam_mlp` | T0 \"ANN with MNIST\" (course notebook) | test accuracy not reported | "
          "test accuracy **0.9743** (seed 0); 5 seeds 0.9747 +- 0.0009 |  | 5 (0-4), vmapped |"
          in summary)
  readme = results.readme_table()
  assert "[test accuracy 0.9743 (seed 0); 5 seeds 0.9747 +- 0.0009](experiments/RESULTS.md#" \
      "the-five-tutorials)" in readme


def test_a_published_figure_is_worded_by_the_interval_it_falls_in(results_dir, tmp_path):
  # Errors 0.52, 0.55, 0.48, 0.53, 0.51%: mean 0.518%, 95% interval 0.486-0.550%.
  (results_dir / "best_ladder").mkdir()
  (results_dir / "best_ladder" / "typed.json").write_text(json.dumps({
      "config": "best_ladder", "num_seeds": 1, "where": "a 2-core CPU",
      "seeds": [{"seed": k, "test_accuracy": 1 - e / 100, "test_loss": 0.02, "tested_epoch": 150,
                 "train_seconds": 1.0, "median_epoch_seconds": 1.0}
                for k, e in enumerate((0.52, 0.55, 0.48, 0.53, 0.51))]}))
  c = results.load("best_ladder")
  below = results.comparison_text(c, {"metric": "error", "figure": 0.569, "figure_is": "mean"})
  assert below == "below it: the 95% interval of our mean, 0.486%-0.550%, is below 0.569%"
  assert results.comparison_text(c, {"metric": "error", "figure": 0.54, "figure_is": "mean"}) \
      .startswith("matches it: the 95% interval of our mean, 0.486%-0.550%, contains 0.540%")
  assert results.comparison(c, {"metric": "error", "figure": 0.45, "figure_is": "mean"})[0] \
      == "above it"
  # One published run is compared with where one of our seeds falls: a wider interval.
  assert results.comparison_text(c, {"metric": "error", "figure": 0.569, "figure_is": "one run"}) \
      .startswith("matches it: one seed's 95% prediction interval, 0.439%-0.597%, contains 0.569%")
  assert "| 0 | no files (typed) | 0.52% |" in results.seeds_section("best_ladder")
  assert "5 (0-4), one run each; no files (typed)" == results.seeds_text(c)


def test_a_config_with_one_seed_shows_that_seed_and_no_interval(results_dir):
  (results_dir / "ladder_amlp_2_2").mkdir()
  (results_dir / "ladder_amlp_2_2" / "typed.json").write_text(json.dumps({
      "config": "ladder_amlp_2_2", "num_seeds": 1, "where": "a 2-core CPU",
      "seeds": [{"seed": 3, "test_accuracy": 0.9944, "test_loss": 0.02, "tested_epoch": 150,
                 "train_seconds": 1.0, "median_epoch_seconds": 1.0}]}))
  row = next(line for line in results.summary_table().splitlines() if "`ladder_amlp_2_2`" in line)
  assert ("| test error **0.56%** (seed 3 alone) | not yet: one seed gives no interval | "
          "1 (3), one run; no files (typed) |") in row
  readme = next(line for line in results.readme_table().splitlines() if "`ladder_amlp_2_2`" in line)
  assert "[test error 0.56% (seed 3 alone)](experiments/RESULTS.md#" in readme
  assert "their figure," not in readme and "not yet" not in readme  # "alone" says it
  assert "nan" not in row + readme + results.seeds_section("ladder_amlp_2_2")


def test_an_unknown_table_marker_is_refused():
  with pytest.raises(ResultError, match="Unknown table 'nonsense'"):
    results.render("<!-- table: nonsense -->\n| a |\n<!-- end table -->\n")


# ---------------------------------------------------------------------------------------------
# The docs agree with the code


def _markdown_files():
  return sorted(p for p in REPO.rglob("*.md") if not {".venv", "runs", ".git"} & set(p.parts)
                and "node_modules" not in p.parts)


def _anchors(path):
  """GitHub's anchors of a Markdown file's headings."""
  anchors = set()
  for line in path.read_text().splitlines():
    if line.startswith("#"):
      title = line.lstrip("#").strip().lower()
      anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
  return anchors


def test_every_relative_link_in_the_docs_resolves_to_a_file_and_heading():
  broken = []
  for path in _markdown_files():
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"[a-z]+:", target):
        continue  # a URL
      file, _, anchor = target.partition("#")
      linked = (path.parent / file).resolve() if file else path
      if not linked.exists():
        broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
      elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
        broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
  assert not broken, "\n".join(broken)


def test_every_pointer_to_a_readme_or_docs_section_resolves():
  """Code and docs point to sections as `README.md (Name)`, `README.md, Name`, `docs/x.md (Name)`,
  `RESULTS.md (Name)` or `the README's "Name"`: each named heading exists, and no pointer leaves
  the repository."""
  pointers = [re.compile(r"((?:docs/)?\w+\.md) \((\w[\w ,\-']+?)\)[.;:\n]"),
              re.compile(r"((?:docs/)?\w+\.md), ([A-Z][\w \-']+?),"),
              re.compile(r"(README|RESULTS)(?:\.md)?'s \"([^\"]+)\"")]
  sources = [*_markdown_files(), *REPO.glob("mnist_jax/*.py"), *REPO.glob("experiments/*.py"),
             *REPO.glob("experiments/benchmarks/*.py"), *REPO.glob("tests/*.py"), REPO / "run.sh"]
  sources.remove(pathlib.Path(__file__))
  broken, found = [], 0
  for path in sources:
    text = path.read_text()
    assert not re.search(r"\.\./shared\b", text), (
        f"{path.relative_to(REPO)} points outside the repository")
    for file, section in (hit for pattern in pointers for hit in pattern.findall(text)):
      file = file if file.endswith(".md") else file + ".md"
      target = next((c for c in (REPO / file, REPO / "docs" / file, REPO / "experiments" / file)
                     if c.exists()), None)
      if target is None:
        continue
      found += 1
      headings = {line.lstrip("#").strip().lower() for line in target.read_text().splitlines()
                  if line.startswith("#")}
      if not any(h.startswith(section.strip().lower()) for h in headings):
        broken.append(f"{path.relative_to(REPO)}: {file} ({section})")
  assert found > 10 and not broken, "\n".join(broken)


def test_every_figure_the_readme_quotes_is_in_a_generated_table():
  """README's numbers of results (0.52%, 0.9743) come from the generated tables, never typed."""
  readme = (REPO / "README.md").read_text()
  generated = "".join(re.findall(r"<!-- table:.*?<!-- end table -->", readme, flags=re.S))
  generated += "".join(re.findall(r"<!-- table:.*?<!-- end table -->",
                                  (REPO / "experiments" / "RESULTS.md").read_text(), flags=re.S))
  prose = re.sub(r"<!-- table:.*?<!-- end table -->", "", readme, flags=re.S)
  figures = re.findall(r"\b(0\.\d\d+%|0\.9\d{3})\b", prose)
  assert [f for f in figures if f not in generated] == []
