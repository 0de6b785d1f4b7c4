"""Muon on hidden matrices, Adam elsewhere (hptransfer/optim/muon.py): its
width rules in describe, its orthogonalisation against a float64 reference,
its routing, its coordinate check, and its bad inputs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from hptransfer import build as build_lib
from hptransfer import configlib
from hptransfer import optim
from hptransfer import parameterization as P

HIDDEN = ("block_0/attn/query/kernel", "block_1/mlp/fc_in/kernel", "block_1/mlp/fc_out/kernel")


def _rows(opt, param, width, **kw):
  cfg = tiny_config(**{"optimizer.name": opt, "parameterization.name": param,
                       "model.width": width, **kw})
  return {r["path"]: r for r in build_lib.build(cfg).describe()}


@pytest.mark.parametrize("width", [128, 256])
def test_describe_gives_muons_width_rules(width):
  """Hand-derived, m = width / 32: RMS-matched Muon's spectral norm grows as
  sqrt(m), so muP divides the hidden LR by sqrt(m); spectral Muon needs no
  correction; SP corrects nothing.  Embeddings, readout and gains stay
  Adam's (muP: readout forward 1/m, LR 1), and Muon leaves have no epsilon."""
  m = width / 32
  for opt, hidden_lr in (("muon", m ** -0.5), ("muon_spectral", 1.0)):
    mup, sp = _rows(opt, "mup", width), _rows(opt, "sp", width)
    for path in HIDDEN:
      assert mup[path]["update"] == sp[path]["update"] == "muon", path
      assert mup[path]["lr_mult"] == pytest.approx(hidden_lr, rel=1e-12), (opt, path)
      assert sp[path]["lr_mult"] == 1.0
      assert mup[path]["wd_mult"] == pytest.approx(1 / hidden_lr)   # lr x wd width-free
      assert mup[path]["eps_mult"] is None
    for path in ("tok_embed/embedding", "readout/kernel", "final_norm/scale"):
      assert mup[path]["update"] == "adam" and mup[path]["eps_mult"] == 1.0
      assert mup[path]["lr_mult"] == 1.0           # muP's Adam rule for these roles
    assert mup["readout/kernel"]["forward_mult"] == pytest.approx(1 / m)
  # Against Adam under muP: the same rows except the hidden LRs.
  adam = _rows("adamw", "mup", width)
  assert adam["block_0/attn/query/kernel"]["lr_mult"] == pytest.approx(1 / m)


def _ns_float64(g, steps=5, coeffs=(3.4445, -4.7750, 2.0315), eps=1e-8):
  """Newton-Schulz's quintic iteration in float64 (Jordan et al.'s
  coefficients), on the wide orientation, as Muon defines it."""
  x = np.asarray(g, np.float64)
  tall = x.shape[0] > x.shape[1]
  if tall:
    x = x.T
  x = x / (np.linalg.norm(x) + eps)
  a, b, c = coeffs
  for _ in range(steps):
    s = x @ x.T
    x = a * x + (b * s + c * s @ s) @ x
  return x.T if tall else x


@pytest.mark.parametrize("shape", [(8, 8), (8, 24), (24, 8)])
def test_orthogonalisation_matches_a_float64_reference(shape):
  g = jax.random.normal(jax.random.key(0), shape) * jnp.logspace(-1, 1, shape[1])[None]
  # optax's Muon direction, first step: Nesterov momentum of one gradient is
  # a multiple of it, which the normalisation removes.
  from hptransfer.optim import muon
  tx = muon.orthogonalise()
  ours, _ = tx.update({"w": g}, tx.init({"w": g}))
  ours = ours["w"]
  ref = _ns_float64(np.asarray(g))
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=2e-4, atol=2e-5)
  # what it is for: singular values 15-1500x apart come out within 5x of
  # each other, none above 1.15 (the quintic's S' ~ U(0.5, 1.5), not exactly 1)
  sv_in = np.linalg.svd(np.asarray(g), compute_uv=False)
  sv = np.linalg.svd(np.asarray(ours), compute_uv=False)
  assert sv_in.max() / sv_in.min() > 15
  assert sv.max() < 1.15 and sv.max() / sv.min() < 5


def _step(opt, param="mup", width=128, **kw):
  cfg = tiny_config(**{"optimizer.name": opt, "parameterization.name": param,
                       "model.width": width, **kw})
  p = build_lib.build(cfg)
  params = p.init(jax.random.key(0))
  grads = jax.tree_util.tree_map(
      lambda x: jax.random.normal(jax.random.key(x.size), x.shape), params)
  tx = optim.build(cfg.optimizer, p.leaf_trees(), 10)
  upd, _ = tx.update(grads, tx.init(params), params)
  return p, params, grads, upd


