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

Schedules are factors of the peak LR, with optax's values: ``constant``, ``cosine``
(warmup + cosine to ``final_lr_ratio``), ``linear`` (warmup + linear decay) and
``wsd`` (warmup, stable, then linear decay over the last ``decay_fraction`` of
the steps).  Warmup is linear from 0 over ``warmup_steps``.  The run length
is a value in the optimizer state, so runs of different lengths share one
compiled step (``schedule_factor``).
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
  hparams: dict   # lr, wd, eps, steps (scalars) and lr_mult, wd_mult, eps_mult (trees)


SCHEDULES = ("constant", "cosine", "wsd", "linear")   # the branches of schedule_factor


def schedule_factor(ocfg, count, total_steps):
  """LR factor (peak 1) at the 0-based step ``count`` of a ``total_steps`` run.

  The same values as optax's ``join_schedules`` of ``linear_schedule`` warmup
  and ``cosine_decay_schedule`` / ``linear_schedule`` tails (tested against
  them), written with jnp so that ``total_steps`` may be a traced value: the
  run length then lives in the optimizer state, and runs of different lengths
  share one compiled step (optax's schedules need it as a Python number).
  """
  w = int(ocfg.warmup_steps)
  end = float(ocfg.final_lr_ratio)
  t = jnp.asarray(count, jnp.float32)
  total = jnp.asarray(total_steps, jnp.float32)
  warm = jnp.clip(t / w, 0.0, 1.0) if w > 0 else jnp.zeros_like(t)
  rest = jnp.maximum(total - w, 1.0)
  u = t - w                                     # steps since the warmup ended
  if ocfg.schedule == "constant":
    tail = jnp.ones_like(t)
  elif ocfg.schedule == "cosine":
    tail = end + (1 - end) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(u, 0.0, rest) / rest))
  elif ocfg.schedule == "linear":
    tail = end + (1 - end) * (1 - jnp.clip(u, 0.0, rest) / rest)
  elif ocfg.schedule == "wsd":
    decay = jnp.maximum(jnp.round(float(ocfg.decay_fraction) * total), 1.0)
    stable_end = jnp.maximum(total - decay, w)
    d = t - stable_end
    tail = jnp.where(d < 0, 1.0, end + (1 - end) * (1 - jnp.clip(d, 0.0, decay) / decay))
  else:
    raise ValueError(f"optimizer.schedule={ocfg.schedule!r} is unknown")
  return jnp.where(t < w, warm, tail)


def _check_schedule(ocfg):
  """Fail at build time: ``schedule_factor`` only runs when the step is traced."""
  if ocfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule={ocfg.schedule!r} is unknown")


def schedule(ocfg, total_steps: int):
  """LR factor (peak 1) as a function of the 0-based step."""
  _check_schedule(ocfg)
  return lambda count: schedule_factor(ocfg, count, total_steps)


def hp_optimizer(name: str, lr: float, weight_decay: float, mults: dict,
                 sched, total_steps: int, *, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8, nesterov: bool = False,
                 weight_decay_mode: str = "coupled") -> optax.GradientTransformation:
  """``mults``: trees ``lr_mult``, ``wd_mult``, ``eps_mult`` shaped like params;
  ``sched(count, total_steps)``: the LR factor, with the run length read from
  the state (``hparams["steps"]``), not baked into the compiled update."""
  is_sgd = name == "sgd"

  def init(params):
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)
    return HpOptState(count=jnp.zeros([], jnp.int32), mu=zeros(),
                      nu=None if is_sgd else zeros(),
                      hparams=_hparams(lr, weight_decay, eps, mults, total_steps))

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
    s = sched(state.count, hp["steps"])
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


def _hparams(lr, weight_decay, eps, mults: dict, total_steps: int) -> dict:
  return {"lr": jnp.asarray(lr, jnp.float32),
          "wd": jnp.asarray(weight_decay, jnp.float32),
          "eps": jnp.asarray(eps, jnp.float32),
          "steps": jnp.asarray(total_steps, jnp.int32),
          **{k: mults[k] for k in ("lr_mult", "wd_mult", "eps_mult")}}


def hparams(ocfg, mults: dict, total_steps: int) -> dict:
  """The values ``hp_optimizer``'s state holds for this optimizer config and
  run length."""
  return _hparams(ocfg.lr, ocfg.weight_decay, ocfg.eps, mults, total_steps)


def get_hparams(opt_state) -> dict | None:
  """The hparams of the HpOptState in ``opt_state`` (possibly inside a chain)."""
  if isinstance(opt_state, HpOptState):
    return opt_state.hparams
  if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
    for s in opt_state:
      hp = get_hparams(s)
      if hp is not None:
        return hp
  return None


def with_hparams(opt_state, hp: dict):
  """``opt_state`` (possibly inside a chain) with its HpOptState's hparams replaced."""
  if isinstance(opt_state, HpOptState):
    return opt_state._replace(hparams=hp)
  if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
    return tuple(with_hparams(s, hp) for s in opt_state)
  return opt_state


def build(ocfg, mults: dict, total_steps: int) -> optax.GradientTransformation:
  """The optimizer of an ``optimizer`` config section."""
  _check_schedule(ocfg)
  sched = lambda count, steps: schedule_factor(ocfg, count, steps)
  tx = hp_optimizer(ocfg.name, ocfg.lr, ocfg.weight_decay, mults, sched, total_steps,
                    b1=ocfg.b1, b2=ocfg.b2,
                    eps=ocfg.eps, nesterov=ocfg.nesterov,
                    weight_decay_mode=ocfg.weight_decay_mode)
  if ocfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(ocfg.grad_clip), tx)
  return tx
