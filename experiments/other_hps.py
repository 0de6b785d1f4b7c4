"""Other hyperparameters transfer under muP: the optimal output multiplier and
the optimal init std stay put across width (Tensor Programs V, Fig. 4 style).

    python experiments/other_hps.py --preset cpu
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments import common  # noqa: E402
from hptransfer.sweep import product, sweep  # noqa: E402

NAME = "other_hps"
PRESETS = {
    "tiny": dict(widths=[16, 32], output_mults=2.0 ** np.arange(-2, 3, 2),
                 init_stds=2.0 ** np.arange(-2, 3, 2), steps=6, batch=2, seq=16, head_dim=8,
                 lr=2.0 ** -6),
    "cpu": dict(widths=[32, 64, 128], output_mults=2.0 ** np.arange(-5, 5),
                init_stds=2.0 ** np.arange(-4, 4), steps=200, batch=8, seq=64, head_dim=16,
                lr=2.0 ** -7),
    "gpu": dict(widths=[128, 256, 512, 1024], output_mults=2.0 ** np.arange(-5, 5),
                init_stds=2.0 ** np.arange(-4, 4), steps=300, batch=16, seq=256,
                head_dim=64, lr=2.0 ** -8, dtype="bfloat16"),
}


def config(p):
  return common.base_config(p, **{
      "parameterization.name": "mup", "parameterization.base_width": p["widths"][0],
      "optimizer.lr": float(p["lr"])})


def run(preset: str, workdir: str, out: str, progress: bool = True) -> dict:
  p = PRESETS[preset]
  widths = sweep("model.width", p["widths"])
  base = config(p).parameterization
  # The init_std = 1 point is the output_mult = 1 trial: one trial, used twice.
  stds = [v for v in p["init_stds"] if v != base.init_std]
  df = common.run_sweep(config(p), product(widths, sweep(
      "parameterization.output_mult", p["output_mults"])) + product(widths, sweep(
          "parameterization.init_std", stds)), workdir, progress=progress)
  res = {"experiment": NAME, "preset": preset, "sweep_wall_s": common.group_seconds(df),
         "settings": {k: np.asarray(v).tolist() for k, v in p.items()},
         "machine": common.machine()}
  for col in ("parameterization.output_mult", "parameterization.init_std"):
    value = base[col.split(".")[1]]
    df[col] = df[col].fillna(value) if col in df else value
  for hp, other in (("parameterization.output_mult", "parameterization.init_std"),
                    ("parameterization.init_std", "parameterization.output_mult")):
    sub = df[df[other] == base[other.split(".")[1]]]
    res[hp] = common.transfer_analysis(sub, "model.width", hp, "final_train_loss", None,
                                       out, f"{NAME}_{hp.split('.')[1]}",
                                       title=f"muP: final train loss against the "
                                             f"{hp.split('.')[1].replace('_', ' ')}, per width")
  common.write_json(out, NAME, res)
  common.write_note(out, NAME, note(res))
  return res


def note(res) -> str:
  lines = []
  for hp in ("parameterization.output_mult", "parameterization.init_std"):
    e = res[hp]["groups"]["all"]
    lines.append(f"| {hp.split('.')[1]} | {common.fmt_optima(e)} | "
                 f"{e['argmin_range_grid_steps']:.0f} | {common.fmt_slope(e)} |")
  s = res["settings"]
  parts = []
  for hp in ("parameterization.output_mult", "parameterization.init_std"):
    e = res[hp]["groups"]["all"]
    where = f"the grid optimum moves by {e['argmin_range_grid_steps']:.0f} grid step(s)"
    if "slope" in e:
      inc = e["slope_ci"][0] <= 0 <= e["slope_ci"][1]
      where += (f" and the fitted slope's interval {'includes' if inc else 'excludes'} 0"
                + ("" if inc else " (a weak drift at these widths)"))
    parts.append(f"{hp.split('.')[1]}: {where}")
  verdict = "; ".join(parts) + "."
  return f"""# Other hyperparameters under muP — preset `{res['preset']}`

| output multiplier | init std |
| --- | --- |
| ![]({NAME}_output_mult_loss_vs_hp.png) | ![]({NAME}_init_std_loss_vs_hp.png) |

muP, Adam at LR {s['lr']:g}, widths {s['widths']} (base {s['widths'][0]}), {s['steps']} steps of
{s['batch']}×{s['seq']} bytes, one seed; each hyperparameter swept with the other at 1.

| hyperparameter | grid-argmin optimum per width | range (grid steps) | slope vs width (95% CI) |
| --- | --- | --- | --- |
{chr(10).join(lines)}

Tensor Programs V (Fig. 4) reports both optima stable across width under muP.
Here: {verdict}  Sweep wall time {res['sweep_wall_s']:.0f} s on {res['machine']['where']}.
"""


if __name__ == "__main__":
  a = common.parse(NAME, PRESETS)
  r = run(a.preset, a.workdir, a.out)
  print("outputs in", a.out)
