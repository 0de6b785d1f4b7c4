"""The public API on a model that is not in the package.

``PatchNet`` below is what a user writes: plain Flax, a patch embedding, two
residual blocks, a 10-class readout.  It knows nothing of muP except the one
knob its residual branches use (``branch_mult``).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hptransfer as hpt
from hptransfer import coord_check


class PatchNet(nn.Module):
  width: int
  num_classes: int = 10
  patch: int = 2

  @nn.compact
  def __call__(self, images, branch_mult=1.0):
    B, H, W, C = images.shape
    p = self.patch
    x = images.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(B, (H // p) * (W // p), p * p * C)
    x = nn.Dense(self.width, name="patch_embed")(x)
    for i in range(2):
      h = nn.LayerNorm(name=f"block_{i}_norm")(x)
      h = nn.Dense(2 * self.width, name=f"block_{i}_fc1")(h)
      h = nn.Dense(self.width, name=f"block_{i}_fc2")(nn.gelu(h))
      x = x + branch_mult * h
    return nn.Dense(self.num_classes, name="head")(x.mean(axis=1))


def make_model(width):
  return PatchNet(width=width)


X = jnp.zeros((1, 8, 8, 1))


def _batch(seed, t, B=16):
  rng = np.random.default_rng([seed, t])
  return (jnp.asarray(rng.normal(size=(B, 8, 8, 1)), jnp.float32),
          jnp.asarray(rng.integers(0, 10, B), jnp.int32))


def _ce(logits, batch):
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()


def _train(p, tx, steps=3):
  params = p.init(jax.random.key(0))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch):
    loss, g = jax.value_and_grad(lambda q: _ce(p.apply(q, batch[0]), batch))(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  losses = []
  for t in range(steps):
    params, opt, loss = step(params, opt, _batch(0, t))
    losses.append(float(loss))
  return params, losses


def test_the_readme_example_as_written():
  """The issue's example, name for name."""
  p = hpt.parameterize(make_model, X, width=512, base_width=64,
                       parameterization="mup", optimizer="adamw")
  params = p.init(jax.random.key(0))
  tx = p.optimizer(lr=2**-7, weight_decay=0.1, schedule="cosine", steps=100)
  assert isinstance(tx, optax.GradientTransformation)
  logits = p.apply(params, X)
  assert logits.shape == (1, 10)
  rows = p.describe()
  assert len(rows) == len(jax.tree_util.tree_leaves(params))
  assert "head/kernel" in str(rows) and "output" in str(rows)


def test_at_base_width_mup_is_sp_bit_for_bit():
  runs = {}
  for name in ("sp", "mup"):
    p = hpt.parameterize(make_model, X, width=64, base_width=64, parameterization=name)
    runs[name] = _train(p, p.optimizer(lr=1e-2, weight_decay=0.1), steps=4)
  (sp_params, sp_losses), (mup_params, mup_losses) = runs["sp"], runs["mup"]
  assert sp_losses == mup_losses and sp_losses[0] != sp_losses[-1]
  jax.tree_util.tree_map(np.testing.assert_array_equal, sp_params, mup_params)


def test_at_eight_times_the_base_width_mup_differs_from_sp():
  out = {}
  for name in ("sp", "mup"):
    p = hpt.parameterize(make_model, X, width=512, base_width=64, parameterization=name)
    out[name] = _train(p, p.optimizer(lr=1e-2), steps=2)[1]
  assert abs(out["sp"][-1] - out["mup"][-1]) > 1e-3


def _coord(name):
  return hpt.coordinate_check(
      lambda w: hpt.parameterize(make_model, X, width=w, base_width=64, parameterization=name,
                                 optimizer="adam"),
      (64, 128, 256, 512), _batch, lambda b: b[0], _ce, lr=0.02, steps=3, seeds=(0, 1))


def test_coordinate_check_of_a_user_model():
  """muP: every layer's mean |x| within 1.5x from width 64 to 512; SP's logits
  grow at least 4x.  The model sows nothing, so every submodule's output is
  measured."""
  sp, mup = _coord("sp"), _coord("mup")
  layers = sorted(set(mup.layer) - {"loss"})
  assert {"patch_embed", "block_0_fc2", "block_1_fc2", "head"} <= set(layers)
  for layer in layers:
    g = coord_check.growth(mup, 3, layer)
    assert 1 / 1.5 <= g <= 1.5, (layer, g)
  assert coord_check.growth(sp, 3, "head") >= 4.0
  assert coord_check.growth(sp, 3, "block_1_fc2") >= 4.0


def test_describe_names_every_role():
  p = hpt.parameterize(make_model, X, width=256, base_width=64)
  roles = {r["path"]: r for r in p.describe()}
  assert roles["patch_embed/kernel"]["role"] == "input"
  assert roles["block_0_fc1/kernel"]["role"] == "hidden"
  assert roles["block_1_fc2/kernel"]["role"] == "hidden"
  assert roles["head/kernel"]["role"] == "output"
  assert roles["block_0_norm/scale"]["role"] == "vector"
  assert roles["head/bias"]["role"] == "scalar"
  # muP under Adam: hidden LR 1/m, readout forward 1/m (m = 4).
  assert roles["block_0_fc1/kernel"]["lr_mult"] == pytest.approx(0.25)
  assert roles["head/kernel"]["forward_mult"] == pytest.approx(0.25)
  assert "head/kernel" in str(p.describe())


