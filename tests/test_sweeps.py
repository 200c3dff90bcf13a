"""Sweeps of any numeric hyperparameter as one vmapped program: each replica is the single run of
its point, refusals name the fix, and the report and aggregate choose on validation."""

import json

import flax
import jax
import numpy as np
import pytest

from conftest import TINY_FLAGS, assert_clear_error, records, resumes_from, run_main, run_program
from mnist_jax import aggregate, hyperparams, loop, replicas, report, sweeps, train, validation
from mnist_jax import config as config_lib
from mnist_jax.trainer import Trainer

# Each sweepable field: the experiment that reads it, and two values to sweep.
FIELDS = {
    "optimizer.learning_rate": ("best_mlp", (1e-3, 3e-3)),  # under warmup_cosine: the peak
    "optimizer.b1": ("adam_mlp", (0.8, 0.95)),
    "optimizer.b2": ("adam_mlp", (0.9, 0.99)),
    "optimizer.eps": ("adam_mlp", (1e-7, 1e-2)),
    "optimizer.momentum": ("sgd_bn_mlp", (0.0, 0.9)),  # 0: the single run has no buffer
    "optimizer.weight_decay": ("adamw", (0.0, 0.1)),
    "optimizer.rho": ("rmsprop_mlp", (0.5, 0.9)),
    "optimizer.grad_clip_norm": ("adam_mlp", (0.0, 0.5)),  # 0: off
    "optimizer.max_norm": ("adam_mlp", (0.0, 0.3)),
    "model.dropout": ("adam_mlp_784_dropout", (0.1, 0.5)),
    "model.input_dropout": ("adam_mlp", (0.0, 0.2)),
    "model.gaussian_noise": ("best_mlp", (0.0, 0.5)),
    "model.noise_std": ("ladder", (0.2, 0.5)),
    "model.denoising_weights": ("ladder", (0.0, 1.0)),  # 0: the single run has no decoder
    "train.label_smoothing": ("adam_mlp", (0.0, 0.1)),
    "train.vat_epsilon": ("vat", (1.0, 3.0)),
    "train.vat_weight": ("vat", (0.5, 2.0)),
    "train.adversarial_epsilon": ("adversarial_maxout", (0.1, 0.25)),
    "train.adversarial_alpha": ("adversarial_maxout", (0.3, 0.7)),
    "train.ema_decay": ("adam_mlp", (0.0, 0.9)),
}
# The fast tier's share: a schedule's peak, a buffer switched on, a model part switched on, the
# objective, and the weights' average.
FAST_FIELDS = ("optimizer.learning_rate", "optimizer.momentum", "model.input_dropout",
               "model.denoising_weights", "train.label_smoothing", "train.ema_decay")


def small(name: str):
  """Experiment `name` (or adam_mlp with adamw), shrunk to seconds, with validation."""
  config = config_lib.load("adam_mlp" if name == "adamw" else name)
  if name == "adamw":
    config.optimizer.name = "adamw"
  config.data.source, config.data.train_subset, config.data.validation = "idx", 320, "train_tail"
  config.train.epochs, config.train.batch_size, config.train.eval_batch_size = 2, 64, 1000
  config.model.hidden_sizes = (24, 16) if len(config.model.dropout) == 2 else (24,)
  if name == "ladder":
    config.model.hidden_sizes = (24, 16)
    config.model.denoising_weights = (10.0, 1.0, 0.1, 0.1)
    config.optimizer.decay_epochs = 1.0
  if name == "vat":
    # At vat_xi=1e-6 the power iteration's direction is float32 noise (see experiments/vat.py),
    # so the last bits of any sum (vmapped or not) change it; at 1e-2 it is the true direction.
    config.train.vat_xi = 1e-2
  if name == "adversarial_maxout":
    config.model.maxout_pieces = 2
  return config


def trained(config):
  """(trainer, state) after the config's epochs, straight through Trainer."""
  trainer = Trainer.create(config)
  state = trainer.state
  for epoch in range(1, config.train.epochs + 1):
    state, _, _ = trainer.train_epoch(state, epoch)
  return trainer, state


