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
