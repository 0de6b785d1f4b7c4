"""What every figure reproduction shares: presets, the sweep, the fit, outputs.

Each experiment module defines ``PRESETS`` (``tiny`` for tests, ``cpu`` for 2
cores, ``gpu`` for one H100 in under 10 minutes) and a ``run(preset, workdir,
out)`` that writes into ``out``: its figures, ``<name>.json`` with the key
numbers, and ``<name>.md``, a short note comparing them with the paper.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from hptransfer import cli  # noqa: E402
from hptransfer import results as results_lib  # noqa: E402
from hptransfer import sweep as sweep_lib  # noqa: E402


# The optimum the figures' fits use: the analysis default (the spline's
# minimum), whose intervals are calibrated on curves shaped like ours
# (docs/analysis.md).
from analysis.optimum import DEFAULT_ESTIMATOR as PRIMARY  # noqa: E402
ANALYZE_ONLY = False   # --analyze_only: fit and plot the rows a workdir holds
MATMUL_DTYPE = ""      # --matmul_dtype bf16: model.matmul_dtype="bfloat16" in every trial
_ROWS: dict = {}       # what this run's sweeps' rows say: device, versions, completeness


def _preset_help(name: str, presets: dict) -> str:
  """Each preset's settings and, where a committed run says, how long it took."""
  lines = ["presets:"]
  for preset, p in presets.items():
    where = os.path.join(ROOT, "docs", "experiments", name,
                         *(["gpu"] if preset == "gpu" else []), f"{name}.json")
    took = ""
    if os.path.exists(where):
      try:
        with open(where) as f:
          res = json.load(f)
        secs = res.get("sweep_wall_s") or ((res.get("proxy_wall_s") or 0)
                                           + (res.get("target_wall_s") or 0)) or res.get("wall_s")
        if secs and res.get("preset") == preset:
          took = (f"; the committed run trained for {secs / 60:.1f} min on "
                  f"{res.get('machine', {}).get('where', 'its machine')}")
      except (OSError, ValueError):
        pass
    if preset == "tiny":
      took = "; seconds: for tests"
    shown = ", ".join(f"{k}={np.asarray(v).tolist() if not isinstance(v, (int, float, str)) else v}"
                      for k, v in p.items() if k != "lrs")
    lines.append(f"  {preset}: {shown}{took}")
  return "\n".join(lines)


def parse(name: str, presets: dict, argv=None):
  doc = (sys.modules["__main__"].__doc__ or "") if argv is None else ""
  ap = argparse.ArgumentParser(
      prog=f"python experiments/{name}.py", description=doc.strip() or f"reproduce {name}",
      epilog=_preset_help(name, presets), formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="cpu", choices=list(presets),
                  help="the size of the run (default cpu; see presets below)")
  ap.add_argument("--workdir", default=None, help="sweep directory (default runs/<name>_<preset>)")
  ap.add_argument("--out", default=None, help="figures, JSON, note (default <workdir>/out)")
  ap.add_argument("--analyze_only", action="store_true",
                  help="train nothing: analyze the trials already in --workdir (e.g. rows "
                       "copied back from a GPU run that was cut short); the note says "
                       "how many of the preset's trials they are")
  ap.add_argument("--matmul_dtype", default="", choices=["", "bf16"],
                  help="bf16: dense layers and attention with bf16 operands and f32 "
                       "accumulation (model.matmul_dtype; 1.3-1.6x faster sweep groups on "
                       "CPUs with AMX or AVX512-BF16, docs/performance.md); other trials, "
                       "so a workdir of its own (default runs/<name>_<preset>_bf16mm)")
  a = ap.parse_args(argv)
  global ANALYZE_ONLY, MATMUL_DTYPE
  ANALYZE_ONLY = a.analyze_only
  MATMUL_DTYPE = "bfloat16" if a.matmul_dtype == "bf16" else ""
  _ROWS.clear()
  # The persistent compilation cache, as the CLI uses it ($HPTRANSFER_JAX_CACHE,
  # "off" to disable): a rerun (after a kill, or with more trials) loads its
  # programs instead of compiling them, and programs that lower to the same HLO
  # (SP and muP at one width in the coordinate check) compile once.
  cli.enable_compilation_cache()
  suffix = "_bf16mm" if MATMUL_DTYPE else ""
  a.workdir = a.workdir or os.path.join("runs", f"{name}_{a.preset}{suffix}")
  a.out = a.out or os.path.join(a.workdir, "out")
  return a


