"""Model registry: ``build(cfg, width=..., depth=...)`` from a config."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hptransfer import data as data_lib
from hptransfer.models.mlp import MLP
from hptransfer.models.transformer import Transformer

MODELS = ("transformer", "mlp")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build(cfg, width: int | None = None, depth: int | None = None):
  """The Flax module of ``cfg.model``, optionally at another width or depth."""
  m = cfg.model
  width = m.width if width is None else width
  depth = m.depth if depth is None else depth
  vocab = data_lib.vocab_size(cfg.data)
  dtype = DTYPES[m.compute_dtype]
  if m.name == "transformer":
    return Transformer(vocab_size=vocab, seq_len=cfg.data.seq_len, width=width,
                       depth=depth, head_dim=m.head_dim, mlp_ratio=m.mlp_ratio,
                       norm=m.norm, activation=m.activation, use_bias=m.use_bias,
                       qk_norm=m.qk_norm, dtype=dtype,
                       attention=resolve_attention(m.get("attention", "auto")),
                       attention_block=m.get("attention_block", 64),
                       matmul_dtype=DTYPES[m.matmul_dtype] if m.get("matmul_dtype") else None)
  if m.name == "mlp":
    return MLP(vocab_size=vocab, width=width, depth=depth, context=m.context,
               activation=m.activation, use_bias=m.use_bias,
               residual=m.residual, dtype=dtype)
  raise ValueError(f"model.name={m.name!r} is not one of {', '.join(MODELS)}")


def resolve_attention(attention: str) -> str:
  """``auto``: ``blocked`` on CPU, where skipping the masked blocks is
  1.10x (seq 128) to 1.18x (seq 256) faster for the whole training step
  (docs/performance.md), and ``xla`` elsewhere (``cudnn`` is opt-in: it needs a
  16-bit compute dtype).  The other names pass through."""
  if attention != "auto":
    return attention
  return "blocked" if jax.default_backend() == "cpu" else "xla"


def dummy_tokens(cfg, batch: int = 1):
  return jnp.zeros((batch, cfg.data.seq_len), jnp.int32)
