"""The benchmark scripts time the steps they claim to."""
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import train_step  # noqa: E402


def test_grads_only_step_computes_gradients_and_updates_nothing():
  """``train_step.py --grads_only`` times the loss and gradients alone: its
  state must not move (the normal step's loss does), and its gradient norm is
  the one the training step reports."""
  args = train_step.step_args(width=64, depth=1, batch=2, seq=32, head_dim=16,
                              grads_only=True)
  grads_step, _, _ = train_step.jax_step(args)
  first, second = grads_step(), grads_step()
  assert float(first["loss"]) == float(second["loss"])
  args.grads_only = False
  train, _, _ = train_step.jax_step(args)
  t1, t2 = train(), train()
  np.testing.assert_allclose(float(t1["loss"]), float(first["loss"]), rtol=1e-6)
  assert float(t2["loss"]) < float(t1["loss"])
  gnorm = np.sqrt(sum(float(np.sum(np.square(g)))
                      for g in jax.tree_util.tree_leaves(first["grads"])))
  np.testing.assert_allclose(gnorm, float(t1["grad_norm"]), rtol=1e-5)


def test_vmapped_table_row_steps_every_trial():
  """``--vmap K`` times the sweep engine's group step: K trials, each at its
  own LR, from one program."""
  args = train_step.step_args(width=32, depth=1, batch=2, seq=16, head_dim=16, vmap=3)
  step, flops, _ = train_step.jax_step(args)
  m1, m2 = step(), step()
  assert np.asarray(m1["loss"]).shape == (3,)
  moved = np.asarray(m1["loss"]) - np.asarray(m2["loss"])
  assert len(set(np.round(moved, 6))) == 3          # three LRs, three different steps


def test_plain_jax_anchor_trains_the_same_shape(tmp_path):
  """``mesh_step.py --plain``: the plain JAX step is a real training step of
  the same model shape (its loss starts near ln 256 and falls), and the row
  compares it with the project's step."""
  import json
  import mesh_step
  args = mesh_step.parser().parse_args(["--width", "32", "--depth", "1", "--batch", "4",
                                        "--seq", "16", "--head_dim", "16"])
  plain = mesh_step.plain_step(args)
  losses = [float(plain()) for _ in range(6)]
  assert abs(losses[0] - np.log(256)) < 1.0
  assert losses[-1] < losses[0] - 0.05
  out = tmp_path / "row.json"
  mesh_step.main(["--plain", "--width", "32", "--depth", "1", "--batch", "4", "--seq", "16",
                  "--head_dim", "16", "--steps", "3", "--warmup", "1", "--out", str(out)])
  row = json.load(open(out))["rows"][0]
  assert row["step_ms"] > 0 and row["plain_step_ms"] > 0
  lo, hi = row["vs_plain_quartiles"]
  assert lo <= row["vs_plain"] <= hi


def test_study_arm_splits_its_wall_and_ratios_pair_repeats():
  """``study.py``'s hptransfer arm trains every trial of the study through
  the sweep (2 widths x SP/muP: two groups), and its fixed and per-step parts
  add up to its wall; the ratios pair arms within a repeat."""
  import study
  args = study.parser().parse_args(["--widths", "32,64", "--lrs", "1", "--steps", "4"])
  cache = jax.config.jax_enable_compilation_cache
  try:
    out = study.arm_hptransfer(args, bf16=False)
  finally:                      # the arm turns the cache off for its process
    jax.config.update("jax_enable_compilation_cache", cache)
  assert out["trials"] == 4 and len(out["groups"]) == 2
  assert out["per_step_s"] > 0
  assert abs(out["fixed_s"] + out["per_step_s"] - out["wall_s"]) < 1e-9
  assert all(g["compiled_ahead"] for g in out["groups"])
  rows = [{"arm": "hptransfer", "repeat": 0, "wall_s": 10.0, "fixed_s": 1, "per_step_s": 9},
          {"arm": "torch_eager", "repeat": 0, "wall_s": 15.0, "fixed_s": 1, "per_step_s": 14},
          {"arm": "hptransfer", "repeat": 1, "wall_s": 20.0, "fixed_s": 1, "per_step_s": 19},
          {"arm": "torch_eager", "repeat": 1, "wall_s": 20.0, "fixed_s": 1, "per_step_s": 19}]
  r = study.summarize(rows, ["hptransfer", "torch_eager"])["ratios"]["torch_eager/hptransfer"]
  assert r["repeats"] == [1.5, 1.0] and r["median"] == 1.25 and r["min"] == 1.0
  # Every hptransfer arm asked for is a denominator (the no-checkpoint arm too).
  rows.append({"arm": "hptransfer_no_ckpt", "repeat": 1, "wall_s": 16.0, "fixed_s": 1,
               "per_step_s": 15})
  ratios = study.summarize(rows, ["hptransfer", "torch_eager", "hptransfer_no_ckpt"])["ratios"]
  assert ratios["torch_eager/hptransfer_no_ckpt"]["repeats"] == [1.25]
  assert "torch_compile/hptransfer" not in ratios
