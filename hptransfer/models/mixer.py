"""A small MLP-Mixer (Tolstikhin et al. 2021) for image classification.

Images [B, H, W, C] are cut into p x p patches, each embedded to ``width``
(``patch_embed``: fan-in p*p*C, fixed: an input layer), plus a learned
position embedding.  Each of ``depth`` residual blocks mixes tokens (a
two-layer MLP across the N patches, fixed size: scalar-role leaves) and then
channels (a two-layer MLP of hidden ``mlp_ratio * width``: the hidden
matrices), both as residual branches ``x + branch_mult * f(norm(x))``.  A
final norm, the mean over patches and the readout give the class logits.
``dropout`` (a call-time rate) drops units of each branch's output.

Shape suffixes: B batch, N patches, D width, F channel-MLP width, S
token-MLP width, C classes.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from hptransfer.models.transformer import ACTIVATIONS, make_norm


class MixerBlock(nn.Module):
  width: int
  tokens_hidden: int
  mlp_hidden: int
  activation: str
  norm: str
  dtype: Any

  @nn.compact
  def __call__(self, x_BxNxD, branch_mult, dropout=None):
    from hptransfer import models
    act = ACTIVATIONS[self.activation]
    h_BxDxN = make_norm(self.norm, True, self.dtype, "norm1")(x_BxNxD).swapaxes(1, 2)
    h_BxDxS = act(nn.Dense(self.tokens_hidden, dtype=self.dtype, name="token_in")(h_BxDxN))
    t_BxNxD = nn.Dense(x_BxNxD.shape[1], dtype=self.dtype,
                       name="token_out")(h_BxDxS).swapaxes(1, 2)
    self.sow("intermediates", "token_mix_out", t_BxNxD)
    x_BxNxD = x_BxNxD + branch_mult * models.dropout(self, t_BxNxD, dropout)
    h_BxNxD = make_norm(self.norm, True, self.dtype, "norm2")(x_BxNxD)
    h_BxNxF = act(nn.Dense(self.mlp_hidden, dtype=self.dtype, name="channel_in")(h_BxNxD))
    c_BxNxD = nn.Dense(self.width, dtype=self.dtype, name="channel_out")(h_BxNxF)
    self.sow("intermediates", "channel_mix_out", c_BxNxD)
    return x_BxNxD + branch_mult * models.dropout(self, c_BxNxD, dropout)


class Mixer(nn.Module):
  num_classes: int
  width: int
  depth: int
  patch: int = 2
  tokens_hidden: int = 32
  mlp_ratio: float = 2.0
  activation: str = "gelu"
  norm: str = "layernorm"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC, branch_mult=1.0, dropout=None):
    B, H, W, C = images_BxHxWxC.shape
    p = self.patch
    patches_BxNxP = images_BxHxWxC.reshape(B, H // p, p, W // p, p, C).transpose(
        0, 1, 3, 2, 4, 5).reshape(B, (H // p) * (W // p), p * p * C)
    N = patches_BxNxP.shape[1]
    x_BxNxD = nn.Dense(self.width, dtype=self.dtype, name="patch_embed")(patches_BxNxP)
    x_BxNxD = x_BxNxD + nn.Embed(N, self.width, dtype=self.dtype,
                                 name="pos_embed")(jnp.arange(N))[None]
    self.sow("intermediates", "embed", x_BxNxD)
    for i in range(self.depth):
      x_BxNxD = MixerBlock(self.width, self.tokens_hidden, int(self.mlp_ratio * self.width),
                           self.activation, self.norm, self.dtype,
                           name=f"block_{i}")(x_BxNxD, branch_mult, dropout)
    x_BxNxD = make_norm(self.norm, True, self.dtype, "final_norm")(x_BxNxD)
    logits_BxC = nn.Dense(self.num_classes, dtype=self.dtype,
                          name="readout")(x_BxNxD.mean(axis=1)).astype(jnp.float32)
    self.sow("intermediates", "logits", logits_BxC)
    return logits_BxC


def _validate(cfg) -> None:
  from hptransfer.configlib import ConfigError, one_of, positive_int
  m = cfg.model
  one_of(m.activation, tuple(ACTIVATIONS), "model.activation")
  one_of(m.norm, ("rmsnorm", "layernorm"), "model.norm")
  positive_int(m.patch, "model.patch")
  positive_int(m.tokens_hidden, "model.tokens_hidden")
  if not m.mlp_ratio > 0:
    raise ConfigError(f"model.mlp_ratio={m.mlp_ratio} must be > 0")


def make_mixer(width: int, depth: int, num_classes: int, input_shape: tuple = (8, 8, 1),
               patch: int = 2, tokens_hidden: int = 32, mlp_ratio: float = 2.0,
               activation: str = "gelu", norm: str = "layernorm",
               compute_dtype: str = "float32") -> Mixer:
  """MLP-Mixer image classifier (images [B, H, W, C] -> logits [B, classes])."""
  from hptransfer import models
  H, W = input_shape[:2]
  if H % patch or W % patch:
    raise models.ModelError(f"model.patch={patch} does not divide the images' "
                            f"{H}x{W} pixels; pick a divisor of both")
  return Mixer(num_classes=num_classes, width=width, depth=depth, patch=patch,
               tokens_hidden=tokens_hidden, mlp_ratio=mlp_ratio, activation=activation,
               norm=norm, dtype=models.dtype(compute_dtype))


def _register():
  from hptransfer import models
  models.register("mixer", tasks=("classification",), validate=_validate)(make_mixer)


_register()