def _compared(config, path) -> bool:
  """A parameter the replica and single-run comparison holds to a tolerance: not a bias that
  BatchNorm cancels (its gradient is rounding noise, which Adam amplifies)."""
  return path == "predictions" or not (path[-1] == "bias" and (
      (config.model.hidden_batchnorm and path[0].startswith("dense_"))
      or (config.model.logits_batchnorm and path[0] == "logits")))


def _distance(a, b, config) -> float:
  """The largest difference between two flattened parameter trees (and their predictions), on
  what both have."""
  return max(float(np.max(np.abs(a[p] - b[p]))) for p in set(a) & set(b) if _compared(config, p))


def assert_replica_is_single_run(field, experiment, values):
  config = small(experiment)
  group, name = field.split(".")
  config.sweep[group][name] = values
  validation.validate(config)
  trainer, states = trained(config)
  evaluations = trainer.evaluate(states, trainer.val)
  replicas_params, singles = [], []
  for k, setting in enumerate(trainer.functions.settings):
    point = {f: v for f, v in setting.items() if f != "seed"}
    single_config = sweeps.point_config(config, point)
    single_config.seed = setting["seed"]
    single_trainer, single = trained(single_config)
    replica = replicas.select(states, k)
    # float32 noise grown over a few Adam steps; a wrong value differs by O(1). VAT grows it
    # most: a 1e-6 change of vat_weight moves a single run's weights by 3e-3, and on a 2-core AMD
    # EPYC one weight of 18,816 ends 7.6e-3 from the single run's at vat_epsilon=3.
    atol = 1e-2 if config.train.vat_epsilon else 5e-4
    mine = flax.traverse_util.flatten_dict(replica.params)
    theirs = flax.traverse_util.flatten_dict(single.params)
    # What tells the points apart may be what the parameters compute with alone (the weights'
    # average of train.ema_decay): the predictions count too.
    images = single_trainer.val.images
    replicas_params.append({**mine, "predictions": train.predict_probabilities(replica, images)})
    singles.append({**theirs, "predictions": train.predict_probabilities(single, images)})
    assert set(theirs) <= set(mine), set(theirs) - set(mine)  # a 0 may switch a part off
    for path, value in theirs.items():
      if _compared(config, path):
        np.testing.assert_allclose(mine[path], value, rtol=1e-2, atol=atol,
                                   err_msg=f"{field}={point[field]}: {path}")
    # The functions (BatchNorm statistics and the weights' average included) agree too.
    np.testing.assert_allclose(replicas_params[-1]["predictions"], singles[-1]["predictions"],
                               atol=5e-3)
    single_evaluation = single_trainer.evaluate(single, single_trainer.val)
    assert int(evaluations["correct"][k]) == pytest.approx(int(single_evaluation["correct"]), abs=2)
  # Each replica is its own point's run, not another's: a sweep that ignored the swept value
  # would train every replica alike, and the tolerances above could not tell.
  for k, mine in enumerate(replicas_params):
    own = _distance(mine, singles[k], config)
    others = [_distance(mine, single, config) for j, single in enumerate(singles) if j != k]
    assert own < min(others) / 2, (field, values, k, own, others)


@pytest.mark.parametrize("field", FAST_FIELDS)
def test_a_replica_equals_the_single_run_of_its_point(field):
  assert_replica_is_single_run(field, *FIELDS[field])


@pytest.mark.slow
@pytest.mark.parametrize("field", sorted(set(FIELDS) - set(FAST_FIELDS)))
def test_every_sweepable_field_gives_replicas_equal_to_their_single_runs(field):
  assert_replica_is_single_run(field, *FIELDS[field])


def test_the_table_covers_every_sweepable_field():
  assert set(FIELDS) == set(hyperparams.SWEEPABLE)


