"""Learning-rate schedules as factors of the peak LR.

``constant``, ``cosine`` (warmup + cosine to ``final_lr_ratio``), ``linear``
(warmup + linear decay) and ``wsd`` (warmup, stable, then linear decay over the
last ``decay_fraction`` of the steps).  Warmup is linear from 0 over
``warmup_steps``.

The values are optax's (``join_schedules`` of ``linear_schedule`` warmup and
``cosine_decay_schedule`` / ``linear_schedule`` tails; tested against them),
written with jnp so that the run length, the warmup, the final ratio and the
decay fraction may be traced values.  They live in the optimizer state, so
runs that differ only in them share one compiled step (optax's schedules need
them as Python numbers).
"""
from __future__ import annotations

import jax.numpy as jnp

SCHEDULES = ("constant", "cosine", "wsd", "linear")
# Config fields of a schedule that are numbers in the optimizer state.
SCHEDULE_HPARAMS = ("warmup_steps", "final_lr_ratio", "decay_fraction")


def factor(name: str, count, total_steps, warmup_steps=0, final_lr_ratio=0.0,
           decay_fraction=0.2):
  """LR factor (peak 1) at the 0-based step ``count`` of a ``total_steps`` run."""
  t = jnp.asarray(count, jnp.float32)
  total = jnp.asarray(total_steps, jnp.float32)
  w = jnp.asarray(warmup_steps, jnp.float32)
  end = jnp.asarray(final_lr_ratio, jnp.float32)
  warm = jnp.clip(t / jnp.maximum(w, 1.0), 0.0, 1.0)
  rest = jnp.maximum(total - w, 1.0)
  u = t - w                                     # steps since the warmup ended
  if name == "constant":
    tail = jnp.ones_like(t)
  elif name == "cosine":
    tail = end + (1 - end) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(u, 0.0, rest) / rest))
  elif name == "linear":
    tail = end + (1 - end) * (1 - jnp.clip(u, 0.0, rest) / rest)
  elif name == "wsd":
    decay = jnp.maximum(jnp.round(jnp.asarray(decay_fraction, jnp.float32) * total), 1.0)
    stable_end = jnp.maximum(total - decay, w)
    d = t - stable_end
    tail = jnp.where(d < 0, 1.0, end + (1 - end) * (1 - jnp.clip(d, 0.0, decay) / decay))
  else:
    raise ValueError(f"optimizer.schedule={name!r} is not one of {', '.join(SCHEDULES)}")
  return jnp.where(t < w, warm, tail)


def check(name: str) -> None:
  """Fail at build time: ``factor`` only runs when the step is traced."""
  if name not in SCHEDULES:
    raise ValueError(f"optimizer.schedule={name!r} is not one of {', '.join(SCHEDULES)}; "
                     "set --config.optimizer.schedule=<one of them>")
