"""The optax transforms every registered optimizer shares: the
parameterization's per-leaf multipliers and the global LR, decay and schedule.

Every number a sweep may vary lives in a transform's *state*, never in a
closure, so trials that differ only in numbers stack on a leading axis and one
``vmap``ped step trains them all (``hptransfer.step``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hptransfer.optim import schedules


# coupled: p -= lr*lr_mult*wd*wd_mult*p (AdamW, SGDW); independent: p -= s_t*wd*wd_mult*p
# (Wortsman et al. 2023); l2: g += wd*wd_mult*p before the direction (torch's SGD and
# Adam weight_decay, what microsoft/mup's MuSGD and MuAdam scale; every leaf decayed).
WEIGHT_DECAY_MODES = ("coupled", "independent", "l2")


class LeafScaleState(NamedTuple):
  scale: Any          # a tree shaped like params


def divide_by_leaf(tree) -> optax.GradientTransformation:
  """Divide each leaf's update by a per-leaf scalar held in the state.

  Before an Adam-like direction with epsilon, dividing the gradient by
  ``eps_mult`` is Adam with epsilon ``eps * eps_mult`` for that leaf:
  ``(g/c) / (|g|/c + eps) = g / (|g| + c * eps)`` (in exact arithmetic; at
  ``eps_mult = 1`` it is the identity, bit for bit).  That is how optax's own
  ``scale_by_adam``, which takes one scalar epsilon, gets per-leaf epsilons.
  """
  def init(params):
    del params
    return LeafScaleState(scale=tree)

  def update(updates, state, params=None):
    del params
    return (jax.tree_util.tree_map(lambda u, c: u / c.astype(u.dtype), updates, state.scale),
            state)

  return optax.GradientTransformation(init, update)


class L2State(NamedTuple):
  wd: jax.Array       # the global decay (a scalar: vmapped across trials)
  wd_mult: Any        # per-leaf multipliers, a tree shaped like params


def add_l2(weight_decay, wd_mult) -> optax.GradientTransformation:
  """``g + wd * wd_mult * p``: L2 decay added to the gradient before the
  direction, as torch's SGD and Adam do with ``weight_decay`` (and so
  microsoft/mup's MuSGD and MuAdam).  The numbers live in the state."""
  def init(params):
    del params
    return L2State(wd=jnp.asarray(weight_decay, jnp.float32), wd_mult=wd_mult)

  def update(updates, state, params):
    return (jax.tree_util.tree_map(lambda g, p, wm: g + (state.wd * wm * p).astype(g.dtype),
                                   updates, params, state.wd_mult), state)

  return optax.GradientTransformation(init, update)


class HpState(NamedTuple):
  count: jax.Array
  hparams: dict   # lr, wd, steps and the schedule's numbers (scalars); lr_mult, wd_mult (trees)


def scale_by_lr_and_decay(hp: dict, lr_mult, wd_mult, total_steps, schedule,
                          weight_decay_mode: str) -> optax.GradientTransformation:
  """Direction ``d`` -> the parameter update, per leaf:

  - coupled decay (torch / optax AdamW): ``-lr_t * lr_mult * (d + wd * wd_mult * p)``;
  - independent decay (Wortsman et al. 2023): ``-lr_t * lr_mult * d - s_t * wd * wd_mult * p``;
  - ``l2``: ``-lr_t * lr_mult * d`` (the decay went into the gradient, ``add_l2``),

  with ``s_t`` the schedule's factor and ``lr_t = lr * s_t``.  ``hp`` holds
  ``lr``, ``weight_decay`` and the schedule's numbers (``SCHEDULE_HPARAMS``).
  ``schedule`` is a name in ``SCHEDULES`` (its numbers in the state), or any
  callable ``count -> factor`` (an optax schedule of peak 1; a closure, so
  not something trials can differ in within a group).
  """
  if not callable(schedule):
    schedules.check(schedule)
  if weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise ValueError(f"optimizer.weight_decay_mode={weight_decay_mode!r} is not one of "
                     f"{', '.join(WEIGHT_DECAY_MODES)}")

  def init(params):
    del params
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    h = {"lr": f32(hp["lr"]), "wd": f32(hp["weight_decay"]),
         "steps": jnp.asarray(total_steps, jnp.int32),
         **{k: f32(hp[k]) for k in schedules.SCHEDULE_HPARAMS},
         "lr_mult": lr_mult, "wd_mult": wd_mult}
    return HpState(count=jnp.zeros([], jnp.int32), hparams=h)

  def update(direction, state, params):
    h = state.hparams
    if callable(schedule):
      s = jnp.asarray(schedule(state.count), jnp.float32)
    else:
      s = schedules.factor(schedule, state.count, h["steps"],
                           *(h[k] for k in schedules.SCHEDULE_HPARAMS))
    lr_t = h["lr"] * s
    tmap = jax.tree_util.tree_map
    if weight_decay_mode == "coupled":
      updates = tmap(lambda d, p, lm, wm: -lr_t * lm * (d + h["wd"] * wm * p),
                     direction, params, h["lr_mult"], h["wd_mult"])
    elif weight_decay_mode == "independent":
      updates = tmap(lambda d, p, lm, wm: -lr_t * lm * d - s * h["wd"] * wm * p,
                     direction, params, h["lr_mult"], h["wd_mult"])
    else:
      updates = tmap(lambda d, lm: -lr_t * lm * d, direction, h["lr_mult"])
    updates = tmap(lambda u, p: u.astype(p.dtype), updates, params)
    return updates, HpState(count=state.count + 1, hparams=h)

  return optax.GradientTransformation(init, update)


def find(opt_state, cls):
  """The first state of type ``cls`` inside ``opt_state`` (chains, nests)."""
  if isinstance(opt_state, cls):
    return opt_state
  if isinstance(opt_state, (tuple, list)):
    for s in opt_state:
      hit = find(s, cls)
      if hit is not None:
        return hit
  return None


def replace(opt_state, cls, fn):
  """``opt_state`` with every state of type ``cls`` inside it mapped by ``fn``."""
  if isinstance(opt_state, cls):
    return fn(opt_state)
  if isinstance(opt_state, tuple) and not hasattr(opt_state, "_fields"):
    return tuple(replace(s, cls, fn) for s in opt_state)
  if isinstance(opt_state, list):
    return [replace(s, cls, fn) for s in opt_state]
  return opt_state
