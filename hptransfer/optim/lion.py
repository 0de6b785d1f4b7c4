"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"):
``sign(b1 * m + (1 - b1) * g)`` with ``m`` an EMA of rate ``b2``; optax's
``scale_by_lion``.

Its updates are signs, one size per coordinate as Adam's are, so it takes
the ``adam`` family's width rules.  The paper's defaults are b1 = 0.9,
b2 = 0.99 (set ``optimizer.b2=0.99``; the shared default 0.95 is Adam's) and
an LR 3-10x below AdamW's with a decay 3-10x above.
"""
from __future__ import annotations

import optax

from hptransfer.optim import Optimizer, OptimizerError, register


def _betas(ocfg):
  for field in ("b1", "b2"):
    if not 0.0 <= ocfg[field] < 1.0:
      raise OptimizerError(f"optimizer.{field}={ocfg[field]} must lie in [0, 1)")


register(Optimizer(
    name="lion", family="adam", has_eps=False, hparams=("b1", "b2"),
    direction=lambda ocfg, hp: optax.inject_hyperparams(optax.scale_by_lion)(
        b1=hp["b1"], b2=hp["b2"]),
    checks=(_betas,), doc="optax.scale_by_lion (sign updates)"))
