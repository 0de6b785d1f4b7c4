"""Report on a search: the best trials, what mattered, and every tuned
hyperparameter carried to a target.

    python -m analysis.search --workdir runs/search [--study NAME] \
        [--target model.width=256] [--top 10] --out runs/search/analysis

Reads the study from the workdir's Optuna storage (or ``--storage``) and the
rows from its results store.  Writes ``report.md``, ``top.csv`` (the best
trials and their hyperparameters), ``importances.json`` (Optuna's fANOVA
importances of each searched key for the metric), ``slices.png`` (the metric
against each searched key, one panel each) and ``recommended.yaml``: every
searched hyperparameter for the target.  Under muP each one carries over
unchanged (that is muTransfer).  When the study searched across several
widths, the LR is carried by the power law through each width's best LR,
and the others by their value at the widest proxy.

The study can also be browsed live: ``optuna-dashboard sqlite:///<workdir>/study.db``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import pandas as pd

from analysis import labels
from analysis.optimum import AnalysisError


def load(workdir: str, study: str | None = None, storage: str | None = None):
  """(optuna study, DataFrame of the study's rows)."""
  import optuna
  from hptransfer import results as results_lib
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  url = storage or "sqlite:///" + os.path.abspath(os.path.join(workdir, "study.db"))
  names = optuna.get_all_study_names(url) if os.path.exists(os.path.join(workdir, "study.db")) \
      or storage else []
  if study is None:
    if len(names) != 1:
      raise AnalysisError(f"{url} holds studies {names}: name one with --study")
    study = names[0]
  elif study not in names:
    raise AnalysisError(f"no study {study!r} in {url} (studies: {names})")
  s = optuna.load_study(study_name=study, storage=url)
  df = results_lib.load(workdir)
  if len(df) and "search.study" in df:
    df = df[df["search.study"] == study]
  return s, df.reset_index(drop=True)


def searched_keys(study) -> list[str]:
  keys = set()
  for t in study.trials:
    keys |= set(t.params)
  return sorted(keys)


def top(study, df, metric: str, k: int = 10) -> pd.DataFrame:
  keys = searched_keys(study)
  ok = df[~df.diverged & ~df.get("pruned", False) & df[metric].notna()]
  cols = ["search.trial_number", metric, "final_train_loss"] + [c for c in keys if c in ok]
  return ok.sort_values(metric)[cols].head(k).reset_index(drop=True)


def importances(study) -> dict:
  import optuna
  from optuna.trial import TrialState
  done = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
          if t.value is not None and math.isfinite(t.value)]
  if len(done) < 4 or len(searched_keys(study)) < 1:
    return {}
  target = lambda t: t.value if t.value is not None and math.isfinite(t.value) else np.nan
  try:
    return dict(optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        target=target))
  except (RuntimeError, ValueError):
    return {}


def recommend(study, df, metric: str, targets: dict | None) -> dict:
  """Every searched hyperparameter at the target, and how it was carried."""
  keys = searched_keys(study)
  ok = df[~df.diverged & ~df.get("pruned", False) & df[metric].notna()]
  if ok.empty:
    raise AnalysisError("no finished trial: nothing to recommend")
  out = {}
  widths = sorted(ok["model.width"].unique()) if "model.width" in ok else []
  param = str(ok["parameterization.name"].iloc[0]) if "parameterization.name" in ok else ""
  if len(widths) >= 2 and "optimizer.lr" in keys:
    best = ok.loc[ok.groupby("model.width")[metric].idxmin()]
    k, c = np.polyfit(np.log2(best["model.width"].astype(float)),
                      np.log2(best["optimizer.lr"].astype(float)), 1)
    widest = best[best["model.width"] == widths[-1]].iloc[0]
    tw = (targets or {}).get("model.width", widths[-1])
    for key in keys:
      if key == "optimizer.lr":
        out[key] = {"value": float(2 ** (c + k * math.log2(tw))),
                    "how": f"lr* = 2^{c:.3f} * width^{k:.3f} through each width's best "
                           f"trial ({', '.join(f'{w:g}' for w in widths)})"}
      elif key != "model.width":
        out[key] = {"value": _py(widest[key]), "how": f"the widest proxy's best trial "
                                                       f"(width {widths[-1]:g})"}
    return out
  best = ok.loc[ok[metric].idxmin()]
  how = ("unchanged: muP keeps it at every width (muTransfer)" if param == "mup" else
         f"unchanged, but under {param or 'this parameterization'} it need not transfer")
  for key in keys:
    out[key] = {"value": _py(best[key]), "how": how}
  return out


def _py(v):
  return v.item() if isinstance(v, np.generic) else v


