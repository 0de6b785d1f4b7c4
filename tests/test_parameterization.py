"""describe() against exponents derived by hand, role inference, depth rules."""
import math

import jax
import numpy as np
import pytest

from conftest import tiny_config
from hptransfer import build as build_lib
from hptransfer import parameterization as P

# Hand-derived per-role scalings as functions of the width multiplier m (every
# width-scaled axis grows by m, so hidden matrices have m_in = m_out = m).
# Values: (init_std relative to SP's base std, forward_mult, lr_mult).
# SP: N(0, 1/fan_in), global LR.
# muP (microsoft/mup): readout stored at base std and divided by m in the
#   forward pass; Adam LR 1/m on hidden matrices; SGD LR m on vector-like
#   leaves (input, biases, gains) and on the readout.
# NTK: stored at base std, 1/sqrt(m) in the forward pass, global LR.
# MF: hidden 1/sqrt(m) forward, readout 1/m; LRs that make it equal muP.


def expected(param, family, role, m):
  r = 1 / math.sqrt(m)
  if role == "scalar":
    return (1.0, 1.0, 1.0)
  if param == "sp":
    return {"input": (1, 1, 1), "hidden": (r, 1, 1), "output": (r, 1, 1),
            "vector": (None, 1, 1)}[role]
  if param == "ntk":
    return {"input": (1, 1, 1), "hidden": (1, r, 1), "output": (1, r, 1),
            "vector": (None, 1, 1)}[role]
  sgd = family == "sgd"
  if param == "mup":
    return {"input": (1, 1, m if sgd else 1),
            "hidden": (r, 1, 1 if sgd else 1 / m),
            "output": (1, 1 / m, m if sgd else 1),
            "vector": (None, 1, m if sgd else 1)}[role]
  if param == "mf":
    return {"input": (1, 1, m if sgd else 1),
            "hidden": (1, r, m if sgd else r),
            "output": (1, 1 / m, m if sgd else 1),
            "vector": (None, 1, m if sgd else 1)}[role]
  raise AssertionError(param)


def _table(param, opt, width, **kw):
  cfg = tiny_config(**{"parameterization.name": param, "optimizer.name": opt,
                       "model.width": width, "model.use_bias": True,
                       "model.qk_norm": True, "model.norm": "layernorm", **kw})
  return build_lib.build(cfg)


# Parameterizations whose rules are relative to a base shape (so that they are
# SP there).  u-muP's are absolute: tests/test_umup.py checks its table.
RELATIVE = tuple(n for n in P.names() if P.get(n).scale == "relative")


def test_every_parameterization_is_relative_but_u_mup():
  assert set(P.names()) - set(RELATIVE) == {"umup"}


@pytest.mark.parametrize("param", RELATIVE)
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
@pytest.mark.parametrize("width", [64, 256])
def test_describe_matches_hand_derived_exponents(param, opt, width):
  built = _table(param, opt, width)
  base = 32
  m = width / base
  roles_seen = set()
  for row in built.describe():
    role = row["role"]
    roles_seen.add(role)
    shape = row["shape"]
    init_rel, fwd, lr = expected(param, "sgd" if opt == "sgd" else "adam", role, m)
    # SP std at base shape: 1/sqrt(base fan-in); embedding tables 1.
    if len(shape) >= 2:
      lookup = row["path"].endswith("embedding")
      base_fan_in = 1 if lookup else np.prod(shape[:-1]) / (m if role in ("hidden", "output") else 1)
      assert row["init_std"] == pytest.approx(init_rel / math.sqrt(base_fan_in), rel=1e-12), row
    else:
      assert row["init_std"] == 0.0, row
    assert row["forward_mult"] == pytest.approx(fwd, rel=1e-12), row
    assert row["lr_mult"] == pytest.approx(lr, rel=1e-12), row
    # Decay is per-step width-independent (coupled: wd_mult = 1/lr_mult); no
    # decay on 1-D leaves.
    assert row["wd_mult"] == pytest.approx(1 / lr if len(shape) >= 2 else 0.0), row
    assert row["eps_mult"] == (None if opt == "sgd" else 1.0)
    assert row["fan_in_mult"] == pytest.approx(m if role in ("hidden", "output") else 1.0)
    assert row["fan_out_mult"] == pytest.approx(m if role in ("hidden", "input", "vector") else 1.0)
  assert roles_seen == set(P.ROLES)


