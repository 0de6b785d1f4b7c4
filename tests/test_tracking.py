"""MLflow and wandb tracking: off by default, never part of a trial's id, and
what they log when on."""
import os

import pytest

from conftest import tiny_config
from hptransfer import grid
from hptransfer import sweep as S
from hptransfer import train as train_lib

FAST = {"train.steps": 8, "train.log_every": 2, "train.eval_every": 4,
        "train.checkpoint_every": 4}


def test_logging_sections_do_not_change_a_trial():
  a = tiny_config()
  b = tiny_config(**{"mlflow.tracking_uri": "workdir", "mlflow.experiment": "x",
                     "wandb.mode": "offline"})
  assert grid.trial_id(a) == grid.trial_id(b) and grid.group_key(a) == grid.group_key(b)


def test_a_sweep_logs_one_mlflow_run_per_trial(tmp_path):
  from mlflow.tracking import MlflowClient
  cfg = tiny_config(**{**FAST, "mlflow.tracking_uri": "workdir"})
  rows = S.run(cfg, S.sweep("optimizer.lr", [1e-3, 1e-2]), str(tmp_path), progress=False,
               sweep_name="lrs")
  client = MlflowClient(tracking_uri="file:" + str(tmp_path / "mlruns"))
  exp = client.get_experiment_by_name("lrs")
  runs = client.search_runs([exp.experiment_id])
  assert len(runs) == 2
  by_id = {r.data.tags["hptransfer.trial_id"]: r for r in runs}
  for row in rows:
    r = by_id[row["trial_id"]]
    assert float(r.data.params["optimizer.lr"]) == row["optimizer.lr"]
    assert r.data.tags["sweep"] == "lrs"
    assert r.data.metrics["final_train_loss"] == pytest.approx(row["final_train_loss"])
    history = client.get_metric_history(r.info.run_id, "train_loss")
    assert [m.step for m in history] == [2, 4, 6, 8]


def test_a_training_run_logs_to_mlflow_and_resumes_the_same_run(tmp_path):
  from mlflow.tracking import MlflowClient
  cfg = tiny_config(**{**FAST, "mlflow.tracking_uri": "workdir"})
  train_lib.train(cfg, str(tmp_path), progress=False)
  run_id = (tmp_path / "mlflow_run_id").read_text()
  longer = tiny_config(**{**FAST, "train.steps": 12, "mlflow.tracking_uri": "workdir"})
  s = train_lib.train(longer, str(tmp_path), progress=False)     # extends the same run
  assert (tmp_path / "mlflow_run_id").read_text() == run_id
  client = MlflowClient(tracking_uri="file:" + str(tmp_path / "mlruns"))
  history = client.get_metric_history(run_id, "train_loss")
  assert [m.step for m in history] == [2, 4, 6, 8, 10, 12]
  run = client.get_run(run_id)
  assert run.data.params["model.width"] == "64"
  assert run.data.metrics["summary.final_train_loss"] == pytest.approx(s["final_train_loss"])


@pytest.mark.slow
def test_wandb_offline_writes_a_run_per_trial(tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_SILENT", "true")
  cfg = tiny_config(**{**FAST, "wandb.mode": "offline"})
  S.run(cfg, S.sweep("optimizer.lr", [1e-3, 1e-2]), str(tmp_path), progress=False)
  runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run-")]
  assert len(runs) == 2
