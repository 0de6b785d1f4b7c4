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


def test_l2_decay_is_torch_sgds_weight_decay_through_the_momentum():
  """weight_decay_mode=l2 (microsoft/mup's MuSGD on torch.optim.SGD):
  buf = b1 buf + (g + wd wd_mult p); p -= lr lr_mult buf, by hand in float64."""
  mults = _ones(PARAMS)
  mults["lr_mult"] = {"w": jnp.asarray(2.0), "b": jnp.asarray(0.5)}
  mults["wd_mult"] = {"w": jnp.asarray(0.5), "b": jnp.asarray(2.0)}
  ours = _run(optim.build(_ocfg(name="sgd", b1=0.9, weight_decay=0.1, weight_decay_mode="l2"),
                          mults, 10))
  p = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  for t in range(5):
    g = {k: np.asarray(v, np.float64) for k, v in _grads(t).items()}
    for k in p:
      buf[k] = 0.9 * buf[k] + g[k] + 0.1 * float(mults["wd_mult"][k]) * p[k]
      p[k] = p[k] - 0.1 * float(mults["lr_mult"][k]) * buf[k]
  for k in p:
    np.testing.assert_allclose(ours[k], p[k], rtol=1e-5, atol=1e-6)
  # Not the coupled (SGDW) update, whose decay skips the momentum.
  coupled = _run(optim.build(_ocfg(name="sgd", b1=0.9, weight_decay=0.1), mults, 10))
  assert not np.allclose(coupled["w"], ours["w"], rtol=1e-4)
  # Adam takes L2 decay too (torch Adam's weight_decay); decoupled it refuses.
  optim.validate(_ocfg(name="adam", weight_decay=0.1, weight_decay_mode="l2"), 10)
  with pytest.raises(optim.OptimizerError, match="weight_decay_mode=l2"):
    optim.validate(_ocfg(name="adam", weight_decay=0.1), 10)


def test_l2_decays_every_leaf_at_one_over_its_lr_mult():
  """microsoft/mup's MuSGD divides an L2 weight_decay by the LR's width
  factor, on vectors too; coupled decay leaves vectors undecayed."""
  from conftest import tiny_config
  from hptransfer import build as build_lib
  def table(mode):
    return build_lib.build(tiny_config(**{"optimizer.name": "sgd", "model.width": 128,
                                          "optimizer.weight_decay_mode": mode})).table
  l2, coupled = table("l2"), table("coupled")
  for path, leaf in l2.items():
    assert leaf.wd_mult == pytest.approx(1.0 / leaf.lr_mult), path
    if len(leaf.shape) < 2:
      assert coupled[path].wd_mult == 0.0
  vec = [l for l in l2.values() if l.role == "vector"][0]
  assert vec.lr_mult == pytest.approx(4.0) and vec.wd_mult == pytest.approx(0.25)


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


def _params_like():
  return {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}