def test_roles_of_the_transformer():
  roles = {r["path"]: r["role"] for r in _table("mup", "adamw", 64).describe()}
  assert roles["tok_embed/embedding"] == "input"
  assert roles["pos_embed/embedding"] == "input"
  assert roles["block_0/attn/query/kernel"] == "hidden"
  assert roles["block_1/mlp/fc_out/kernel"] == "hidden"
  assert roles["block_0/mlp/fc_in/bias"] == "vector"
  assert roles["block_0/norm1/scale"] == "vector"
  assert roles["block_0/attn/q_norm/scale"] == "scalar"   # head_dim is fixed
  assert roles["readout/kernel"] == "output"
  assert roles["readout/bias"] == "scalar"


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_depth_rules(alpha, opt):
  depth, base_depth = 8, 2
  d = depth / base_depth
  built = _table("mup", opt, 128, **{"model.depth": depth,
                                     "parameterization.base_depth": base_depth,
                                     "parameterization.alpha": alpha})
  width_only = _table("mup", opt, 128, **{"model.depth": depth,
                                          "parameterization.base_depth": depth})
  ref = {r["path"]: r for r in width_only.describe()}
  assert built.branch_mult == pytest.approx(d ** -alpha if alpha else 1.0)
  if alpha == 0:
    lr_factor, eps_factor = 1.0, 1.0
  elif opt == "sgd":
    lr_factor, eps_factor = d ** (2 * alpha - 1), 1.0
  else:
    lr_factor, eps_factor = d ** (alpha - 1), d ** -alpha
  if alpha == 0.5:   # Depth-muP: Adam LR 1/sqrt(L), SGD LR unchanged
    assert lr_factor == pytest.approx(1.0 if opt == "sgd" else d ** -0.5)
  if alpha == 1.0 and opt != "sgd":   # CompleteP: Adam LR unchanged
    assert lr_factor == pytest.approx(1.0)
  n_block = 0
  for row in built.describe():
    r0 = ref[row["path"]]
    in_block = row["path"].startswith("block_")
    n_block += in_block
    f = lr_factor if in_block else 1.0
    assert row["lr_mult"] == pytest.approx(r0["lr_mult"] * f), row
    assert row["init_std"] == r0["init_std"] and row["forward_mult"] == r0["forward_mult"]
    if opt != "sgd":
      assert row["eps_mult"] == pytest.approx(eps_factor if in_block else 1.0), row
  assert n_block > 0


def test_at_base_shape_every_parameterization_is_sp():
  rows = {p: _table(p, "adamw", 32).describe() for p in RELATIVE}
  for p in RELATIVE:
    assert rows[p] == rows["sp"], p


def test_attention_scale_1_over_d_under_mup():
  cfg = tiny_config(**{"model.head_dim": 32, "model.width": 128,
                       "parameterization.base_head_dim": 16,
                       "parameterization.attn_mult": 2.0})
  assert P.attention_scale(cfg.parameterization.name, P.Knobs.from_config(cfg.parameterization), 32) == pytest.approx(2.0 * 4 / 32)
  cfg.parameterization.name = "sp"
  assert P.attention_scale(cfg.parameterization.name, P.Knobs.from_config(cfg.parameterization), 32) == pytest.approx(2.0 / math.sqrt(32))


