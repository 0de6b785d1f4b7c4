"""u-muP: its absolute-scale table against hand-derived exponents, its
unit-scaled residual adds and activation, its coordinate check, and the knobs
it refuses."""
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from hptransfer import build as build_lib
from hptransfer import configlib
from hptransfer import coord_check
from hptransfer import grid
from hptransfer import models
from hptransfer import parameterization as P


def _built(width, opt="adamw", **kw):
  cfg = tiny_config(**{"parameterization.name": "umup", "optimizer.name": opt,
                       "model.width": width, "model.use_bias": True,
                       "model.qk_norm": True, "model.norm": "layernorm", **kw})
  return build_lib.build(cfg)


def expected(row, family, depth):
  """(init_std, forward_mult, lr_mult) from Blake et al.'s rules, written
  out in the leaf's own fans: unit init; dense layers / sqrt(fan_in); readout
  / fan_in; Adam LR eta / sqrt(fan_in), embedding eta / sqrt(fan_out),
  readout, biases and gains eta; SGD: biases and gains eta * fan_out; every
  leaf in a block x depth^-1/2."""
  shape, role, path = row["shape"], row["role"], row["path"]
  fan_in = int(np.prod(shape[:-1])) if len(shape) >= 2 else 1
  fan_out = shape[-1] if shape else 1
  sgd = family == "sgd"
  if path.endswith("embedding"):
    out = (1.0, 1.0, fan_out ** -0.5)
  elif role in ("hidden", "input"):
    out = (1.0, fan_in ** -0.5, fan_in ** -0.5)
  elif role == "output":
    out = (1.0, 1.0 / fan_in, 1.0)
  elif role == "vector":
    out = (0.0, 1.0, fan_out if sgd else 1.0)
  else:
    out = (0.0 if len(shape) < 2 else 1.0, 1.0, 1.0)
  if path.startswith("block_"):
    out = (out[0], out[1], out[2] * depth ** -0.5)
  return out


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
@pytest.mark.parametrize("width", [128, 256])
def test_describe_matches_u_mup_rules_at_two_widths(opt, width):
  depth = 4
  built = _built(width, opt, **{"model.depth": depth})
  roles = set()
  for row in built.describe():
    roles.add(row["role"])
    init, fwd, lr = expected(row, opt if opt == "sgd" else "adam", depth)
    assert row["init_std"] == pytest.approx(init, rel=1e-12), row
    assert row["forward_mult"] == pytest.approx(fwd, rel=1e-12), row
    assert row["lr_mult"] == pytest.approx(lr, rel=1e-12), row
  assert roles == set(P.ROLES)
  # The numbers themselves, at width 256, depth 4: a hidden 256x256 matrix
  # gets 1/16 forward and 1/16 * 1/2 LR; the token table 1/16 LR; the
  # readout 1/256 forward.
  if width == 256 and opt == "adamw":
    t = {r["path"]: r for r in built.describe()}
    assert t["block_0/attn/query/kernel"]["forward_mult"] == pytest.approx(1 / 16)
    assert t["block_0/attn/query/kernel"]["lr_mult"] == pytest.approx(1 / 32)
    assert t["tok_embed/embedding"]["lr_mult"] == pytest.approx(1 / 16)
    assert t["readout/kernel"]["forward_mult"] == pytest.approx(1 / 256)
    assert built.attn_scale == pytest.approx(1 / 16)     # attn_mult / head_dim


def test_u_mup_is_not_sp_at_the_base_shape():
  """Why test_at_base_shape_every_parameterization_is_sp leaves u-muP out:
  its rules are absolute (unit init at every width), so at the base width
  its table differs from SP's."""
  umup = {r["path"]: r for r in _built(32).describe()}
  cfg = tiny_config(**{"model.width": 32, "model.use_bias": True, "model.qk_norm": True,
                       "model.norm": "layernorm", "parameterization.name": "sp"})
  sp = {r["path"]: r for r in build_lib.build(cfg).describe()}
  q = "block_0/attn/query/kernel"
  assert sp[q]["init_std"] == pytest.approx(32 ** -0.5) and sp[q]["forward_mult"] == 1.0
  assert umup[q]["init_std"] == 1.0 and umup[q]["forward_mult"] == pytest.approx(32 ** -0.5)


