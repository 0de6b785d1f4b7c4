"""Searches: Optuna proposes, vmapped groups train, the study and the store agree."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from hptransfer import results as results_lib
from hptransfer import search
from hptransfer import sweep as S

FAST = {"train.steps": 12, "train.log_every": 4, "train.eval_every": 4,
        "train.checkpoint_every": 4}
SPACE = {"optimizer.lr": search.loguniform(2.0 ** -12, 2.0 ** -3),
         "parameterization.output_mult": search.loguniform(0.25, 4.0)}


def _cfg(**kw):
  return tiny_config(**{**FAST, "search.num_trials": 6, "search.batch_size": 3,
                        "search.sampler": "tpe", **kw})


def _study(workdir, name="s"):
  import optuna
  return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/study.db")


def test_a_search_gives_num_trials_rows_and_a_rerun_adds_nothing(tmp_path):
  summary = search.run(_cfg(), SPACE, str(tmp_path), sweep_name="s", progress=False)
  rows = results_lib.read_rows(str(tmp_path))
  assert len(rows) == 6 and summary["complete"] == 6 and summary["running"] == 0
  assert {r["search.study"] for r in rows} == {"s"}
  assert sorted(r["search.trial_number"] for r in rows) == list(range(6))
  study = _study(tmp_path)
  by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
  for r in rows:    # the study holds each row's value, the row holds the study's params
    t = by_id[r["trial_id"]]
    assert t.value == pytest.approx(r["final_eval_loss"])
    assert t.params["optimizer.lr"] == r["optimizer.lr"]
  # Trials of a round that share a compiled shape are one vmapped group.
  assert max(r["group_size"] for r in rows) == 3
  again = search.run(_cfg(), SPACE, str(tmp_path), sweep_name="s", progress=False)
  assert again["trained_this_run"] == 0 and again["complete"] == 6
  assert len(open(results_lib.results_path(str(tmp_path))).read().splitlines()) == 6


def test_shape_keys_group_as_a_sweeps_do(tmp_path):
  """A width and the optimizer itself (a categorical) shape the program; the
  LR rides on the trial axis."""
  space = {"optimizer.lr": search.loguniform(1e-3, 1e-1),
           "model.width": search.choice([32, 64]),
           "optimizer.name": search.choice(["adamw", "lion"])}
  search.run(_cfg(**{"search.num_trials": 8, "search.batch_size": 8,
                     "search.sampler": "random"}), space, str(tmp_path), progress=False)
  rows = results_lib.read_rows(str(tmp_path))
  assert len(rows) == 8
  assert {r["optimizer.name"] for r in rows} == {"adamw", "lion"}
  for g in {r["group_id"] for r in rows}:
    mates = [r for r in rows if r["group_id"] == g]
    assert len({(r["model.width"], r["optimizer.name"]) for r in mates}) == 1
    assert mates[0]["group_size"] == len(mates)
  assert len({r["group_id"] for r in rows}) == len(
      {(r["model.width"], r["optimizer.name"]) for r in rows})


def test_a_pruned_trial_leaves_its_group_bitwise_unchanged(tmp_path, monkeypatch):
  """Force the pruner to stop one trial of a group at its first eval: it is
  recorded and told as pruned, and its group mates' rows equal those of the
  same group run with no pruner."""
  import optuna
  cfg = _cfg(**{"search.num_trials": 3, "search.batch_size": 3, "search.sampler": "random",
                "search.pruner": "median"})
  plain = search.run(_cfg(**{"search.num_trials": 3, "search.batch_size": 3,
                             "search.sampler": "random"}), SPACE, str(tmp_path / "a"),
                     progress=False)
  assert plain["pruned"] == 0
  calls = []

  def prune_second(self, study, trial):
    calls.append(trial.number)
    return trial.number == 1
  monkeypatch.setattr(optuna.pruners.MedianPruner, "prune", prune_second)
  pruned = search.run(cfg, SPACE, str(tmp_path / "b"), progress=False)
  assert pruned["pruned"] == 1 and pruned["complete"] == 2 and calls
  a = {r["search.trial_number"]: r for r in results_lib.read_rows(str(tmp_path / "a"))}
  b = {r["search.trial_number"]: r for r in results_lib.read_rows(str(tmp_path / "b"))}
  assert b[1]["pruned"] and b[1]["pruned_step"] == 4 and not b[1]["diverged"]
  assert b[1]["final_eval_loss"] is None and b[1]["steps"] == 4
  for n in (0, 2):
    assert not b[n]["pruned"]
    for key in ("final_train_loss", "final_eval_loss", "best_eval_loss", "steps"):
      assert a[n][key] == b[n][key], (n, key)
  study = _study(tmp_path / "b", "hptransfer")
  assert study.trials[1].state == optuna.trial.TrialState.PRUNED


def test_rows_already_in_the_workdir_seed_the_study(tmp_path):
  """A grid run earlier in the workdir: its trials are the search's, so the
  study starts with them and the search trains only the rest."""
  cfg = _cfg(**{"search.num_trials": 5, "search.sampler": "random"})
  space = {"optimizer.lr": search.loguniform(1e-4, 1e-1)}
  S.run(cfg, S.sweep("optimizer.lr", [1e-3, 1e-2]), str(tmp_path), progress=False)
  summary = search.run(cfg, space, str(tmp_path), progress=False)
  assert summary["complete"] == 5 and summary["trained_this_run"] == 3
  assert len(results_lib.read_rows(str(tmp_path))) == 5
  # A point given to try first is the first trial proposed.
  other = tmp_path / "enq"
  search.run(cfg, space, str(other), progress=False, enqueue=[{"optimizer.lr": 0.005}])
  first = min(results_lib.read_rows(str(other)), key=lambda r: r["search.trial_number"])
  assert first["optimizer.lr"] == 0.005


@pytest.mark.parametrize("space,settings,match", [
    ({"optimizer.lrr": search.loguniform(1e-3, 1e-1)}, {}, r"unknown key 'optimizer\.lrr'"),
    ({"optimizer.lr": search.loguniform(1e-1, 1e-3)}, {}, r"low=0\.1 is above high=0\.001"),
    ({"optimizer.lr": search.loguniform(0.0, 1e-1)}, {}, r"log distribution needs low > 0"),
    ({"optimizer.b1": search.uniform(0.5, 1.0)}, {}, r"optimizer\.b1=1\.0 must lie in \[0, 1\)"),
    ({"optimizer.lr": 0.1}, {}, r"is not a distribution"),
    ({"optimizer.lr": search.loguniform(1e-3, 1e-1)}, {"search.sampler": "bayes"},
     r"search\.sampler='bayes' is not one of"),
    ({"optimizer.lr": search.loguniform(1e-3, 1e-1)}, {"search.pruner": "asha"},
     r"search\.pruner='asha' is not one of"),
    ({"optimizer.lr": search.loguniform(1e-3, 1e-1)},
     {"search.storage": "postgresql://nobody@127.0.0.1:1/none"}, r"search\.storage=.* cannot be opened"),
])
def test_bad_searches_fail_before_training(tmp_path, space, settings, match):
  with pytest.raises(S.SweepError, match=match):
    search.run(_cfg(**settings), space, str(tmp_path / "w"), progress=False)
  assert not os.path.exists(results_lib.results_path(str(tmp_path / "w")))


SEARCH_FILE = '''
from configs import transformer
from hptransfer.search import loguniform

def get_config():
  c = transformer.get_config()
  c.model.width = 32
  c.model.head_dim = 16
  c.parameterization.base_width = 32
  c.data.name = "synthetic"
  c.data.vocab_size = 32
  c.data.seq_len = 16
  c.train.batch_size = 4
  c.train.steps = STEPS
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.eval_batches = 2
  c.train.checkpoint_every = 10
  c.search.sampler = "tpe"; c.search.num_trials = 8; c.search.batch_size = 2; c.search.seed = 0
  return c

def get_search_space():
  return {"optimizer.lr": loguniform(2.0 ** -12, 2.0 ** -3),
          "parameterization.output_mult": loguniform(0.25, 4.0)}
'''


def _search_cmd(path, workdir):
  return [sys.executable, "-m", "hptransfer.sweep", "--config", str(path), "--workdir",
          str(workdir)]


def _counts(workdir):
  from optuna.trial import TrialState
  study = _study(workdir, "tiny_search")
  return ({s: len(study.get_trials(states=(s,))) for s in (
      TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)},
          results_lib.read_rows(str(workdir)))


@pytest.mark.slow
def test_a_killed_search_and_two_workers_count_each_trial_once(tmp_path):
  from optuna.trial import TrialState
  path = tmp_path / "tiny_search.py"
  path.write_text(SEARCH_FILE.replace("STEPS", "40"))
  env = {**os.environ, "HPTRANSFER_JAX_CACHE": str(tmp_path / "cache")}
  killed = tmp_path / "killed"
  rng = random.Random(0)
  for _ in range(3):
    proc = subprocess.Popen(_search_cmd(path, killed), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(5.0, 9.0))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
    proc.wait()
  subprocess.run(_search_cmd(path, killed), check=True, cwd=ROOT, env=env, capture_output=True)
  counts, rows = _counts(killed)
  assert counts[TrialState.COMPLETE] == 8 and counts[TrialState.RUNNING] == 0
  assert len(rows) == 8 and len({r["trial_id"] for r in rows}) == 8
  lines = open(results_lib.results_path(str(killed))).read().splitlines()
  assert len({json.loads(l)["trial_id"] for l in lines if l.startswith("{")}) == 8
  # Two workers on one SQLite study.
  shared = tmp_path / "shared"
  procs = [subprocess.Popen(_search_cmd(path, shared), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
  for p in procs:
    assert p.wait() == 0, p.stderr.read().decode()[-2000:]
  counts, rows = _counts(shared)
  assert counts[TrialState.COMPLETE] == 8 and counts[TrialState.RUNNING] == 0
  assert len(rows) == 8
  lines = open(results_lib.results_path(str(shared))).read().splitlines()
  assert len(lines) == 8 and len({json.loads(l)["trial_id"] for l in lines}) == 8
  assert np.isfinite([r["final_eval_loss"] for r in rows]).all()


def test_a_file_with_a_grid_and_a_search_is_refused(tmp_path):
  path = tmp_path / "both.py"
  path.write_text(SEARCH_FILE.replace("STEPS", "4") + "\ndef get_sweep():\n  return []\n")
  out = subprocess.run(_search_cmd(path, tmp_path / "w"), cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "HPTRANSFER_JAX_CACHE": "off"})
  assert out.returncode == 2 and "both get_sweep() and get_search_space()" in out.stderr
  assert not (tmp_path / "w").exists()


def test_the_search_report_recommends_every_tuned_hyperparameter(tmp_path):
  from analysis import search as report
  search.run(_cfg(), SPACE, str(tmp_path), sweep_name="s", progress=False)
  out = tmp_path / "an"
  res = report.write(str(tmp_path), str(out), targets={"model.width": 256})
  rows = results_lib.read_rows(str(tmp_path))
  best = min(rows, key=lambda r: r["final_eval_loss"])
  rec = res["recommended"]
  assert set(rec) == set(SPACE)
  assert rec["optimizer.lr"]["value"] == best["optimizer.lr"]          # muP: unchanged
  assert "muTransfer" in rec["optimizer.lr"]["how"]
  assert set(res["importances"]) == set(SPACE)
  assert abs(sum(res["importances"].values()) - 1) < 1e-6
  for f in ("report.md", "top.csv", "importances.json", "recommended.yaml", "slices.png"):
    assert (out / f).stat().st_size > 50, f
  assert res["top"].iloc[0]["final_eval_loss"] == best["final_eval_loss"]


def test_a_search_across_widths_carries_the_lr_by_its_rule(tmp_path):
  import pandas as pd
  from analysis import search as report

  class FakeStudy:
    trials = [type("T", (), {"params": {"optimizer.lr": 0, "model.width": 0,
                                        "parameterization.output_mult": 0}})()]
  rows = []
  for w, lr in ((32, 2.0 ** -6), (64, 2.0 ** -7), (128, 2.0 ** -8)):
    for f, loss in ((1.0, 2.0), (0.5, 2.5)):
      rows.append({"model.width": w, "optimizer.lr": lr * f, "final_eval_loss": loss + 0.01 * w,
                   "parameterization.output_mult": 2.0, "diverged": False, "pruned": False,
                   "parameterization.name": "mup"})
  rec = report.recommend(FakeStudy(), pd.DataFrame(rows), "final_eval_loss",
                         {"model.width": 512})
  assert rec["optimizer.lr"]["value"] == pytest.approx(2.0 ** -10)      # width^-1 from the rule
  assert rec["parameterization.output_mult"]["value"] == 2.0
  assert "model.width" not in rec
