"""Muon for hidden matrices, Adam for every other leaf, as one optimizer.

Muon (Jordan et al. 2024) orthogonalises each hidden matrix's Nesterov
momentum with a few Newton-Schulz steps: optax's
``optax.contrib.scale_by_muon``.  Embeddings, the readout, biases and gains
take Adam (optax's ``scale_by_adam``, with ``optimizer.b1``, ``b2``, ``eps``)
under the parameterization's Adam rules.  Which leaf is which comes from the
parameterization's table (``Leaf.update``): a hidden leaf of two dims is
Muon's, any other leaf Adam's (a hidden leaf that is not a matrix goes to
Adam, and ``describe`` shows it).

Two width conventions, two names:

- ``muon``: update-RMS matching (Moonshot, "Muon is Scalable", 2025): the
  orthogonalised update times ``0.2 * sqrt(max(fan_in, fan_out))``, so its
  RMS is about AdamW's and AdamW's LR and decay carry over at one size.
  Across width its spectral norm grows as sqrt(width); muP's Muon rule
  divides the hidden LR by ``sqrt(m_in)`` (``Rule.lr_muon``) to undo that.
- ``muon_spectral``: the spectral condition (Yang, Simon & Bernstein 2023):
  times ``sqrt(fan_out / fan_in)``, so ``||dW||`` is already right at every
  width and muP's hidden LR multiplier is 1 (``Rule.lr_muon_spectral``).

Muon's momentum (``optimizer.muon_beta``, 0.95) and Newton-Schulz steps
(``optimizer.ns_steps``, 5) shape the program (optax keeps them in the
closure), so trials that differ in them are separate groups.  Weight decay
is the shared coupled or independent decay on every matrix (Moonshot decays
Muon's matrices as AdamW does); ``l2`` adds it to the gradient first.
"""
from __future__ import annotations

import math

import jax
import optax

from hptransfer.optim import Optimizer, OptimizerError, register

MUON_SCALES = {"muon": "rms", "muon_spectral": "spectral"}
RMS_MATCH = 0.2      # Moonshot's update RMS (AdamW's typical one)


def _shape_scale(convention: str, shape: tuple) -> float:
  fan_in, fan_out = shape[0], math.prod(shape[1:])
  if convention == "rms":
    return RMS_MATCH * math.sqrt(max(fan_in, fan_out))
  return math.sqrt(fan_out / fan_in)


def scale_by_shape(convention: str) -> optax.GradientTransformation:
  """Each orthogonalised update times its convention's shape factor (a
  constant of the leaf's shape; nothing in the state)."""
  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(
        lambda u: u * _shape_scale(convention, u.shape), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def orthogonalise(ns_steps: int = 5, beta: float = 0.95) -> optax.GradientTransformation:
  """optax's Muon direction (Nesterov momentum, then Newton-Schulz with
  Jordan et al.'s quintic coefficients) on every matrix it is given; leaves
  masked out by ``multi_transform`` stay masked."""
  masked = lambda x: isinstance(x, optax.MaskedNode)
  dims = lambda tree: jax.tree_util.tree_map(
      lambda x: x if masked(x) else optax.contrib.MuonDimensionNumbers(), tree, is_leaf=masked)
  return optax.contrib.scale_by_muon(ns_steps=ns_steps, beta=beta, nesterov=True,
                                     weight_dimension_numbers=dims)


def direction(convention: str):
  def make(ocfg, hp, labels=None):
    if labels is None:
      raise OptimizerError(
          f"optimizer.name={ocfg.name!r} needs the parameterization's table to know which "
          "leaves are hidden matrices: build it with hptransfer.parameterize(..., "
          f"optimizer={ocfg.name!r}) and pass p.leaf_trees() to optim.build")
    adam = optax.inject_hyperparams(optax.scale_by_adam)(b1=hp["b1"], b2=hp["b2"],
                                                         eps=hp["eps"])
    muon = optax.chain(orthogonalise(int(ocfg.get("ns_steps", 5)),
                                     float(ocfg.get("muon_beta", 0.95))),
                       scale_by_shape(convention))
    return optax.multi_transform({"muon": muon, "adam": adam}, labels)
  return make


def _checks(ocfg):
  for field in ("b1", "b2"):
    if not 0.0 <= ocfg[field] < 1.0:
      raise OptimizerError(f"optimizer.{field}={ocfg[field]} must lie in [0, 1)")
  if not ocfg.eps >= 0:
    raise OptimizerError(f"optimizer.eps={ocfg.eps} must be >= 0")
  beta = ocfg.get("muon_beta", 0.95)
  if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
    raise OptimizerError(f"optimizer.muon_beta={beta!r} must lie in [0, 1) (Muon's "
                         "momentum; 0.95 is the usual value)")
  steps = ocfg.get("ns_steps", 5)
  if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 20:
    raise OptimizerError(f"optimizer.ns_steps={steps!r} must be an integer in [1, 20] "
                         "(Newton-Schulz iterations; 5 is the usual value)")


for _name, _conv in MUON_SCALES.items():
  register(Optimizer(
      name=_name, family="muon", has_eps=True, hparams=("b1", "b2", "eps"),
      direction=direction(_conv), checks=(_checks,), muon_scale=_conv,
      doc=("optax.contrib.scale_by_muon on hidden matrices x "
           + ("0.2 sqrt(max fan) (RMS-matched)" if _conv == "rms"
              else "sqrt(fan_out/fan_in) (spectral)") + ", Adam elsewhere")))