def test_the_grid_is_the_product_of_the_swept_fields_times_the_seeds():
  config = config_lib.load("adam_mlp")
  config.num_seeds, config.seed = 2, 5
  config.sweep.optimizer.learning_rate, config.sweep.model.input_dropout = (1e-3, 1e-2), (0.0, 0.2)
  settings = replicas.replica_settings(config)
  assert len(settings) == 8
  assert {s["seed"] for s in settings} == {5, 6}
  points = {(s["optimizer.learning_rate"], s["model.input_dropout"]) for s in settings}
  assert points == {(1e-3, 0.0), (1e-3, 0.2), (1e-2, 0.0), (1e-2, 0.2)}
  assert set(replicas.hyperparams_of(settings)) == {"optimizer.learning_rate",
                                                    "model.input_dropout"}


@pytest.mark.parametrize("sweep,phrase", [
    ({"optimizer.learning_rate": (1e-3, -1.0, 0.0)},
     "config.sweep.optimizer.learning_rate: -1.0, 0.0 must be in (0, inf)."),
    ({"model.input_dropout": (0.5, 1.0)}, "input_dropout: 1.0 must be in [0, 1)"),
    ({"optimizer.momentum": (0.5, 0.9)}, "this config does not read optimizer.momentum "
                                         "(optimizer 'adam')"),
    ({"model.noise_std": (0.1, 0.2)}, "does not read model.noise_std (model 'mlp')"),
    ({"train.vat_weight": (1.0, 2.0)}, "vat_epsilon=0.0), so its replicas would differ in name "
                                       "only"),
])
def test_a_sweep_that_cannot_be_trained_is_refused_per_value(sweep, phrase):
  config = config_lib.load("adam_mlp")
  for name, values in sweep.items():
    group, field = name.split(".")
    config.sweep[group][field] = values
  with pytest.raises(config_lib.ConfigError) as error:
    validation.validate(config)
  assert phrase in str(error.value)


def test_momentum_under_a_ramp_and_model_fields_of_nnx_are_refused():
  config = config_lib.load("adversarial_maxout")
  config.sweep.optimizer.momentum = (0.5, 0.9)
  with pytest.raises(config_lib.ConfigError, match="momentum_ramp_epochs"):
    validation.validate(config)
  config = config_lib.load("adam_mlp")
  config.model.name, config.sweep.model.dropout = "nnx_mlp", (0.1, 0.2)
  with pytest.raises(config_lib.ConfigError, match="whose NNX module is built from Python numbers"):
    validation.validate(config)


def test_the_old_learning_rate_sweep_says_what_replaced_it():
  result = run_main("--config=adam_mlp", "--config.sweep.learning_rate=1e-3,1e-2", check=False)
  assert_clear_error(result, 2, "--config.sweep.learning_rate is now "
                                "--config.sweep.optimizer.learning_rate.")


# ---------------------------------------------------------------------------------------------
# The run, its report, its resume


SWEEP = ("--config=adam_mlp", "--config.data.validation=train_tail",
         "--config.sweep.optimizer.learning_rate=1e-3,1e-2",
         "--config.sweep.model.input_dropout=0.0,0.2")


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sweep")
  result = run_main(*SWEEP, *TINY_FLAGS, f"--workdir={workdir}")
  return workdir, result