def base_config(p: dict, **fields):
  """The width sweep's config with a preset's shape and run length: ``p`` may
  give head_dim, batch, seq and steps; ``fields`` are dotted overrides."""
  from configs.sweeps import width_transformer
  c = width_transformer.get_config()
  c.model.head_dim = p["head_dim"]
  c.train.batch_size = p["batch"]
  c.data.seq_len = p["seq"]
  c.model.compute_dtype = p.get("dtype", "float32")
  c.model.matmul_dtype = MATMUL_DTYPE
  if isinstance(p.get("steps"), int) and c.train.steps != p["steps"]:
    set_steps(c, p["steps"])
  for key, value in fields.items():
    sweep_lib.set_key(c, key, value)
  return c


def set_steps(c, steps: int) -> None:
  """Run length, with one eval at the end, 4 checkpoints and 20 log rows."""
  c.train.steps = steps
  c.train.eval_every = steps
  c.train.checkpoint_every = max(steps // 4, 1)
  c.train.log_every = max(steps // 20, 1)


def run_sweep(base_cfg, overrides, workdir, progress=True, **kw):
  """Run (or resume) a sweep; returns the results DataFrame of these trials."""
  cli.quiet_logs()
  trials = sweep_lib.expand(base_cfg, overrides)
  if not ANALYZE_ONLY:
    sweep_lib.run(base_cfg, overrides, workdir, progress=progress, **kw)
  ids = {t.id for t in trials}
  df = results_lib.load(workdir)
  if ANALYZE_ONLY:
    ids = _match_float_noise(trials, df)
  df = df[df.trial_id.isin(ids)].reset_index(drop=True)
  if not len(df):
    raise SystemExit(f"{workdir} holds none of this preset's {len(ids)} trials")
  # Over every sweep of the run in this workdir (the demo runs two), so a note
  # flags a run when any of its sweeps is partial.
  if _ROWS.get("workdir") != workdir:
    _ROWS.clear()
  _ROWS.update(workdir=workdir, wanted=_ROWS.get("wanted", set()) | ids,
               found=_ROWS.get("found", set()) | set(df.trial_id),
               device=str(df.device.iloc[0]),
               jax=str(df.versions.iloc[0].get("jax", "")) if isinstance(df.versions.iloc[0], dict) else "")
  return df


def _match_float_noise(trials, df) -> set:
  """Trial ids, where a trial whose id is missing takes the id of the one row
  whose swept values, and the config values every row records (ROW_KEYS),
  equal its own up to float round-off (rtol 1e-9).

  A value computed from other rows (the demo's predicted LR) can differ in the
  last bits between the machine that trained and the one that analyses, which
  changes the trial id; the row is still that trial's."""
  import pandas as pd
  ids = set()
  have = set(df.trial_id) if len(df) else set()
  for t in trials:
    if t.id in have or not len(df):
      ids.add(t.id)
      continue
    mask = np.ones(len(df), bool)
    # The swept values and the config values every row records.
    keys = {}
    for k in sweep_lib.ROW_KEYS:
      try:
        keys[k] = sweep_lib.get_key(t.cfg, k)
      except (KeyError, AttributeError):   # a config without that section
        pass
    keys.update(t.overrides)
    for k, v in keys.items():
      if k not in df:
        if k in t.overrides:     # a swept key the rows lack: no match
          mask[:] = False
          break
        continue
      if isinstance(v, float):
        mask &= np.isclose(pd.to_numeric(df[k], errors="coerce").to_numpy(float), v,
                           rtol=1e-9, atol=0)
      else:
        mask &= df[k].to_numpy() == v
    hits = df.trial_id[mask].unique()
    ids.add(hits[0] if len(hits) == 1 else t.id)
  return ids


def _partial() -> str:
  """'n of the preset's m trials' when this run's sweeps lack trials, else ''."""
  wanted, found = _ROWS.get("wanted", set()), _ROWS.get("found", set())
  return "" if found >= wanted else f"{len(found)} of the preset's {len(wanted)} trials"


def fmt_optima(entry: dict, prefix: str = "") -> str:
  """'32: 2^-6, 64: 2^-7' from a transfer_analysis group entry."""
  return ", ".join(f"{prefix}{k}: 2^{v['argmin_log2']:g}" for k, v in entry["per_scale"].items()
                   if v["argmin_log2"] is not None)


def width_verdict(res: dict) -> tuple[bool, bool]:
  """(SP's grid optimum drifts by 2 or more grid steps, muP's stays within 1):
  the two claims of Tensor Programs V's Fig. 1, read off a run's JSON."""
  sp_drift = res.get("sp_optimum_drift_grid_steps")
  mup_range = res.get("mup_optimum_range_grid_steps")
  return (sp_drift or 0) <= -2, (mup_range if mup_range is not None else 99) <= 1


def fmt_slope(entry: dict) -> str:
  if "slope" not in entry:
    return "no fit"
  lo, hi = entry["slope_ci"]
  return f"{entry['slope']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def group_seconds(df) -> float:
  """Training time of the sweep's groups, from the rows (also when they were
  computed by an earlier run and reused)."""
  return float(df.groupby("group_id").wall_s.first().sum()) if len(df) else 0.0


def wider_is_better(df, hp: str, metric: str, group_col: str, group) -> dict:
  """At each fixed value of ``hp``: does the loss fall with every width step?"""
  sub = df[df[group_col] == group] if group_col else df
  table = sub.pivot_table(index=hp, columns="model.width", values=metric, aggfunc="mean")
  mono = {}
  for v, row in table.iterrows():
    vals = row.to_numpy(float)
    vals = np.where(np.isfinite(vals), vals, np.inf)
    mono[f"{v:g}"] = bool(np.all(np.diff(vals) < 0))
  return {"per_value": mono, "fraction": float(np.mean(list(mono.values()))) if mono else None}


def machine() -> dict:
  """Where the numbers were computed: the device the sweep's rows name (they
  may come from another machine, see --analyze_only), else this one.
  ``where`` is the phrase the notes print."""
  import jax
  device = _ROWS.get("device") or jax.devices()[0].device_kind
  jax_version = _ROWS.get("jax") or jax.__version__
  out = {"device": device, "cpus": os.cpu_count(), "python": platform.python_version(),
         "jax": jax_version, "platform": platform.platform()}
  out["where"] = (f"{device} ({out['cpus']} CPUs)" if device == "cpu"
                  else f"one {device} (jax {jax_version})")
  if MATMUL_DTYPE:
    out["matmul_dtype"] = MATMUL_DTYPE
    out["where"] += ", bf16 matmul operands (--matmul_dtype bf16)"
  partial = _partial()
  if partial:
    out["partial"] = partial
  return out


def write_json(out: str, name: str, payload: dict) -> str:
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, f"{name}.json")
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, default=_default)
  return path


