"""From a config to a model, its parameterization table and its knobs."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp

from hptransfer import configlib
from hptransfer import models
from hptransfer import parameterization as P


@dataclasses.dataclass
class Built:
  cfg: Any
  model: Any
  table: dict[str, P.Leaf]
  attn_scale: float
  branch_mult: float

  def init_fn(self):
    """(rng, init_std tree) -> params as stored (before forward multipliers)."""
    tokens = models.dummy_tokens(self.cfg)
    model_init = lambda r: self.model.init(r, tokens)["params"]
    return lambda rng, init_std: P.init_params(model_init, rng, init_std)

  def init(self, rng):
    return jax.jit(self.init_fn())(rng, self.leaf_trees()["init_std"])

  @functools.cached_property
  def _abstract(self):
    tokens = models.dummy_tokens(self.cfg)
    return jax.eval_shape(lambda: self.model.init(jax.random.key(0), tokens)["params"])

  def abstract_params(self):
    return self._abstract

  def leaf_trees(self):
    return P.leaf_trees(self._abstract, self.table)

  def consts(self) -> dict:
    """What a trial feeds its forward pass besides params: the per-leaf forward
    multipliers and the two model knobs, as arrays (so trials can be vmapped)."""
    return {"forward_mult": self.leaf_trees()["forward_mult"],
            "attn_scale": jnp.asarray(self.attn_scale, jnp.float32),
            "branch_mult": jnp.asarray(self.branch_mult, jnp.float32)}

  def apply(self, params, consts, tokens_BxT, capture: bool = False):
    """Logits (and, with ``capture``, the sown intermediates)."""
    effective = P.apply_forward_mults(params, consts["forward_mult"])
    args = (tokens_BxT, consts["attn_scale"], consts["branch_mult"])
    if capture:
      logits, state = self.model.apply({"params": effective}, *args,
                                       mutable=["intermediates"])
      return logits, state["intermediates"]
    return self.model.apply({"params": effective}, *args)

  def describe(self) -> list[dict]:
    return [leaf.row() for leaf in self.table.values()]

  def num_params(self) -> int:
    return sum(math.prod(l.shape) for l in self.table.values())


# Leaf shapes per (model config, width): tracing a Flax init is the slow part
# of building, and a sweep builds many trials of the same shapes.
_SHAPES: dict = {}


def build(cfg) -> Built:
  configlib.validate(cfg)
  p = cfg.parameterization
  tokens = models.dummy_tokens(cfg)

  def shapes(width):
    key = (json.dumps(cfg.model.to_dict(), sort_keys=True, default=str),
           cfg.data.seq_len, models.data_lib.vocab_size(cfg.data), width)
    if key not in _SHAPES:
      model = models.build(cfg, width=width)
      _SHAPES[key] = P.flat_shapes(jax.eval_shape(
          lambda: model.init(jax.random.key(0), tokens)["params"]))
    return _SHAPES[key]

  target = shapes(cfg.model.width)
  base = shapes(p.base_width)
  delta = shapes(2 * p.base_width)
  table = P.build_table(p, cfg.optimizer.name, cfg.optimizer.weight_decay_mode,
                        target, base, delta, cfg.model.depth)
  head_dim = cfg.model.get("head_dim", 1) if cfg.model.name == "transformer" else 1
  return Built(cfg=cfg, model=models.build(cfg), table=table,
               attn_scale=P.attention_scale(p, head_dim),
               branch_mult=P.branch_multiplier(p, cfg.model.depth))
