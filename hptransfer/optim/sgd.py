"""SGD with (heavy-ball or Nesterov) momentum: optax's ``trace``; the ``sgd``
family of the parameterization table.  ``optimizer.b1`` is the momentum."""
from __future__ import annotations

import optax

from hptransfer.optim import Optimizer, OptimizerError, register


def _momentum(ocfg):
  if not 0.0 <= ocfg.b1 < 1.0:
    raise OptimizerError(f"optimizer.b1={ocfg.b1} (SGD's momentum) must lie in [0, 1)")


register(Optimizer(
    name="sgd", family="sgd", has_eps=False, hparams=("b1",),
    direction=lambda ocfg, hp: optax.inject_hyperparams(optax.trace, static_args=("nesterov",))(
        decay=hp["b1"], nesterov=bool(ocfg.nesterov)),
    checks=(_momentum,),
    doc="optax.trace (momentum optimizer.b1, Nesterov with optimizer.nesterov)"))
