"""Optimizers in a registry, built on optax's transforms.

An optimizer is one ``Optimizer`` entry: its update *direction* (an optax
transform at unit learning rate, usually optax's own, e.g.
``optax.scale_by_adam``) and the parameterization *family* whose per-leaf LR
rules it follows (``sgd``, or ``adam`` for per-coordinate normalised updates).
``build`` wraps every direction the same way::

    clip_by_global_norm (optimizer.grad_clip > 0)
    -> + wd * wd_mult * p                (weight_decay_mode=l2: torch's L2 decay)
    -> divide the gradient by eps_mult   (optimizers with an epsilon: per-leaf eps)
    -> direction                         (optax; its numbers in its state)
    -> -lr * schedule * lr_mult, plus weight decay * wd_mult (coupled or independent)

Every number a trial may vary (``lr``, ``weight_decay``, the schedule's warmup,
final ratio and decay fraction, and the optimizer's own ``hparams`` such as
Adam's betas and epsilon) is held in the optimizer *state*, not in a closure:
``init`` may be vmapped over them (``hptransfer.step.init_group``) and one
compiled ``update`` serves every trial.  ``tests/test_optim.py`` checks that
contract for every registered optimizer.

Adding one is one file in this package that calls ``register`` (it is imported
with the package); see ``lion.py``.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from typing import Callable

import optax

from hptransfer.optim import schedules
from hptransfer.optim.schedules import SCHEDULE_HPARAMS, SCHEDULES
from hptransfer.optim.transforms import (WEIGHT_DECAY_MODES, HpState, add_l2, divide_by_leaf,
                                         find, scale_by_lr_and_decay)

FAMILIES = ("sgd", "adam", "muon")
COMMON_HPARAMS = ("lr", "weight_decay") + SCHEDULE_HPARAMS


# The defaults of an ``optimizer`` config section (configs/transformer.py
# writes the same values out, commented; a test checks they agree).
DEFAULTS = dict(name="adamw", lr=2.0 ** -7, weight_decay=0.0, weight_decay_mode="coupled",
                b1=0.9, b2=0.95, eps=1e-8, nesterov=False, grad_clip=0.0,
                schedule="constant", warmup_steps=0, decay_fraction=0.2, final_lr_ratio=0.0,
                muon_beta=0.95, ns_steps=5)


class OptimizerError(ValueError):
  """A bad optimizer setting; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """A registered optimizer.

  ``direction(ocfg, hp)`` returns the optax transform of the update direction
  at unit LR; every number it uses must come from ``hp`` (whose entries may be
  traced) and be kept in its state.  ``hparams`` are the ``optimizer.*`` config
  fields it reads from ``hp`` (beyond ``COMMON_HPARAMS``); they are vmapped
  values in sweeps.  ``checks`` validate the ``optimizer`` config section
  (domains, not only types) and raise ``OptimizerError``.  The ``muon``
  family's direction also gets the static tree of update labels
  (``"muon"`` / ``"adam"`` per leaf, ``Parameterized.leaf_trees()["labels"]``),
  and ``muon_scale`` names its width convention (``rms`` or ``spectral``).
  """
  name: str
  family: str
  direction: Callable
  hparams: tuple[str, ...] = ()
  has_eps: bool = False
  checks: tuple[Callable, ...] = ()
  doc: str = ""
  muon_scale: str = ""


REGISTRY: dict[str, Optimizer] = {}


def register(opt: Optimizer) -> Optimizer:
  if opt.family not in FAMILIES:
    raise ValueError(f"optimizer {opt.name!r}: family {opt.family!r} is not one of "
                     f"{', '.join(FAMILIES)}")
  REGISTRY[opt.name] = opt
  return opt


def names() -> tuple[str, ...]:
  return tuple(sorted(REGISTRY))


def get(name: str) -> Optimizer:
  if name not in REGISTRY:
    raise OptimizerError(f"optimizer.name={name!r} is not one of {', '.join(names())}; "
                         "set --config.optimizer.name=<one of them>")
  return REGISTRY[name]


def family(name: str) -> str:
  return get(name).family


def vmapped_fields(name: str) -> tuple[str, ...]:
  """The ``optimizer.*`` fields of this optimizer that ride on a sweep
  group's trial axis (everything else shapes the compiled program)."""
  return COMMON_HPARAMS + get(name).hparams


