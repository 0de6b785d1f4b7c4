"""Hyperparameters for a target (N, D), chained from fitted rules, each with
its rule and a 95% interval: ``recommended.yaml``.

    python -m analysis.recommend --target num_params_embedding_free=4e5 \
        --target token_budget=2e5 --seq_len 64 \
        --batch runs/a/batch_in_N_D/rules.json --lr runs/a/lr_in_N_D_B/rules.json \
        --timescale runs/b/tau_coupled/rules.json \
        --warmup runs/b/warmup_fraction/rules.json --out recommended.yaml

Each ``rules.json`` is written by ``python -m analysis.fit`` (its
``bootstrap_log2_coef``).  The chain, in order:

1. batch size B* from the batch rule at (N, D), rounded to the nearest power
   of two (the grids the rules are fitted on are powers of two);
2. lr* from the LR rule at (N, D) -- and at B when the rule has a batch
   variable (the LR-batch coupling);
3. weight decay from the timescale rule: tau* at (N, D), then
   wd = 1 / (lr* tau* T) coupled or 1 / (tau* T) independent, T = D / (B seq);
4. warmup from the warmup-fraction rule: fraction* x T steps.

Intervals: every rule's bootstrap refits are drawn jointly through the chain
(draw i of each rule together), so the LR's interval carries the batch
size's, and the decay's carries both.  The rules are fitted on different
trials, so drawing them together treats their errors as independent.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from analysis.optimum import AnalysisError
from analysis.rules import Rule, rule_from_json
from analysis import weight_decay as wd_lib

N_COL, D_COL, B_COL = "num_params_embedding_free", "token_budget", "train.batch_size"


def load_rule(path: str, group=None) -> Rule:
  try:
    with open(path) as f:
      entries = json.load(f)
  except (OSError, ValueError) as e:
    raise AnalysisError(f"{path}: not a readable rules.json ({e})") from None
  chosen = entries if group is None else [e for e in entries if str(e["group"]) == str(group)]
  if len(chosen) != 1:
    raise AnalysisError(f"{path}: holds the groups {[e['group'] for e in entries]}; "
                        "name one with --group")
  return rule_from_json(chosen[0])


def _z(rule: Rule, point: dict) -> np.ndarray:
  """(1, log2 x1, log2 x2, ...) of ``point`` in the rule's variables."""
  missing = [s for s in rule.scales if s not in point]
  if missing:
    raise AnalysisError(f"the rule in {rule.scales} needs {missing}: give --target "
                        f"{missing[0]}=VALUE")
  return np.array([1.0] + [np.log2(float(point[s])) for s in rule.scales])


def _log2_at(rule: Rule, point: dict) -> float:
  _z(rule, point)                     # every variable given
  return float(np.log2(rule.predict(point)[0]))


def _interval(draws, level=0.95):
  draws = np.asarray(draws, float)
  draws = draws[np.isfinite(draws)]
  a = (1 - level) / 2
  return [float(v) for v in np.quantile(draws, [a, 1 - a])] if len(draws) else [None, None]


def rule_text(rule: Rule) -> str:
  return " * ".join([f"{rule.coefficient:.4g}"] + [f"{s}^{k:+.3f}" for s, k in
                                                   zip(rule.scales, rule.exponents)])


