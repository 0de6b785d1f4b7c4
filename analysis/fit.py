"""Fit hyperparameter transfer rules to a results table and report them.

    python -m analysis.fit --results runs/width --scale model.width \
        --hp optimizer.lr --metric final_eval_loss \
        [--group parameterization.name] [--target model.width=8192] \
        [--estimator spline] [--seed_col seed] [--average data.seed] \
        --out runs/width/analysis

``--results`` is a sweep work directory (its ``results.jsonl``), or a JSON-lines,
CSV or parquet file.  Column names are arguments, never assumptions; a
``diverged`` column is used when present (``--diverged_col``), and a missing
or non-finite metric counts as diverged.  Rows that share a group, a scale
and a hyperparameter value are replicates: they may differ only in the seed
column (``--seed_col``) and in columns named by ``--average``; any other
column that varies among them (a swept key the command does not mention) is
an error naming it, since averaging over it silently would mix trials.

Writes to ``--out``: ``optima.csv`` (scale, group, estimator, optimum, CI, edge
flag), ``rules.json`` (per group: coefficient, exponents with CIs, drift slope,
prediction at the target with its CI, leave-largest-out validation),
``recommended.yaml``, ``report.md`` and the figures ``loss_vs_hp.png`` (loss
against log2 hp per scale, one panel per group, optimum and near-optimal band
marked: Tensor Programs V Fig. 1 layout) and ``optimum_vs_scale.png`` (optimum
against scale on log-log axes with the fit, its CI band and the extrapolation).
With several ``--scale`` variables (N, D, batch size: docs/analysis.md) the
rule is ``hp* = c * x1^k1 * x2^k2 ...`` and the figures are
``partial_dependence.png`` (one panel per variable, the others held at their
reference) and ``predicted_vs_measured.png``.  ``--profile optimizer.lr``
minimises the LR out first (the batch-size optimum); ``--hp timescale``
fits AdamW's decay timescale (analysis/weight_decay.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np
import pandas as pd

from analysis import optimum as opt_lib
from analysis.optimum import AnalysisError, Curve
from analysis.rules import fit_rule


def group_name(g) -> str:
  """A group's label: its value (0 and 0.0 included), or "all" without --group."""
  return "all" if isinstance(g, str) and g == "" else f"{g}"


# ----------------------------------------------------------------------------
# Reading.


def read_results(path: str) -> pd.DataFrame:
  if os.path.isdir(path):
    from hptransfer import results as results_lib
    df = results_lib.load(path)
    if df.empty:
      raise AnalysisError(f"{path} holds no results.jsonl rows; run the sweep first")
    return df
  if not os.path.exists(path):
    raise AnalysisError(f"--results {path}: no such file or directory")
  if path.endswith((".jsonl", ".json")):
    return pd.read_json(path, lines=path.endswith(".jsonl"))
  if path.endswith(".csv"):
    return pd.read_csv(path)
  if path.endswith((".parquet", ".pq")):
    return pd.read_parquet(path)
  raise AnalysisError(f"--results {path}: expected a sweep directory or a .jsonl, .csv "
                      "or .parquet file")


def _require(df: pd.DataFrame, cols: list[str], flag_of: dict[str, str]) -> None:
  missing = [c for c in cols if c not in df.columns]
  if missing:
    c = missing[0]
    raise AnalysisError(
        f"column {c!r} (given by {flag_of.get(c, 'an argument')}) is not in the results; "
        f"columns are: {', '.join(map(str, df.columns))}")


# Row columns that describe a trial's outcome or bookkeeping, not its setting.
OUTCOME_COLUMNS = {"trial_id", "group_id", "group_size", "sweep", "worker", "wall_s", "device",
                   "versions", "devices", "trial_loop", "sharding", "data_sha256", "nonfinite"}


def check_replicates(df, scales, hp, group=None, seed_col="seed", average=()) -> None:
  """Rows of one (group, scale, hp value) cell may differ only in the seed
  column and the ``average`` columns; another varying setting is an error."""
  keys = ([group] if group else []) + list(scales) + [hp]
  allowed = set(keys) | {seed_col} | set(average)
  settings = [c for c in df.columns if "." in c and c not in allowed
              and c not in OUTCOME_COLUMNS]
  if not settings or df.empty:
    return
  cells = df[keys + settings].astype(str).groupby(keys, dropna=False)
  varying = sorted(c for c in settings if (cells[c].nunique(dropna=False) > 1).any())
  if varying:
    raise AnalysisError(
        f"columns {varying} vary among rows with the same {', '.join(keys)}: those rows are "
        "different trials, not replicates.  Give each its own curves (--group "
        f"{varying[0]}, or a --scale), filter the results, or pool them as replicates "
        f"with --average {varying[0]}")


