"""GPT-style pre-norm decoder-only Transformer (plain Flax).

The model knows nothing of muP beyond two call-time knobs: ``attn_scale`` (what
multiplies the query before the q.k product) and ``branch_mult`` (what multiplies
every residual branch); under u-muP two more, ``residual`` (each branch's
unit-scaled add) and ``act_mult`` (the unit-scaled activation), see
``hptransfer.models``.  A third, ``dropout``, is the dropout rate (GPT-2's
places: the embedding sum and each residual branch's output; attention
probabilities are not dropped, since XLA's fused attention has no dropout).  Forward multipliers of individual leaves are applied by
the caller to the params tree it passes in (see ``parameterization``).

Shape suffixes: B batch, T sequence, M = B*T tokens, D width, N heads, H head
dim, F MLP width, V vocabulary.

Between the embedding and the readout, activations are kept flat as [M, D]
rather than [B, T, D]: every dense layer is then a plain 2-D matmul, and its
weight gradient a 2-D contraction over M.  On XLA:CPU this is 2.6x faster for
an MLP block's forward and backward than the 3-D form, whose weight gradients
get lowered with a slow transposing copy fused into the activation's backward
(docs/performance.md).  Only attention reshapes to [B, T, N, H].
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hptransfer.perf import lowp

ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu, "tanh": jnp.tanh}


def make_norm(kind: str, use_bias: bool, dtype, name: str) -> nn.Module:
  if kind == "rmsnorm":
    return nn.RMSNorm(dtype=dtype, name=name)
  return nn.LayerNorm(use_bias=use_bias, dtype=dtype, name=name)


def dense(features: int, use_bias: bool, dtype, matmul_dtype, name: str) -> nn.Dense:
  """A dense layer; with ``matmul_dtype`` its product has operands of that
  dtype and float32 accumulation (``hptransfer.models.lowp``)."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  dot_general=lowp.dense_dot_general(matmul_dtype) if matmul_dtype else None)


def _attend(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask_TxS, matmul_dtype):
  """One masked attention core (scale already in q): XLA's, or with
  ``matmul_dtype`` operands and float32 accumulation (``lowp.attention``)."""
  if matmul_dtype:
    return lowp.attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask_TxS, matmul_dtype)
  return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, scale=1.0,
                                      mask=mask_TxS[None, None], implementation="xla")


def causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, matmul_dtype=None):
  T = q_BxTxNxH.shape[1]
  return _attend(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, jnp.tril(jnp.ones((T, T), bool)),
                 matmul_dtype)


def blocked_causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, block: int, matmul_dtype=None):
  """Causal attention that skips the masked upper triangle block by block:
  query block i attends only to keys [0, (i+1)*block), so of the T x T logits
  only (nb+1)/(2 nb) are computed for nb = T / block blocks.  Same result as
  the full masked product; the logits' scale must already be in q."""
  T = q_BxTxNxH.shape[1]
  if block <= 0 or block >= T or T % block:
    return causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, matmul_dtype)
  outs = []
  for i in range(T // block):
    lo, hi = i * block, (i + 1) * block
    # query lo + a sees keys 0 .. lo + a
    mask_QxS = jnp.arange(hi)[None, :] <= (lo + jnp.arange(block))[:, None]
    outs.append(_attend(q_BxTxNxH[:, lo:hi], k_BxTxNxH[:, :hi], v_BxTxNxH[:, :hi],
                        mask_QxS, matmul_dtype))
  return jnp.concatenate(outs, axis=1)


class Attention(nn.Module):
  width: int
  head_dim: int
  use_bias: bool
  qk_norm: bool
  dtype: Any
  attention: str = "xla"
  attention_block: int = 64
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x_MxD, T: int, attn_scale):
    B = x_MxD.shape[0] // T
    N, H = self.width // self.head_dim, self.head_dim
    proj = lambda name: dense(self.width, self.use_bias, self.dtype, self.matmul_dtype, name)
    q_BxTxNxH = proj("query")(x_MxD).reshape(B, T, N, H)
    k_BxTxNxH = proj("key")(x_MxD).reshape(B, T, N, H)
    v_BxTxNxH = proj("value")(x_MxD).reshape(B, T, N, H)
    if self.qk_norm:
      q_BxTxNxH = nn.RMSNorm(dtype=self.dtype, name="q_norm")(q_BxTxNxH)
      k_BxTxNxH = nn.RMSNorm(dtype=self.dtype, name="k_norm")(k_BxTxNxH)
    # The logit scale is applied to q so it may be a traced value (sweeps vmap
    # over it); cuDNN's fused kernel then runs with scale 1.
    q_BxTxNxH = q_BxTxNxH * jnp.asarray(attn_scale, q_BxTxNxH.dtype)
    if self.attention == "blocked":
      o_BxTxNxH = blocked_causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH,
                                           self.attention_block, self.matmul_dtype)
    elif self.attention == "xla" and self.matmul_dtype:
      o_BxTxNxH = causal_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, self.matmul_dtype)
    else:
      o_BxTxNxH = jax.nn.dot_product_attention(
          q_BxTxNxH, k_BxTxNxH, v_BxTxNxH, scale=1.0, is_causal=True,
          implementation=self.attention)
    return proj("out")(o_BxTxNxH.reshape(B * T, N * H))


