"""Bad input and faults: each one injected, then the documented outcome.

Bad input fails before any work with a message naming the field and the fix;
a fault (torn or foreign lines in the store, a damaged checkpoint, a second
process, a changed config on resume, a rerun of a finished run) loses nothing
already computed and never silently changes a result.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from hptransfer import build as build_lib
from hptransfer import checkpoint as ckpt
from hptransfer import configlib
from hptransfer import data as data_lib
from hptransfer import results as results_lib
from hptransfer import sweep as S
from hptransfer import train as train_lib

FAST = {"train.steps": 12, "train.log_every": 4, "train.eval_every": 12,
        "train.checkpoint_every": 4}


# ----------------------------------------------------------------------------
# Bad config values: every numeric field against its domain.


@pytest.mark.parametrize("overrides,match", [
    ({"optimizer.lr": float("inf")}, r"optimizer\.lr=inf must be a finite number"),
    ({"optimizer.lr": float("nan")}, r"optimizer\.lr=nan must be a finite number"),
    ({"optimizer.b1": 1.0}, r"optimizer\.b1=1\.0 must lie in \[0, 1\)"),
    ({"optimizer.b2": -0.5}, r"optimizer\.b2=-0\.5 must lie in \[0, 1\)"),
    ({"optimizer.eps": -1e-8}, r"optimizer\.eps=-1e-08 must be >= 0"),
    ({"optimizer.grad_clip": -1.0}, r"optimizer\.grad_clip=-1\.0 must be >= 0"),
    ({"optimizer.decay_fraction": 1.5}, r"optimizer\.decay_fraction=1\.5 must lie in \(0, 1\]"),
    ({"optimizer.final_lr_ratio": -0.1}, r"optimizer\.final_lr_ratio=-0\.1 must lie in \[0, 1\]"),
    ({"optimizer.weight_decay": float("inf")}, r"optimizer\.weight_decay=inf must be a finite"),
    ({"parameterization.init_std": float("nan")}, r"parameterization\.init_std=nan must be a finite"),
    ({"parameterization.output_mult": 0.0}, r"parameterization\.output_mult=0\.0 must be > 0"),
    ({"train.divergence_mult": 1.0}, r"train\.divergence_mult=1\.0 must be > 1"),
    ({"model.z_loss": -1.0}, r"model\.z_loss=-1\.0 must be >= 0"),
    ({"model.mlp_ratio": 0.0}, r"model\.mlp_ratio=0\.0 must be > 0"),
])
def test_bad_numbers_name_the_field(overrides, match):
  with pytest.raises(configlib.ConfigError, match=match):
    build_lib.build(tiny_config(**overrides))


def _token_cfg(tmp_path, train: bytes, val: bytes, vocab=32, dtype="uint16", seq=8):
  (tmp_path / "train.bin").write_bytes(train)
  (tmp_path / "val.bin").write_bytes(val)
  return tiny_config(**{"data.name": "tokens", "data.train_path": str(tmp_path / "train.bin"),
                        "data.val_path": str(tmp_path / "val.bin"), "data.vocab_size": vocab,
                        "data.token_dtype": dtype, "data.seq_len": seq})


def _tokens(ids):
  return np.asarray(ids, np.uint16).tobytes()


@pytest.mark.parametrize("train,val,match", [
    (b"", _tokens(range(30)), r"data\.train_path=.* is empty"),
    (_tokens(range(30)) + b"x", _tokens(range(30)), r"has 61 bytes, not a multiple of 2"),
    (_tokens([1, 2, 40] * 10), _tokens(range(30)), r"holds token id 40, not below data\.vocab_size=32"),
    (_tokens(range(30)), _tokens(range(5)), r"val split .* has 5 tokens, too few for data\.seq_len=8"),
])
def test_bad_token_files_fail_before_training(tmp_path, train, val, match):
  cfg = _token_cfg(tmp_path, train, val)
  with pytest.raises(data_lib.DataError, match=match):
    train_lib.train(cfg, str(tmp_path / "run"), progress=False)
  assert not (tmp_path / "run").exists()


def test_every_token_batch_is_checked_against_the_vocabulary():
  ds = data_lib.Dataset(name="tokens", vocab_size=10, sha256="", train=np.arange(100) % 12,
                        val=np.arange(100) % 10, check_ids=True)
  ds.batch(0, 0, 2, 4, "val")
  with pytest.raises(data_lib.DataError, match=r"drew token id 1[01], not below data\.vocab_size=10"):
    for step in range(20):
      ds.batch(0, step, 4, 8)


@pytest.mark.parametrize("grid,match", [
    ({"optimizer.lr": 0.1}, r"returned one dict.*wrap it as \[\{\.\.\.\}\]"),
    (["optimizer.lr"], r"item 0 is 'optimizer\.lr', not a \{dotted key: value\} dict"),
    (7, r"returned a int, not a list"),
])
def test_a_sweep_of_the_wrong_type_names_it(tmp_path, grid, match):
  with pytest.raises(S.SweepError, match=match):
    S.run(tiny_config(**FAST), grid, str(tmp_path / "w"), progress=False)
  assert not (tmp_path / "w").exists()


def test_cli_catches_the_sweeps_own_error_by_its_class_and_help_exits_0(tmp_path):
  path = tmp_path / "bad_sweep.py"
  path.write_text("from configs import transformer\n"
                  "def get_config():\n  return transformer.get_config()\n"
                  "def get_sweep():\n  return {'optimizer.lr': 0.1}\n")
  out = subprocess.run([sys.executable, "-m", "hptransfer.sweep", "--config", str(path),
                        "--workdir", str(tmp_path / "w")], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "HPTRANSFER_JAX_CACHE": "off"})
  assert out.returncode == 2 and "returned one dict" in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  for module in ("train", "sweep", "describe", "coord_check"):
    h = subprocess.run([sys.executable, "-m", f"hptransfer.{module}", "--help"], cwd=ROOT,
                       capture_output=True, text=True)
    assert h.returncode == 0 and "--config" in h.stdout, (module, h.stdout[-500:])


# ----------------------------------------------------------------------------
# The results store.


def test_an_append_after_a_torn_line_starts_on_a_fresh_one(tmp_path):
  results_lib.append(str(tmp_path), [{"trial_id": "a", "x": 1}])
  with open(results_lib.results_path(str(tmp_path)), "a") as f:
    f.write('{"trial_id": "b", "x"')                          # killed mid-write
  results_lib.append(str(tmp_path), [{"trial_id": "c", "x": 3}])
  said = []
  rows = results_lib.read_rows(str(tmp_path), report=said.append)
  assert [r["trial_id"] for r in rows] == ["a", "c"]          # c survives; b runs again
  assert len(said) == 1 and "skipped 1 line(s)" in said[0] and "line 2" in said[0]


def test_lines_that_are_not_trial_rows_are_skipped_and_reported(tmp_path):
  path = results_lib.results_path(str(tmp_path))
  os.makedirs(tmp_path, exist_ok=True)
  with open(path, "w") as f:
    f.write('[1, 2]\n"text"\n{"no_id": 1}\n{"trial_id": "a", "x": 1}\nnot json\n')
  said = []
  rows = results_lib.read_rows(str(tmp_path), report=said.append)
  assert [r["trial_id"] for r in rows] == ["a"]
  assert "skipped 4 line(s)" in said[0]
  assert list(results_lib.load(str(tmp_path)).trial_id) == ["a"]   # and load() still works


def test_rows_are_strict_json_with_the_reason_for_each_null(tmp_path):
  results_lib.append(str(tmp_path), [{"trial_id": "a", "final_train_loss": float("nan"),
                                      "curve": [1.0, float("inf")]}])
  line = open(results_lib.results_path(str(tmp_path))).read()

  def refuse(token):
    raise AssertionError(f"non-standard JSON constant {token}")
  row = json.loads(line, parse_constant=refuse)
  assert row["final_train_loss"] is None and row["curve"] == [1.0, None]
  assert row["nonfinite"] == {"final_train_loss": "nan", "curve[1]": "inf"}


# ----------------------------------------------------------------------------
# Checkpoints, locks, resumes.


class _Crash(Exception):
  pass


def _crash_after_save(monkeypatch, module, at_step):
  real = ckpt.save

  def save(mngr, step, state, curves=None):
    real(mngr, step, state, curves)
    if step == at_step:
      mngr.wait_until_finished()
      mngr.close()
      raise _Crash(step)
  monkeypatch.setattr(module.ckpt, "save", save)
  return real


def _damage(step_dir):
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\x00garbage")


def test_a_damaged_group_checkpoint_restarts_the_group_and_says_so(tmp_path, monkeypatch):
  cfg = tiny_config(**FAST)
  grid = S.sweep("optimizer.lr", [1e-3, 1e-2])
  reference = {r["optimizer.lr"]: r for r in S.run(cfg, grid, str(tmp_path / "ref"),
                                                   progress=False)}
  real = _crash_after_save(monkeypatch, S, 8)
  with pytest.raises(_Crash):
    S.run(cfg, grid, str(tmp_path / "w"), progress=False)
  monkeypatch.setattr(S.ckpt, "save", real)
  gdir = next((tmp_path / "w" / "groups").glob("*/checkpoints"))
  _damage(gdir / "8")
  said = []
  rows = {r["optimizer.lr"]: r for r in S.run(cfg, grid, str(tmp_path / "w"), progress=False,
                                              log=said.append)}
  assert any("step 8" in m and "cannot be restored" in m for m in said), said
  assert any("starting from step 0" in m for m in said), said
  for lr, r in reference.items():
    assert rows[lr]["final_train_loss"] == r["final_train_loss"]


def test_a_damaged_run_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch, capsys):
  cfg = tiny_config(**FAST)
  ref = train_lib.train(cfg, str(tmp_path / "ref"), progress=False)
  real = _crash_after_save(monkeypatch, train_lib, 8)
  with pytest.raises(_Crash):
    train_lib.train(cfg, str(tmp_path / "w"), progress=False)
  monkeypatch.setattr(train_lib.ckpt, "save", real)
  _damage(tmp_path / "w" / "checkpoints" / "8")
  s = train_lib.train(cfg, str(tmp_path / "w"), progress=False)
  err = capsys.readouterr().err
  assert "step 8" in err and "resumed from the checkpoint at step 4" in err, err
  assert s["final_train_loss"] == ref["final_train_loss"]
  assert s["final_eval_loss"] == ref["final_eval_loss"]


def test_the_final_loss_tail_survives_a_crash_inside_it(tmp_path, monkeypatch):
  cfg = tiny_config(**{**FAST, "train.steps": 30, "train.checkpoint_every": 4,
                       "train.eval_every": 30})
  ref = train_lib.train(cfg, str(tmp_path / "ref"), progress=False)
  real = _crash_after_save(monkeypatch, train_lib, 28)   # the tail is steps 27..29
  with pytest.raises(_Crash):
    train_lib.train(cfg, str(tmp_path / "w"), progress=False)
  monkeypatch.setattr(train_lib.ckpt, "save", real)
  s = train_lib.train(cfg, str(tmp_path / "w"), progress=False)
  assert s["final_train_loss"] == ref["final_train_loss"]


def test_a_group_another_process_holds_is_left_to_it(tmp_path):
  cfg = tiny_config(**FAST)
  grid = S.sweep("optimizer.lr", [1e-3, 1e-2])
  gid = S.make_groups(S.expand(cfg, grid))[0].id
  said = []
  with S.group_lock(str(tmp_path), gid) as held:
    assert held
    assert S.run(cfg, grid, str(tmp_path), progress=False, log=said.append) == []
  assert any("being trained by another process" in m and gid in m for m in said), said
  assert not os.path.exists(results_lib.results_path(str(tmp_path)))
  assert len(S.run(cfg, grid, str(tmp_path), progress=False)) == 2     # released: it runs


def test_a_resume_with_another_config_is_refused_and_names_the_keys(tmp_path, monkeypatch):
  cfg = tiny_config(**FAST)
  real = _crash_after_save(monkeypatch, train_lib, 4)
  with pytest.raises(_Crash):
    train_lib.train(cfg, str(tmp_path), progress=False)
  monkeypatch.setattr(train_lib.ckpt, "save", real)
  stored = (tmp_path / "config.json").read_text()
  other = tiny_config(**{**FAST, "optimizer.lr": 0.5, "model.width": 96})
  with pytest.raises(configlib.ConfigError,
                     match=r"model\.width: 64 -> 96, optimizer\.lr: .* -> 0\.5.*new --workdir"):
    train_lib.train(other, str(tmp_path), progress=False)
  assert (tmp_path / "config.json").read_text() == stored     # nothing rewritten
  # The run length may change: the run is extended.
  longer = tiny_config(**{**FAST, "train.steps": 16})
  s = train_lib.train(longer, str(tmp_path), progress=False)
  assert s["steps"] == 16 and s["final_train_loss"] is not None


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
  cfg = tiny_config(**FAST)
  first = train_lib.train(cfg, str(tmp_path), progress=False)
  before = {n: (tmp_path / n).read_bytes() for n in ("summary.json", "metrics.jsonl",
                                                     "config.json")}
  again = train_lib.train(cfg, str(tmp_path), progress=False)
  assert again == first
  for n, b in before.items():
    assert (tmp_path / n).read_bytes() == b, n
