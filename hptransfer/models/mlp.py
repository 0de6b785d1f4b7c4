"""A byte-context MLP language model (plain Flax).

Position t sees the embeddings of tokens t, t-1, ..., t-context+1 (zeros before
the start), concatenated, and predicts token t+1.  ``depth`` hidden layers of
``width`` units follow the input layer; with ``residual=True`` each hidden layer
is a residual branch ``x + branch_mult * act(dense(x))``, so depth rules apply.
``dropout`` (a call-time rate) drops units of every hidden layer's output.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from hptransfer.models.transformer import ACTIVATIONS


class MLP(nn.Module):
  vocab_size: int
  width: int
  depth: int
  context: int = 8
  activation: str = "relu"
  use_bias: bool = True
  residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens_BxT, branch_mult=1.0, dropout=None):
    from hptransfer import models
    act = ACTIVATIONS[self.activation]
    e_BxTxD = nn.Embed(self.vocab_size, self.width, dtype=self.dtype,
                       name="tok_embed")(tokens_BxT)
    shifted = [e_BxTxD] + [
        jnp.pad(e_BxTxD[:, :-k], ((0, 0), (k, 0), (0, 0)))
        for k in range(1, self.context)]
    x_BxTxCD = jnp.concatenate(shifted, axis=-1)
    self.sow("intermediates", "embed", x_BxTxCD)
    x_BxTxD = act(nn.Dense(self.width, use_bias=self.use_bias, dtype=self.dtype,
                           name="fc_in")(x_BxTxCD))
    x_BxTxD = models.dropout(self, x_BxTxD, dropout)
    for i in range(self.depth):
      # Residual layers are named block_i, which the depth rules look for.
      name = f"block_{i}" if self.residual else f"hidden_{i}"
      h_BxTxD = act(nn.Dense(self.width, use_bias=self.use_bias, dtype=self.dtype,
                             name=name)(x_BxTxD))
      self.sow("intermediates", f"{name}_out", h_BxTxD)
      h_BxTxD = models.dropout(self, h_BxTxD, dropout)
      x_BxTxD = x_BxTxD + branch_mult * h_BxTxD if self.residual else h_BxTxD
    logits_BxTxV = nn.Dense(self.vocab_size, use_bias=self.use_bias,
                            dtype=self.dtype, name="readout")(x_BxTxD)
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    self.sow("intermediates", "logits", logits_BxTxV)
    return logits_BxTxV


def _validate(cfg) -> None:
  from hptransfer.configlib import one_of, positive_int
  one_of(cfg.model.activation, tuple(ACTIVATIONS), "model.activation")
  positive_int(cfg.model.context, "model.context")


def make_mlp(width: int, depth: int, vocab_size: int, context: int = 8,
             activation: str = "relu", use_bias: bool = True, residual: bool = False,
             compute_dtype: str = "float32") -> MLP:
  """Byte-context MLP language model (tokens [B, T] -> logits [B, T, V])."""
  from hptransfer import models
  return MLP(vocab_size=vocab_size, width=width, depth=depth, context=context,
             activation=activation, use_bias=use_bias, residual=residual,
             dtype=models.dtype(compute_dtype))


def _register():
  from hptransfer import models
  models.register("mlp", tasks=("lm",), validate=_validate)(make_mlp)


_register()
