"""The sweep engine: grids, groups, divergence isolation, resume, workers, devices."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from hptransfer import results as results_lib
from hptransfer import sweep as S

FAST = {"train.steps": 20, "train.log_every": 5, "train.eval_every": 10,
        "train.checkpoint_every": 5}


def test_grid_helpers():
  g = S.product(S.sweep("a", [1, 2]), S.sweep("b", np.array([3.0, 4.0])))
  assert g == [{"a": 1, "b": 3.0}, {"a": 1, "b": 4.0}, {"a": 2, "b": 3.0}, {"a": 2, "b": 4.0}]
  assert type(g[0]["b"]) is float   # numpy scalars become Python scalars
  z = S.zip(S.sweep("a", [1, 2]), S.sweep("b", [5, 6]))
  assert z == [{"a": 1, "b": 5}, {"a": 2, "b": 6}]
  with pytest.raises(S.SweepError, match="different lengths"):
    S.zip(S.sweep("a", [1, 2]), S.sweep("b", [5]))
  with pytest.raises(S.SweepError, match="'optimizer.lr'.*empty"):
    S.sweep("optimizer.lr", [])


@pytest.mark.parametrize("overrides,match", [
    ([{"optimizer.lrr": 0.1}], r"unknown key 'optimizer\.lrr'"),
    ([{"modle.width": 64}], r"unknown key 'modle\.width'"),
    ([{"model.width": "wide"}], r"model\.width='wide' has the wrong type"),
    ([{"model.width": 64.5}], r"model\.width=64\.5 has the wrong type"),
    ([{"parameterization.name": "mupp"}], r"parameterization\.name"),
    ([], "no trials"),
])
def test_bad_sweeps_fail_before_training(tmp_path, overrides, match):
  with pytest.raises(S.SweepError, match=match):
    S.run(tiny_config(**FAST), overrides, str(tmp_path / "w"), progress=False)
  assert not (tmp_path / "w").exists()


def test_grouping_by_compiled_shape():
  trials = S.expand(tiny_config(), S.product(
      S.sweep("parameterization.name", ["sp", "mup"]), S.sweep("model.width", [32, 64]),
      S.sweep("optimizer.lr", [1e-3, 1e-2]), S.sweep("seed", [0, 1])))
  groups = S.make_groups(trials)
  assert len(trials) == 16 and len(groups) == 2
  assert sorted(len(g.trials) for g in groups) == [8, 8]
  for g in groups:
    assert len({t.cfg.model.width for t in g.trials}) == 1
  assert len(S.make_groups(trials, max_group_size=3)) == 6
  # A group is cut to what the memory estimate allows.
  from hptransfer import build
  per_trial = {w: S.bytes_per_trial(build.build(t.cfg)) for t in trials
               for w in [t.cfg.model.width]}
  assert per_trial[64] > per_trial[32]
  budget = 3 * per_trial[64]
  cut = S.make_groups(trials, memory_bytes=budget)
  assert sum(len(g.trials) for g in cut) == 16
  for g in cut:
    assert len(g.trials) <= budget // per_trial[g.cfg.model.width]
  assert max(len(g.trials) for g in cut if g.cfg.model.width == 64) == 3


def _rows_by_lr(rows):
  return {r["optimizer.lr"]: r for r in rows}


def test_a_diverging_trial_does_not_touch_the_others(tmp_path):
  cfg = tiny_config(**FAST)
  lrs = [1e-3, 3e-3, 1e-2]
  with_bad = S.run(cfg, S.sweep("optimizer.lr", lrs + [1e4]), str(tmp_path / "a"),
                   progress=False)
  without = S.run(cfg, S.sweep("optimizer.lr", lrs), str(tmp_path / "b"), progress=False)
  assert {r["group_size"] for r in with_bad} == {4}
  a, b = _rows_by_lr(with_bad), _rows_by_lr(without)
  assert a[1e4]["diverged"] and a[1e4]["diverged_step"] >= 1
  assert a[1e4]["final_eval_loss"] is None and a[1e4]["steps"] < 20
  # D of a scaling fit: the planned budget, the same for the diverged trial;
  # tokens counts what was trained.
  per_step = cfg.train.batch_size * cfg.data.seq_len
  assert {r["token_budget"] for r in with_bad} == {cfg.train.steps * per_step}
  assert a[1e4]["tokens"] == a[1e4]["steps"] * per_step < a[1e4]["token_budget"]
  assert a[1e-3]["optimizer.weight_decay_mode"] == cfg.optimizer.weight_decay_mode
  for lr in lrs:
    assert not a[lr]["diverged"]
    for key in ("final_train_loss", "final_eval_loss", "best_eval_loss", "steps"):
      assert a[lr][key] == b[lr][key], (lr, key)
    ca = results_lib.load_curve(str(tmp_path / "a"), a[lr]["trial_id"])
    cb = results_lib.load_curve(str(tmp_path / "b"), b[lr]["trial_id"])
    assert ca["train"] == cb["train"] and ca["eval"] == cb["eval"]
  # The LRs matter: the trials are not all the same.
  assert len({a[lr]["final_eval_loss"] for lr in lrs}) == 3


def test_results_store_skips_torn_lines_and_loads_a_dataframe(tmp_path):
  results_lib.append(str(tmp_path), [{"trial_id": "a", "x": 1}, {"trial_id": "b", "x": 2}])
  results_lib.append(str(tmp_path), [{"trial_id": "a", "x": 3}])   # a rerun's duplicate
  with open(results_lib.results_path(str(tmp_path)), "a") as f:
    f.write('{"trial_id": "c", "x"')                                 # killed mid-write
  df = results_lib.load(str(tmp_path))
  assert list(df.trial_id) == ["a", "b"] and list(df.x) == [1, 2]


SWEEP_FILE = '''
from configs import transformer
from hptransfer.sweep import product, sweep

def get_config():
  c = transformer.get_config()
  c.model.width = 32
  c.model.head_dim = 16
  c.parameterization.base_width = 32
  c.data.name = "synthetic"
  c.data.vocab_size = 32
  c.data.seq_len = 16
  c.train.batch_size = 4
  c.train.steps = STEPS
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.eval_batches = 2
  c.train.checkpoint_every = 10
  return c

def get_sweep():
  return product(sweep("model.width", WIDTHS), sweep("optimizer.lr", [1e-3, 1e-2]),
                 sweep("seed", [0, 1]))
'''


def _sweep_cmd(sweep_file, workdir, *extra, group=4):
  return [sys.executable, "-m", "hptransfer.sweep", "--config", str(sweep_file),
          "--workdir", str(workdir), "--max_group_size", str(group), *extra]


def _write_sweep(tmp_path, steps, widths=(32, 48)):
  path = tmp_path / "tiny_sweep.py"
  path.write_text(SWEEP_FILE.replace("STEPS", str(steps)).replace("WIDTHS", str(list(widths))))
  return path


def _comparable(rows):
  keep = ("final_train_loss", "final_eval_loss", "best_eval_loss", "diverged", "steps")
  return {r["trial_id"]: tuple(r[k] for k in keep) for r in rows}


@pytest.mark.slow
def test_sigkill_and_rerun_gives_the_uninterrupted_rows(tmp_path):
  sweep_file = _write_sweep(tmp_path, 100)
  env = {**os.environ, "HPTRANSFER_JAX_CACHE": str(tmp_path / "cache")}
  full = tmp_path / "full"
  subprocess.run(_sweep_cmd(sweep_file, full), check=True, cwd=ROOT, env=env,
                 capture_output=True)
  reference = _comparable(results_lib.read_rows(str(full)))
  assert len(reference) == 8

  killed = tmp_path / "killed"
  rng = random.Random(1)
  for _ in range(3):
    proc = subprocess.Popen(_sweep_cmd(sweep_file, killed), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(5.0, 10.0))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
    proc.wait()
  subprocess.run(_sweep_cmd(sweep_file, killed), check=True, cwd=ROOT, env=env,
                 capture_output=True)
  rows = results_lib.read_rows(str(killed))
  assert _comparable(rows) == reference
  assert len(results_lib.load(str(killed))) == 8


@pytest.mark.slow
def test_two_workers_write_each_trial_once(tmp_path):
  sweep_file = _write_sweep(tmp_path, 20)
  env = {**os.environ, "HPTRANSFER_JAX_CACHE": str(tmp_path / "cache")}
  work = tmp_path / "shared"
  procs = [subprocess.Popen(_sweep_cmd(sweep_file, work, "--worker_index", str(i),
                                       "--num_workers", "2"),
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
           for i in range(2)]
  for p in procs:
    assert p.wait() == 0, p.stderr.read().decode()[-2000:]
  lines = open(results_lib.results_path(str(work))).read().splitlines()
  rows = [json.loads(l) for l in lines]
  assert len(rows) == 8 and len({r["trial_id"] for r in rows}) == 8
  assert {r["worker"] for r in rows} == {0, 1}
  single = tmp_path / "single"
  subprocess.run(_sweep_cmd(sweep_file, single), check=True, cwd=ROOT, env=env,
                 capture_output=True)
  assert _comparable(rows) == _comparable(results_lib.read_rows(str(single)))


@pytest.mark.slow
def test_trials_spread_over_four_devices(tmp_path):
  sweep_file = _write_sweep(tmp_path, 20, widths=(32,))
  env = {**os.environ, "HPTRANSFER_JAX_CACHE": "off",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  probe = subprocess.run([sys.executable, "-c", "import jax; print(len(jax.local_devices()))"],
                         env=env, capture_output=True, text=True)
  assert probe.stdout.strip() == "4"
  runs = {}
  for name, group, xla in (("trials", 4, env["XLA_FLAGS"]), ("batch", 2, env["XLA_FLAGS"]),
                           ("one", 4, "")):
    subprocess.run(_sweep_cmd(sweep_file, tmp_path / name, group=group), check=True,
                   cwd=ROOT, env={**env, "XLA_FLAGS": xla}, capture_output=True)
    rows = results_lib.read_rows(str(tmp_path / name))
    assert {r["sharding"] for r in rows} == {"none" if name == "one" else name}
    assert {r["devices"] for r in rows} == {1 if name == "one" else 4}
    runs[name] = _comparable(rows)
  # 4 trials in a group over 4 devices split the trials; 2 trials a group split
  # the batch (data parallel).  Both give the one-device numbers.
  for name in ("trials", "batch"):
    a, b = runs[name], runs["one"]
    assert a.keys() == b.keys() and len(a) == 4
    for tid in a:
      np.testing.assert_allclose(np.array(a[tid][:3], float), np.array(b[tid][:3], float),
                                 rtol=2e-5, err_msg=name)


def test_mapped_and_vmapped_groups_train_the_same_trials(tmp_path):
  """trial_loop='seq' (the CPU default), 'map' and 'vmap' train the same trials."""
  cfg = tiny_config(**FAST)
  lrs = [1e-3, 1e-2, 1e4]                      # the last one diverges in both
  rows = {loop: _rows_by_lr(S.run(cfg, S.sweep("optimizer.lr", lrs), str(tmp_path / loop),
                                  progress=False, trial_loop=loop))
          for loop in ("map", "vmap", "seq")}
  assert {r["trial_loop"] for r in rows["map"].values()} == {"map"}
  assert {r["trial_loop"] for r in rows["seq"].values()} == {"seq"}
  assert {r["trial_loop"] for r in rows["vmap"].values()} == {"vmap"}
  for lr in lrs[:2]:
    a, b, c = rows["map"][lr], rows["vmap"][lr], rows["seq"][lr]
    for key in ("final_train_loss", "final_eval_loss", "best_eval_loss"):
      assert a[key] == pytest.approx(b[key], rel=1e-5), (lr, key)
      assert a[key] == pytest.approx(c[key], rel=1e-5), (lr, key)
  assert all(rows[loop][1e4]["diverged"] for loop in rows)
  assert rows["map"][1e4]["diverged_step"] == rows["vmap"][1e4]["diverged_step"] \
      == rows["seq"][1e4]["diverged_step"]
  assert rows["map"][1e-3]["final_eval_loss"] != pytest.approx(rows["map"][1e-2]["final_eval_loss"])
  with pytest.raises(S.SweepError, match="trial_loop"):
    S.run(cfg, S.sweep("optimizer.lr", lrs), str(tmp_path / "bad"), trial_loop="scan")


def test_groups_that_differ_only_in_run_length_share_one_program(tmp_path):
  """The run length lives in the optimizer state: a horizon sweep compiles one
  step, and each group still trains with its own schedule and loss tail, the
  same as when its program is compiled for it alone."""
  cfg = tiny_config(**{**FAST, "optimizer.schedule": "cosine", "optimizer.warmup_steps": 2})
  grid = S.product(S.sweep("train.steps", [6, 12]), S.sweep("optimizer.lr", [1e-3, 1e-2]))
  S._COMPILED.clear()
  import pandas as pd
  shared = pd.DataFrame(S.run(cfg, grid, str(tmp_path / "shared"), progress=False))
  assert len(shared.group_id.unique()) == 2
  assert len(S._COMPILED) == 1
  alone = {}
  for steps in (6, 12):
    S._COMPILED.clear()
    rows = S.run(cfg, S.product(S.sweep("train.steps", [steps]),
                                S.sweep("optimizer.lr", [1e-3, 1e-2])),
                 str(tmp_path / f"alone{steps}"), progress=False)
    alone.update({(steps, r["optimizer.lr"]): r for r in rows})
  for r in shared.to_dict("records"):
    a = alone[(r["train.steps"], r["optimizer.lr"])]
    assert r["steps"] == r["train.steps"]
    for key in ("final_train_loss", "final_eval_loss"):
      assert r[key] == pytest.approx(a[key], rel=1e-6), (r["train.steps"], key)
  six = shared[shared["train.steps"] == 6].final_train_loss.to_numpy()
  twelve = shared[shared["train.steps"] == 12].final_train_loss.to_numpy()
  assert not np.allclose(six, twelve)
