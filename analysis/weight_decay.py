"""Weight decay as a timescale (Wang & Aitchison 2024).

AdamW's decoupled decay shrinks a matrix by ``lr_t * weight_decay`` per step
(``coupled``, torch / optax AdamW) or by ``s_t * weight_decay`` (``independent``,
Wortsman et al. 2023; ``s_t`` the schedule, 1 at its peak).  The weights then
average the updates of the last ``tau_iter = 1 / (lr * weight_decay)`` steps
(``1 / weight_decay`` independent), and Wang & Aitchison's claim is that the
optimal *fraction of training* ``tau = tau_iter / steps`` is what stays put as
the model and the data grow -- not the raw coefficient.

Under hptransfer's parameterizations a matrix's decay already carries
``wd_mult = 1 / lr_mult`` when coupled (microsoft/mup's rule), so the per-step
decay fraction of every hidden matrix is ``lr * weight_decay`` at every width;
the timescale uses the global (base-shape) peak LR for that reason.  L2 decay
(``weight_decay_mode=l2``) has no timescale of this kind: its rows get NaN.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.optimum import AnalysisError

COLUMNS = ("optimizer.lr", "optimizer.weight_decay", "train.steps")


def timescale(lr, weight_decay, steps, mode="coupled"):
  """tau as a fraction of training (inf without decay; NaN for L2 decay)."""
  lr, wd, steps = (np.asarray(v, float) for v in (lr, weight_decay, steps))
  mode = np.asarray(mode)
  per_step = np.where(mode == "independent", wd, lr * wd)
  with np.errstate(divide="ignore"):
    tau = 1.0 / (per_step * steps)
  return np.where(mode == "l2", np.nan, tau)


def weight_decay_for(tau, lr, steps, mode="coupled"):
  """The weight decay that gives timescale ``tau`` (the inverse of timescale)."""
  lr, tau, steps = (np.asarray(v, float) for v in (lr, tau, steps))
  if mode == "l2":
    raise AnalysisError("weight_decay_mode=l2 has no timescale; use coupled or independent")
  return 1.0 / (tau * steps) if mode == "independent" else 1.0 / (tau * steps * lr)


def add_timescale(df: pd.DataFrame, out: str = "timescale") -> pd.DataFrame:
  """A copy of ``df`` with the column ``out``; the decay mode comes from
  ``optimizer.weight_decay_mode`` (coupled when the rows do not record it)."""
  missing = [c for c in COLUMNS if c not in df.columns]
  if missing:
    raise AnalysisError(f"--hp timescale needs the columns {list(COLUMNS)}; the results "
                        f"lack {missing}")
  mode = (df["optimizer.weight_decay_mode"] if "optimizer.weight_decay_mode" in df.columns
          else pd.Series("coupled", index=df.index)).fillna("coupled")
  df = df.copy()
  df[out] = timescale(df["optimizer.lr"], df["optimizer.weight_decay"], df["train.steps"],
                      mode.to_numpy())
  return df
