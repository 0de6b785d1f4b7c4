"""Every reproduction's tiny preset runs end to end and is deterministic."""
import importlib
import json
import os

import numpy as np
import pytest

EXPERIMENTS = ["tp5_fig1", "coord_check_fig", "depth_transfer", "other_hps", "horizon",
               "mutransfer_demo", "classification_transfer", "search_transfer", "muon_transfer",
               "lion_transfer", "residual_drift"]
# Run twice and compared (the rest run once: the engine's determinism is what
# the twice-run ones and tests/test_sweep.py check; CI time is finite).
TWICE = ("mutransfer_demo",)


def _strip(obj):
  """Drop what legitimately differs between two runs: timings and the machine."""
  if isinstance(obj, dict):
    return {k: _strip(v) for k, v in obj.items()
            if not k.endswith("wall_s") and k != "machine"}
  if isinstance(obj, list):
    return [_strip(v) for v in obj]
  return obj


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_tiny_preset_is_deterministic(name, tmp_path):
  mod = importlib.import_module(f"experiments.{name}")
  outs = []
  for run in (("a", "b") if name in TWICE else ("a",)):
    out = tmp_path / f"{run}_out"
    mod.run("tiny", str(tmp_path / run), str(out), progress=False)
    path = out / f"{mod.NAME}.json"
    outs.append(json.loads(path.read_text()))
    assert (out / f"{mod.NAME}.md").stat().st_size > 200
    assert any(f.endswith(".png") for f in os.listdir(out))
  assert _strip(outs[0]) == _strip(outs[-1])
  assert outs[0]["experiment"] == mod.NAME


@pytest.mark.slow
def test_analyze_only_uses_the_rows_there_and_says_partial(tmp_path, monkeypatch):
  """--analyze_only trains nothing; with rows missing, the note says how many."""
  from experiments import common, tp5_fig1
  work = tmp_path / "work"
  tp5_fig1.run("tiny", str(work), str(tmp_path / "full"), progress=False)
  results = work / "results.jsonl"
  rows = results.read_text().splitlines()
  keep = [r for r in rows if json.loads(r)["model.width"] != max(
      json.loads(x)["model.width"] for x in rows)]
  results.write_text("\n".join(keep) + "\n")
  monkeypatch.setattr(common, "ANALYZE_ONLY", True)
  monkeypatch.setattr(common, "_ROWS", {})
  res = tp5_fig1.run("tiny", str(work), str(tmp_path / "part"), progress=False)
  assert len(results.read_text().splitlines()) == len(keep)     # nothing was trained
  note = (tmp_path / "part" / "tp5_fig1.md").read_text()
  assert f"use {len(keep)} of the preset's {len(rows)} trials" in note
  assert res["machine"]["partial"] == f"{len(keep)} of the preset's {len(rows)} trials"
  widths = {k for g in res["groups"].values() for k in g["per_scale"]}
  assert str(max(json.loads(x)["model.width"] for x in rows)) not in widths


def test_partial_count_sums_over_every_sweep_of_a_run(monkeypatch):
  """A run with two sweeps (the demo) is partial when either is, and the note's
  count covers both."""
  import pandas as pd
  from experiments import common
  from hptransfer import results as results_lib
  from hptransfer import sweep as sweep_lib
  cfg = common.base_config(dict(head_dim=8, batch=2, seq=16, steps=4))
  grid_a = sweep_lib.sweep("optimizer.lr", [0.1, 0.2, 0.3])
  grid_b = sweep_lib.sweep("optimizer.lr", [0.4, 0.5])
  ids_a = [t.id for t in sweep_lib.expand(cfg, grid_a)]
  ids_b = [t.id for t in sweep_lib.expand(cfg, grid_b)]
  held = ids_a + ids_b[:1]        # the second sweep lacks one trial
  monkeypatch.setattr(results_lib, "load", lambda w: pd.DataFrame(
      {"trial_id": held, "device": "cpu", "versions": [{"jax": "x"}] * len(held)}))
  monkeypatch.setattr(common, "ANALYZE_ONLY", True)
  monkeypatch.setattr(common, "_ROWS", {})
  assert len(common.run_sweep(cfg, grid_a, "unused")) == 3
  assert "partial" not in common.machine()
  assert len(common.run_sweep(cfg, grid_b, "unused")) == 1
  assert common.machine()["partial"] == "4 of the preset's 5 trials"
  # The same sweep again (a rerun in this process) counts its trials once; a
  # run in another workdir starts afresh.
  common.run_sweep(cfg, grid_b, "unused")
  assert common.machine()["partial"] == "4 of the preset's 5 trials"
  common.run_sweep(cfg, grid_a, "elsewhere")
  assert "partial" not in common.machine()


