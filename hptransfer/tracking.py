"""Experiment tracking where researchers already look: MLflow and wandb.

Both are off by default and never change a trial (their config sections are
left out of trial ids and group keys).

MLflow (``mlflow.tracking_uri``): ``"workdir"`` keeps a file store in the run's
or sweep's work directory (``<workdir>/mlruns``; browse it with ``mlflow ui
--backend-store-uri <workdir>/mlruns``), any other value is a tracking URI
(``file:/path``, ``http://host:5000``, ``sqlite:///mlflow.db``).  A sweep
logs one MLflow run per finished trial into the experiment
``mlflow.experiment`` (default: the sweep's name): its resolved config as
params, its curves as metrics (``train_loss``, ``eval_loss``, ...) at their
steps, its row's numbers as final metrics, and tags for the sweep, group and
trial id.  A training run logs one MLflow run, its metrics as they are
written, and resumes the same run after a kill.

wandb (``wandb.mode``: ``disabled``, ``offline``, ``online``): the same, one
wandb run per trial or training run (``offline`` writes under the work
directory; ``wandb sync`` uploads it later).
"""
from __future__ import annotations

import math
import os

# Sections that configure logging only: never part of a trial's identity.
LOGGING_SECTIONS = ("wandb", "mlflow")


def mlflow_uri(cfg, workdir: str) -> str:
  """The tracking URI of a config, or "" when MLflow is off."""
  section = cfg.get("mlflow") if "mlflow" in cfg else None
  uri = (section.get("tracking_uri", "") if section is not None else "") or ""
  if uri == "workdir":
    return "file:" + os.path.abspath(os.path.join(workdir, "mlruns"))
  return uri


def _client(uri: str):
  if uri.startswith("file:"):
    # MLflow 3 keeps its file store in maintenance mode behind this switch; a
    # file store in the workdir is what a run without a server needs (``mlflow
    # ui --backend-store-uri <workdir>/mlruns`` reads it).
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
  try:
    from mlflow.tracking import MlflowClient
  except ImportError:
    raise ImportError("mlflow.tracking_uri is set but mlflow is not installed: "
                      "pip install mlflow-skinny (it is in requirements.txt)") from None
  return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str) -> str:
  exp = client.get_experiment_by_name(name)
  return exp.experiment_id if exp is not None else client.create_experiment(name)


def _params(flat: dict) -> list:
  from mlflow.entities import Param
  return [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]


def _batched(client, run_id, metrics=(), params=(), tags=()) -> None:
  metrics, params, tags = list(metrics), list(params), list(tags)
  while metrics or params or tags:
    client.log_batch(run_id, metrics=metrics[:1000], params=params[:100], tags=tags[:100])
    metrics, params, tags = metrics[1000:], params[100:], tags[100:]


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def log_trials_mlflow(cfg, rows: list[dict], curves: dict, workdir: str, sweep_name: str):
  """One MLflow run per finished trial (see the module docstring)."""
  uri = mlflow_uri(cfg, workdir)
  if not uri or not rows:
    return []
  import time
  from mlflow.entities import Metric, RunTag
  client = _client(uri)
  name = cfg.mlflow.get("experiment", "") or sweep_name or "hptransfer"
  exp = _experiment_id(client, name)
  now = int(time.time() * 1000)
  ids = []
  for row in rows:
    run = client.create_run(exp, run_name=row["trial_id"], tags={
        "sweep": sweep_name, "hptransfer.trial_id": row["trial_id"],
        "hptransfer.group_id": row.get("group_id", "")})
    rid = run.info.run_id
    curve = curves.get(row["trial_id"], {})
    metrics = [Metric(f"{k}_loss" if k in ("train", "eval") else k, float(v), now, int(s))
               for k, c in curve.items() if k != "overrides"
               for s, v in c if _finite(v)]
    metrics += [Metric(k, float(v), now, int(row.get("steps", 0))) for k, v in row.items()
                if "." not in k and _finite(v) and k not in ("worker", "group_size")]
    flat = {k: v for k, v in row.items() if "." in k}
    flat.update(row.get("config", {}))
    _batched(client, rid, metrics, _params(flat),
             [RunTag("diverged", str(row.get("diverged")))])
    client.set_terminated(rid)
    ids.append(rid)
  return ids


class RunLogger:
  """MLflow for one training run: params at the start, metrics as written,
  the same MLflow run again after a resume (its id is kept in the workdir)."""

  def __init__(self, cfg, workdir: str, flat_config: dict):
    self.uri = mlflow_uri(cfg, workdir)
    self.client = None
    if not self.uri:
      return
    self.client = _client(self.uri)
    id_file = os.path.join(workdir, "mlflow_run_id")
    if os.path.exists(id_file):
      self.run_id = open(id_file).read().strip()
      return
    exp = _experiment_id(self.client, cfg.mlflow.get("experiment", "") or "hptransfer")
    self.run_id = self.client.create_run(exp, run_name=os.path.basename(
        os.path.abspath(workdir))).info.run_id
    _batched(self.client, self.run_id, params=_params(flat_config))
    with open(id_file, "w") as f:
      f.write(self.run_id)

  def log(self, row: dict) -> None:
    if self.client is None:
      return
    import time
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    _batched(self.client, self.run_id, [
        Metric(k.replace("/", "."), float(v), now, int(row["step"]))
        for k, v in row.items() if k != "step" and _finite(v)])

  def finish(self, summary: dict) -> None:
    if self.client is None:
      return
    import time
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    _batched(self.client, self.run_id, [Metric(f"summary.{k}", float(v), now, 0)
                                        for k, v in summary.items() if _finite(v)])
    self.client.set_terminated(self.run_id)
