"""bf16-operand matmuls (model.matmul_dtype): the same values and gradients as
the plain formulas with the same roundings, in products XLA:CPU keeps in bf16."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from hptransfer import perf
from hptransfer import step as step_lib
from hptransfer import build as build_lib
from hptransfer import sweep as S
from hptransfer.configlib import ConfigError, validate
from hptransfer.perf import lowp

BF16 = jnp.bfloat16


def r(x):
  """Round to bf16 and back: the operands the products see."""
  return np.asarray(jnp.asarray(x).astype(BF16).astype(jnp.float32), np.float64)


def _normal(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


@pytest.mark.parametrize("dtype", [BF16, jnp.float32])
def test_transpose_by_identity_is_exact(dtype):
  x = _normal(0, (48, 24)).astype(dtype)
  np.testing.assert_array_equal(np.asarray(lowp.transpose_by_identity(x), np.float32),
                                np.asarray(x.T, np.float32))


@pytest.mark.parametrize("shape_x,n", [((40, 16), 24),      # k <= n: x is transposed
                                       ((40, 24), 16),      # k > n: g is transposed
                                       ((2, 20, 16), 24)])  # 3-D activations
def test_matmul_values_and_gradients(shape_x, n):
  x, w = _normal(1, shape_x), _normal(2, (shape_x[-1], n))
  g = _normal(3, shape_x[:-1] + (n,))
  y, vjp = jax.vjp(lambda x, w: lowp.matmul(x, w, BF16), x, w)
  dx, dw = vjp(g)
  assert y.dtype == dx.dtype == dw.dtype == jnp.float32
  x2, g2 = r(x).reshape(-1, shape_x[-1]), r(g).reshape(-1, n)
  np.testing.assert_allclose(y, r(x) @ r(w), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, r(g) @ r(w).T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, x2.T @ g2, rtol=1e-5, atol=1e-5)
  # Under vmap (sweep groups) each trial gets its own product and gradients.
  xs, ws = jnp.stack([x, 2 * x]), jnp.stack([w, -w])
  ys, vjps = jax.vjp(jax.vmap(lambda x, w: lowp.matmul(x, w, BF16)), xs, ws)
  dxs, dws = vjps(jnp.stack([g, g]))
  np.testing.assert_allclose(ys[0], y, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dws[1], 2 * x2.T @ g2, rtol=1e-5, atol=1e-5)   # x1 = 2x
  np.testing.assert_allclose(dxs[1], -(r(g) @ r(w).T), rtol=1e-5, atol=1e-5)  # w1 = -w
  # The rounding is real: float32 products differ by about bf16's 2^-8.
  assert np.abs(np.asarray(y) - np.asarray(x, np.float64) @ np.asarray(w, np.float64)).max() > 1e-3


def _reference_attention(q, k, v, mask, g):
  """Plain formulas in float64 with the roundings of lowp.attention."""
  s = np.einsum("btnh,bsnh->bnts", r(q), r(k))
  s = np.where(mask, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = np.einsum("bnts,bsnh->btnh", r(p), r(v))
  gb = r(g)
  dp = np.einsum("btnh,bsnh->bnts", gb, r(v))
  ds = r(p * (dp - (dp * p).sum(-1, keepdims=True)))
  return o, (np.einsum("bnts,bsnh->btnh", ds, r(k)), np.einsum("bnts,btnh->bsnh", ds, r(q)),
             np.einsum("bnts,btnh->bsnh", r(p), gb))


def test_attention_values_and_gradients():
  B, T, S_, N, H = 2, 8, 12, 2, 8
  q, g = _normal(4, (B, T, N, H)), _normal(7, (B, T, N, H))
  k, v = _normal(5, (B, S_, N, H)), _normal(6, (B, S_, N, H))
  mask = np.arange(S_)[None, :] <= np.arange(T)[:, None] + 4
  o, vjp = jax.vjp(lambda q, k, v: lowp.attention(q, k, v, jnp.asarray(mask), BF16), q, k, v)
  ref_o, ref_grads = _reference_attention(q, k, v, mask, g)
  # Tolerance: a few elements of p may round to the other side of a bf16
  # step (f32 against f64 softmax); a wrong transpose or mask is O(1) off.
  np.testing.assert_allclose(o, ref_o, atol=2e-2)
  for got, want in zip(vjp(g), ref_grads):
    np.testing.assert_allclose(got, want, atol=3e-2 * np.abs(want).max())
    assert got.dtype == jnp.float32
  # Under vmap (sweep groups on accelerators) each trial gets its own answer.
  batched = jax.vmap(lambda q: lowp.attention(q, k, v, jnp.asarray(mask), BF16))(
      jnp.stack([q, 2 * q]))
  np.testing.assert_allclose(batched[0], o, atol=1e-6)


def test_bf16_matmul_model_tracks_the_float32_model():
  out = {}
  for mm in ("", "bfloat16"):
    cfg = tiny_config(**{"model.matmul_dtype": mm, "model.attention": "blocked",
                         "model.attention_block": 8})
    built = build_lib.build(cfg)
    params = built.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (4, cfg.data.seq_len + 1), 0, 32)
    out[mm] = jax.jit(jax.value_and_grad(
        lambda p: step_lib.loss_fn(built, p, built.consts(), tokens)[0]))(params)
  (l32, g32), (l16, g16) = out[""], out["bfloat16"]
  assert abs(float(l16) - float(l32)) < 1e-2
  assert float(l16) != float(l32)              # the option is wired in
  a, b = (np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)]) for t in (g32, g16))
  assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_bf16_matmul_step_keeps_every_product_in_bf16_on_cpu(monkeypatch):
  """No product falls back to XLA's float32 path (Eigen, or YNNPACK on
  operands cast back to f32): each one is a YNNPACK fusion of bf16 operands."""
  monkeypatch.delenv(perf.CPU_DOTS_ENV, raising=False)
  # The 16 x 128 tokens: with fewer, XLA copies some operands into
  # another layout itself, and the test could not tell.
  cfg = tiny_config(**{"model.matmul_dtype": "bfloat16", "model.attention": "blocked",
                       "model.attention_block": 64, "data.seq_len": 128,
                       "train.batch_size": 16, "model.width": 128, "model.head_dim": 64,
                       "parameterization.base_width": 64})
  built = build_lib.build(cfg)
  from hptransfer import optim
  tx = optim.build(cfg.optimizer, built.leaf_trees(), cfg.train.steps)
  state = step_lib.init_state(built, tx, 0)
  batch = jnp.zeros((cfg.train.batch_size, cfg.data.seq_len + 1), jnp.int32)
  step = perf.jit_step(step_lib.make_train_step(built, tx), "bfloat16")
  txt = step.lower(state, built.consts(), batch).compile().as_text()
  bodies = dict(re.findall(r"\n%?([\w.\-]+) \(([^\n]*)\) -> [^\n]*\{", txt))
  calls = re.findall(r"%([\w.\-]+) = [^\n]*calls=%([\w.\-]+)", txt)
  ynn_bodies = {c for n, c in calls if n.startswith("ynn_fusion")}
  dot_bodies = set()
  for name, block in re.findall(r"\n(?:ENTRY )?%?([\w.\-]+) \([^\n]*\{\n(.*?)\n\}", txt, re.S):
    if " dot(" in block:
      dot_bodies.add(name)
  assert dot_bodies, "no products found"
  assert dot_bodies <= ynn_bodies, dot_bodies - ynn_bodies
  f32_operands = [b for b in dot_bodies if "bf16" not in bodies.get(b, "")]
  assert not f32_operands, f32_operands


def test_matmul_dtype_picks_ynnpack_and_the_env_still_wins(monkeypatch):
  monkeypatch.delenv(perf.CPU_DOTS_ENV, raising=False)
  assert perf.cpu_dots("bfloat16") == "ynn"
  assert perf.cpu_dots("") == "eigen"
  monkeypatch.setenv(perf.CPU_DOTS_ENV, "eigen")
  assert perf.cpu_dots("bfloat16") == "eigen"


def test_bad_matmul_dtype_names_the_field_and_the_fix():
  with pytest.raises(ConfigError, match=r"model.matmul_dtype='float16' is neither.*--config.model.matmul_dtype=bfloat16"):
    validate(tiny_config(**{"model.matmul_dtype": "float16"}))
  with pytest.raises(ConfigError, match=r"transformer only.*matmul_dtype=''"):
    validate(tiny_config("mlp", **{"model.matmul_dtype": "bfloat16"}))


def test_trial_ids_of_configs_without_the_new_key_are_unchanged():
  """Committed rows and resumable workdirs were written before
  model.matmul_dtype existed: at its default a trial keeps its old id."""
  cfg = tiny_config()
  old = cfg.copy_and_resolve_references()
  del old.model["matmul_dtype"]
  assert S.trial_id(cfg) == S.trial_id(old)
  cfg.model.matmul_dtype = "bfloat16"
  assert S.trial_id(cfg) != S.trial_id(old)