def check_scales(df, scales, group=None) -> None:
  """Before any work: every --scale column is positive, varies, and the
  distinct scale points can carry a rule in that many variables (an intercept
  and one exponent each, the log-scale columns not collinear)."""
  if len(set(scales)) != len(scales):
    dup = next(s for s in scales if list(scales).count(s) > 1)
    raise AnalysisError(f"--scale {dup} is given twice; give each scale column once")
  for s in scales:
    v = pd.to_numeric(df[s], errors="coerce")
    if v.isna().any() or (v <= 0).any():
      raise AnalysisError(f"--scale {s}: values must be positive numbers (the rule is a "
                          f"power law, fitted in log2); found {df[s][v.isna() | (v <= 0)].iloc[0]!r}")
    if v.nunique() < 2:
      raise AnalysisError(
          f"--scale {s}: every row has the same value ({v.iloc[0]:g}), so it has no "
          f"exponent to fit. Drop --scale {s}, or sweep more than one value of it")
  groups = df.groupby(group, sort=True) if group else [("", df)]
  p = len(scales)
  for g, sub in groups:
    pts = np.log2(sub[list(scales)].apply(pd.to_numeric).drop_duplicates().to_numpy(float))
    where = f" in group {group_name(g)}" if group else ""
    if len(pts) < p + 1:
      raise AnalysisError(
          f"--scale {' --scale '.join(scales)}: a rule in {p} variable{'s' * (p > 1)} needs "
          f"at least {p + 1} distinct scale points (an intercept and one exponent each); "
          f"the results{where} have {len(pts)}. Sweep more scale points, or drop a --scale")
    X = np.column_stack([np.ones(len(pts)), pts])
    if p > 1 and np.linalg.matrix_rank(X, tol=1e-9 * max(1.0, np.abs(X).max())) < p + 1:
      raise AnalysisError(
          f"--scale {' --scale '.join(scales)}: in the results{where} these columns move "
          "together (each is a power of the others), so their exponents cannot be told "
          "apart. Drop one --scale, or sweep the variables independently (a grid over both)")


def build_curves(df, scales, hp, metric, group=None, diverged_col="diverged",
                 seed_col="seed", average=(), profile=()):
  """{(group, scale tuple): Curve}; censored (diverged / non-finite) = +inf.

  ``profile``: columns minimised out first, per (group, scale, hp value, seed)
  -- e.g. the batch-size optimum with ``profile=("optimizer.lr",)`` is the
  batch size whose best learning rate on the grid gives the lowest loss."""
  flag_of = {hp: "--hp", metric: "--metric", **{s: "--scale" for s in scales}}
  cols = list(scales) + [hp, metric] + ([group] if group else [])
  if group:
    flag_of[group] = "--group"
  for c in average:
    flag_of[c] = "--average"
  for c in profile:
    flag_of[c] = "--profile"
  _require(df, cols + list(average) + list(profile), flag_of)
  for c in profile:
    if c == hp or c in scales or c == group:
      raise AnalysisError(f"--profile {c}: it is also the --hp, a --scale or the --group; "
                          "profile out a different column")
  check_replicates(df, scales, hp, group, seed_col, tuple(average) + tuple(profile))
  df = df.copy()
  loss = pd.to_numeric(df[metric], errors="coerce").astype(float)
  censored = ~np.isfinite(loss)
  if diverged_col and diverged_col in df.columns:
    censored |= df[diverged_col].fillna(False).astype(bool)
  df["_loss"] = np.where(censored, np.inf, loss)
  hpv = pd.to_numeric(df[hp], errors="coerce")
  if (hpv <= 0).any() or hpv.isna().any() or not np.isfinite(hpv).all():
    raise AnalysisError(f"--hp {hp}: values must be positive, finite numbers (fits are in "
                        "log2); filter out rows where it is 0 (e.g. no weight decay)")
  df["_x"] = np.log2(hpv)
  if profile:
    keys = ([group] if group else []) + list(scales) + ["_x"] + \
        ([seed_col] if seed_col and seed_col in df.columns else []) + list(average)
    df = df.groupby(keys, sort=True, dropna=False, as_index=False)["_loss"].min()
  curves = {}
  keys = ([group] if group else []) + list(scales)
  for key, sub in df.groupby(keys, sort=True):
    key = key if isinstance(key, tuple) else (key,)
    g = key[0] if group else ""
    sc = tuple(float(v) for v in (key[1:] if group else key))
    xs = np.sort(sub["_x"].unique())
    if seed_col and seed_col in sub.columns:
      sub = sub.sort_values(seed_col, kind="stable")
      seed_sets = [tuple(sub.loc[sub["_x"] == x, seed_col]) for x in xs]
      paired = len(set(seed_sets)) == 1 and len(seed_sets[0]) > 1 and \
          len(set(seed_sets[0])) == len(seed_sets[0])
    else:
      paired = False
    losses = [sub.loc[sub["_x"] == x, "_loss"].to_numpy() for x in xs]
    curves[(g, sc)] = Curve(x=xs, losses=losses, paired=paired)
  return curves


# ----------------------------------------------------------------------------
# Analysis.


def _pooled_sd(curves, sum_of_squares) -> dict:
  """{group: sqrt(pooled sum of squares / pooled dof)} over the group's curves,
  ``sum_of_squares(curve) -> (ss, dof)``; None where a group has no dof."""
  pooled = {}
  for (g, _), curve in curves.items():
    ss, dof = sum_of_squares(curve)
    tot = pooled.get(g, (0.0, 0))
    pooled[g] = (tot[0] + ss, tot[1] + dof)
  return {g: float(np.sqrt(ss / dof)) if dof else None for g, (ss, dof) in pooled.items()}


