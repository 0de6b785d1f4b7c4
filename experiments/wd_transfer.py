"""Weight decay (and warmup) across width and horizon under muP: which
transfers, the raw coefficient or the AdamW timescale?

    python experiments/wd_transfer.py --preset cpu

Wang & Aitchison (2024): AdamW's weights average the updates of the last
tau_iter = 1/(lr * wd) steps, and the optimal *fraction of training*
tau = tau_iter / steps stays put as models and data grow, so the raw decay
should fall as 1/steps at a fixed LR.  Under muP (microsoft/mup's rule,
hptransfer's wd_mult = 1/lr_mult) a matrix's per-step decay is lr * wd at every
width, so across width the raw coefficient should already transfer.

A cross of cells -- widths at the middle horizon, horizons at the middle
width -- each sweeps the decay at a fixed LR, coupled (p -= lr_t wd p, AdamW)
and independent (p -= s_t wd p; its grid is the coupled one times the LR,
so both cover the same timescales), plus a run without decay; and the warmup
length, as a fraction of the run, without decay.  Fitted with
``analysis.fit`` in (N, D): the decay's optimum as raw wd and as tau, per mode,
and the warmup's in steps and as a fraction.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments import common, step_law  # noqa: E402
from hptransfer.sweep import product, sweep  # noqa: E402

NAME = "wd_transfer"
PRESETS = {
    "tiny": dict(widths=[16, 24], steps=[4, 8], mid_width=16, mid_steps=4, lr=2.0 ** -4,
                 wds=2.0 ** np.arange(-2, 7, 2), warmup_fracs=[0.125, 0.25, 0.5], batch=2, seq=16,
                 head_dim=8, seeds=[0], lr_mults=[0.25, 1.0], keep_edges=True),
    "cpu": dict(widths=[32, 64, 128], steps=[100, 200, 400], mid_width=64, mid_steps=200,
                lr=2.0 ** -6, wds=2.0 ** np.arange(-3, 6), warmup_fracs=2.0 ** -np.arange(1, 7),
                batch=8, seq=64, head_dim=16, seeds=[0, 1], lr_mults=[0.25, 1.0, 4.0]),
    "gpu": dict(widths=[128, 256, 512], steps=[250, 500, 1000], mid_width=256, mid_steps=500,
                lr=2.0 ** -7, wds=2.0 ** np.arange(-3, 6), warmup_fracs=2.0 ** -np.arange(1, 7),
                batch=16, seq=256, head_dim=64, seeds=[0, 1], lr_mults=[0.25, 1.0, 4.0],
                dtype="bfloat16"),
}
MODES = ("coupled", "independent")
N_COL, D_COL = step_law.N_COL, step_law.D_COL


def config(p):
  """step_law's config (cosine to 10%, muP at base width = the smallest),
  AdamW at the preset's LR."""
  c = step_law.config(p)
  c.parameterization.name = "mup"
  c.optimizer.name = "adamw"
  c.optimizer.lr = float(p["lr"])
  return c


def cells(p) -> list[tuple[int, int]]:
  """The cross: every width at the middle horizon, every horizon at the middle width."""
  out = [(w, p["mid_steps"]) for w in p["widths"]]
  out += [(p["mid_width"], s) for s in p["steps"] if (p["mid_width"], s) not in out]
  return out


def wd_grid(p, mode: str, lr: float | None = None) -> list[float]:
  """The decay grid of a mode: independent decay is the coupled grid x lr, so
  both cover the same timescales 1/(lr wd steps)."""
  scale = 1.0 if mode == "coupled" else float(p["lr"] if lr is None else lr)
  return [float(w) * scale for w in p["wds"]]


def grid(p) -> list[dict]:
  """Coupled decay over the cross of cells (and a run without decay); the
  warmup over the same cells; and, at the middle cell, both modes at every
  LR of ``lr_mults`` (with the LR fixed the two modes decay each matrix by the
  same amount per step -- coupled lr*wd, independent wd' = lr*wd -- so they
  differ only once the LR moves)."""
  out = []
  for width, steps in cells(p):
    c = config(p)
    horizon = step_law._horizon(c, steps, p["batch"])
    base = [sweep("model.width", [width]), *horizon, sweep("seed", p["seeds"])]
    out += product(*base, sweep("optimizer.weight_decay_mode", ["coupled"]),
                   sweep("optimizer.weight_decay", wd_grid(p, "coupled")))
    out += product(*base, sweep("optimizer.weight_decay", [0.0]))
    warm = sorted({max(1, int(round(f * steps))) for f in p["warmup_fracs"]})
    out += product(*base, sweep("optimizer.weight_decay", [0.0]),
                   sweep("optimizer.warmup_steps", warm))
  c = config(p)
  base = [sweep("model.width", [p["mid_width"]]),
          *step_law._horizon(c, p["mid_steps"], p["batch"]), sweep("seed", p["seeds"])]
  for m in p["lr_mults"]:
    lr = float(p["lr"]) * m
    for mode in MODES:
      if mode == "coupled" and m == 1.0:
        continue                      # in the cross already
      out += product(*base, sweep("optimizer.lr", [lr]),
                     sweep("optimizer.weight_decay_mode", [mode]),
                     sweep("optimizer.weight_decay", wd_grid(p, mode, lr if mode != "coupled"
                                                             else None)))
    if m != 1.0:
      out += product(*base, sweep("optimizer.lr", [lr]), sweep("optimizer.weight_decay", [0.0]))
  return out