def validate(ocfg, total_steps: int | None = None) -> None:
  """Domain checks of an ``optimizer`` section, before any work."""
  opt = get(ocfg.name)
  for field in ("lr", "weight_decay", "eps", "grad_clip", "b1", "b2", "final_lr_ratio",
                "decay_fraction", "warmup_steps"):
    v = ocfg.get(field, 0.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      raise OptimizerError(f"optimizer.{field}={v!r} must be a finite number; set "
                           f"--config.optimizer.{field}=<a number>")
  if not ocfg.lr > 0:
    raise OptimizerError(f"optimizer.lr={ocfg.lr} must be > 0")
  if not ocfg.weight_decay >= 0:
    raise OptimizerError(f"optimizer.weight_decay={ocfg.weight_decay} must be >= 0")
  if ocfg.weight_decay_mode not in WEIGHT_DECAY_MODES:
    raise OptimizerError(f"optimizer.weight_decay_mode={ocfg.weight_decay_mode!r} is not one "
                         f"of {', '.join(WEIGHT_DECAY_MODES)}; set "
                         "--config.optimizer.weight_decay_mode=coupled, independent or l2")
  if not callable(ocfg.schedule) and ocfg.schedule not in SCHEDULES:
    raise OptimizerError(f"optimizer.schedule={ocfg.schedule!r} is not one of "
                         f"{', '.join(SCHEDULES)}; set --config.optimizer.schedule=<one of them>")
  if total_steps is not None and not 0 <= ocfg.warmup_steps <= total_steps:
    raise OptimizerError(f"optimizer.warmup_steps={ocfg.warmup_steps} must lie in "
                         f"[0, train.steps={total_steps}]")
  if not 0.0 <= ocfg.final_lr_ratio <= 1.0:
    raise OptimizerError(f"optimizer.final_lr_ratio={ocfg.final_lr_ratio} must lie in [0, 1]")
  if not 0.0 < ocfg.decay_fraction <= 1.0:
    raise OptimizerError(f"optimizer.decay_fraction={ocfg.decay_fraction} must lie in (0, 1]")
  if not ocfg.grad_clip >= 0:
    raise OptimizerError(f"optimizer.grad_clip={ocfg.grad_clip} must be >= 0 (0: no clipping)")
  for check in opt.checks:
    check(ocfg)


def section(**fields):
  """An ``optimizer`` config section: ``DEFAULTS`` with ``fields`` replaced
  (an unknown field is an error naming it).  ``schedule`` may be a callable."""
  import ml_collections
  unknown = sorted(set(fields) - set(DEFAULTS))
  if unknown:
    raise OptimizerError(f"unknown optimizer settings {unknown}; known: "
                         f"{', '.join(sorted(DEFAULTS))}")
  return ml_collections.ConfigDict({**DEFAULTS, **fields})


def hparams(ocfg) -> dict:
  """The numbers of this optimizer config that its state holds (and a
  sweep stacks), by ``optimizer.*`` field name."""
  return {k: ocfg[k] for k in vmapped_fields(ocfg.name)}


def build(ocfg, mults: dict, total_steps, hp: dict | None = None) -> optax.GradientTransformation:
  """The optimizer of an ``optimizer`` config section.

  ``mults``: trees ``lr_mult``, ``wd_mult``, ``eps_mult`` shaped like params
  (``Parameterized.leaf_trees()``), and for Muon the static ``labels`` tree.  ``hp`` overrides the numbers of ``ocfg``
  (``hparams``); they and ``total_steps`` may be traced.
  """
  opt = get(ocfg.name)
  hp = {**hparams(ocfg), **(hp or {})}
  parts = []
  if ocfg.grad_clip:
    parts.append(optax.clip_by_global_norm(ocfg.grad_clip))
  if ocfg.weight_decay_mode == "l2":
    parts.append(add_l2(hp["weight_decay"], mults["wd_mult"]))
  if opt.has_eps:
    parts.append(divide_by_leaf(mults["eps_mult"]))
  if opt.family == "muon":
    parts.append(opt.direction(ocfg, hp, mults.get("labels")))
  else:
    parts.append(opt.direction(ocfg, hp))
  parts.append(scale_by_lr_and_decay(hp, mults["lr_mult"], mults["wd_mult"], total_steps,
                                     ocfg.schedule, ocfg.weight_decay_mode))
  return optax.chain(*parts)


def get_hparams(opt_state) -> dict | None:
  """LR, decay, run length, schedule numbers and per-leaf multipliers held in
  ``opt_state`` (what ``build`` made), or None."""
  st = find(opt_state, HpState)
  return None if st is None else st.hparams


def with_run_length(opt_state, total_steps):
  """``opt_state`` with the run length its schedule reads set to ``total_steps``
  (a run resumed with a longer ``train.steps``)."""
  import jax.numpy as jnp
  from hptransfer.optim.transforms import replace
  return replace(opt_state, HpState, lambda st: st._replace(hparams={
      **st.hparams, "steps": jnp.asarray(total_steps, st.hparams["steps"].dtype)}))


def schedule_factor(ocfg, count, total_steps):
  """LR factor (peak 1) at the 0-based step ``count`` of a ``total_steps`` run
  (``total_steps`` may be traced)."""
  return schedules.factor(ocfg.schedule, count, total_steps,
                          *(ocfg[k] for k in SCHEDULE_HPARAMS))


def schedule(ocfg, total_steps: int):
  """LR factor (peak 1) as a function of the 0-based step."""
  schedules.check(ocfg.schedule)
  return lambda count: schedule_factor(ocfg, count, total_steps)


for _m in pkgutil.iter_modules(__path__):
  if _m.name not in ("schedules", "transforms"):
    importlib.import_module(f"{__name__}.{_m.name}")