def optima_table(curves, estimators=opt_lib.ESTIMATORS, primary=opt_lib.DEFAULT_ESTIMATOR,
                 n_boot=500, level=0.95, band_tol=0.0025, warn=print):
  """One row per (group, scale, estimator), and the primary's bootstrap draws
  (the first estimator's, when the primary is not among them)."""
  if primary not in estimators:
    primary = estimators[0]
  rows, boots = [], {}
  a = (1 - level) / 2
  # One seed per point: the loss noise near the optimum, pooled per group.
  noise = _pooled_sd(curves, opt_lib.residual_ss)
  # Several seeds: their spread, pooled over the group's points (paired curves:
  # after each seed's offset along the curve is removed).
  seed_sd = _pooled_sd(curves, lambda c: opt_lib.paired_seed_ss(c) if c.paired
                       else opt_lib.seed_ss(c))
  for index, ((g, sc), curve) in enumerate(curves.items()):
    name = ", ".join(f"{v:g}" for v in sc) + (f" ({g})" if g else "")
    if not np.isfinite(curve.mean).any():
      warn(f"warning: every run at scale {name} diverged; it is left out. "
           "Lower the learning-rate grid there.")
      for est in estimators:
        rows.append({"group": g, "scale": sc, "estimator": est, "optimum": np.nan,
                     "ci_low": np.nan, "ci_high": np.nan, "edge": False,
                     "all_diverged": True})
      continue
    edge = opt_lib.is_edge(curve)
    if edge:
      side = "low" if np.argmin(np.where(np.isfinite(curve.mean), curve.mean, np.inf)) == 0 else "high"
      warn(f"warning: the optimum at scale {name} is on the {side} edge of the grid "
           f"(2^{curve.x[0]:g} .. 2^{curve.x[-1]:g}); it is left out of the fits. "
           f"Extend the grid on the {side} side at that scale.")
    for est in estimators:
      kw = {"tol": band_tol} if est == "band" else {}
      o = opt_lib.estimate(curve.x, curve.mean, est, **kw)
      # Each curve draws its own noise (seed = its index): with one shared
      # stream every curve's replicate r moved the same way, which cancels in
      # a fitted slope and made its interval far too narrow.
      b = opt_lib.bootstrap(curve, est, n_boot=n_boot, noise_sd=noise.get(g),
                            seed_sd=seed_sd.get(g), seed=index, **kw)
      lo, hi = np.nanquantile(b, [a, 1 - a])
      rows.append({"group": g, "scale": sc, "estimator": est, "optimum": 2.0 ** o,
                   "ci_low": 2.0 ** lo, "ci_high": 2.0 ** hi, "edge": edge,
                   "all_diverged": False, "log2_optimum": o,
                   "n_seeds": curve.n_seeds})
      if est == primary:
        boots[(g, sc)] = b
  table = pd.DataFrame(rows)
  table.attrs["primary"] = primary
  return table, boots


def analyze(df, scales, hp, metric, group=None, targets=None, primary=opt_lib.DEFAULT_ESTIMATOR,
            diverged_col="diverged", n_boot=500, level=0.95, band_tol=0.0025, warn=print,
            estimators=opt_lib.ESTIMATORS, seed_col="seed", average=(), profile=(),
            keep_edges=False):
  curves = build_curves(df, scales, hp, metric, group, diverged_col, seed_col, average,
                        profile)
  check_scales(df, scales, group)     # before any optimum is estimated
  optima, boots = optima_table(curves, estimators, primary=primary, n_boot=n_boot,
                               level=level, band_tol=band_tol, warn=warn)
  return curves, optima, fit_rules(curves, optima, boots, scales, hp, targets, primary, level,
                                   keep_edges)


def fit_rules(curves, optima, boots, scales, hp, targets=None, primary=opt_lib.DEFAULT_ESTIMATOR,
              level=0.95, keep_edges=False) -> list[dict]:
  """One rule per group from an ``optima_table`` (its primary estimator; when
  the table holds one estimator only, that one).  ``keep_edges``: fit optima
  on the grid's edge too (the true optimum may lie beyond: for smoke tests of
  a pipeline, never for a rule one means to use)."""
  if primary not in set(optima.estimator):
    primary = optima.attrs.get("primary", optima.estimator.iloc[0])
  groups = sorted({g for g, _ in curves})
  rules = []
  for g in groups:
    prim = optima[(optima.group == g) & (optima.estimator == primary)
                  & (keep_edges | ~optima.edge) & ~optima.all_diverged]
    if len({sc for sc in prim.scale}) < 2:
      all_scales = sorted({sc for gg, sc in curves if gg == g})
      raise AnalysisError(
          f"group {group_name(g)}: a rule needs optima at two or more scales; usable "
          f"scales: {[s for s in prim.scale]} of {all_scales}"
          + (" (the others are on the grid's edge or all diverged)" if len(all_scales) > 1
             else f". Sweep more than one value of {', '.join(scales)}"))
    sc_vals = np.array([list(s) for s in prim.scale])
    boot = np.stack([boots[(g, s)] for s in prim.scale])
    rule = fit_rule(sc_vals, prim.log2_optimum.to_numpy(), boot, list(scales), level)
    entry = {"group": g, "hp": hp, "scale": scales[0] if len(scales) == 1 else list(scales),
             "estimator": primary, "coefficient": rule.coefficient,
             "coefficient_ci": rule.coefficient_ci,
             "exponent": rule.exponents[0] if len(scales) == 1 else rule.exponents,
             "exponent_ci": rule.exponents_ci[0] if len(scales) == 1 else rule.exponents_ci,
             "exponents": {sc: {"value": k, "ci95": ci} for sc, k, ci in
                           zip(scales, rule.exponents, rule.exponents_ci)},
             "n_scales": rule.n_points, "residual_sd_log2": rule.residual_sd}
    if "model.width" in scales:
      j = scales.index("model.width")
      entry["drift_slope"] = rule.exponents[j]
      entry["drift_slope_ci"] = rule.exponents_ci[j]
    if targets:
      pred, ci = rule.predict(targets, level)
      entry.update({"target": targets, "prediction": pred, "prediction_ci": ci})
    entry["validation"] = _leave_largest_out(curves, prim, boots, g, scales, primary, level)
    # The bootstrap refits, so that rules can be chained with their joint
    # uncertainty (analysis.recommend): rows of (log2 c, k1, k2, ...).
    entry["bootstrap_log2_coef"] = rule.boot_coef
    entry["_rule"] = rule
    rules.append(entry)
  return rules