def run(preset: str, workdir: str, out: str, progress: bool = True) -> dict:
  from analysis import weight_decay
  p = PRESETS[preset]
  edges = p.get("keep_edges", False)   # tiny: smoke-test the whole path
  df = common.run_sweep(config(p), grid(p), workdir, progress=progress)
  os.makedirs(out, exist_ok=True)
  df = step_law.with_budget(weight_decay.add_timescale(df))
  for col, default in (("optimizer.weight_decay_mode", "coupled"), ("optimizer.warmup_steps", 0)):
    if col not in df:
      df[col] = default
    df[col] = df[col].fillna(default)
  base_lr = np.isclose(df["optimizer.lr"], float(p["lr"]))
  decayed = df[(df["optimizer.weight_decay"] > 0) & base_lr
               & (df["optimizer.weight_decay_mode"] == "coupled")].drop(
      columns=["optimizer.warmup_steps", "optimizer.weight_decay_mode"])
  warm = df[(df["optimizer.weight_decay"] == 0) & (df["optimizer.warmup_steps"] > 0)]
  warm = warm.assign(**{"warmup_fraction": warm["optimizer.warmup_steps"] / warm["train.steps"]})
  fits = {
      "wd": step_law.fit_one(decayed, [N_COL, D_COL], "optimizer.weight_decay", out=out,
                             prefix="wd_in_N_D", keep_edges=edges),
      "tau": step_law.fit_one(decayed.drop(columns=["optimizer.weight_decay"]), [N_COL, D_COL],
                              "timescale", out=out, prefix="tau_in_N_D", keep_edges=edges),
      "warmup_steps": step_law.fit_one(warm, [N_COL, D_COL], "optimizer.warmup_steps",
                                       out=out, prefix="warmup_steps", keep_edges=edges),
      "warmup_fraction": step_law.fit_one(warm.drop(columns=["optimizer.warmup_steps"]),
                                          [N_COL, D_COL], "warmup_fraction", out=out,
                                          prefix="warmup_fraction", keep_edges=edges),
  }
  mid = df[(df["model.width"] == p["mid_width"]) & (df["train.steps"] == p["mid_steps"])
           & (df["optimizer.weight_decay"] > 0)].drop(columns=["optimizer.warmup_steps"])
  # Across the LR: each mode's optimal raw decay against the LR it runs at.
  fits["wd_vs_lr"] = step_law.fit_one(mid, ["optimizer.lr"], "optimizer.weight_decay",
                                      group="optimizer.weight_decay_mode", out=out,
                                      prefix="wd_vs_lr", keep_edges=edges)
  res = {"experiment": NAME, "preset": preset,
         "settings": {k: np.asarray(v).tolist() for k, v in p.items()},
         "cells": cells(p), "trials": int(len(df)), "sweep_wall_s": common.group_seconds(df),
         "machine": common.machine(),
         "fits": {k: step_law.summarize(v) for k, v in fits.items()},
         "decay_gain": decay_gain(df)}
  res["verdict"] = verdict(res["fits"])
  res["modes_at_fixed_lr_max_abs_diff"] = modes_agree(df, p)
  common.write_json(out, NAME, res)
  common.write_note(out, NAME, note(res))
  return res


def decay_gain(df) -> dict:
  """Per cell and mode: the best mean loss over the decay grid minus the loss
  without decay (negative: decay helps)."""
  out = {}
  keys = ["model.width", "train.steps"]
  df = df[np.isclose(df["optimizer.lr"], df["optimizer.lr"].mode().iloc[0])]
  base = df[(df["optimizer.weight_decay"] == 0) & (df["optimizer.warmup_steps"] == 0)]
  none = base.groupby(keys).final_train_loss.mean()
  for mode in MODES:
    sub = df[(df["optimizer.weight_decay"] > 0) & (df["optimizer.weight_decay_mode"] == mode)]
    best = sub.groupby(keys + ["optimizer.weight_decay"]).final_train_loss.mean() \
        .groupby(keys).min()
    for k in best.index:
      if k in none.index:
        out.setdefault(f"width {k[0]}, {k[1]} steps", {})[mode] = float(best[k] - none[k])
  return out


