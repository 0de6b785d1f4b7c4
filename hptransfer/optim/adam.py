"""Adam, AdamW and Adam-atan2 (the ``adam`` family of the parameterization
table: per-coordinate normalised updates).

``adam`` and ``adamw`` are the same update, optax's ``scale_by_adam``; ``adam``
refuses decoupled weight decay so that a config cannot mean L2 decay and get
decoupled decay (``weight_decay_mode=l2`` is torch Adam's L2 decay).
Adam-atan2 (Everett et al. 2024) replaces ``m / (sqrt(v) + eps)`` with
``(4/pi) * atan2(m, sqrt(v))``: no epsilon, bounded, scale-invariant; the 4/pi
makes it equal Adam's step where ``|m| = sqrt(v)``.  optax has no atan2 form,
so its direction is written here on optax's moment helpers.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from hptransfer.optim import Optimizer, OptimizerError, register


def _adam(ocfg, hp):
  return optax.inject_hyperparams(optax.scale_by_adam)(b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])


def _no_decay(ocfg):
  if ocfg.weight_decay and ocfg.weight_decay_mode != "l2":
    raise OptimizerError("optimizer.weight_decay is set with optimizer.name='adam'; "
                         "use --config.optimizer.name=adamw for decoupled decay, or "
                         "optimizer.weight_decay_mode=l2 for torch Adam's L2 decay")


def _betas(ocfg):
  for field in ("b1", "b2"):
    if not 0.0 <= ocfg[field] < 1.0:
      raise OptimizerError(f"optimizer.{field}={ocfg[field]} must lie in [0, 1)")


def _eps(ocfg):
  if not ocfg.eps >= 0:
    raise OptimizerError(f"optimizer.eps={ocfg.eps} must be >= 0")


def scale_by_adam_atan2(b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """``(4/pi) * atan2(m_hat, sqrt(v_hat))`` with Adam's bias-corrected moments."""
  def init(params):
    zeros = optax.tree.zeros_like(params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros,
                                  nu=optax.tree.zeros_like(params))

  def update(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)
    out = jax.tree_util.tree_map(lambda m, v: (4 / math.pi) * jnp.arctan2(m, jnp.sqrt(v)),
                                 mu_hat, nu_hat)
    return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


register(Optimizer(
    name="adam", family="adam", has_eps=True, hparams=("b1", "b2", "eps"),
    direction=_adam, checks=(_no_decay, _betas, _eps),
    doc="optax.scale_by_adam; no weight decay (use adamw)"))
register(Optimizer(
    name="adamw", family="adam", has_eps=True, hparams=("b1", "b2", "eps"),
    direction=_adam, checks=(_betas, _eps),
    doc="optax.scale_by_adam with decoupled weight decay (coupled or independent)"))
register(Optimizer(
    name="adam_atan2", family="adam", has_eps=False, hparams=("b1", "b2"),
    direction=lambda ocfg, hp: optax.inject_hyperparams(scale_by_adam_atan2)(
        b1=hp["b1"], b2=hp["b2"]),
    checks=(_betas,),
    doc="Adam with atan2 instead of epsilon (Everett et al. 2024)"))