def _final_weights(coeffs):
  """Each source's share of the stream's variance after the last branch:
  [embedding, branch 0, branch 1, ...]."""
  w = [1.0]
  for a, b in coeffs:
    w = [x * a * a for x in w] + [b * b]
  return np.array(w)


@pytest.mark.parametrize("depth", [2, 8])
@pytest.mark.parametrize("res,ratio", [(1.0, 1.0), (2.0, 0.5), (0.5, 3.0)])
def test_residual_adds_keep_unit_rms_and_give_each_branch_its_share(depth, res, ratio):
  k = P.Knobs(residual_mult=res, residual_attn_ratio=ratio)
  c = P.unit_residual(k, depth)
  assert c.shape == (2 * depth, 2)
  # a^2 + b^2 = 1: unit-RMS stream + independent unit-RMS branch stays unit.
  np.testing.assert_allclose((c ** 2).sum(axis=1), 1.0, rtol=1e-12)
  w = _final_weights(c)
  assert w.sum() == pytest.approx(1.0)
  emb, attn, mlp = w[0], w[1::2], w[2::2]
  # every attention branch weighs the same, every MLP branch the same
  np.testing.assert_allclose(attn, attn[0], rtol=1e-10)
  np.testing.assert_allclose(mlp, mlp[0], rtol=1e-10)
  # attention against MLP: ratio^2; their mean against the embedding: res^2
  assert attn.sum() / mlp.sum() == pytest.approx(ratio ** 2)
  assert (attn.sum() + mlp.sum()) / 2 / emb == pytest.approx(res ** 2)


def test_residual_branch_coefficients_fall_as_depth_to_the_minus_half():
  k = P.Knobs()
  b2, b32 = P.unit_residual(k, 2)[:, 1], P.unit_residual(k, 32)[:, 1]
  # both knobs at 1, the stream gathers weight depth (embedding) + 1 per
  # branch, so the last branch's b is sqrt(1 / (3 depth))
  assert b2[-1] == pytest.approx(math.sqrt(1 / 6)) and b32[-1] == pytest.approx(math.sqrt(1 / 96))
  assert b32.mean() / b2.mean() == pytest.approx(4.0 ** -1, rel=0.25)   # (32/2)^-1/2


@pytest.mark.parametrize("act", ["gelu", "relu", "silu", "tanh"])
@pytest.mark.parametrize("mult", [0.5, 1.0, 3.0])
def test_unit_activation_has_unit_rms_on_unit_gaussian_input(act, mult):
  fn = models.transformer.ACTIVATIONS[act]
  z = jax.random.normal(jax.random.key(0), (1_000_000,))
  y = models.unit_activation(fn, z, mult)
  assert float(jnp.sqrt(jnp.mean(y ** 2))) == pytest.approx(1.0, rel=5e-3)
  # and it is fn(mult x) up to one positive constant
  zz = jnp.abs(z[:100]) + 0.1      # (relu is 0 below 0)
  ratio = models.unit_activation(fn, zz, mult) / fn(mult * zz)
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
  if act == "relu":   # rms of relu(z) is 1/sqrt(2)
    assert float(ratio[0]) == pytest.approx(math.sqrt(2) / mult, rel=1e-3)


def test_unit_scaled_mlp_branch_has_unit_rms_at_init_at_every_width():
  """At init a u-muP MLP branch's output has RMS 1 at widths 64 and 512
  (unit init, dense / sqrt(fan_in), unit-scaled GELU); under SP the GELU
  halves it."""
  def mlp_rms(name, width):
    cfg = tiny_config(**{"parameterization.name": name, "model.width": width})
    b = build_lib.build(cfg)
    params = b.init(jax.random.key(0))
    x = b.task.inputs(b.task.batch(0, 0, 8))
    _, inter = b.apply(params, x, capture=True)
    return [float(jnp.sqrt(jnp.mean(v[0] ** 2)))
            for k, blk in inter.items() if k.startswith("block_") for v in [blk["mlp_out"]]]
  for width in (64, 512):
    for r in mlp_rms("umup", width):
      assert 0.85 <= r <= 1.15, (width, r)
  assert max(mlp_rms("sp", 512)) < 0.75