@pytest.mark.parametrize("name", optim.names())
def test_every_optimizer_keeps_its_numbers_in_its_state(name):
  """The contract that lets a sweep group vmap trials: an optimizer built
  with one trial's numbers, updating a state initialised with another's,
  steps exactly as the other's own optimizer would.  Every number a sweep may
  vary (lr, decay, schedule, the optimizer's own, per-leaf multipliers, run
  length) is perturbed."""
  spec = optim.get(name)
  a = _ocfg(name=name, lr=0.1, weight_decay=0.0 if name == "adam" else 0.1,
            schedule="cosine", warmup_steps=2, final_lr_ratio=0.1, b1=0.9, b2=0.99, eps=1e-8)
  b = _ocfg(name=name, lr=0.03, weight_decay=0.0 if name == "adam" else 0.4,
            schedule="cosine", warmup_steps=1, final_lr_ratio=0.5, b1=0.5, b2=0.9, eps=1e-3)
  mults_a = _ones(PARAMS)
  mults_b = {k: jax.tree_util.tree_map(lambda x: 2.0 * x, v) for k, v in mults_a.items()}
  # Muon's static routing: the matrix to Newton-Schulz, the vector to Adam.
  static = {"labels": {"w": "muon", "b": "adam"}} if spec.family == "muon" else {}
  tx_a = optim.build(a, {**mults_a, **static}, 10)
  tx_b = optim.build(b, {**mults_b, **static}, 7)
  # Initialised inside a vmap with b's numbers as traced inputs, as init_group does.
  hp_b = {k: jnp.asarray([v], jnp.float32) for k, v in optim.hparams(b).items()}
  mults_b1 = jax.tree_util.tree_map(lambda x: x[None], mults_b)
  init = jax.vmap(lambda p, hp, m, s: optim.build(a, {**m, **static}, s, hp).init(p))
  state = jax.tree_util.tree_map(lambda x: x[0], init(
      jax.tree_util.tree_map(lambda x: x[None], PARAMS), hp_b, mults_b1, jnp.asarray([7])))
  ref_state = tx_b.init(PARAMS)
  p_ours, p_ref = PARAMS, PARAMS
  for t in range(4):
    u, state = tx_a.update(_grads(t), state, p_ours)
    r, ref_state = tx_b.update(_grads(t), ref_state, p_ref)
    p_ours, p_ref = optax.apply_updates(p_ours, u), optax.apply_updates(p_ref, r)
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), p_ours, p_ref)
  # ... and b's numbers made a difference.
  p_a = _run(tx_a, 4)
  assert float(jnp.abs(p_a["w"] - p_ref["w"]).max()) > 1e-3
  # Every vmapped field is one the optimizer config has.
  assert set(optim.vmapped_fields(name)) <= set(optim.DEFAULTS)
  assert spec.family in optim.FAMILIES


def test_lion_is_optax_lion():
  ocfg = _ocfg(name="lion", lr=0.01, b1=0.9, b2=0.99, weight_decay=0.5)
  ours = _run(optim.build(ocfg, _ones(PARAMS), 10))
  ref = _run(optax.inject_hyperparams(optax.lion)(0.01, b1=0.9, b2=0.99, weight_decay=0.5))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, ref)
  # Sign updates: the first step moves every coordinate by lr (plus decay).
  tx = optim.build(_ocfg(name="lion", lr=0.01), _ones(PARAMS), 10)
  upd, _ = tx.update(_grads(0), tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(np.abs(upd["w"]), 0.01, rtol=1e-6)


def test_lion_takes_adams_width_rules():
  from conftest import tiny_config
  from hptransfer import build as build_lib
  rows = {o: {r["path"]: r for r in build_lib.build(tiny_config(**{
      "optimizer.name": o, "model.width": 128})).describe()} for o in ("adamw", "lion")}
  for path, r in rows["lion"].items():
    assert r["lr_mult"] == rows["adamw"][path]["lr_mult"], path
    assert r["eps_mult"] is None          # no epsilon
  assert rows["lion"]["block_0/attn/query/kernel"]["lr_mult"] == pytest.approx(0.25)


def test_the_config_file_writes_out_the_optimizer_defaults():
  from configs import transformer
  assert transformer.get_config().optimizer.to_dict() == optim.DEFAULTS


def test_optimizer_settings_are_checked_against_their_domains():
  for bad, match in ((dict(b1=1.0), r"optimizer.b1=1.0 must lie in \[0, 1\)"),
                     (dict(name="sgd", b1=-0.1), r"optimizer.b1=-0.1 \(SGD's momentum\)"),
                     (dict(eps=-1.0), r"optimizer.eps=-1.0 must be >= 0"),
                     (dict(final_lr_ratio=2.0), r"final_lr_ratio=2.0 must lie in \[0, 1\]"),
                     (dict(decay_fraction=0.0), r"decay_fraction=0.0 must lie in \(0, 1\]"),
                     (dict(grad_clip=-1.0), r"grad_clip=-1.0 must be >= 0"),
                     (dict(weight_decay_mode="L2"), r"weight_decay_mode='L2' is not one of")):
    with pytest.raises(optim.OptimizerError, match=match):
      optim.validate(_ocfg(**bad), 10)
