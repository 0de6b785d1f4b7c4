"""Tensor Programs V's transfer figure with Muon: training loss against log2
LR across widths, SP-with-Muon against muP-with-Muon.

    python experiments/muon_transfer.py --preset cpu     # 2 cores
    python experiments/muon_transfer.py --preset gpu

Muon (``optimizer.name=muon``: RMS-matched, Moonshot's convention) updates the
hidden matrices; embeddings, readout and gains take Adam.  Under SP nothing
is corrected for width: the hidden updates' spectral norm grows as
sqrt(width) and the readout's Adam update as width.  Under muP the hidden LR
is divided by sqrt(m) and the readout is muP's (hptransfer/optim/muon.py).
The presets are tp5_fig1's (same widths, LRs, steps and data), so the two
figures compare Adam and Muon on equal terms.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments import common  # noqa: E402
from experiments import tp5_fig1  # noqa: E402

NAME = "muon_transfer"
PRESETS = tp5_fig1.PRESETS


OVERRIDES = {"optimizer.name": "muon"}
TITLE = ("Muon (hidden matrices) + Adam (the rest) on the byte corpus: final train loss "
         "against learning rate per width")
LABEL = "Muon"
ABOUT = """Muon (RMS-matched: the orthogonalised update x 0.2 sqrt(max fan)) on
the hidden matrices, Adam on the rest."""
EXPECTED = """Expected: under SP the hidden updates' spectral norm grows as sqrt(width)
and the readout's Adam update as width, so the optimum should fall; muP's
rule (hidden LR / sqrt(m), muP's readout) should hold it."""


def run(preset: str, workdir: str, out: str, progress: bool = True) -> dict:
  return width_transfer(NAME, PRESETS[preset], preset, workdir, out, progress, OVERRIDES,
                        TITLE, LABEL, ABOUT, EXPECTED)


def width_transfer(name, p, preset, workdir, out, progress, overrides, title, label, about,
                   expected) -> dict:
  """``common.width_transfer`` with one optimizer (``overrides``) and this
  module's note, which names it (``label``, ``about``, ``expected``)."""
  return common.width_transfer(
      name, p, preset, workdir, out, lambda res: note(res, name, label, about, expected),
      progress, overrides, title)


def _adam_reference(preset: str) -> str:
  """tp5_fig1's muP slope (Adam, same preset) from its committed JSON, if any."""
  import json
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "experiments", "tp5_fig1", "tp5_fig1.json")
  try:
    with open(path) as f:
      ref = json.load(f)
    mup = ref["groups"]["mup"]
  except (OSError, KeyError, ValueError):
    return ""
  if ref.get("preset") != preset or "slope_ci" not in mup:
    return ""
  lo, hi = mup["slope_ci"]
  return (f"Adam on the same preset (tp5_fig1): muP's optima {common.fmt_optima(mup)}, "
          f"slope {mup['slope']:+.2f} [{lo:+.2f}, {hi:+.2f}].")


def note(res, name=NAME, label=LABEL, about=ABOUT, expected=EXPECTED) -> str:
  sp, mup = res["groups"].get("sp", {}), res["groups"].get("mup", {})
  fmt = lambda x: "n/a" if x is None else f"{x:+.2f}"
  s = common.fmt_slope
  w = res["wider_is_better_at_fixed_lr"]
  wib = lambda g: (f"{sum(w[g]['per_value'].values())} of {len(w[g]['per_value'])}"
                   if w[g]["fraction"] is not None else "n/a")
  ok_sp, ok_mup = common.width_verdict(res)
  st = res["settings"]
  residual = ""
  if "slope_ci" in mup and not (mup["slope_ci"][0] <= 0 <= mup["slope_ci"][1]):
    residual = (f"muP's fitted slope, {mup['slope']:+.2f}, has a 95% interval that excludes 0: "
                "a residual drift remains.")
  adam = _adam_reference(res["preset"])
  return f"""# {label} across width: SP against muP — preset `{res['preset']}`

![loss against log2 LR]({name}_loss_vs_hp.png)

Training loss (mean over the last 10% of steps) against log2 LR, widths
{st['widths']}, base width {st['base']}, {st['steps']} steps of {st['batch']}×{st['seq']}
bytes, one seed.  {about}  Sweep wall time
{res['sweep_wall_s']:.0f} s on {res['machine']['where']}.  Same presets as
tp5_fig1 (Adam) in widths, steps and data; LRs 2^{np.log2(st['lrs'][0]):.0f} to 2^{np.log2(st['lrs'][-1]):.0f}.

| | grid-argmin optimum per width | drift across widths (grid steps of 2×) | slope d log2 lr*/d log2 width (95% CI) | LRs at which every wider model is better |
| --- | --- | --- | --- | --- |
| SP + {label} | {common.fmt_optima(sp) if sp else ''} | {fmt(res['sp_optimum_drift_grid_steps'])} | {s(sp) if sp else ''} | {wib('sp')} |
| muP + {label} | {common.fmt_optima(mup) if mup else ''} | range {fmt(res['mup_optimum_range_grid_steps'])} | {s(mup) if mup else ''} | {wib('mup')} |

{expected}  Here: SP's optimum
{'drifts by at least 2 grid steps' if ok_sp else 'does NOT drift by 2 grid steps over this width range'}; muP's
{'stays within 1 grid step' if ok_mup else 'moves by MORE than 1 grid step'}. {residual}
{adam}
{'' if res['fit_error'] is None else 'Fit: ' + res['fit_error']}
{chr(10).join('Warning: ' + w for w in res['warnings'])}
"""


if __name__ == "__main__":
  a = common.parse(NAME, PRESETS)
  common.print_width_verdict(run(a.preset, a.workdir, a.out), a.out)