class MlpBlock(nn.Module):
  width: int
  hidden: int
  activation: str
  use_bias: bool
  dtype: Any
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x_MxD, act_mult=None):
    from hptransfer import models
    h_MxF = dense(self.hidden, self.use_bias, self.dtype, self.matmul_dtype, "fc_in")(x_MxD)
    h_MxF = models.unit_activation(ACTIVATIONS[self.activation], h_MxF, act_mult)
    return dense(self.width, self.use_bias, self.dtype, self.matmul_dtype, "fc_out")(h_MxF)


class Block(nn.Module):
  width: int
  head_dim: int
  mlp_hidden: int
  norm: str
  activation: str
  use_bias: bool
  qk_norm: bool
  dtype: Any
  attention: str = "xla"
  attention_block: int = 64
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x_MxD, T: int, attn_scale, branch_mult, dropout=None,
               residual_2x2=None, act_mult=None):
    from hptransfer import models

    def add(x, f, i):   # x + branch_mult f, or u-muP's a_i x + b_i f
      if residual_2x2 is None:
        return x + branch_mult * f
      a, b = residual_2x2[i, 0].astype(x.dtype), residual_2x2[i, 1].astype(x.dtype)
      return a * x + b * f

    h = make_norm(self.norm, self.use_bias, self.dtype, "norm1")(x_MxD)
    a_MxD = Attention(self.width, self.head_dim, self.use_bias, self.qk_norm,
                      self.dtype, self.attention, self.attention_block,
                      self.matmul_dtype, name="attn")(h, T, attn_scale)
    self.sow("intermediates", "attn_out", a_MxD)
    x_MxD = add(x_MxD, models.dropout(self, a_MxD, dropout), 0)
    h = make_norm(self.norm, self.use_bias, self.dtype, "norm2")(x_MxD)
    m_MxD = MlpBlock(self.width, self.mlp_hidden, self.activation,
                     self.use_bias, self.dtype, self.matmul_dtype, name="mlp")(h, act_mult)
    self.sow("intermediates", "mlp_out", m_MxD)
    return add(x_MxD, models.dropout(self, m_MxD, dropout), 1)