def modes_agree(df, p) -> float | None:
  """|loss difference| between coupled wd and independent lr*wd at the base
  LR, same seed and cell (they decay by the same amount per step): the largest
  among pairs within 0.1 of the best loss, and over all pairs."""
  mid = df[(df["model.width"] == p["mid_width"]) & (df["train.steps"] == p["mid_steps"])
           & np.isclose(df["optimizer.lr"], float(p["lr"])) & (df["optimizer.weight_decay"] > 0)]
  c = mid[mid["optimizer.weight_decay_mode"] == "coupled"]
  i = mid[mid["optimizer.weight_decay_mode"] == "independent"]
  key = lambda d, f: list(zip(d.seed, np.round(np.log2(d["optimizer.weight_decay"] * f), 6)))
  a = dict(zip(key(c, float(p["lr"])), c.final_train_loss))
  b = dict(zip(key(i, 1.0), i.final_train_loss))
  both = set(a) & set(b)
  if not both:
    return None
  best = min(a[k] for k in both)
  near = [abs(a[k] - b[k]) for k in both if a[k] < best + 0.1]
  return {"near_optimum": max(near), "all": max(abs(a[k] - b[k]) for k in both),
          "pairs": len(both)}


def verdict(fits) -> dict:
  """Which of raw wd and tau has the exponent nearer 0 (the one that
  transfers) across width and across horizon; across the LR, which mode's raw
  decay stays put (exponent of wd* in the LR: -1 keeps tau, 0 keeps wd)."""
  out = {}
  for var, label in ((N_COL, "width"), (D_COL, "horizon")):
    entry = {}
    for kind in ("wd", "tau"):
      e = fits[kind].get("all", {}).get("exponents", {}).get(var)
      if e:
        lo, hi = e["ci95"]
        entry[kind] = {"exponent": e["value"], "ci95": [lo, hi], "holds_0": bool(lo <= 0 <= hi)}
    if len(entry) == 2:
      if var == N_COL:
        # At a fixed LR and run length tau = 1/(lr wd steps) is wd times a
        # constant: the two transfer (or fail) together across width.
        entry["transfers"] = "both" if entry["wd"]["holds_0"] else "neither"
      else:
        entry["transfers"] = min(("wd", "tau"), key=lambda k: abs(entry[k]["exponent"]))
    out[f"across {label}"] = entry
  entry = {}
  for mode in MODES:
    e = fits["wd_vs_lr"].get(mode, {}).get("exponents", {}).get("optimizer.lr")
    if e:
      lo, hi = e["ci95"]
      entry[mode] = {"exponent": e["value"], "ci95": [lo, hi], "holds_0": bool(lo <= 0 <= hi)}
  if len(entry) == 2:
    entry["transfers"] = min(MODES, key=lambda k: abs(entry[k]["exponent"]))
  out["across the LR"] = entry
  return out


def _agree(v) -> str:
  if not v:
    return "n/a"
  return (f"{v['near_optimum']:.1e} nats/byte within 0.1 of the best loss, {v['all']:.2f} over "
          f"all {v['pairs']} pairs: float rounding grows where the decay is heavy enough to "
          "wreck training")