@pytest.mark.slow
def test_coordinate_check_under_u_mup_stays_flat_and_sp_grows():
  """The transformer, widths 64-512, 5 Adam steps, 2 seeds: under u-muP
  (eta 0.25) every attention and MLP output and the logits stay within 1.5x
  (measured 0.86-1.07; the first attention's 0.86 is u-muP's embedding LR
  rule, eta / sqrt(width): with muP's constant one it is 0.98); under SP they
  grow at least 4x (the hidden layers 35-150x)."""
  def run(name, lr):
    cfg = tiny_config(**{"parameterization.name": name, "parameterization.base_width": 64,
                         "optimizer.name": "adam", "optimizer.lr": lr,
                         "data.name": "stdlib", "data.seq_len": 32, "train.batch_size": 8})
    df = coord_check.coord_check(cfg, (64, 128, 256, 512), steps=5, seeds=(0, 1))
    return {layer: coord_check.growth(df, 5, layer)
            for layer in sorted(set(df.layer) - {"loss", "embed"})}
  umup, sp = run("umup", 0.25), run("sp", 0.02)
  assert len(umup) == 5, umup          # 2 x (attn_out, mlp_out) + logits
  for layer, g in umup.items():
    assert 1 / 1.5 <= g <= 1.5, (layer, umup)
  hidden = [g for layer, g in sp.items() if layer != "logits"]
  assert min(hidden) >= 4.0, sp


@pytest.mark.parametrize("field,value", [
    ("init_std", 2.0), ("embed_mult", 3.0), ("zero_init_readout", True),
    ("zero_init_query", True), ("alpha", 0.5), ("eps_rule", "width"), ("base_head_dim", 8)])
def test_u_mup_refuses_knobs_it_does_not_have(field, value):
  cfg = tiny_config(**{"parameterization.name": "umup", f"parameterization.{field}": value})
  with pytest.raises(configlib.ConfigError, match=rf"parameterization\.{field}=.*umup has no"):
    configlib.validate(cfg)


@pytest.mark.parametrize("field", P.UNIT_KNOBS)
def test_other_parameterizations_refuse_u_mups_knobs(field):
  cfg = tiny_config(**{"parameterization.name": "mup", f"parameterization.{field}": 2.0})
  with pytest.raises(configlib.ConfigError, match=rf"{field}=2.0 is a u-muP knob.*name=umup"):
    configlib.validate(cfg)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_u_mup_knobs_must_be_positive_and_finite(value):
  cfg = tiny_config(**{"parameterization.name": "umup", "parameterization.act_mult": value})
  with pytest.raises(configlib.ConfigError, match=r"parameterization\.act_mult"):
    configlib.validate(cfg)


def test_u_mup_with_muon_says_it_has_no_muon_rule():
  cfg = tiny_config(**{"parameterization.name": "umup", "optimizer.name": "muon"})
  with pytest.raises(P.ParameterizationError, match="umup.*has no Muon rule"):
    build_lib.build(cfg)


def test_u_mup_trials_group_apart_and_keep_old_trial_ids():
  mup = tiny_config(**{"parameterization.name": "mup"})
  umup = tiny_config(**{"parameterization.name": "umup"})
  sp = tiny_config(**{"parameterization.name": "sp"})
  assert grid.group_key(mup) == grid.group_key(sp) != grid.group_key(umup)
  # u-muP's knobs at their defaults leave a trial id as it was before them
  d = mup.to_dict()
  for k in P.UNIT_KNOBS:
    del d["parameterization"][k]
  import ml_collections
  assert grid.trial_id(ml_collections.ConfigDict(d)) == grid.trial_id(mup)
  # and a run stored before them resumes: its config does not "differ"
  assert configlib.differing_keys(d, mup.to_dict()) == []
  d["parameterization"]["act_mult"] = 2.0
  assert configlib.differing_keys(d, mup.to_dict()) == ["parameterization.act_mult"]
  umup.parameterization.act_mult = 2.0
  assert grid.trial_id(umup) != grid.trial_id(tiny_config(**{"parameterization.name": "umup"}))


def test_a_user_model_without_the_unit_ops_gets_the_table_and_a_warning():
  import hptransfer as hpt
  from test_api import X, make_model
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    p = hpt.parameterize(make_model, X, width=128, base_width=32, parameterization="umup")
  assert any("takes no act_mult / residual" in str(w.message) for w in caught), caught
  t = {r["path"]: r for r in p.describe()}
  assert t["block_0_fc1/kernel"]["init_std"] == 1.0
  assert t["block_0_fc1/kernel"]["forward_mult"] == pytest.approx(128 ** -0.5)
  assert "NOT unit-scaled" in p.header()
