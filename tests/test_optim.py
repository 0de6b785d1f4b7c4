"""Optimizers and schedules against optax and hand formulas."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hptransfer import optim


def _ocfg(**kw):
  c = ml_collections.ConfigDict(dict(
      name="adamw", lr=0.1, weight_decay=0.0, weight_decay_mode="coupled", b1=0.9,
      b2=0.99, eps=1e-8, nesterov=False, grad_clip=0.0, schedule="constant",
      warmup_steps=0, decay_fraction=0.2, final_lr_ratio=0.0))
  c.update(kw)
  return c


def _ones(tree):
  return {k: jax.tree_util.tree_map(jnp.ones_like, tree)
          for k in ("lr_mult", "wd_mult", "eps_mult")}


PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.arange(4.0)}


def _grads(t):
  return jax.tree_util.tree_map(lambda p: jnp.sin(p * (t + 1)) + 0.1 * t, PARAMS)


def _run(tx, n=5):
  params, state = PARAMS, tx.init(PARAMS)
  for t in range(n):
    upd, state = tx.update(_grads(t), state, params)
    params = optax.apply_updates(params, upd)
  return params


def test_adamw_matches_optax():
  ocfg = _ocfg(weight_decay=0.1)
  ours = _run(optim.build(ocfg, _ones(PARAMS), 10))
  # optax's AdamW with its numbers in the state, as ours keeps them (float32
  # betas: 1 - b1 is rounded in float32, not in Python's float64) ...
  ref = _run(optax.inject_hyperparams(optax.adamw)(0.1, b1=0.9, b2=0.99, eps=1e-8,
                                                   weight_decay=0.1))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, ref)
  # ... and plain optax.adamw, to that rounding.
  ref = _run(optax.adamw(0.1, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), ours, ref)


def test_sgd_momentum_matches_optax():
  ours = _run(optim.build(_ocfg(name="sgd", b1=0.9, nesterov=True), _ones(PARAMS), 10))
  ref = _run(optax.sgd(0.1, momentum=0.9, nesterov=True))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, ref)


def test_per_leaf_multipliers_and_decay_modes():
  mults = _ones(PARAMS)
  mults["lr_mult"] = {"w": jnp.asarray(0.25), "b": jnp.asarray(1.0)}
  mults["wd_mult"] = {"w": jnp.asarray(4.0), "b": jnp.asarray(0.0)}
  g = _grads(0)
  for mode in ("coupled", "independent"):
    tx = optim.build(_ocfg(name="sgd", b1=0.0, weight_decay=0.5,
                           weight_decay_mode=mode), mults, 10)
    upd, _ = tx.update(g, tx.init(PARAMS), PARAMS)
    # coupled: -lr*lr_mult*(g + wd*wd_mult*p); independent: -lr*lr_mult*g - wd*wd_mult*p
    decay_w = (0.1 * 0.25 * 0.5 * 4.0) if mode == "coupled" else 0.5 * 4.0
    np.testing.assert_allclose(upd["w"], -0.1 * 0.25 * g["w"] - decay_w * PARAMS["w"], rtol=1e-6)
    np.testing.assert_allclose(upd["b"], -0.1 * g["b"], rtol=1e-6)


def test_adam_epsilon_multiplier():
  mults = _ones(PARAMS)
  mults["eps_mult"] = {"w": jnp.asarray(1e6), "b": jnp.asarray(1.0)}
  tx = optim.build(_ocfg(eps=1e-2), mults, 10)
  upd, _ = tx.update(_grads(0), tx.init(PARAMS), PARAMS)
  g = _grads(0)
  np.testing.assert_allclose(upd["w"], -0.1 * g["w"] / (jnp.abs(g["w"]) + 1e4), rtol=1e-5)
  np.testing.assert_allclose(upd["b"], -0.1 * g["b"] / (jnp.abs(g["b"]) + 1e-2), rtol=1e-5)


def test_adam_atan2_is_bounded_and_scale_invariant():
  tx = optim.build(_ocfg(name="adam_atan2"), _ones(PARAMS), 10)
  g = _grads(0)
  u1, _ = tx.update(g, tx.init(PARAMS), PARAMS)
  u2, _ = tx.update(jax.tree_util.tree_map(lambda x: 1e-12 * x, g), tx.init(PARAMS), PARAMS)
  # First step: m_hat = g, sqrt(v_hat) = |g| -> atan2 = +-pi/4 -> +-1 after 4/pi.
  np.testing.assert_allclose(jnp.abs(u1["w"]), 0.1, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), u1, u2)


@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "wsd"])
def test_schedules(name):
  s = optim.schedule(_ocfg(schedule=name, warmup_steps=10, final_lr_ratio=0.1,
                           decay_fraction=0.25), 100)
  v = np.array([float(s(t)) for t in range(101)])
  np.testing.assert_allclose(v[:11], np.arange(11) / 10, atol=1e-6)   # warmup
  if name == "constant":
    np.testing.assert_allclose(v[10:], 1.0)
  elif name == "cosine":
    assert v[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), abs=1e-6)
    assert v[100] == pytest.approx(0.1, abs=1e-6)
  elif name == "linear":
    assert v[55] == pytest.approx(1 - 0.9 * 0.5, abs=1e-6)
    assert v[100] == pytest.approx(0.1, abs=1e-6)
  else:  # warmup-stable-decay: flat until step 75, linear to 0.1 at 100
    np.testing.assert_allclose(v[10:76], 1.0)
    assert v[88] == pytest.approx(1 - 0.9 * 13 / 25, abs=1e-6)
    assert v[100] == pytest.approx(0.1, abs=1e-6)


def test_grad_clip():
  tx = optim.build(_ocfg(name="sgd", b1=0.0, grad_clip=1e-3), _ones(PARAMS), 10)
  upd, _ = tx.update(_grads(0), tx.init(PARAMS), PARAMS)
  assert float(optax.tree.norm(upd)) == pytest.approx(0.1 * 1e-3, rel=1e-5)


def _optax_schedule(ocfg, total):
  """The schedules as optax writes them, with the run length a Python number."""
  w, end = ocfg.warmup_steps, ocfg.final_lr_ratio
  rest = max(total - w, 1)
  warm = optax.linear_schedule(0.0, 1.0, w)
  if ocfg.schedule == "constant":
    return optax.join_schedules([warm, optax.constant_schedule(1.0)], [w])
  if ocfg.schedule == "cosine":
    return optax.join_schedules([warm, optax.cosine_decay_schedule(1.0, rest, alpha=end)], [w])
  if ocfg.schedule == "linear":
    return optax.join_schedules([warm, optax.linear_schedule(1.0, end, rest)], [w])
  decay = max(int(round(ocfg.decay_fraction * total)), 1)
  return optax.join_schedules(
      [warm, optax.constant_schedule(1.0), optax.linear_schedule(1.0, end, decay)],
      [w, max(total - decay, w)])


@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "wsd"])
@pytest.mark.parametrize("warmup", [0, 7])
def test_schedules_match_optax_with_the_run_length_traced(name, warmup):
  """schedule_factor gives optax's values, also when the run length is a
  traced input of one compiled function (how runs of different lengths share
  a program)."""
  ocfg = _ocfg(schedule=name, warmup_steps=warmup, final_lr_ratio=0.1, decay_fraction=0.3)
  f = jax.jit(lambda ts, n: jax.vmap(lambda t: optim.schedule_factor(ocfg, t, n))(ts))
  ts = jnp.arange(340)
  for total in (5, 40, 333):
    ours = np.asarray(f(ts, jnp.int32(total)))[:total + 3]
    ref = np.asarray([float(_optax_schedule(ocfg, total)(t)) for t in range(total + 3)])
    np.testing.assert_allclose(ours, ref, atol=2e-6, err_msg=f"{name} total={total}")
  assert f._cache_size() == 1          # one program for every run length
