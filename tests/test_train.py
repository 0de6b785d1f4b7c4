"""The training loop: resume after a kill, wider is better under muP, bad input."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from hptransfer import step as step_lib
from hptransfer import build as build_lib
from hptransfer import configlib
from hptransfer import train as train_lib


def _flags(overrides):
  return [f"--config.{k}={v}" for k, v in overrides.items()]


RESUME = {"model.width": 32, "model.head_dim": 16, "parameterization.base_width": 32,
          "data.name": "synthetic", "data.vocab_size": 32, "data.seq_len": 16,
          "train.batch_size": 4, "train.steps": 300, "train.checkpoint_every": 10,
          "train.eval_every": 100, "train.log_every": 10, "optimizer.lr": 0.01,
          "optimizer.schedule": "cosine", "optimizer.warmup_steps": 20}


def _train_cmd(workdir):
  return [sys.executable, "-m", "hptransfer.train", "--config",
          os.path.join(ROOT, "configs/transformer.py"), "--workdir", str(workdir)] + _flags(RESUME)


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_params(tmp_path):
  env = {**os.environ, "HPTRANSFER_JAX_CACHE": str(tmp_path / "cache")}
  full = tmp_path / "full"
  subprocess.run(_train_cmd(full), check=True, cwd=ROOT, env=env, capture_output=True)

  killed = tmp_path / "killed"
  rng = random.Random(0)
  ckpts = killed / "checkpoints"
  for attempt in range(2):   # kill twice at random moments, then finish
    proc = subprocess.Popen(_train_cmd(killed), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Wait until this attempt has written a new checkpoint, then a random delay.
    before = set(os.listdir(ckpts)) if ckpts.exists() else set()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      now = set(os.listdir(ckpts)) if ckpts.exists() else set()
      if {d for d in now - before if d.isdigit()}:
        break
      time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  steps_saved = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert steps_saved and steps_saved[-1] < RESUME["train.steps"]
  subprocess.run(_train_cmd(killed), check=True, cwd=ROOT, env=env, capture_output=True)

  cfg = tiny_config(**RESUME)
  a = train_lib.load_checkpoint(cfg, str(full))
  b = train_lib.load_checkpoint(cfg, str(killed))
  assert int(a["step"]) == int(b["step"]) == RESUME["train.steps"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
  # The metrics log was rewound to the checkpoint: every step appears once.
  steps = [json.loads(l)["step"] for l in open(killed / "metrics.jsonl")
           if "train_loss" in json.loads(l)]
  assert steps == sorted(set(steps)) == list(range(10, 301, 10))
  summary = json.load(open(killed / "summary.json"))
  assert summary["final_eval_loss"] == json.load(open(full / "summary.json"))["final_eval_loss"]


@pytest.mark.slow
def test_wider_is_better_under_mup(tmp_path):
  losses = {}
  for width in (32, 64, 128):
    cfg = tiny_config(**{"model.width": width, "model.head_dim": 16,
                         "parameterization.name": "mup",
                         "parameterization.base_width": 32,
                         "data.name": "stdlib", "data.seq_len": 64,
                         "train.batch_size": 16, "train.steps": 300,
                         "train.eval_every": 300, "train.eval_batches": 8,
                         "train.checkpoint_every": 300, "train.log_every": 50,
                         "train.log_leaf_rms": False, "optimizer.lr": 2.0 ** -7})
    summary = train_lib.train(cfg, str(tmp_path / str(width)), progress=False)
    losses[width] = summary["final_train_loss"]
  assert losses[32] > losses[64] > losses[128], losses


@pytest.mark.parametrize("overrides,field", [
    ({"parameterization.name": "mupp"}, "parameterization.name"),
    ({"model.width": 72, "model.head_dim": 16}, "model.width"),
    ({"parameterization.base_width": 128}, "parameterization.base_width"),
    ({"data.name": "tokens", "data.train_path": "/nonexistent/train.bin"}, "data.train_path"),
    ({"optimizer.name": "lamb"}, "optimizer.name"),
    ({"optimizer.schedule": "cosin"}, "optimizer.schedule"),
    ({"parameterization.alpha": 2.0}, "parameterization.alpha"),
    ({"optimizer.name": "adam", "optimizer.weight_decay": 0.1}, "optimizer.weight_decay"),
    ({"model.attention": "flash"}, "model.attention"),
    ({"model.attention": "cudnn"}, "model.attention"),      # needs a 16-bit dtype
    ({"model.attention": "blocked", "model.attention_block": 0}, "model.attention_block"),
])
def test_bad_config_names_the_field(overrides, field):
  cfg = tiny_config(**overrides)
  with pytest.raises(configlib.ConfigError, match=field.replace(".", r"\.")):
    build_lib.build(cfg)


def test_cli_reports_bad_config_without_traceback(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "hptransfer.train", "--config",
       os.path.join(ROOT, "configs/transformer.py"), "--workdir", str(tmp_path),
       "--config.parameterization.name=mupp"],
      cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 2
  assert "parameterization.name='mupp' is not one of sp, mup, ntk, mf" in out.stderr
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_train_writes_outputs_and_evaluates(tmp_path):
  cfg = tiny_config(**{"train.steps": 12, "train.eval_every": 6,
                       "train.checkpoint_every": 6, "train.log_every": 3})
  s = train_lib.train(cfg, str(tmp_path), progress=False)
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows if "eval_loss" in r] == [6, 12]
  assert [r["step"] for r in rows if "train_loss" in r] == [3, 6, 9, 12]
  assert any(k.startswith("rms/updates/block_0/attn/query") for k in rows[0])
  assert s["final_eval_loss"] == rows[-1]["eval_loss"] < np.log(32) + 0.5
  assert s["steps"] == 12 and not s["diverged"]
  assert s["tokens"] == 12 * 4 * 16
  assert json.load(open(tmp_path / "config.json"))["data_sha256"] == s["data_sha256"]


def test_divergence_is_recorded(tmp_path):
  cfg = tiny_config(**{"optimizer.name": "sgd", "optimizer.lr": 1e6,
                       "train.steps": 20})
  s = train_lib.train(cfg, str(tmp_path), progress=False)
  assert s["diverged"] and 1 <= s["diverged_step"] < 20


def test_model_options_train_in_bfloat16():
  """qk-norm, z-loss, LayerNorm with biases, bf16 compute: finite and close to fp32."""
  from hptransfer import data as data_lib
  from hptransfer import optim
  out = {}
  for dtype in ("float32", "bfloat16"):
    cfg = tiny_config(**{"model.qk_norm": True, "model.z_loss": 1e-2,
                         "model.norm": "layernorm", "model.use_bias": True,
                         "model.compute_dtype": dtype})
    built = build_lib.build(cfg)
    trees = built.leaf_trees()
    tx = optim.build(cfg.optimizer, trees, 10)
    state = step_lib.init_state(built, tx, 0)
    step = jax.jit(step_lib.make_train_step(built, tx, 1e-2))
    ds = data_lib.get_dataset(cfg.data)
    for t in range(5):
      state, m = step(state, built.consts(), ds.batch(0, t, 4, 16))
    out[dtype] = (float(m["loss"]), float(m["ce"]))
    assert state["params"]["readout"]["kernel"].dtype == np.float32
  loss, ce = out["float32"]
  assert loss > ce + 1e-3  # the z-loss term is there
  assert abs(out["bfloat16"][1] - ce) < 0.05