def test_a_sweep_reports_its_points_and_the_choice_by_validation(sweep_run):
  workdir, result = sweep_run
  assert ("Training 4 replicas in one vmapped program: 1 seed(s) x model.input_dropout (0, 0.2) x "
          "optimizer.learning_rate (0.001, 0.01)") in result.stdout
  summary = json.loads((workdir / "summary.json").read_text())
  assert [{k: r[k] for k in ("seed", "optimizer.learning_rate", "model.input_dropout")}
          for r in summary["replicas"]] == [
      {"seed": 0, "optimizer.learning_rate": lr, "model.input_dropout": p}
      for p in (0.0, 0.2) for lr in (1e-3, 1e-2)]
  assert all("test_accuracy" in r and "test_loss" in r for r in summary["replicas"])
  text = (workdir / "report.md").read_text()
  assert "## Sweep" in text and "| model.input_dropout | optimizer.learning_rate | seeds |" in text
  val = records(workdir)[-1]["replicas"]["val_accuracy"]
  best = summary["replicas"][int(np.argmax(val))]
  point = (f"model.input_dropout={best['model.input_dropout']:g}, "
           f"optimizer.learning_rate={best['optimizer.learning_rate']:g}")
  assert f"Chosen by val_accuracy (mean over 1 seed(s); the test numbers are shown, never used): " \
         f"**{point}**." in text
  config = loop.workdir_lib.load_config(workdir)
  point = {f: best[f] for f in ("model.input_dropout", "optimizer.learning_rate")}
  assert report.reproduce_command(sweeps.point_config(config, point), f"{workdir}-chosen") in text
  for field in ("model.input_dropout", "optimizer.learning_rate"):
    assert (workdir / "figures" / report.sweep_figure_name(field)).stat().st_size > 10_000
  assert len(list((workdir / "tensorboard").iterdir())) == 4