def _fmt(e) -> str:
  if not e:
    return "not fitted"
  lo, hi = e["ci95"]
  return f"{e['value']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def note(res) -> str:
  f, s = res["fits"], res["settings"]
  rows = []
  for key, what in (("wd", "raw wd"), ("tau", "tau = 1/(lr wd steps)"),
                    ("warmup_steps", "warmup, steps"), ("warmup_fraction", "warmup, fraction of the run")):
    e = f[key]
    if "error" in e:
      hi = sum("high edge" in w for w in e.get("warnings", []))
      lo = sum("low edge" in w for w in e.get("warnings", []))
      why = (f"{hi + lo} cells' optima on the grid's edge ({hi} high, {lo} low): the best "
             "value lies outside the grid" if hi + lo else e["error"][:100])
      rows.append(f"| {what} | not fitted: {why} | | |")
      continue
    a = e["all"]
    rows.append(f"| {what} | {a['coefficient']:.3g} | {_fmt(a['exponents'].get(N_COL))} | "
                f"{_fmt(a['exponents'].get(D_COL))} |")
  lines = []
  for k, v in res["verdict"].items():
    if "transfers" not in v:
      lines.append(f"- {k}: not both fitted.")
      continue
    names = [n for n in v if n != "transfers"]
    parts = ", ".join(f"{'raw wd' if n == 'wd' else n} {v[n]['exponent']:+.2f} "
                      f"[{v[n]['ci95'][0]:+.2f}, {v[n]['ci95'][1]:+.2f}]" for n in names)
    win = v["transfers"]
    if win in ("both", "neither"):
      lines.append(f"- {k} (exponents in N): {parts}. At a fixed LR and run length the two "
                   f"differ by a constant, so they transfer together: **"
                   + ("both transfer** (0 inside the interval)." if win == "both"
                      else "neither transfers** (the interval excludes 0)."))
      continue
    what = {"wd": "the raw decay", "tau": "the timescale", "coupled": "coupled decay's raw wd",
            "independent": "independent decay's raw wd"}[win]
    other = [n for n in names if n != win][0]
    both0 = v[win]["holds_0"] and v[other]["holds_0"]
    lines.append(f"- {k} ({'exponent of the optimum in the LR' if k.endswith('LR') else 'exponents in D'}): "
                 f"{parts}: **{what}** is nearer 0"
                 + (", but both intervals hold 0: this run cannot tell them apart" if both0
                    else "" if v[win]["holds_0"] else ", though its interval excludes 0 too")
                 + ".")
  gains = "; ".join(f"{cell}: {d.get('coupled', float('nan')):+.3f}"
                    for cell, d in res["decay_gain"].items())
  warn = [w.removeprefix("warning: ") for v in f.values() for w in v.get("warnings", [])]
  return f"""# Weight decay and warmup across width and horizon (muP) — preset `{res['preset']}`

![raw decay across N and D](wd_in_N_D/partial_dependence.png)

![timescale across N and D](tau_in_N_D/partial_dependence.png)

![each mode's optimal decay against the LR](wd_vs_lr/optimum_vs_scale.png)

Cells (width, steps): {res['cells']}; {s['batch']}×{s['seq']} bytes per step, AdamW at
LR {s['lr']:.4g} with a cosine schedule to 10%, muP (base width {s['widths'][0]}), seeds
{s['seeds']}.  Coupled decay {s['wds'][0]:g}–{s['wds'][-1]:g} in 2× steps in every cell; at
width {s['mid_width']}, {s['mid_steps']} steps, both modes at LR × {s['lr_mults']} (independent:
the coupled grid × the LR).  Warmup {min(s['warmup_fracs']):.3g}–{max(s['warmup_fracs']):.3g}
of the run, without decay.  {res['trials']} trials, {res['sweep_wall_s'] / 60:.1f} min of
training on {res['machine']['where']}.

Fitted optimum = c · N^kN · D^kD (N non-embedding parameters, D tokens; 95% CIs):

| optimum of | c | kN (width) | kD (horizon) |
| --- | --- | --- | --- |
{chr(10).join(rows)}

**Which transfers** (an exponent of 0 means the value can be carried unchanged):
{chr(10).join(lines)}

Reading it: under muP (wd_mult = 1/lr_mult) each matrix decays by lr·wd per step
at every width, so the rule predicts kN = 0.  tau = 1/(lr·wd·steps), so kN(tau) =
-kN(wd) and kD(tau) = -kD(wd) - 1: Wang & Aitchison's constant tau is kD(wd) = -1,
a constant raw decay is kD(wd) = 0.  At a fixed LR coupled and independent decay
are one family (independent wd' = lr·wd decays by the same amount per step; here
the paired runs' losses differ by at most {_agree(res.get('modes_at_fixed_lr_max_abs_diff'))});
they part when the LR moves: a constant tau means
coupled wd* ∝ 1/lr (exponent -1) and independent wd* constant (0); a constant
coupled wd* (tau ∝ 1/lr) means exponents 0 and +1.

**Held-out check** (refitted without the largest N x D cell and predicted
there; regret on that cell's measured curve, seed mean):
{chr(10).join(step_law.held_out_lines(f, {"wd": "raw wd", "tau": "tau"}))}

Loss at the best coupled decay minus without decay (nats/byte, negative = decay
helps): {gains}.
{chr(10).join('Warning: ' + w for w in warn)}
"""


if __name__ == "__main__":
  a = common.parse(NAME, PRESETS)
  r = run(a.preset, a.workdir, a.out)
  print(r["verdict"], "outputs in", a.out)
