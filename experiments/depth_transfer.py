"""Depth transfer: optimal LR against depth for alpha = 0 (muP), 1/2
(Depth-muP) and 1 (CompleteP), Adam, pre-norm Transformer.

    python experiments/depth_transfer.py --preset cpu

CompleteP (Dey et al. 2025) reports the optimal LR stable from 2 to 128 layers
at alpha = 1, while alpha = 0 (muP without depth rules) drifts to smaller LRs as
depth grows; Depth-muP (alpha = 1/2) sits between.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments import common  # noqa: E402
from hptransfer.sweep import product, sweep  # noqa: E402

NAME = "depth_transfer"
PRESETS = {
    "tiny": dict(depths=[2, 4], lrs=2.0 ** np.arange(-8, -3, 2), width=16, steps=6,
                 batch=2, seq=16, head_dim=8),
    "cpu": dict(depths=[2, 4, 8, 16], lrs=2.0 ** np.arange(-10, -2), width=32, steps=100,
                batch=8, seq=32, head_dim=16),
    "gpu": dict(depths=[2, 4, 8, 16], lrs=2.0 ** np.arange(-12, -4), width=256,
                steps=300, batch=16, seq=256, head_dim=64, dtype="bfloat16"),
}


def config(p):
  return common.base_config(p, **{
      "model.width": p["width"], "parameterization.name": "mup",
      "parameterization.base_width": p["width"],
      "parameterization.base_depth": p["depths"][0]})


def run(preset: str, workdir: str, out: str, progress: bool = True) -> dict:
  p = PRESETS[preset]
  df = common.run_sweep(config(p), product(
      sweep("parameterization.alpha", [0.0, 0.5, 1.0]), sweep("model.depth", p["depths"]),
      sweep("optimizer.lr", p["lrs"])), workdir, progress=progress)
  res = common.transfer_analysis(df, "model.depth", "optimizer.lr", "final_train_loss",
                                 "parameterization.alpha", out, NAME,
                                 title="Depth transfer: final train loss against learning "
                                       "rate per depth, one panel per depth exponent alpha "
                                       "(muP width, Adam)")
  res.update({"experiment": NAME, "preset": preset, "sweep_wall_s": common.group_seconds(df),
              "settings": {k: np.asarray(v).tolist() for k, v in p.items()},
              "machine": common.machine()})
  common.write_json(out, NAME, res)
  common.write_note(out, NAME, note(res))
  return res


def note(res) -> str:
  lines = []
  for g, e in res["groups"].items():
    lines.append(f"| {g} | {common.fmt_optima(e, 'L=')} | "
                 f"{e['argmin_drift_grid_steps']:+.1f} | {common.fmt_slope(e)} |")
  s = res["settings"]
  verdicts = "; ".join(
      f"alpha {g}: " + ("no fit" if "slope" not in e else
                        "stable (the slope's interval includes 0)"
                        if e["slope_ci"][0] <= 0 <= e["slope_ci"][1] else
                        f"drifts ({'down' if e['slope'] < 0 else 'up'}: the interval excludes 0)")
      for g, e in res["groups"].items())
  return f"""# Depth transfer — preset `{res['preset']}`

![loss against log2 LR per depth]({NAME}_loss_vs_hp.png)

muP at width {s['width']}, depths {s['depths']} (base depth {s['depths'][0]}), Adam,
{s['steps']} steps of {s['batch']}×{s['seq']} bytes, one seed; residual branches scaled by
(L/L_base)^-alpha, with the per-block LR and epsilon rules of Depth-muP / CompleteP.

| alpha | grid-argmin optimum per depth | drift (grid steps) | slope d log2 lr*/d log2 L (95% CI) |
| --- | --- | --- | --- |
{chr(10).join(lines)}

CompleteP (Dey et al. 2025) reports a depth-stable optimum at alpha = 1 and a
drifting one at alpha = 0.  Here: {verdicts}.  Sweep wall time {res['sweep_wall_s']:.0f} s on
{res['machine']['where']}.
{'' if res['fit_error'] is None else 'Fit: ' + res['fit_error']}
{chr(10).join('Warning: ' + w for w in res['warnings'])}
"""


if __name__ == "__main__":
  a = common.parse(NAME, PRESETS)
  r = run(a.preset, a.workdir, a.out)
  print({g: e.get("slope") for g, e in r["groups"].items()}, "outputs in", a.out)