def _default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, tuple):
    return list(o)
  return str(o)


def write_note(out: str, name: str, text: str) -> str:
  path = os.path.join(out, f"{name}.md")
  partial = _partial()
  if partial:
    text += (f"\n**Partial run:** these numbers use {partial}; the others never ran "
             "(the settings above list what the preset asks for, not what ran).\n")
  with open(path, "w") as f:
    f.write(text)
  return path


def command_line() -> str:
  return "python " + " ".join(sys.argv) if sys.argv and sys.argv[0] else ""


class Timer:
  def __enter__(self):
    self.t = time.time()
    return self

  def __exit__(self, *exc):
    self.s = time.time() - self.t


def transfer_analysis(df, scale: str, hp: str, metric: str, group: str | None, out: str,
                      prefix: str, n_boot: int = 300, units: str = "nats/byte",
                      title: str | None = None) -> dict:
  """Optimum of ``hp`` per value of ``scale`` (per ``group``), the drift rule and
  the figures ``<prefix>_loss_vs_hp.png`` / ``<prefix>_optimum.png``.

  Returns the key numbers: per group and scale the grid argmin and the
  sub-grid optimum of ``PRIMARY`` (log2) with its 95% CI and edge flag, the best loss, the
  drift across the grid in grid steps, and the fitted slope d log2 hp*/d log2
  scale with its CI (or the reason there is none).
  """
  from analysis import fit
  from analysis.optimum import AnalysisError
  os.makedirs(out, exist_ok=True)
  warnings = []
  curves = fit.build_curves(df, [scale], hp, metric, group)
  optima, boots = fit.optima_table(curves, ("argmin", PRIMARY), primary=PRIMARY,
                                   n_boot=n_boot, warn=warnings.append)
  # One fit per group, so a group that cannot be fitted (its optima on the
  # grid's edge) leaves the others' rules standing.
  rules, errors = [], []
  for g in sorted({g for g, _ in curves}):
    try:
      rules += fit.fit_rules({k: c for k, c in curves.items() if k[0] == g},
                             optima[optima.group == g], boots, [scale], hp, primary=PRIMARY)
    except AnalysisError as e:
      errors.append(str(e))
  error = "; ".join(errors) or None
  fit.plot_loss_vs_hp(curves, optima, os.path.join(out, f"{prefix}_loss_vs_hp.png"), hp,
                      metric, PRIMARY, 0.0025, units=units, scale_cols=(scale,),
                      title=title)
  if rules:
    fit.plot_optimum_vs_scale(optima, rules, os.path.join(out, f"{prefix}_optimum.png"),
                              hp, scale, PRIMARY, None)
  result = {"warnings": warnings, "fit_error": error, "groups": {}}
  for g in sorted({g for g, _ in curves}):
    per_scale = {}
    for (gg, sc), c in sorted(curves.items()):
      if gg != g:
        continue
      m = c.mean
      rows = optima[(optima.group == g) & (optima.scale == sc)]
      q = rows[rows.estimator == PRIMARY]
      a = rows[rows.estimator == "argmin"]
      per_scale[f"{sc[0]:g}"] = {
          "argmin_log2": float(np.log2(a.optimum.iloc[0])) if np.isfinite(a.optimum.iloc[0]) else None,
          f"{PRIMARY}_log2": float(np.log2(q.optimum.iloc[0])) if np.isfinite(q.optimum.iloc[0]) else None,
          f"{PRIMARY}_ci_log2": [float(np.log2(q.ci_low.iloc[0])), float(np.log2(q.ci_high.iloc[0]))]
          if np.isfinite(q.optimum.iloc[0]) else None,
          "edge": bool(q.edge.iloc[0]),
          "best_loss": float(np.min(m[np.isfinite(m)])) if np.isfinite(m).any() else None,
          "diverged_points": int((~np.isfinite(m)).sum())}
    argmins = [v["argmin_log2"] for v in per_scale.values() if v["argmin_log2"] is not None]
    grid_step = float(np.min(np.diff(np.unique(np.concatenate([c.x for c in curves.values()])))))
    entry = {"per_scale": per_scale,
             "argmin_drift_grid_steps": (argmins[-1] - argmins[0]) / grid_step if argmins else None,
             "argmin_range_grid_steps": (max(argmins) - min(argmins)) / grid_step if argmins else None}
    for r in rules:
      if r["group"] == g:
        entry.update({"slope": r["exponent"], "slope_ci": r["exponent_ci"],
                      "coefficient": r["coefficient"], "validation": {
                          k: v for k, v in r["validation"].items() if k != "held_out"}})
    result["groups"][fit.group_name(g)] = entry
  return result


