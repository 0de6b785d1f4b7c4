"""From a config to its task and its model under the parameterization.

``build(cfg)`` is ``hptransfer.parameterize`` with every argument read from
the config: the factory from ``model.module`` (an import path) or
``model.name`` (a registered model), the example input and the factory's
task arguments from the task (``task.name``), the knobs from the
``parameterization`` section.  The result carries ``.cfg`` and ``.task``.
It checks, before any work, that the model's output is what the task's loss
needs.
"""
from __future__ import annotations

import jax

from hptransfer import api
from hptransfer import configlib
from hptransfer import models
from hptransfer import parameterization as P
from hptransfer import tasks


def build(cfg, check_output: bool = True) -> api.Parameterized:
  """``check_output=False`` skips tracing the model to check its output
  shape: for the other trials of a sweep group, whose first trial's build
  checked the same shapes (most of a build's time)."""
  configlib.validate(cfg)
  task = tasks.get(cfg)
  m, p = cfg.model, cfg.parameterization
  factory, where, _ = models.resolve(m)
  knobs = P.Knobs.from_config(p)
  kw = {f: getattr(knobs, f) for f in api.KNOBS
        if f not in ("base_width", "base_depth", "alpha", "role_rules")}
  depth = m.depth if models.accepts(factory, "depth") else None
  built = api._parameterize(
      factory, task.example_input(), width=m.width, base_width=p.base_width,
      parameterization=p.name, optimizer=cfg.optimizer.name,
      depth=depth, base_depth=p.base_depth if depth is not None else None,
      alpha=p.alpha if depth is not None else 0.0, head_dim=m.get("head_dim") or None,
      weight_decay_mode=cfg.optimizer.weight_decay_mode, role_rules=knobs.role_rules,
      context=task.context(), config=m.to_dict(), where=where,
      dropout=float(m.get("dropout", 0.0)), dropout_seed=int(cfg.seed), **kw)
  if float(p.alpha) and depth is None:
    raise P.ParameterizationError(
        f"parameterization.alpha={p.alpha} needs a model with a depth knob, but {where} "
        "takes no `depth` argument; use alpha=0")
  built.cfg, built.task = cfg, task
  if not check_output:
    return built
  out = jax.eval_shape(built.apply, built.abstract_params(), task.example_input(2))
  task.check_output(out.shape, 2, where)
  return built