def test_analyze_only_matches_a_value_that_differs_in_its_last_bits(monkeypatch):
  """A computed LR (the demo's prediction) that differs from the trained one by
  round-off still finds its row; one that differs by more does not."""
  import pandas as pd
  from experiments import common
  from hptransfer import results as results_lib
  from hptransfer import sweep as sweep_lib
  cfg = common.base_config(dict(head_dim=8, batch=2, seq=16, steps=4))
  trained = 0.0018736564278836584
  tid = sweep_lib.expand(cfg, sweep_lib.sweep("optimizer.lr", [trained]))[0].id
  monkeypatch.setattr(results_lib, "load", lambda w: pd.DataFrame(
      {"trial_id": [tid], "optimizer.lr": [trained], "device": "cpu",
       "versions": [{"jax": "x"}]}))
  monkeypatch.setattr(common, "ANALYZE_ONLY", True)
  monkeypatch.setattr(common, "_ROWS", {})
  near = sweep_lib.sweep("optimizer.lr", [0.001873656427883656])
  assert sweep_lib.expand(cfg, near)[0].id != tid        # the id alone would miss it
  assert list(common.run_sweep(cfg, near, "unused").trial_id) == [tid]
  assert "partial" not in common.machine()
  with pytest.raises(SystemExit, match="none of this preset"):
    common.run_sweep(cfg, sweep_lib.sweep("optimizer.lr", [trained * (1 + 1e-6)]), "other")


def test_experiment_commands_use_the_persistent_compilation_cache(tmp_path, monkeypatch):
  """An experiment's command line turns on the same compilation cache as the
  CLI, where $HPTRANSFER_JAX_CACHE says, so a rerun loads its programs."""
  import jax
  from experiments import common
  before = jax.config.jax_compilation_cache_dir
  try:
    monkeypatch.setenv("HPTRANSFER_JAX_CACHE", str(tmp_path / "cache"))
    common.parse("tp5_fig1", {"tiny": {}}, ["--preset", "tiny", "--workdir", str(tmp_path)])
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
    common.ANALYZE_ONLY = False


def test_matmul_dtype_flag_reaches_every_trial_and_its_own_workdir(tmp_path, monkeypatch):
  """--matmul_dtype bf16 sets model.matmul_dtype in the configs the presets
  build (so the trials get other ids than the float32 ones) and, unless told,
  a workdir of its own; without it nothing changes."""
  from experiments import common, coord_check_fig, tp5_fig1
  monkeypatch.setenv("HPTRANSFER_JAX_CACHE", "off")
  p = {**tp5_fig1.PRESETS["tiny"]}
  try:
    a = common.parse("tp5_fig1", {"tiny": {}}, ["--preset", "tiny", "--matmul_dtype", "bf16"])
    assert a.workdir == os.path.join("runs", "tp5_fig1_tiny_bf16mm")
    cfg16 = tp5_fig1.config(p)
    assert cfg16.model.matmul_dtype == "bfloat16"
    assert coord_check_fig.config(coord_check_fig.PRESETS["tiny"], "mup", "adam").model.matmul_dtype == "bfloat16"
    assert "bf16 matmul" in common.machine()["where"]
    a = common.parse("tp5_fig1", {"tiny": {}}, ["--preset", "tiny"])
    assert a.workdir == os.path.join("runs", "tp5_fig1_tiny")
    cfg32 = tp5_fig1.config(p)
    assert cfg32.model.matmul_dtype == ""
    from hptransfer import sweep as sweep_lib
    assert sweep_lib.trial_id(cfg16) != sweep_lib.trial_id(cfg32)
  finally:
    common.MATMUL_DTYPE = ""
    common.ANALYZE_ONLY = False