class Shrinking(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    mix = self.param("mix", nn.initializers.normal(0.02), (self.width, 2048 // self.width))
    h = nn.Dense(self.width, name="inp")(x)
    return nn.Dense(10, name="out")(h[..., :mix.shape[1]] @ mix.T)


def test_a_leaf_the_shapes_cannot_classify_names_itself_and_the_fix():
  with pytest.raises(hpt.ParameterizationError, match=r"'mix'.*shrink.*role_rules"):
    hpt.parameterize(Shrinking, jnp.zeros((1, 8)), width=128, base_width=64)
  p = hpt.parameterize(Shrinking, jnp.zeros((1, 8)), width=128, base_width=64,
                       role_rules=[(r"^mix$", "hidden")])
  assert {r["path"]: r["role"] for r in p.describe()}["mix"] == "hidden"


def test_depth_rules_and_the_knobs_reach_a_user_module():
  def deep(width, depth):
    return DeepNet(width=width, depth=depth)
  p = hpt.parameterize(deep, jnp.zeros((1, 4)), width=128, base_width=32, depth=8,
                       base_depth=2, alpha=0.5, output_mult=2.0)
  assert p.branch_multiplier == pytest.approx(0.5)
  rows = {r["path"]: r for r in p.describe()}
  assert rows["block_3/kernel"]["lr_mult"] == pytest.approx(0.25 * 0.5)   # 1/m * d^-1/2
  assert rows["out/kernel"]["forward_mult"] == pytest.approx(2.0 / 4)
  params = p.init(jax.random.key(0))
  ref = DeepNet(width=128, depth=8).apply(
      {"params": jax.tree_util.tree_map(lambda w, m: w * m, params,
                                        p.leaf_trees()["forward_mult"])},
      jnp.ones((1, 4)), branch_mult=0.5)
  np.testing.assert_allclose(p.apply(params, jnp.ones((1, 4))), ref, rtol=1e-6)


class DeepNet(nn.Module):
  width: int
  depth: int

  @nn.compact
  def __call__(self, x, branch_mult=1.0):
    x = nn.Dense(self.width, name="inp")(x)
    for i in range(self.depth):
      x = x + branch_mult * nn.relu(nn.Dense(self.width, name=f"block_{i}")(x))
    return nn.Dense(3, name="out")(x)


class Attn(nn.Module):
  width: int
  head_dim: int = 16

  @nn.compact
  def __call__(self, x, attn_scale=None):
    q = nn.Dense(self.width, name="q")(x)
    k = nn.Dense(self.width, name="k")(x)
    return nn.Dense(2, name="out")((q * attn_scale) @ k.swapaxes(-1, -2) @ x)


def test_attention_scale_is_passed_to_a_module_that_asks():
  with pytest.raises(hpt.ModelError, match="head_dim="):
    hpt.parameterize(Attn, jnp.zeros((1, 5, 4)), width=64, base_width=32)
  p = hpt.parameterize(Attn, jnp.zeros((1, 5, 4)), width=64, base_width=32, head_dim=32,
                       base_head_dim=16)
  # muP's 1/d anchored at the base head dim: (1/sqrt(16)) * 16/32.
  assert p.attn_scale == pytest.approx(0.25 * 0.5)
  assert p.attention_scale(32) == p.attn_scale
  sp = hpt.parameterize(Attn, jnp.zeros((1, 5, 4)), width=64, base_width=32, head_dim=32,
                        parameterization="sp")
  assert sp.attn_scale == pytest.approx(32 ** -0.5)


@pytest.mark.parametrize("factory,match", [
    (lambda n: PatchNet(width=n), r"no width knob.*named `width`"),
    (lambda width: PatchNet(width=64), r"same parameters at width 64 and 128.*no width knob"),
    (lambda width: "not a module", r"returned a str, not a flax.linen.Module"),
    (lambda width, vocab: PatchNet(width=width), r"requires \['vocab'\]"),
])
def test_bad_factories_get_errors_that_say_the_fix(factory, match):
  with pytest.raises(hpt.ModelError, match=match):
    hpt.parameterize(factory, X, width=128, base_width=64)


def test_bad_arguments_fail_before_any_work():
  with pytest.raises(hpt.ParameterizationError, match="base_width=256 is larger than width=128"):
    hpt.parameterize(make_model, X, width=128, base_width=256)
  with pytest.raises(hpt.ParameterizationError, match="parameterization.name='mupp'"):
    hpt.parameterize(make_model, X, width=128, base_width=64, parameterization="mupp")
  with pytest.raises(hpt.OptimizerError, match="optimizer.name='adamm'"):
    hpt.parameterize(make_model, X, width=128, base_width=64, optimizer="adamm")
  with pytest.raises(hpt.ParameterizationError, match=r"unknown settings \['output_mul'\]"):
    hpt.parameterize(make_model, X, width=128, base_width=64, output_mul=2.0)
  with pytest.raises(hpt.ModelError, match="fails on the example input"):
    hpt.parameterize(make_model, jnp.zeros((1, 7, 7, 1)), width=128, base_width=64)
  p = hpt.parameterize(make_model, X, width=128, base_width=64)
  with pytest.raises(hpt.OptimizerError, match="needs the run length: pass steps="):
    p.optimizer(lr=1e-3, schedule="cosine")
  with pytest.raises(hpt.OptimizerError, match=r"optimizer.b2=1.5 must lie in \[0, 1\)"):
    p.optimizer(lr=1e-3, b2=1.5)