def test_knobs():
  b = _table("mup", "adamw", 128, **{"parameterization.output_mult": 3.0,
                                     "parameterization.embed_mult": 5.0,
                                     "parameterization.zero_init_readout": True,
                                     "parameterization.zero_init_query": True,
                                     "parameterization.init_std": 0.5})
  t = {r["path"]: r for r in b.describe()}
  assert t["readout/kernel"]["forward_mult"] == pytest.approx(3.0 / 4)
  assert t["tok_embed/embedding"]["forward_mult"] == 5.0
  assert t["readout/kernel"]["init_std"] == 0.0
  assert t["block_0/attn/query/kernel"]["init_std"] == 0.0
  assert t["block_0/attn/key/kernel"]["init_std"] == pytest.approx(0.5 / math.sqrt(32) / 2)
  params = b.init(jax.random.key(0))
  assert float(abs(params["readout"]["kernel"]).max()) == 0.0
  assert float(abs(params["block_1"]["attn"]["query"]["kernel"]).max()) == 0.0
  std = float(params["block_0"]["mlp"]["fc_in"]["kernel"].std())
  assert std == pytest.approx(0.5 / math.sqrt(128), rel=0.05)


def test_role_rules_override_and_errors():
  target = {"a/kernel": (8, 8), "b/kernel": (4, 8), "c/scale": (8,)}
  base = {"a/kernel": (2, 2), "b/kernel": (4, 2), "c/scale": (2,)}
  delta = {"a/kernel": (4, 4), "b/kernel": (4, 4), "c/scale": (4,)}
  assert P.infer_roles(target, base, delta) == {
      "a/kernel": "hidden", "b/kernel": "input", "c/scale": "vector"}
  assert P.infer_roles(target, base, delta, [(r"^b/", "hidden")])["b/kernel"] == "hidden"
  with pytest.raises(P.ParameterizationError, match="match no parameter leaf"):
    P.infer_roles(target, base, delta, [(r"^zzz", "hidden")])
  with pytest.raises(P.ParameterizationError, match="'a/kernel'.*different roles"):
    P.infer_roles(target, base, delta, [(r"kernel", "hidden"), (r"^a/", "output")])
  with pytest.raises(P.ParameterizationError, match="not one of"):
    P.infer_roles(target, base, delta, [(r"^a/", "matrix")])
  with pytest.raises(P.ParameterizationError, match="'d/kernel' is missing"):
    P.infer_roles({**target, "d/kernel": (8, 8)}, base, delta)
  with pytest.raises(P.ParameterizationError, match="'a/kernel' changes rank"):
    P.infer_roles(target, {**base, "a/kernel": (2,)}, delta)


def test_alpha_needs_residual_blocks():
  cfg = tiny_config("mlp", **{"parameterization.alpha": 0.5, "model.depth": 4})
  with pytest.raises(P.ParameterizationError, match="parameterization.alpha"):
    build_lib.build(cfg)
  cfg.model.residual = True
  assert build_lib.build(cfg).branch_mult == pytest.approx(0.5 ** 0.5)


@pytest.mark.parametrize("width", [64, 128])
def test_epsilon_rules_against_hand_derived_exponents(width):
  """none: epsilon unscaled (microsoft/mup); width: hidden matrices x 1/m_in;
  completep: every leaf x (width/base)^-1 (depth/base_depth)^-alpha."""
  def table(rule, **kw):
    return build_lib.build(tiny_config(**{"model.width": width, "parameterization.eps_rule": rule,
                                          **kw})).table
  m = width / 32                                   # tiny_config's base width is 32
  none, by_width = table("none"), table("width")
  assert {l.eps_mult for l in none.values()} == {1.0}
  for path, leaf in by_width.items():
    fan_in = math.prod(leaf.shape[:-1])
    want = (32 * (4 if "fc_out" in path else 1) / fan_in) if leaf.role == "hidden" else 1.0
    assert leaf.eps_mult == pytest.approx(want), path
  assert by_width["block_0/mlp/fc_out/kernel"].eps_mult == pytest.approx(1 / m)
  deep = {"model.depth": 4, "parameterization.base_depth": 2, "parameterization.alpha": 1.0}
  completep = table("completep", **deep)
  for path, leaf in completep.items():                     # in blocks or not
    assert leaf.eps_mult == pytest.approx(1 / m * 0.5), path
  # The rules change nothing else in the table.
  strip = lambda t: {p: (l.init_std, l.forward_mult, l.lr_mult, l.wd_mult) for p, l in t.items()}
  assert strip(by_width) == strip(none)
  assert strip(completep) == strip(table("none", **deep))