def test_the_chosen_command_trains_the_replica_alone(sweep_run, tmp_path):
  workdir, _ = sweep_run
  config = loop.workdir_lib.load_config(workdir)
  settings = replicas.replica_settings(config)
  k = next(i for i, s in enumerate(settings)
           if s["optimizer.learning_rate"] == 1e-2 and s["model.input_dropout"] == 0.2)
  alone = tmp_path / "alone"
  run_main("--config=adam_mlp", "--config.data.validation=train_tail", *TINY_FLAGS,
           "--config.optimizer.learning_rate=1e-2", "--config.model.input_dropout=0.2",
           f"--workdir={alone}", "--noreport")
  replica, single = loop.workdir_lib.load_run(workdir, k), loop.workdir_lib.load_run(alone)
  for a, b in zip(jax.tree.leaves(single.state.params), jax.tree.leaves(replica.state.params),
                  strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_without_validation_the_report_says_a_choice_needs_one(tmp_path):
  run_main("--config=adam_mlp", "--config.sweep.optimizer.learning_rate=1e-3,1e-2", *TINY_FLAGS,
           f"--workdir={tmp_path}")
  text = (tmp_path / "report.md").read_text()
  assert "Nothing is chosen: a choice needs a validation split" in text
  assert "--config.data.validation=train_tail" in text
  assert not list((tmp_path / "figures").glob("sweep_*"))


def test_a_sweep_that_keeps_the_test_set_out_chooses_on_validation_alone(tmp_path):
  """config.data.use_test=False: summary.json, the report and aggregate give validation metrics
  only, the report's figures are of the validation digits, the chosen point's final command
  turns the test set back on, and predict --index (a test image) is refused."""
  run_main(*SWEEP, *TINY_FLAGS, "--config.data.use_test=False", f"--workdir={tmp_path}")
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert not [k for r in (summary, *summary["replicas"]) for k in r if k.startswith("test_")]
  last = records(tmp_path)[-1]["replicas"]["val_accuracy"]  # no BatchNorm: the same figures
  assert [r["val_accuracy"] for r in summary["replicas"]] == pytest.approx(last, abs=1e-6)
  text = (tmp_path / "report.md").read_text()
  assert "(mean over 1 seed(s); the test set was kept out): **" in text
  assert "## Validation set" in text and "test accuracy" not in text and "## Test set" not in text
  assert "train it with --config.data.validation=none --config.data.use_test=True on all" in text
  counts = np.loadtxt(tmp_path / "confusion_matrix.csv", delimiter=",", dtype=int)
  assert counts.sum() == 120  # the last 20% of the 600 training images
  table = aggregate.sweep_markdown([tmp_path])
  header = next(line for line in table.splitlines() if line.startswith("| "))
  assert "val accuracy" in header and "test" not in header
  assert_clear_error(run_program("predict", f"--workdir={tmp_path}", "--index=0"), 1,
                     "keeps the test set out (config.data.use_test=False")


def test_a_killed_sweep_resumes_to_the_same_parameters(tmp_path):
  config = small("best_mlp")
  config.sweep.optimizer.learning_rate, config.sweep.model.gaussian_noise = (1e-3, 3e-3), (0.0, 0.3)
  config.train.epochs, config.train.checkpoint_every = 3, 1  # best_mlp saves every 5 epochs
  config.train.skip_checkpoints_while_saving = False  # the test removes a given epoch's
  straight, _ = loop.train_and_evaluate(config, tmp_path / "straight")
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(tmp_path / "straight", tmp_path / "killed")
  (tmp_path / "killed" / "summary.json").unlink()  # killed after epoch 2's save
  shutil.rmtree(tmp_path / "killed" / "checkpoints" / "3")
  with resumes_from(tmp_path / "killed", 2):
    resumed, _ = loop.train_and_evaluate(config, tmp_path / "killed")
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
    np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------
# The table, the choice, and a shell loop's sweep


def _trial(seed, lr, val, test):
  return sweeps.Trial({"optimizer.learning_rate": lr}, seed,
                      {"val_accuracy": val, "val_loss": 1 - val, "test_accuracy": test,
                       "test_loss": 1 - test})


def test_points_average_their_seeds_and_the_choice_ignores_the_test_set():
  trials = [_trial(0, 1e-3, 0.90, 0.99), _trial(1, 1e-3, 0.92, 0.99),
            _trial(0, 1e-2, 0.95, 0.80), _trial(1, 1e-2, 0.93, 0.80)]
  grid = sweeps.points(trials)
  assert [p.seeds for p in grid] == [[0, 1], [0, 1]]
  assert grid[0].mean["val_accuracy"] == pytest.approx(0.91)
  assert grid[0].std["val_accuracy"] == pytest.approx(0.01)
  assert sweeps.best(grid, "val_accuracy").point == {"optimizer.learning_rate": 1e-2}
  assert sweeps.best(grid, "val_loss").point == {"optimizer.learning_rate": 1e-2}
  header, rows = sweeps.table(grid, grid[1])
  assert header == ["optimizer.learning_rate", "seeds", "val accuracy", "val loss",
                    "test accuracy", "test loss"]
  assert rows[1][:3] == ["**0.01**", "**2**", "**0.9400 +- 0.0100**"]
  no_validation = [sweeps.Trial(t.point, t.seed, {"test_accuracy": 0.9}) for t in trials]
  assert sweeps.best(sweeps.points(no_validation), "val_accuracy") is None


def test_aggregate_tabulates_a_shell_loop_over_a_shape_field(tmp_path):
  from test_aggregate import fake_run  # pylint: disable=import-outside-toplevel
  runs = []
  for sizes, seed, val, test in (((100,), 0, 0.95, 0.96), ((100,), 1, 0.97, 0.96),
                                 ((300,), 0, 0.98, 0.90), ((300,), 1, 0.98, 0.90)):
    config = config_lib.load("adam_mlp")
    config.model.hidden_sizes, config.seed, config.data.validation = sizes, seed, "train_tail"
    workdir = fake_run(tmp_path / f"h{sizes[0]}-s{seed}", config,
                       {"test_accuracy": test, "test_loss": 0.1})
    (workdir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "seconds": 1.0, "val_accuracy": val - 0.1 * (3 - e),
                    "val_loss": 0.1}) + "\n" for e in (1, 2, 3)))
    runs.append(workdir)
  assert aggregate.is_sweep(runs)
  text = aggregate.sweep_markdown(runs)
  assert "4 models at 2 points, 4 run(s):" in text
  assert "| model.hidden_sizes | seeds | val accuracy | val loss | test accuracy | test loss |" in text
  assert "| **300** | **2** | **0.9800 +- 0.0000** |" in text
  assert "Chosen by val_accuracy" in text and "**model.hidden_sizes=300**" in text
  assert "--config.model.hidden_sizes=300" in text