def recommend(target: dict, seq_len: int, lr: Rule, batch: Rule | None = None,
              timescale: Rule | None = None, warmup: Rule | None = None,
              batch_size: int | None = None, decay_mode: str = "coupled",
              level: float = 0.95, seed: int = 0) -> dict:
  """{hp: {value, ci95, rule, ...}} at ``target`` ({N_COL: n, D_COL: d});
  ``batch_size`` fixes B when there is no batch rule."""
  if D_COL not in target:
    raise AnalysisError(f"--target {D_COL}=VALUE is needed: the run length comes from it")
  if not seq_len > 0:
    raise AnalysisError(f"--seq_len {seq_len}: must be a positive number of tokens")
  if batch is None and not batch_size:
    raise AnalysisError("give a batch rule (--batch rules.json) or a fixed --batch_size")
  rng = np.random.default_rng(seed)
  n = min(len(r.boot_coef) for r in (lr, batch, timescale, warmup) if r is not None)
  pick = lambda r: r.boot_coef[rng.choice(len(r.boot_coef), n, replace=False)]
  out = {}
  if batch is not None:
    b_est = _log2_at(batch, target)
    b_draws = pick(batch) @ _z(batch, target)
    b_value = int(2 ** np.round(b_est))
    out["train.batch_size"] = {
        "value": b_value, "unrounded": float(2 ** b_est),
        "ci95": [2 ** v for v in _interval(b_draws, level)],
        "rule": rule_text(batch) + " (sequences; rounded to a power of two)"}
    b_samples = 2.0 ** np.round(b_draws)
  else:
    b_value, b_samples = int(batch_size), np.full(n, float(batch_size))
    out["train.batch_size"] = {"value": b_value, "ci95": [b_value, b_value],
                               "rule": "fixed (--batch_size)"}
  steps = max(1, int(round(target[D_COL] / (b_value * seq_len))))
  steps_draws = np.maximum(1.0, np.round(target[D_COL] / (b_samples * seq_len)))
  out["train.steps"] = {"value": steps, "rule": f"{D_COL} / (batch * {seq_len})"}
  point = dict(target, **{B_COL: b_value})
  _z(lr, point)                       # every variable of the LR rule is given
  lc = pick(lr)
  lr_est = float(2 ** _log2_at(lr, point))
  Z = np.stack([np.ones(n)] + [np.log2(b_samples) if s == B_COL else
                               np.full(n, np.log2(point[s])) for s in lr.scales], axis=1)
  lr_draws = 2.0 ** np.einsum("bj,bj->b", lc, Z)
  out["optimizer.lr"] = {"value": lr_est, "ci95": _interval(lr_draws, level),
                         "rule": rule_text(lr) + (" at the batch above" if B_COL in lr.scales
                                                  else "")}
  if timescale is not None:
    tau_est = float(2 ** _log2_at(timescale, target))
    tau_draws = 2.0 ** (pick(timescale) @ _z(timescale, target))
    wd = float(wd_lib.weight_decay_for(tau_est, lr_est, steps, decay_mode))
    wd_draws = wd_lib.weight_decay_for(tau_draws, lr_draws, steps_draws, decay_mode)
    out["optimizer.weight_decay"] = {
        "value": wd, "ci95": _interval(wd_draws, level), "mode": decay_mode,
        "timescale": tau_est, "timescale_ci95": _interval(tau_draws, level),
        "rule": f"tau = {rule_text(timescale)} (fraction of training); wd = "
                + ("1/(lr*tau*steps)" if decay_mode == "coupled" else "1/(tau*steps)")}
  if warmup is not None:
    frac = float(2 ** _log2_at(warmup, target))
    frac_draws = 2.0 ** (pick(warmup) @ _z(warmup, target))
    out["optimizer.warmup_steps"] = {
        "value": max(1, int(round(frac * steps))), "fraction": frac,
        "ci95": _interval(np.maximum(1, np.round(frac_draws * steps_draws)), level),
        "rule": f"fraction = {rule_text(warmup)}; warmup = fraction * steps"}
  return out


def write_yaml(path: str, rec: dict, target: dict, sources: dict) -> None:
  import yaml
  doc = {"target": {k: float(v) for k, v in target.items()}, "hyperparameters": rec,
         "fitted_from": sources,
         "note": "values at the target; ci95 = 95% interval of the chained bootstrap"}
  with open(path, "w") as f:
    yaml.safe_dump(json.loads(json.dumps(doc, default=float)), f, sort_keys=False)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m analysis.recommend",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("--target", action="append", required=True,
                  help=f"scale=value, e.g. {N_COL}=4e8 and {D_COL}=8e9")
  ap.add_argument("--seq_len", type=int, required=True, help="tokens per sequence")
  ap.add_argument("--lr", required=True, help="rules.json of the LR fit")
  ap.add_argument("--batch", help="rules.json of the batch-size fit (--hp train.batch_size)")
  ap.add_argument("--batch_size", type=int, help="a fixed batch size instead of --batch")
  ap.add_argument("--timescale", help="rules.json of the weight-decay timescale fit")
  ap.add_argument("--decay_mode", default="coupled", choices=["coupled", "independent"])
  ap.add_argument("--warmup", help="rules.json of the warmup-fraction fit")
  ap.add_argument("--group", default=None, help="the group to take from each rules.json")
  ap.add_argument("--out", required=True, help="recommended.yaml to write")
  a = ap.parse_args(argv)
  try:
    from analysis.fit import key_values
    target = key_values(a.target, example=f"{D_COL}=8e9")
    rules = {k: load_rule(getattr(a, k), a.group) if getattr(a, k) else None
             for k in ("lr", "batch", "timescale", "warmup")}
    rec = recommend(target, a.seq_len, rules["lr"], rules["batch"], rules["timescale"],
                    rules["warmup"], a.batch_size, a.decay_mode)
    write_yaml(a.out, rec, target, {k: getattr(a, k) for k in rules if getattr(a, k)})
  except AnalysisError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for k, v in rec.items():
    ci = v.get("ci95")
    print(f"{k}: {v['value']:.4g}" + (f"  [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")
          + f"   {v['rule']}")
  print(f"wrote {a.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