def _leave_largest_out(curves, prim, boots, g, scales, primary, level):
  """Fit without the largest scale, predict it, and price the miss."""
  order = sorted(prim.scale, key=lambda s: np.prod(s))
  if len(order) < len(scales) + 2:
    return {"skipped": f"needs {len(scales) + 2} or more scales with an interior optimum "
                       f"(a rule in {len(scales)} variable{'s' * (len(scales) > 1)} without one)"}
  largest, rest = order[-1], order[:-1]
  sub = prim[prim.scale.isin(rest)]
  rule = fit_rule(np.array([list(s) for s in sub.scale]), sub.log2_optimum.to_numpy(),
                  np.stack([boots[(g, s)] for s in sub.scale]), list(scales), level)
  target = dict(zip(scales, largest))
  pred, ci = rule.predict(target, level)
  measured = float(prim[prim.scale == largest].optimum.iloc[0])
  curve = curves[(g, largest)]
  best = float(np.min(curve.mean[np.isfinite(curve.mean)]))
  at_pred = opt_lib.interpolate_loss(curve, np.log2(pred))
  return {"held_out": target, "predicted": pred, "predicted_ci": ci, "measured": measured,
          "ratio": pred / measured, "loss_at_prediction": at_pred,
          "loss_penalty": at_pred - best if np.isfinite(at_pred) else at_pred}


# ----------------------------------------------------------------------------
# Figures and report.


