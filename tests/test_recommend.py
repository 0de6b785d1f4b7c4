"""analysis.recommend: the chain batch -> LR at that batch -> decay from the
timescale -> warmup, with intervals drawn jointly through the chain."""
import json

import numpy as np
import pytest
import yaml

from analysis import recommend
from analysis.optimum import AnalysisError
from analysis.rules import Rule, rule_from_json

N, D, B = recommend.N_COL, recommend.D_COL, recommend.B_COL


def rule(scales, log2_c, ks, sd=0.1, n=400, seed=0):
  """A rule whose bootstrap refits scatter sd (log2) about the truth."""
  rng = np.random.default_rng(seed)
  boot = np.column_stack([log2_c + rng.normal(0, sd, n)] + [k + rng.normal(0, sd / 10, n)
                                                             for k in ks])
  return Rule(scales=list(scales), coefficient=2.0 ** log2_c, exponents=list(ks),
              exponents_ci=[[k - 0.1, k + 0.1] for k in ks], coefficient_ci=[0, 0],
              n_points=6, residual_sd=sd, boot_coef=boot)


def test_the_chain_composes_the_rules():
  target = {N: 4e5, D: 2e5}
  rb = rule([D], -4.0, [0.5])                 # B* = 2^-4 D^0.5 = 27.9 -> 32
  rl = rule([N, D, B], 2.0, [-0.3, -0.2, 0.5])
  rt = rule([N, D], -2.0, [0.0, 0.0])         # tau* = 0.25 of the run
  rw = rule([N, D], -4.0, [0.0, 0.0])         # warmup 1/16 of the run
  rec = recommend.recommend(target, 64, rl, rb, rt, rw)
  b = rec["train.batch_size"]
  assert b["unrounded"] == pytest.approx(2 ** -4 * 2e5 ** 0.5)
  assert b["value"] == 32
  steps = round(2e5 / (32 * 64))
  assert rec["train.steps"]["value"] == steps
  lr = 2 ** 2 * 4e5 ** -0.3 * 2e5 ** -0.2 * 32 ** 0.5
  assert rec["optimizer.lr"]["value"] == pytest.approx(lr)
  wd = rec["optimizer.weight_decay"]
  assert wd["value"] == pytest.approx(1 / (lr * 0.25 * steps))
  assert wd["timescale"] == pytest.approx(0.25)
  assert rec["optimizer.warmup_steps"]["value"] == round(steps / 16)
  for k in ("optimizer.lr", "optimizer.weight_decay"):
    lo, hi = rec[k]["ci95"]
    assert lo < rec[k]["value"] < hi
  # The LR's interval carries the batch size's: with an uncertain batch rule it widens.
  wide = recommend.recommend(target, 64, rl, rule([D], -4.0, [0.5], sd=1.0), rt, rw)
  width = lambda r: np.log2(r["optimizer.lr"]["ci95"][1] / r["optimizer.lr"]["ci95"][0])
  assert width(wide) > 1.5 * width(rec)
  # Independent decay: wd = 1/(tau steps), no LR in it.
  ind = recommend.recommend(target, 64, rl, rb, rt, rw, decay_mode="independent")
  assert ind["optimizer.weight_decay"]["value"] == pytest.approx(1 / (0.25 * steps))


def test_fixed_batch_and_bad_input():
  rl = rule([N, D], 0.0, [-0.5, -0.3])
  rec = recommend.recommend({N: 1e6, D: 1e6}, 128, rl, batch_size=16)
  assert rec["train.batch_size"]["value"] == 16 and rec["train.steps"]["value"] == round(1e6 / 2048)
  with pytest.raises(AnalysisError, match=r"needs \['num_params_embedding_free'\].*--target"):
    recommend.recommend({D: 1e6}, 128, rl, batch_size=16)
  with pytest.raises(AnalysisError, match="--batch rules.json.*--batch_size"):
    recommend.recommend({N: 1e6, D: 1e6}, 128, rl)
  with pytest.raises(AnalysisError, match="--seq_len 0"):
    recommend.recommend({N: 1e6, D: 1e6}, 0, rl, batch_size=8)


def test_cli_reads_rules_json_from_analysis_fit(tmp_path, capsys):
  """rules.json round trip (bootstrap_log2_coef) and the yaml it writes."""
  import pandas as pd
  from analysis import fit
  rng = np.random.default_rng(0)
  rows = []
  for n in (1e5, 4e5, 1.6e6):
    for d in (1e6, 4e6):
      x_star = 3.0 - 0.5 * np.log2(n) - 0.3 * np.log2(d)
      for x in np.round(x_star) + np.arange(-3, 4):
        rows.append({N: n, D: d, "optimizer.lr": 2.0 ** x,
                     "loss": 3 + 0.03 * (x - x_star) ** 2 + rng.normal(0, 0.002)})
  pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
  assert fit.main(["--results", str(tmp_path / "r.csv"), "--scale", N, "--scale", D,
                   "--hp", "optimizer.lr", "--metric", "loss", "--n_boot", "80",
                   "--out", str(tmp_path / "lr")]) == 0
  (entry,) = json.load(open(tmp_path / "lr" / "rules.json"))
  r = rule_from_json(entry)
  assert r.boot_coef.shape == (80, 3) and r.exponents == entry["exponent"]
  out = tmp_path / "rec.yaml"
  rc = recommend.main(["--target", f"{N}=1e7", "--target", f"{D}=1e8", "--seq_len", "64",
                       "--lr", str(tmp_path / "lr" / "rules.json"), "--batch_size", "16",
                       "--out", str(out)])
  assert rc == 0, capsys.readouterr().err
  doc = yaml.safe_load(open(out))
  got = doc["hyperparameters"]["optimizer.lr"]
  truth = 2 ** (3.0 - 0.5 * np.log2(1e7) - 0.3 * np.log2(1e8))
  assert abs(np.log2(got["value"] / truth)) < 0.3
  assert doc["target"] == {N: 1e7, D: 1e8} and "lr" in doc["fitted_from"]
  rc = recommend.main(["--target", f"{N}=1e7", "--seq_len", "64", "--lr",
                       str(tmp_path / "lr" / "rules.json"), "--batch_size", "16",
                       "--out", str(tmp_path / "bad.yaml")])
  assert rc == 2 and "--target token_budget=VALUE" in capsys.readouterr().err
  assert not (tmp_path / "bad.yaml").exists()
