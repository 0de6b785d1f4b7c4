"""Transfer rules: hp* = c * x1^k1 * x2^k2 ..., fitted in log space.

Each scale's optimum comes with bootstrap replicates (``analysis.optimum``).
The rule is a weighted least-squares fit of log2(hp*) on log2(scale variables),
weights 1/variance of each optimum (floored, so one very sure point cannot take
the whole fit).  Its confidence intervals come from refitting on bootstrap
replicates of every optimum at once: percentile intervals for the exponents,
the coefficient and the prediction at a target scale.  The drift slope
d log hp*/d log width is the width exponent: about 0 when transfer holds (muP),
about -1 for Adam's LR under SP.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from analysis.optimum import AnalysisError


@dataclasses.dataclass
class Rule:
  scales: list[str]
  coefficient: float            # c, in hp units
  exponents: list[float]        # k per scale variable
  exponents_ci: list[list[float]]
  coefficient_ci: list[float]
  n_points: int
  residual_sd: float            # of log2(hp*) about the fit
  boot_coef: np.ndarray         # (n_boot, 1 + p) in log2 space, for predictions

  def predict(self, target: dict[str, float], level: float = 0.95) -> tuple[float, list[float]]:
    z = np.array([1.0] + [np.log2(target[s]) for s in self.scales])
    point = np.array([np.log2(self.coefficient)] + self.exponents) @ z
    boot = self.boot_coef @ z
    boot = boot[np.isfinite(boot)]
    a = (1 - level) / 2
    lo, hi = np.quantile(boot, [a, 1 - a]) if len(boot) else (np.nan, np.nan)
    return float(2.0 ** point), [float(2.0 ** lo), float(2.0 ** hi)]


def _wls(X, y, w):
  W = np.sqrt(w)[:, None]
  coef, *_ = np.linalg.lstsq(X * W, y * W[:, 0], rcond=None)
  return coef


def fit_rule(scale_values: np.ndarray, log2_opt: np.ndarray, boot: np.ndarray,
             scales: list[str], level: float = 0.95, min_sd: float = 0.05) -> Rule:
  """scale_values (n, p) > 0; log2_opt (n,); boot (n, n_boot) replicates."""
  scale_values = np.atleast_2d(np.asarray(scale_values, float))
  if scale_values.shape[0] != len(log2_opt):
    scale_values = scale_values.T
  n, p = scale_values.shape
  if n < p + 1:
    raise AnalysisError(
        f"a rule in {', '.join(scales)} needs at least {p + 1} scales with an interior "
        f"optimum; found {n}. Add scales (or widen the grid where the optimum is "
        "on its edge)")
  X = np.column_stack([np.ones(n), np.log2(scale_values)])
  var = np.nanvar(boot, axis=1)
  w = 1.0 / np.maximum(var, min_sd ** 2)
  coef = _wls(X, log2_opt, w)
  resid = log2_opt - X @ coef
  dof = max(n - p - 1, 1)
  boot_coef = []
  rng = np.random.default_rng(0)
  for b in range(boot.shape[1]):
    y = boot[:, b]
    if not np.all(np.isfinite(y)):
      continue
    if n > p + 1:
      # The optima also scatter about the rule beyond their own noise (the
      # rule is only approximately a power law): add that scatter back.
      extra = max(np.sum(w * resid ** 2) / dof - 1.0, 0.0)
      y = y + rng.normal(0.0, 1.0, n) * np.sqrt(extra / w)
    boot_coef.append(_wls(X, y, w))
  boot_coef = np.array(boot_coef)
  a = (1 - level) / 2
  qs = np.quantile(boot_coef, [a, 1 - a], axis=0)
  return Rule(
      scales=list(scales), coefficient=float(2.0 ** coef[0]),
      exponents=[float(c) for c in coef[1:]],
      exponents_ci=[[float(qs[0, j]), float(qs[1, j])] for j in range(1, p + 1)],
      coefficient_ci=[float(2.0 ** qs[0, 0]), float(2.0 ** qs[1, 0])],
      n_points=n, residual_sd=float(np.sqrt(np.sum(resid ** 2) / dof)),
      boot_coef=boot_coef)


def rule_from_json(entry: dict) -> Rule:
  """A Rule back from a rules.json entry of ``analysis.fit``."""
  if "bootstrap_log2_coef" not in entry:
    raise AnalysisError("this rules.json predates bootstrap_log2_coef; rerun analysis.fit")
  scales = entry["scale"] if isinstance(entry["scale"], list) else [entry["scale"]]
  ks = entry["exponent"] if isinstance(entry["exponent"], list) else [entry["exponent"]]
  cis = entry["exponent_ci"] if isinstance(entry["exponent"], list) else [entry["exponent_ci"]]
  return Rule(scales=list(scales), coefficient=float(entry["coefficient"]),
              exponents=[float(k) for k in ks], exponents_ci=cis,
              coefficient_ci=entry["coefficient_ci"], n_points=entry["n_scales"],
              residual_sd=entry["residual_sd_log2"],
              boot_coef=np.asarray(entry["bootstrap_log2_coef"], float))