def plot_loss_vs_hp(curves, optima, path, hp, metric, primary, band_tol, units="nats",
                    scale_cols=("scale",), title=None):
  """Loss against log2 hp, one line per scale, one panel per group: the
  estimated optimum dashed, the near-optimal band shaded, diverged points x."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.lines import Line2D
  from matplotlib.patches import Patch
  from analysis import labels
  groups = sorted({g for g, _ in curves})
  ncols = min(len(groups), 3)          # more groups wrap onto further rows
  nrows = -(-len(groups) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 4.1 * nrows), sharey=True,
                           squeeze=False)
  for ax in axes.flat[len(groups):]:
    ax.set_visible(False)
  cmap = plt.get_cmap("viridis")
  for ax, g in zip(axes.flat, groups):
    keys = sorted([k for k in curves if k[0] == g], key=lambda k: np.prod(k[1]))
    for i, key in enumerate(keys):
      c = curves[key]
      color = cmap(i / max(len(keys) - 1, 1))
      m = c.mean
      ok = np.isfinite(m)
      label = ", ".join(labels.scale_value(col, v) for col, v in zip(scale_cols, key[1]))
      ax.errorbar(c.x[ok], m[ok], yerr=np.where(np.isfinite(c.se[ok]), c.se[ok], 0),
                  color=color, marker="o", ms=3, lw=1.2, capsize=2, label=label)
      row = optima[(optima.group == g) & (optima.scale == key[1])
                   & (optima.estimator == primary)]
      if len(row) and np.isfinite(row.optimum.iloc[0]):
        xo = np.log2(row.optimum.iloc[0])
        ax.axvline(xo, color=color, lw=0.8, ls="--")
        if ok.any():
          best = m[ok].min()
          band = c.x[ok][m[ok] <= best + band_tol * abs(best)]
          ax.axvspan(band.min() - 0.05, band.max() + 0.05, color=color, alpha=0.12)
    finite = np.concatenate([curves[k].mean[np.isfinite(curves[k].mean)] for k in keys] or [[0]])
    if finite.size:
      lo = finite.min()
      top = min(finite.max(), lo + 1.5) + 0.02
      ax.set_ylim(lo - 0.05 * abs(lo), top)
      for i, key in enumerate(keys):   # diverged points: x at the top edge
        c = curves[key]
        bad = ~np.isfinite(c.mean)
        if bad.any():
          ax.plot(c.x[bad], np.full(bad.sum(), top - 0.01 * (top - lo)), "x",
                  color=cmap(i / max(len(keys) - 1, 1)), ms=6)
    ax.set_title(labels.group(g) if g != "" else "", fontsize=10)
    ax.set_xlabel(labels.log2_label(hp))
    handles, names = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="gray", ls="--", lw=0.8),
                Patch(color="gray", alpha=0.2), Line2D([], [], color="gray", ls="", marker="x")]
    names += [f"estimated optimum ({primary})", f"within {band_tol:.2%} of the best",
              "diverged (at the top)"]
    ax.legend(handles, names, fontsize=7)
  for row in axes:
    row[0].set_ylabel(labels.loss_label(metric, units))
  fig.suptitle(title or f"{labels.name(metric)} against {labels.name(hp)}, per "
               f"{', '.join(labels.name(c) for c in scale_cols)}"
               + (" (mean of seeds, error bars: standard error)"
                  if any(c.n_seeds > 1 for c in curves.values()) else " (one seed)"),
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _rule_legend(ax, targets, any_edge, fontsize):
  """The axes' own entries plus the fitted line, its band, the target star
  and the edge marker (where present)."""
  from matplotlib.lines import Line2D
  handles, names = ax.get_legend_handles_labels()
  handles += [Line2D([], [], color="gray", lw=1), Line2D([], [], color="gray", lw=6, alpha=0.2)]
  names += ["fitted power law", "its 95% band"]
  if targets:
    handles.append(Line2D([], [], color="gray", marker="*", ls="", ms=9))
    names.append("prediction at the target (95% CI)")
  if any_edge:
    handles.append(Line2D([], [], color="red", marker="x", ls=""))
    names.append("optimum on the grid's edge (left out of the fit)")
  ax.legend(handles, names, fontsize=fontsize)


def plot_optimum_vs_scale(optima, rules, path, hp, scale, primary, targets, title=None):
  """Optimum (95% CI) against scale on log-log axes, the fitted rule with its
  95% band, and the prediction at the target (star)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from analysis import labels
  fig, ax = plt.subplots(figsize=(5.6, 4.3))
  colors = plt.get_cmap("tab10")
  any_edge = False
  for i, entry in enumerate(rules):
    g = entry["group"]
    rule = entry["_rule"]
    prim = optima[(optima.group == g) & (optima.estimator == primary) & ~optima.all_diverged]
    s = np.array([sc[0] for sc in prim.scale])
    y = prim.optimum.to_numpy()
    err = np.vstack([y - prim.ci_low.to_numpy(), prim.ci_high.to_numpy() - y])
    ax.errorbar(s, y, yerr=np.abs(err), fmt="o", color=colors(i), capsize=3,
                label=f"{labels.group(g) or 'optimum'}: exponent {rule.exponents[0]:.2f} "
                      f"[{rule.exponents_ci[0][0]:.2f}, {rule.exponents_ci[0][1]:.2f}]")
    for _, r in prim[prim.edge].iterrows():
      any_edge = True
      ax.plot([r.scale[0]], [r.optimum], "x", color="red", ms=8)
    hi = max(s.max(), (targets or {}).get(scale, s.max()))
    grid = np.geomspace(s.min(), hi, 64)
    pts = [rule.predict({scale: v}) for v in grid]
    ax.plot(grid, [p[0] for p in pts], color=colors(i), lw=1)
    ax.fill_between(grid, [p[1][0] for p in pts], [p[1][1] for p in pts],
                    color=colors(i), alpha=0.15)
    if targets and "prediction" in entry:
      ax.errorbar([targets[scale]], [entry["prediction"]],
                  yerr=[[entry["prediction"] - entry["prediction_ci"][0]],
                        [entry["prediction_ci"][1] - entry["prediction"]]],
                  fmt="*", ms=10, color=colors(i), capsize=3)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log", base=2)
  ax.set_xlabel(f"{labels.name(scale)} (log2 axis)")
  ax.set_ylabel(f"optimal {labels.name(hp)} (log2 axis)")
  _rule_legend(ax, targets, any_edge, fontsize=7)
  ax.set_title(title or f"Optimal {labels.name(hp)} against {labels.name(scale)}: "
               "measured (95% CI) and fitted", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def partial_residuals(rows, rule, j, ref):
  """Optima (and CIs) moved to the reference log2 values ``ref`` of every
  scale variable but the j-th, along the rule's exponents: (x_j, y, lo, hi)."""
  L = np.log2(np.array([list(v) for v in rows.scale], float))
  others = [m for m in range(L.shape[1]) if m != j]
  k = np.array(rule.exponents)
  shift = 2.0 ** (-((L[:, others] - ref[others]) @ k[others]))
  return (2.0 ** L[:, j], *(rows[c].to_numpy() * shift for c in ("optimum", "ci_low", "ci_high")))


def plot_partial_dependence(optima, rules, path, hp, scales, primary, targets=None,
                            title=None):
  """Several scale variables: one panel per variable.  Each measured optimum
  is moved to the other variables' reference values (their geometric mean
  over the fitted points) along the fitted exponents -- a partial residual --
  so each panel shows that variable's own effect: points (95% CI, edge optima
  as red x), the fitted power law with its 95% band, and the target (star)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from analysis import labels
  p = len(scales)
  fig, axes = plt.subplots(1, p, figsize=(4.6 * p, 4.2), squeeze=False)
  colors = plt.get_cmap("tab10")
  any_edge = False
  for i, entry in enumerate(rules):
    g, rule = entry["group"], entry["_rule"]
    rows = optima[(optima.group == g) & (optima.estimator == primary) & ~optima.all_diverged]
    # The points the rule was fitted on (all of them when it kept edge optima).
    used = rows[~rows.edge] if (~rows.edge).any() and rule.n_points < len(rows) else rows
    logs = np.log2(np.array([list(sc) for sc in used.scale], float)).reshape(-1, p)
    ref = logs.mean(axis=0)
    k = np.array(rule.exponents)
    for j, (ax, sc) in enumerate(zip(axes[0], scales)):
      others = [m for m in range(p) if m != j]
      for sub, edge in ((used, False), (rows[rows.edge & ~rows.index.isin(used.index)], True)):
        if not len(sub):
          continue
        xs, y, lo, hi = partial_residuals(sub, rule, j, ref)
        if edge:
          any_edge = True
          ax.plot(xs, y, "x", color="red", ms=8)
        else:
          ax.errorbar(xs, y, yerr=np.abs(np.vstack([y - lo, hi - y])), fmt="o", ms=4,
                      capsize=3, color=colors(i),
                      label=f"{labels.group(g) or 'optimum'}: exponent {k[j]:.2f} "
                            f"[{rule.exponents_ci[j][0]:.2f}, {rule.exponents_ci[j][1]:.2f}]")
      hi_x = max(2.0 ** logs[:, j].max(), (targets or {}).get(sc, 0))
      grid = np.geomspace(2.0 ** logs[:, j].min(), hi_x, 64)
      at = {s: 2.0 ** ref[m] for m, s in enumerate(scales)}
      pts = [rule.predict({**at, sc: v}) for v in grid]
      ax.plot(grid, [q[0] for q in pts], color=colors(i), lw=1)
      ax.fill_between(grid, [q[1][0] for q in pts], [q[1][1] for q in pts], color=colors(i),
                      alpha=0.15)
      if targets and "prediction" in entry:
        t = np.array([np.log2(targets[s]) for s in scales])
        f = 2.0 ** (-((t[others] - ref[others]) @ k[others])) if others else 1.0
        pr, (plo, phi) = entry["prediction"] * f, np.array(entry["prediction_ci"]) * f
        ax.errorbar([targets[sc]], [pr], yerr=[[pr - plo], [phi - pr]], fmt="*", ms=10,
                    color=colors(i), capsize=3)
      ax.set_xscale("log", base=2)
      ax.set_yscale("log", base=2)
      ax.set_xlabel(f"{labels.name(sc)} (log2 axis)")
      ax.set_title(", ".join(f"{labels.name(s)} at {2.0 ** ref[m]:.3g}" for m, s in
                             enumerate(scales) if m != j) or labels.name(sc), fontsize=8)
  axes[0][0].set_ylabel(f"optimal {labels.name(hp)}\n(others at their reference; log2 axis)")
  for ax in axes[0]:
    _rule_legend(ax, targets, any_edge, fontsize=6.5)
  fig.suptitle(title or f"Optimal {labels.name(hp)}: each variable's effect\n(the others held "
               "at their reference values: partial residuals of the fitted rule; 95% CIs)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_parity(optima, rules, path, hp, primary):
  """Several scale variables: measured optimum against the rule's prediction."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from analysis import labels
  fig, ax = plt.subplots(figsize=(4.8, 4.4))
  for i, entry in enumerate(rules):
    rule = entry["_rule"]
    prim = optima[(optima.group == entry["group"]) & (optima.estimator == primary)
                  & ~optima.all_diverged & ~optima.edge]
    pred = [rule.predict(dict(zip(rule.scales, sc)))[0] for sc in prim.scale]
    y = prim.optimum.to_numpy()
    ax.errorbar(pred, y, yerr=np.abs(np.vstack([y - prim.ci_low, prim.ci_high - y])),
                fmt="o", capsize=3, label=labels.group(entry["group"]) or "optima")
  lims = ax.get_xlim()
  ax.plot(lims, lims, "k--", lw=0.8, label="rule = measurement")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log", base=2)
  ax.set_xlabel(f"optimal {labels.name(hp)} the rule predicts (log2 axis)")
  ax.set_ylabel(f"measured optimal {labels.name(hp)}, 95% CI (log2 axis)")
  ax.set_title("Fitted rule against the measured optima", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _jsonable(rules):
  out = []
  for e in rules:
    e = {k: v for k, v in e.items() if not k.startswith("_")}
    out.append(json.loads(json.dumps(e, default=lambda o: o.tolist()
                                     if hasattr(o, "tolist") else str(o))))
  return out


def write_outputs(out, curves, optima, rules, args_dict, targets):
  import yaml
  os.makedirs(out, exist_ok=True)
  o = optima.copy()
  o["scale"] = [", ".join(f"{v:g}" for v in s) for s in o.scale]
  o.drop(columns=["all_diverged"]).to_csv(os.path.join(out, "optima.csv"), index=False)
  rj = _jsonable(rules)
  with open(os.path.join(out, "rules.json"), "w") as f:
    json.dump(rj, f, indent=1)
  if targets:
    rec = {}
    for e in rj:
      ks = e["exponent"] if isinstance(e["exponent"], list) else [e["exponent"]]
      rule_txt = " * ".join([f"{e['coefficient']:.4g}"] + [
          f"{sc}^{k:.4g}" for sc, k in zip(args_dict["scale"], ks)])
      rec[group_name(e["group"])] = {args_dict["hp"]: {
          "value": e["prediction"], "ci95": e["prediction_ci"], "at": dict(targets),
          "rule": rule_txt}}
    with open(os.path.join(out, "recommended.yaml"), "w") as f:
      yaml.safe_dump(rec, f, sort_keys=False)
  primary = args_dict["estimator"]
  plot_loss_vs_hp(curves, optima, os.path.join(out, "loss_vs_hp.png"), args_dict["hp"],
                  args_dict["metric"], primary, args_dict["band_tol"],
                  units=args_dict.get("units", "nats"), scale_cols=tuple(args_dict["scale"]))
  if len(args_dict["scale"]) == 1:
    plot_optimum_vs_scale(optima, rules, os.path.join(out, "optimum_vs_scale.png"),
                          args_dict["hp"], args_dict["scale"][0], primary, targets)
  else:
    plot_partial_dependence(optima, rules, os.path.join(out, "partial_dependence.png"),
                            args_dict["hp"], list(args_dict["scale"]), primary, targets)
    plot_parity(optima, rules, os.path.join(out, "predicted_vs_measured.png"),
                args_dict["hp"], primary)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report(optima, rj, args_dict, targets))


def report(optima, rules, a, targets) -> str:
  hp, scales = a["hp"], list(a["scale"])
  multi = len(scales) > 1
  figs = (["![each variable's effect](partial_dependence.png)", "",
           "![predicted against measured optima](predicted_vs_measured.png)"] if multi
          else ["![optimum against scale](optimum_vs_scale.png)"])
  lines = [f"# Transfer of `{hp}` across `{', '.join(scales)}`", "",
           f"Results: `{a['results']}`; metric `{a['metric']}`; optimum estimator "
           f"`{a['estimator']}` with {a['n_boot']} bootstrap replicates; intervals are 95%."
           + (f" `{', '.join(a['profile'])}` minimised out at each point (--profile)."
              if a.get("profile") else "")
           + (f"\n\nMade by `{a['command']}`." if a.get("command") else ""),
           "", "![loss against hp](loss_vs_hp.png)", "", *figs, "", "## Rules", "",
           f"`{hp}* = c · " + " · ".join(f"{sc}^k{j + 1}" for j, sc in enumerate(scales))
           + "`, fitted in log2 by weighted least squares; CIs from refitting on bootstrap "
           "replicates of every optimum.", "",
           "| group | c | " + " | ".join(f"k{j + 1}: {sc} (95% CI)" for j, sc in enumerate(scales))
           + " | scales used | residual sd (log2) |" + (" prediction at target (95% CI) |" if targets else ""),
           "| --- | --- | " + "--- | " * len(scales) + "--- | --- |" + (" --- |" if targets else "")]
  for e in rules:
    ks = e["exponent"] if isinstance(e["exponent"], list) else [e["exponent"]]
    cis = e["exponent_ci"] if multi else [e["exponent_ci"]]
    row = (f"| {group_name(e['group'])} | {e['coefficient']:.4g} | "
           + " | ".join(f"{k:.3f} [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in zip(ks, cis))
           + f" | {e['n_scales']} | {e['residual_sd_log2']:.3f} |")
    if targets:
      row += (f" {e['prediction']:.4g} [{e['prediction_ci'][0]:.4g}, "
              f"{e['prediction_ci'][1]:.4g}] |")
    lines.append(row)
  if targets:
    lines += ["", f"Target: {', '.join(f'{k}={v:g}' for k, v in targets.items())}."]
  lines += ["", "## Leave the largest scale out", "",
            "| group | held out | predicted | measured | predicted/measured | loss penalty |",
            "| --- | --- | --- | --- | --- | --- |"]
  for e in rules:
    v = e["validation"]
    if "skipped" in v:
      lines.append(f"| {group_name(e['group'])} | {v['skipped']} | | | | |")
      continue
    lines.append(f"| {group_name(e['group'])} | {v['held_out']} | {v['predicted']:.4g} | "
                 f"{v['measured']:.4g} | {v['ratio']:.3g} | {v['loss_penalty']:.4g} |")
  lines += ["", "## Optima per scale", "",
            "| group | scale | estimator | optimum | 95% CI | edge |",
            "| --- | --- | --- | --- | --- | --- |"]
  for _, r in optima.iterrows():
    s = ", ".join(f"{v:g}" for v in r.scale)
    lines.append(f"| {group_name(r.group)} | {s} | {r.estimator} | {r.optimum:.4g} | "
                 f"[{r.ci_low:.4g}, {r.ci_high:.4g}] | {'yes' if r.edge else ''} |")
  lines += ["", "Edge optima (the best grid point is the first or last) and scales where "
            "every run diverged are left out of the fits.", ""]
  return "\n".join(lines)


def key_values(items, example="model.width=8192") -> dict[str, float]:
  """``--target key=value`` items as {key: float}; a malformed item is an
  AnalysisError naming it (the analysis CLIs share this)."""
  out = {}
  for item in items or []:
    if "=" not in item:
      raise AnalysisError(f"--target {item!r}: write it as key=value, e.g. {example}")
    k, v = item.split("=", 1)
    try:
      out[k] = float(v)
    except ValueError:
      raise AnalysisError(f"--target {item!r}: {v!r} is not a number") from None
  return out


def parse_targets(items, scales):
  targets = key_values(items)
  for k in targets:
    if k not in scales:
      raise AnalysisError(f"--target {k}: not one of the --scale columns {scales}")
  missing = [s for s in scales if s not in targets]
  if targets and missing:
    raise AnalysisError(
        f"--target gives {', '.join(targets)} but not {', '.join(missing)}: a prediction "
        f"needs every --scale variable; add --target {missing[0]}=VALUE")
  for k, v in targets.items():
    if not (np.isfinite(v) and v > 0):
      raise AnalysisError(f"--target {k}={v:g}: a scale must be a positive number")
  return targets or None


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
      prog="python -m analysis.fit", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--results", required=True,
                  help="a sweep work directory (its results.jsonl), or a .jsonl, .csv or "
                       ".parquet table of rows")
  ap.add_argument("--scale", action="append", required=True,
                  help="scale column, e.g. model.width (repeat for several variables)")
  ap.add_argument("--hp", required=True,
                  help="hyperparameter column, e.g. optimizer.lr; 'timescale' is derived "
                       "when absent: the weight-decay timescale as a fraction of training, "
                       "1/(lr*weight_decay*steps) coupled, 1/(weight_decay*steps) "
                       "independent (analysis/weight_decay.py; rows without decay dropped)")
  ap.add_argument("--metric", default="final_eval_loss",
                  help="loss column whose minimum over --hp is the optimum")
  ap.add_argument("--group", default=None,
                  help="column whose values get separate curves and rules, e.g. "
                       "parameterization.name")
  ap.add_argument("--target", action="append",
                  help="scale=value to predict the optimum at (every --scale column), "
                       "e.g. model.width=8192")
  ap.add_argument("--estimator", default=opt_lib.DEFAULT_ESTIMATOR, choices=opt_lib.ESTIMATORS,
                  help="the optimum the rules are fitted to")
  ap.add_argument("--seed_col", default="seed",
                  help="column of replicate seeds: rows that differ only in it are "
                       "averaged, and their spread is the noise")
  ap.add_argument("--average", action="append", default=[],
                  help="another column to pool as replicates (repeatable), e.g. data.seed")
  ap.add_argument("--profile", action="append", default=[],
                  help="a column to minimise out at each (scale, hp value, seed) before "
                       "the optimum is found (repeatable): --hp train.batch_size --profile "
                       "optimizer.lr gives the batch size whose best LR on the grid does best")
  ap.add_argument("--diverged_col", default="diverged",
                  help="boolean column marking diverged runs (counted as worse than any "
                       "finite loss)")
  ap.add_argument("--band_tol", type=float, default=0.0025,
                  help="relative loss tolerance of the near-optimal band in the figure "
                       "and of the band estimator")
  ap.add_argument("--n_boot", type=int, default=500, help="bootstrap replicates")
  ap.add_argument("--units", default="nats",
                  help="the metric's units on the figure's axis, e.g. nats/byte")
  ap.add_argument("--out", required=True,
                  help="directory for optima.csv, rules.json, report.md and the figures")
  a = ap.parse_args(argv)
  a.command = "python -m analysis.fit " + " ".join(sys.argv[1:] if argv is None else argv)
  try:
    df = read_results(a.results)
    if a.hp == "timescale" and "timescale" not in df.columns:
      from analysis import weight_decay
      df = weight_decay.add_timescale(df)
      df = df[np.isfinite(df.timescale)]
    targets = parse_targets(a.target, a.scale)
    warn = lambda m: print(m, file=sys.stderr)
    curves, optima, rules = analyze(df, a.scale, a.hp, a.metric, a.group, targets,
                                    a.estimator, a.diverged_col, a.n_boot,
                                    band_tol=a.band_tol, warn=warn, seed_col=a.seed_col,
                                    average=tuple(a.average), profile=tuple(a.profile))
    write_outputs(a.out, curves, optima, rules, vars(a), targets)
  except AnalysisError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for e in _jsonable(rules):
    ks = e["exponent"] if isinstance(e["exponent"], list) else [e["exponent"]]
    cis = e["exponent_ci"] if isinstance(e["exponent_ci"][0], list) else [e["exponent_ci"]]
    terms = " * ".join(f"{sc}^{k:.3f} [{lo:.3f}, {hi:.3f}]"
                       for sc, k, (lo, hi) in zip(a.scale, ks, cis))
    msg = f"{group_name(e['group'])}: {a.hp}* = {e['coefficient']:.4g} * {terms}"
    if targets:
      lo, hi = e["prediction_ci"]
      msg += f"; at {targets}: {e['prediction']:.4g} [{lo:.4g}, {hi:.4g}]"
    print(msg + "  (exponents with 95% CIs)")
  figs = ("partial_dependence.png predicted_vs_measured.png" if len(a.scale) > 1
          else "optimum_vs_scale.png")
  print(f"wrote {a.out}/: optima.csv rules.json report.md loss_vs_hp.png {figs}"
        + (" recommended.yaml" if targets else ""))
  return 0


if __name__ == "__main__":
  warnings.filterwarnings("ignore", category=RuntimeWarning)
  sys.exit(main())
