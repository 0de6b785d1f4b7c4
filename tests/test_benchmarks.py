"""The A/B variants of benchmarks/ab_step.py compute the step they claim to."""
import contextlib
import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import ab_step  # noqa: E402
import train_step  # noqa: E402


def _first_step(patch):
  args = train_step.step_args(width=128, depth=1, batch=2, seq=32, head_dim=16)
  with patch():
    step, _, _ = train_step.jax_step(args)
    out = step()          # traced and compiled here, inside the patch
  return float(out["loss"]), float(out["grad_norm"])


def test_step_variants_train_the_same_model():
  """A variant that is timed as 'the same step written differently' must give
  the same loss and gradients; one that changes the model (no forward
  multipliers, which muP at twice the base width has) must not, or the check
  could not tell."""
  base = _first_step(contextlib.nullcontext)
  for name in ("rms_vjp", "rms_plain", "fused_qkv", "blas_callback"):
    loss, gnorm = _first_step(ab_step.VARIANTS[name][0])
    np.testing.assert_allclose(loss, base[0], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(gnorm, base[1], rtol=1e-4, err_msg=name)
  changed = _first_step(ab_step.VARIANTS["no_mults"][0])
  assert abs(changed[1] - base[1]) > 1e-3 * base[1]


def test_blas_ffi_variant_trains_the_same_model():
  """The custom call (C++, built here with g++) gets every transpose right."""
  try:
    ab_step.build_blas_ffi()
  except RuntimeError as e:   # no g++ or no numpy OpenBLAS on this machine
    pytest.skip(str(e))
  base = _first_step(contextlib.nullcontext)
  loss, gnorm = _first_step(ab_step.VARIANTS["blas_ffi"][0])
  np.testing.assert_allclose(loss, base[0], rtol=1e-5)
  np.testing.assert_allclose(gnorm, base[1], rtol=1e-4)


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
