"""Optimizers with per-leaf lr / weight-decay / epsilon multipliers.

One optax transformation holds the update direction (SGD with momentum, Adam,
Adam-atan2) and the parameterization's per-leaf multipliers.  The global
hyperparameters (``lr``, ``wd``) and the multiplier trees live in the optimizer
*state*, not in the compiled program, so a sweep can stack trials that differ
only in them on a leading axis and vmap one step over all.

Weight decay (``optimizer.weight_decay_mode``):

- ``coupled`` (torch / optax AdamW): ``p -= lr_t * lr_mult * wd * wd_mult * p``.
  The decay per step moves with the learning rate.
- ``independent`` (Wortsman et al. 2023): ``p -= s_t * wd * wd_mult * p`` with
  ``s_t`` the schedule's factor in [0, 1]: changing the LR leaves the decay alone.

Adam-atan2 (Everett et al. 2024) replaces ``m / (sqrt(v) + eps)`` with
``(4/pi) * atan2(m, sqrt(v))``: no epsilon, bounded, scale-invariant; the 4/pi
makes it equal Adam's step where ``|m| = sqrt(v)``.

Schedules are optax's, as factors of the peak LR: ``constant``, ``cosine``
(warmup + cosine to ``final_lr_ratio``), ``linear`` (warmup + linear decay) and
``wsd`` (warmup, stable, then linear decay over the last ``decay_fraction`` of
the steps).  Warmup is linear from 0 over ``warmup_steps``.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class HpOptState(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any
  hparams: dict   # lr, wd, eps (scalars) and lr_mult, wd_mult, eps_mult (trees)


def schedule(ocfg, total_steps: int) -> optax.Schedule:
  """LR factor (peak 1) as a function of the 0-based step."""
  w = int(ocfg.warmup_steps)
  end = float(ocfg.final_lr_ratio)
  warm = optax.linear_schedule(0.0, 1.0, w)
  rest = max(total_steps - w, 1)
  if ocfg.schedule == "constant":
    tail = [optax.constant_schedule(1.0)]
    bounds = [w]
  elif ocfg.schedule == "cosine":
    tail = [optax.cosine_decay_schedule(1.0, rest, alpha=end)]
    bounds = [w]
  elif ocfg.schedule == "linear":
    tail = [optax.linear_schedule(1.0, end, rest)]
    bounds = [w]
  elif ocfg.schedule == "wsd":
    decay = max(int(round(ocfg.decay_fraction * total_steps)), 1)
    stable_end = max(total_steps - decay, w)
    tail = [optax.constant_schedule(1.0), optax.linear_schedule(1.0, end, decay)]
    bounds = [w, stable_end]
  else:
    raise ValueError(f"optimizer.schedule={ocfg.schedule!r} is unknown")
  return optax.join_schedules([warm] + tail, bounds)


def hp_optimizer(name: str, lr: float, weight_decay: float, mults: dict,
                 sched: optax.Schedule, *, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8, nesterov: bool = False,
                 weight_decay_mode: str = "coupled") -> optax.GradientTransformation:
  """``mults``: trees ``lr_mult``, ``wd_mult``, ``eps_mult`` shaped like params."""
  is_sgd = name == "sgd"

  def init(params):
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)
    return HpOptState(count=jnp.zeros([], jnp.int32), mu=zeros(),
                      nu=None if is_sgd else zeros(),
                      hparams=_hparams(lr, weight_decay, eps, mults))

  def update(grads, state, params):
    hp = state.hparams
    count = state.count + 1
    tmap = jax.tree_util.tree_map
    if is_sgd:
      mu = tmap(lambda m, g: b1 * m + g, state.mu, grads)
      direction = tmap(lambda m, g: g + b1 * m, mu, grads) if nesterov else mu
      nu = None
    else:
      mu = tmap(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
      nu = tmap(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
      c1 = 1 - b1 ** count.astype(jnp.float32)
      c2 = 1 - b2 ** count.astype(jnp.float32)
      if name == "adam_atan2":
        direction = tmap(lambda m, v: (4 / math.pi) * jnp.arctan2(m / c1, jnp.sqrt(v / c2)),
                         mu, nu)
      else:
        direction = tmap(
            lambda m, v, em: (m / c1) / (jnp.sqrt(v / c2) + hp["eps"] * em),
            mu, nu, hp["eps_mult"])
    s = sched(state.count)
    lr_t = hp["lr"] * s
    if weight_decay_mode == "coupled":
      updates = tmap(lambda d, p, lm, wm: -lr_t * lm * (d + hp["wd"] * wm * p),
                     direction, params, hp["lr_mult"], hp["wd_mult"])
    else:
      updates = tmap(lambda d, p, lm, wm: -lr_t * lm * d - s * hp["wd"] * wm * p,
                     direction, params, hp["lr_mult"], hp["wd_mult"])
    updates = tmap(lambda u, p: u.astype(p.dtype), updates, params)
    return updates, HpOptState(count=count, mu=mu, nu=nu, hparams=hp)

  return optax.GradientTransformation(init, update)


def _hparams(lr, weight_decay, eps, mults: dict) -> dict:
  return {"lr": jnp.asarray(lr, jnp.float32),
          "wd": jnp.asarray(weight_decay, jnp.float32),
          "eps": jnp.asarray(eps, jnp.float32),
          **{k: mults[k] for k in ("lr_mult", "wd_mult", "eps_mult")}}


def hparams(ocfg, mults: dict) -> dict:
  """The values ``hp_optimizer``'s state holds for this optimizer config."""
  return _hparams(ocfg.lr, ocfg.weight_decay, ocfg.eps, mults)


def with_hparams(opt_state, hp: dict):
  """``opt_state`` (possibly inside a chain) with its HpOptState's hparams replaced."""
  if isinstance(opt_state, HpOptState):
    return opt_state._replace(hparams=hp)
  if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
    return tuple(with_hparams(s, hp) for s in opt_state)
  return opt_state


def build(ocfg, mults: dict, total_steps: int) -> optax.GradientTransformation:
  """The optimizer of an ``optimizer`` config section."""
  tx = hp_optimizer(ocfg.name, ocfg.lr, ocfg.weight_decay, mults,
                    schedule(ocfg, total_steps), b1=ocfg.b1, b2=ocfg.b2,
                    eps=ocfg.eps, nesterov=ocfg.nesterov,
                    weight_decay_mode=ocfg.weight_decay_mode)
  if ocfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(ocfg.grad_clip), tx)
  return tx