def plot_slices(study, df, metric: str, path: str, units: str = "nats") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = [k for k in searched_keys(study) if k in df]
  n = max(len(keys), 1)
  fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.5), sharey=True, squeeze=False)
  ok = df[df[metric].notna() & ~df.diverged & ~df.get("pruned", False)]
  bad = df[df.diverged | df.get("pruned", False)]
  for ax, key in zip(axes[0], keys):
    x = pd.to_numeric(ok[key], errors="coerce")
    sc = ax.scatter(x, ok[metric], c=ok["search.trial_number"], cmap="viridis", s=16)
    if len(bad):
      top_y = ok[metric].max() if len(ok) else 1.0
      ax.scatter(pd.to_numeric(bad[key], errors="coerce"), np.full(len(bad), top_y), marker="x",
                 color="red", s=20, label="diverged or pruned (at the top)")
      ax.legend(fontsize=7)
    dists = [t.distributions.get(key) for t in study.trials if key in t.distributions]
    if dists and getattr(dists[0], "log", False):
      ax.set_xscale("log", base=2)
    ax.set_xlabel(labels.name(key) + (" (log2 axis)" if dists and getattr(dists[0], "log", False)
                                      else ""))
  axes[0][0].set_ylabel(labels.loss_label(metric, units))
  if keys:
    fig.colorbar(sc, ax=axes[0].tolist(), label="trial number (order proposed)")
  fig.suptitle(f"Search {study.study_name}: {labels.name(metric)} of each trial against each "
               "searched hyperparameter", fontsize=10)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def _markdown(t: pd.DataFrame) -> str:
  fmt = lambda v: f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
  rows = ["| " + " | ".join(t.columns) + " |", "|" + " --- |" * len(t.columns)]
  rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in t.itertuples(index=False)]
  return "\n".join(rows)


def write(workdir: str, out: str, study_name=None, storage=None, metric=None, targets=None,
          k: int = 10, units: str = "nats") -> dict:
  import yaml
  study, df = load(workdir, study_name, storage)
  if df.empty:
    raise AnalysisError(f"{workdir} holds no rows of study {study.study_name!r}")
  metric = metric or "final_eval_loss"
  os.makedirs(out, exist_ok=True)
  t = top(study, df, metric, k)
  t.to_csv(os.path.join(out, "top.csv"), index=False)
  imp = importances(study)
  with open(os.path.join(out, "importances.json"), "w") as f:
    json.dump(imp, f, indent=1)
  rec = recommend(study, df, metric, targets)
  with open(os.path.join(out, "recommended.yaml"), "w") as f:
    yaml.safe_dump({"target": targets or {}, "hyperparameters": rec}, f, sort_keys=False)
  plot_slices(study, df, metric, os.path.join(out, "slices.png"), units)
  lines = [f"# Search `{study.study_name}`", "",
           f"{len(df)} rows in `{workdir}`; metric `{metric}` (lower is better).", "",
           "![slices](slices.png)", "", f"## Best {len(t)} trials", "",
           _markdown(t), "", "## Importances (fANOVA)", ""]
  lines += [f"- `{k_}`: {v:.3f}" for k_, v in sorted(imp.items(), key=lambda kv: -kv[1])] or \
      ["(too few finished trials)"]
  lines += ["", "## Recommended at the target" + (f" {targets}" if targets else ""), ""]
  lines += [f"- `{k_}` = {v['value']:.6g} ({v['how']})" if isinstance(v["value"], float)
            else f"- `{k_}` = {v['value']} ({v['how']})" for k_, v in rec.items()]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return {"top": t, "importances": imp, "recommended": rec}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m analysis.search",
                               description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--workdir", required=True, help="the search's work directory")
  ap.add_argument("--study", default=None, help="study name (default: the only one)")
  ap.add_argument("--storage", default=None, help="Optuna storage URL (default: the workdir's)")
  ap.add_argument("--metric", default="final_eval_loss", help="row column the search minimised")
  ap.add_argument("--target", action="append", default=[],
                  help="key=value of the target, e.g. model.width=256")
  ap.add_argument("--top", type=int, default=10, help="how many best trials to list")
  ap.add_argument("--units", default="nats", help="the metric's units on the figure")
  ap.add_argument("--out", required=True, help="directory for the report and figure")
  a = ap.parse_args(argv)
  try:
    from analysis.fit import key_values
    targets = key_values(a.target, example="model.width=256")
    res = write(a.workdir, a.out, a.study, a.storage, a.metric, targets or None, a.top, a.units)
  except AnalysisError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(res["top"].head(5).to_string(index=False, float_format="%.4g"))
  print(f"wrote {a.out}/: report.md top.csv importances.json recommended.yaml slices.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