def test_a_group_that_cannot_be_fitted_leaves_the_others_rules(tmp_path):
  """transfer_analysis fits each group alone: group "edge" (its optimum at
  the bottom of the grid at every width) gets no rule and is named in
  fit_error, while group "inside" keeps its slope (-0.5, built in)."""
  import pandas as pd
  from experiments import common
  rows = []
  rng = np.random.default_rng(0)
  for g, opt0, slope in (("inside", -6.0, -0.5), ("edge", -12.0, 0.0)):
    for w in (32, 64, 128, 256):
      xo = opt0 + slope * np.log2(w / 32)
      for x in np.arange(-10.0, -2.0):
        for seed in (0, 1):
          rows.append({"group": g, "model.width": w, "optimizer.lr": 2.0 ** x, "seed": seed,
                       "final_train_loss": 2.0 + 0.02 * (x - xo) ** 2
                       + 0.002 * rng.standard_normal(), "diverged": False})
  res = common.transfer_analysis(pd.DataFrame(rows), "model.width", "optimizer.lr",
                                 "final_train_loss", "group", str(tmp_path), "t", n_boot=100)
  inside = res["groups"]["inside"]
  assert inside["slope"] == pytest.approx(-0.5, abs=0.1)
  assert inside["slope_ci"][0] <= -0.5 <= inside["slope_ci"][1]
  assert "slope" not in res["groups"]["edge"]
  assert "group edge" in res["fit_error"]


@pytest.mark.slow
def test_step_law_wd_transfer_and_held_out_tiny_chain(tmp_path):
  """The three (N, D, B) experiments end to end: held_out reads the rows the
  other two left in its sibling work directories (it trains none of them
  again), fits the four rules without the held-out cell, writes a
  recommended.yaml that chains them, and trains the prediction and its
  neighbours there."""
  import yaml
  from experiments import held_out, step_law, wd_transfer
  sl = step_law.run("tiny", str(tmp_path / "step_law_tiny"), str(tmp_path / "sl"), progress=False)
  wd = wd_transfer.run("tiny", str(tmp_path / "wd_transfer_tiny"), str(tmp_path / "wd"),
                       progress=False)
  rows_before = {d: (tmp_path / d / "results.jsonl").read_text().count("\n")
                 for d in ("step_law_tiny", "wd_transfer_tiny")}
  res = held_out.run("tiny", str(tmp_path / "held_out_tiny"), str(tmp_path / "ho"), progress=False)
  for d, n in rows_before.items():
    assert (tmp_path / d / "results.jsonl").read_text().count("\n") == n    # reused
  assert sl["fits"]["lr_nd"]["mup"]["exponents"].keys() == {step_law.N_COL, step_law.D_COL}
  assert set(wd["verdict"]) == {"across width", "across horizon", "across the LR"}
  rec = yaml.safe_load((tmp_path / "ho" / "recommended.yaml").read_text())["hyperparameters"]
  assert {"train.batch_size", "optimizer.lr", "optimizer.weight_decay",
          "optimizer.warmup_steps"} <= set(rec)
  for k in ("optimizer.lr", "optimizer.weight_decay"):
    lo, hi = rec[k]["ci95"]
    assert lo <= rec[k]["value"] <= hi and "rule" in rec[k]
  # The decay is the timescale rule turned into a coefficient at the predicted LR.
  steps = rec["train.steps"]["value"]
  assert rec["optimizer.weight_decay"]["value"] == pytest.approx(
      1 / (rec["optimizer.lr"]["value"] * rec["optimizer.weight_decay"]["timescale"] * steps))
  r = res["regret"]
  assert r["regret"] == pytest.approx(r["per_config"]["prediction"] - min(r["per_config"].values()),
                                      abs=1e-4)
  assert set(r["per_config"]) >= {"prediction", "lr x0.5", "lr x2", "no decay"}
  held = res["held_out"]
  assert held["width"] == max(step_law.PRESETS["tiny"]["widths"])
  for name, out in (("step_law", "sl"), ("wd_transfer", "wd"), ("held_out", "ho")):
    assert (tmp_path / out / f"{name}.md").stat().st_size > 500
  assert (tmp_path / "ho" / "held_out.png").stat().st_size > 5000