def test_muon_routes_matrices_to_newton_schulz_and_the_rest_to_adam():
  lr = 2.0 ** -7
  p, params, grads, upd = _step("muon")
  _, _, _, upd_adam = _step("adamw")
  table = p.table
  for path, leaf in table.items():
    u = _get(upd, path)
    if leaf.update == "adam":       # exactly AdamW's update for these leaves
      np.testing.assert_allclose(np.asarray(u), np.asarray(_get(upd_adam, path)), rtol=1e-6)
    else:
      # the first step: Nesterov momentum of one gradient, orthogonalised,
      # x 0.2 sqrt(max fan), x lr x lr_mult
      g = np.asarray(_get(grads, path))
      ref = _ns_float64(g) * 0.2 * math.sqrt(max(g.shape))
      want = -lr * leaf.lr_mult * ref
      np.testing.assert_allclose(np.asarray(u), want, rtol=2e-3,
                                 atol=1e-3 * np.abs(want).max())
      rms = float(jnp.sqrt(jnp.mean(u ** 2))) / (lr * leaf.lr_mult)
      assert 0.12 < rms < 0.25, (path, rms)      # AdamW's update size
  assert {l.update for l in table.values()} == {"muon", "adam"}
  # spectral: x sqrt(fan_out / fan_in) instead
  p, _, grads, upd = _step("muon_spectral")
  g = np.asarray(grads["block_1"]["mlp"]["fc_out"]["kernel"])     # [4D, D]
  want = -lr * _ns_float64(g) * math.sqrt(g.shape[1] / g.shape[0])
  np.testing.assert_allclose(np.asarray(upd["block_1"]["mlp"]["fc_out"]["kernel"]), want,
                             rtol=2e-3, atol=1e-3 * np.abs(want).max())


def _get(tree, path):
  for k in path.split("/"):
    tree = tree[k]
  return tree


def test_a_hidden_leaf_that_is_not_a_matrix_goes_to_adam():
  """A leaf forced hidden by a role rule but with one dim cannot be
  orthogonalised: it routes to Adam, and describe says so."""
  rows = _rows("muon", "mup", 128, **{"model.use_bias": True,
                                      "parameterization.role_rules": ((r"fc_in/bias$", "hidden"),)})
  r = rows["block_0/mlp/fc_in/bias"]
  assert r["role"] == "hidden" and r["update"] == "adam" and r["eps_mult"] == 1.0
  assert rows["block_0/mlp/fc_in/kernel"]["update"] == "muon"


def test_a_sweep_group_vmaps_muon_trials():
  """Muon's LR and Adam's betas ride on the trial axis: a group of two LRs
  trains each as its own run does."""
  from hptransfer import grid, sweep
  base = tiny_config(**{"optimizer.name": "muon", "train.steps": 4, "train.eval_every": 4})
  trials = grid.expand(base, grid.sweep("optimizer.lr", [0.01, 0.03]))
  groups = sweep.make_groups(trials, 0, 0)
  assert len(groups) == 1 and len(groups[0].trials) == 2


@pytest.mark.parametrize("overrides,match", [
    ({"optimizer.muon_beta": 1.0}, "optimizer.muon_beta=1.0 must lie in"),
    ({"optimizer.ns_steps": 0}, "optimizer.ns_steps=0 must be an integer"),
    ({"parameterization.alpha": 0.5}, "depth rules for Muon"),
])
def test_bad_muon_settings_are_refused(overrides, match):
  cfg = tiny_config(**{"optimizer.name": "muon", **overrides})
  with pytest.raises((configlib.ConfigError, P.ParameterizationError), match=match):
    build_lib.build(cfg)


def test_a_parameterization_without_a_muon_rule_says_so():
  rules = dict(P.get("mup").rules)
  rules["hidden"] = P.Rule(init=(-0.5, 0.0), forward=(0.0, 0.0), lr_sgd=(0.0, 0.0),
                           lr_adam=(-1.0, 0.0))
  P.register(P.Parameterization(name="test_no_muon", rules=rules, attention="linear"))
  try:
    with pytest.raises(P.ParameterizationError, match="has no Muon rule for hidden leaves"):
      build_lib.build(tiny_config(**{"optimizer.name": "muon",
                                     "parameterization.name": "test_no_muon"}))
  finally:
    del P.REGISTRY["test_no_muon"]


def test_muon_without_the_table_says_how_to_build_it():
  ocfg = optim.section(name="muon")
  with pytest.raises(optim.OptimizerError, match="hptransfer.parameterize"):
    optim.build(ocfg, {k: {"w": jnp.ones(())} for k in ("lr_mult", "wd_mult", "eps_mult")}, 10)


def test_coordinate_check_under_mup_with_muon_stays_flat_and_sp_grows():
  """Widths 64-512 of the tests' user model: under muP with Muon every
  layer's mean |x| stays within 1.5x after 5 steps; under SP with Muon the
  logits grow at least 4x."""
  import hptransfer as hpt
  from hptransfer import coord_check
  from test_api import X, _batch, _ce, make_model

  def run(name):
    return hpt.coordinate_check(
        lambda w: hpt.parameterize(make_model, X, width=w, base_width=64, parameterization=name,
                                   optimizer="muon"),
        (64, 128, 256, 512), _batch, lambda b: b[0], _ce, lr=0.02, steps=5, seeds=(0,))
  sp, mup = run("sp"), run("mup")
  for layer in sorted(set(mup.layer) - {"loss"}):
    g = coord_check.growth(mup, 5, layer)
    assert 1 / 1.5 <= g <= 1.5, (layer, g)
  # (measured: 5.5x; SP-Muon's hidden layers stay near 1x over these 5
  # steps, its Adam-trained readout is what grows)
  assert coord_check.growth(sp, 5, "head") >= 4.0