def width_transfer(name: str, p: dict, preset: str, workdir: str, out: str, note,
                   progress: bool = True, overrides: dict | None = None,
                   title: str = "") -> dict:
  """Tensor Programs V's width sweep: SP against muP over ``p["widths"]`` x
  ``p["lrs"]`` (base width ``p["base"]``), with ``overrides`` on the base
  config (an optimizer, say).  Writes the figures, the JSON of the numbers
  and ``note(res)``; returns the numbers."""
  cfg = base_config(p, **{"parameterization.base_width": p["base"], **(overrides or {})})
  df = run_sweep(cfg, sweep_lib.product(
      sweep_lib.sweep("parameterization.name", ["sp", "mup"]),
      sweep_lib.sweep("model.width", p["widths"]), sweep_lib.sweep("optimizer.lr", p["lrs"])),
      workdir, progress=progress)
  res = transfer_analysis(df, "model.width", "optimizer.lr", "final_train_loss",
                          "parameterization.name", out, name, title=title)
  sp, mup = res["groups"].get("sp", {}), res["groups"].get("mup", {})
  res.update({
      "experiment": name, "preset": preset,
      **({"optimizer": dict(overrides)} if overrides else {}),
      "settings": {k: np.asarray(v).tolist() for k, v in p.items()},
      "sweep_wall_s": group_seconds(df), "machine": machine(),
      "sp_optimum_drift_grid_steps": sp.get("argmin_drift_grid_steps"),
      "mup_optimum_range_grid_steps": mup.get("argmin_range_grid_steps"),
      "wider_is_better_at_fixed_lr": {
          g: wider_is_better(df, "optimizer.lr", "final_train_loss",
                             "parameterization.name", g) for g in ("sp", "mup")},
  })
  write_json(out, name, res)
  write_note(out, name, note(res))
  return res


def print_width_verdict(res: dict, out: str) -> None:
  """The one line a width experiment prints when it is done."""
  print(f"SP drift {res['sp_optimum_drift_grid_steps']} grid steps; muP range "
        f"{res['mup_optimum_range_grid_steps']} grid steps; outputs in {out}")
