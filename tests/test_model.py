"""The Transformer's attention paths compute the same function."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from hptransfer import step as step_lib
from hptransfer import build as build_lib
from hptransfer.models.transformer import blocked_causal_attention


@pytest.mark.parametrize("block", [8, 16, 32])
def test_blocked_attention_equals_full_causal_attention(block):
  kq, kk, kv, kg = jax.random.split(jax.random.key(3), 4)
  shape = (2, 64, 4, 8)   # B, T, N, H
  q, k, v = (jax.random.normal(key, shape) for key in (kq, kk, kv))
  g = jax.random.normal(kg, shape)

  # Jitted: run op by op, the 8 blocks' forward and backward took 38 s.
  full = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=1.0,
                                                             is_causal=True))
  blocked = jax.jit(lambda q, k, v: blocked_causal_attention(q, k, v, block))
  vjp = lambda f: jax.jit(lambda q, k, v, g: jax.vjp(f, q, k, v)[1](g))

  np.testing.assert_allclose(blocked(q, k, v), full(q, k, v), atol=1e-5)
  # Gradients too: a wrong mask offset in a later block changes them.
  gf = vjp(full)(q, k, v, g)
  gb = vjp(blocked)(q, k, v, g)
  for a, b in zip(gb, gf):
    np.testing.assert_allclose(a, b, atol=1e-4)
  # And it is not trivially equal: dropping the causal mask changes the output.
  unmasked = jax.nn.dot_product_attention(q, k, v, scale=1.0)
  assert float(jnp.abs(unmasked - full(q, k, v)).max()) > 0.1


def test_blocked_attention_model_matches_default_model():
  losses = []
  for attention in ("xla", "blocked"):
    cfg = tiny_config(**{"model.attention": attention, "model.attention_block": 4})
    built = build_lib.build(cfg)
    params = built.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (4, cfg.data.seq_len + 1), 0, 32)
    loss, grads = jax.jit(jax.value_and_grad(
        lambda p: step_lib.loss_fn(built, p, built.consts(), tokens)[0]))(params)
    losses.append((loss, grads))
  (l0, g0), (l1, g1) = losses
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g1, g0)