class Transformer(nn.Module):
  vocab_size: int
  seq_len: int
  width: int
  depth: int
  head_dim: int
  mlp_ratio: float = 4.0
  norm: str = "rmsnorm"
  activation: str = "gelu"
  use_bias: bool = False
  qk_norm: bool = False
  dtype: Any = jnp.float32   # compute dtype; params are always float32
  attention: str = "xla"     # xla | blocked (causal blocks skipped) | cudnn (GPU, 16-bit)
  attention_block: int = 64  # query block of attention="blocked"
  matmul_dtype: Any = None   # dense layers' operand dtype (f32 accumulation); None: dtype

  @nn.compact
  def __call__(self, tokens_BxT, attn_scale=None, branch_mult=1.0, dropout=None,
               residual=None, act_mult=None):
    from hptransfer import models
    if attn_scale is None:
      attn_scale = self.head_dim ** -0.5
    B, T = tokens_BxT.shape
    x_BxTxD = nn.Embed(self.vocab_size, self.width, dtype=self.dtype,
                       name="tok_embed")(tokens_BxT)
    x_BxTxD = x_BxTxD + nn.Embed(self.seq_len, self.width, dtype=self.dtype,
                                 name="pos_embed")(jnp.arange(T))[None]
    self.sow("intermediates", "embed", x_BxTxD)
    x_MxD = models.dropout(self, x_BxTxD.reshape(B * T, self.width), dropout)
    for i in range(self.depth):
      x_MxD = Block(self.width, self.head_dim, int(self.mlp_ratio * self.width),
                    self.norm, self.activation, self.use_bias, self.qk_norm,
                    self.dtype, self.attention, self.attention_block, self.matmul_dtype,
                    name=f"block_{i}")(
                        x_MxD, T, attn_scale, branch_mult, dropout,
                        None if residual is None else residual[2 * i:2 * i + 2], act_mult)
    x_MxD = make_norm(self.norm, self.use_bias, self.dtype, "final_norm")(x_MxD)
    logits_MxV = dense(self.vocab_size, self.use_bias, self.dtype, self.matmul_dtype,
                       "readout")(x_MxD)
    logits_BxTxV = logits_MxV.reshape(B, T, -1).astype(jnp.float32)
    self.sow("intermediates", "logits", logits_BxTxV)
    return logits_BxTxV


# ----------------------------------------------------------------------------
# Registration: the factory and the checks of its config section.


def _validate(cfg) -> None:
  from hptransfer.configlib import ConfigError, one_of, positive_int
  m, p = cfg.model, cfg.parameterization
  one_of(m.norm, ("rmsnorm", "layernorm"), "model.norm")
  one_of(m.activation, tuple(ACTIVATIONS), "model.activation")
  positive_int(m.head_dim, "model.head_dim")
  if not m.mlp_ratio > 0:
    raise ConfigError(f"model.mlp_ratio={m.mlp_ratio} must be > 0")
  attention = m.get("attention", "auto")
  one_of(attention, ("auto", "xla", "blocked", "cudnn"), "model.attention")
  if attention in ("auto", "blocked"):
    positive_int(m.get("attention_block", 64), "model.attention_block")
  if attention == "cudnn" and m.compute_dtype == "float32":
    raise ConfigError("model.attention='cudnn' needs a 16-bit compute dtype: set "
                      "--config.model.compute_dtype=bfloat16 or model.attention='xla'")
  for field, w in (("model.width", m.width), ("parameterization.base_width", p.base_width)):
    if w % m.head_dim:
      raise ConfigError(
          f"{field}={w} is not divisible by model.head_dim={m.head_dim}; "
          "heads are width // head_dim: pick a multiple of the head dim")


def make_transformer(width: int, depth: int, vocab_size: int, seq_len: int,
                     head_dim: int = 32, mlp_ratio: float = 4.0, norm: str = "rmsnorm",
                     activation: str = "gelu", use_bias: bool = False, qk_norm: bool = False,
                     compute_dtype: str = "float32", attention: str = "auto",
                     attention_block: int = 64, matmul_dtype: str = "") -> Transformer:
  """GPT-style pre-norm decoder (tokens [B, T] -> logits [B, T, V])."""
  from hptransfer import models
  return Transformer(vocab_size=vocab_size, seq_len=seq_len, width=width, depth=depth,
                     head_dim=head_dim, mlp_ratio=mlp_ratio, norm=norm,
                     activation=activation, use_bias=use_bias, qk_norm=qk_norm,
                     dtype=models.dtype(compute_dtype),
                     attention=models.resolve_attention(attention),
                     attention_block=attention_block,
                     matmul_dtype=models.DTYPES[matmul_dtype] if matmul_dtype else None)


def _register():
  from hptransfer import models
  models.register("transformer", tasks=("lm",), validate=_validate)(make_transformer)


_register()