def test_an_epsilon_rule_reaches_the_updates():
  """With a large epsilon, the width rule changes the updates of hidden
  matrices and nothing else."""
  from hptransfer import optim
  ups = {}
  for rule in ("none", "width"):
    b = build_lib.build(tiny_config(**{"model.width": 128, "parameterization.eps_rule": rule,
                                       "optimizer.eps": 1e-2}))
    tx = optim.build(b.cfg.optimizer, b.leaf_trees(), 10)
    params = b.init(jax.random.key(0))
    grads = jax.tree_util.tree_map(lambda x: 1e-3 * jax.numpy.ones_like(x), params)
    u, _ = tx.update(grads, tx.init(params), params)
    ups[rule] = {P.path_str(k): np.asarray(v) for k, v in
                 jax.tree_util.tree_flatten_with_path(u)[0]}
  table = build_lib.build(tiny_config(**{"model.width": 128})).table
  for path, leaf in table.items():
    same = np.array_equal(ups["none"][path], ups["width"][path])
    assert same == (leaf.role != "hidden"), path


@pytest.mark.parametrize("overrides,match", [
    ({"parameterization.eps_rule": "sqrt"}, "parameterization.eps_rule"),
    ({"parameterization.eps_rule": "width", "optimizer.name": "sgd"}, "no epsilon"),
    ({"parameterization.eps_rule": "completep", "optimizer.name": "lion"}, "no epsilon"),
])
def test_bad_epsilon_rules_are_refused(overrides, match):
  from hptransfer import configlib
  with pytest.raises(configlib.ConfigError, match=match):
    configlib.validate(tiny_config(**overrides))


@pytest.mark.parametrize("param", ["mup", "umup"])
def test_embed_lr_mult_scales_the_tables_lr_and_nothing_else(param):
  plain = {r["path"]: r for r in _table(param, "adamw", 128).describe()}
  mult = {r["path"]: r for r in _table(param, "adamw", 128,
                                       **{"parameterization.embed_lr_mult": 4.0}).describe()}
  for path, r in mult.items():
    f = 4.0 if path.endswith("embed/embedding") else 1.0
    assert r["lr_mult"] == pytest.approx(plain[path]["lr_mult"] * f), path
    assert r["wd_mult"] == pytest.approx(plain[path]["wd_mult"] / f), path
    assert r["init_std"] == plain[path]["init_std"]


def test_leaf_trees_fields_values_and_fresh_arrays():
  b = build_lib.build(tiny_config())
  full = b.leaf_trees()
  part = b.leaf_trees(("init_std", "lr_mult"))
  assert set(part) == {"init_std", "lr_mult"}
  for f in part:
    a, c = jax.tree.leaves(full[f]), jax.tree.leaves(part[f])
    assert [x.dtype for x in a] == [np.float32] * len(a)
    np.testing.assert_array_equal(np.stack(a), np.stack(c))
  # each leaf is the table's number, as float32
  stds = {P.path_str(p): float(v) for p, v in jax.tree_util.tree_flatten_with_path(full["init_std"])[0]}
  assert stds == {k: float(np.float32(v.init_std)) for k, v in b.table.items()}
  # fresh buffers every call: a caller that donates one set keeps the other
  x, y = jax.tree.leaves(full["lr_mult"])[0], jax.tree.leaves(part["lr_mult"])[0]
  x.delete()
  assert float(y) == float(np.float32(next(iter(b.table.values())).lr_mult))
  with pytest.raises(ValueError, match="lr_multt"):
    b.leaf_trees(("lr_multt",))
