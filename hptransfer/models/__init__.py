"""Models in a registry; a user's model enters the same way.

A model is a *factory*: a callable that takes ``width`` (and optionally
``depth`` and any other keyword) and returns a ``flax.linen.Module``.  The
built-in ones register under a name (``@register("transformer")``); any other
is named by import path in ``model.module`` (``"my_pkg.models:make_model"``),
or passed as a callable to ``hptransfer.parameterize``.

A factory is called with keyword arguments, each taken by name when its
signature has it, from (first wins): ``width`` and ``depth``, what the task
provides (``num_outputs``, and ``vocab_size`` and ``seq_len`` for language
modelling, ``num_classes`` and ``input_shape`` for classification), then the
keys of the ``model`` config section.  A parameter it requires that none of
these provides is an error naming it, before any work.

The module's ``__call__`` gets the task's inputs, plus the two muP knobs as
keyword arguments when it declares them: ``attn_scale`` (what multiplies the
queries before the q.k product: use it instead of ``1/sqrt(head_dim)``) and
``branch_mult`` (what multiplies every residual branch: ``x + branch_mult *
f(x)``).  Models know nothing of muP beyond these two knobs; forward
multipliers of single leaves are applied to the params they are given.

Two more are u-muP's unit-scaled ops (``parameterization.name=umup``; a
model that does not declare them gets u-muP's table alone, and a warning):
``residual``, an array ``[2 * depth, 2]`` whose row ``i`` is ``(a, b)`` in
``x = a * x + b * f_i(norm(x))`` for branch ``i`` (block ``i // 2``'s
attention, then its MLP); and ``act_mult``, the activation's input multiplier,
applied as ``unit_activation(fn, h, act_mult)``.  Both are ``None`` under any
other parameterization.

A further call-time keyword, ``dropout`` (the rate, ``model.dropout``), is how a
model takes dropout: a traced value, so the trials of one vmapped group can
each have their own rate.  Apply it with ``models.dropout(self, x, rate)``
(flax's ``nn.Dropout`` needs a Python float); it draws from the ``dropout``
rng, which the training step passes and evaluation does not.

Adding a built-in model is one module in this package that calls
``register`` (it is imported with the package).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Config keys of the model section that are never factory arguments
# (``dropout`` is a call-time knob: see the module docstring).
RESERVED = ("name", "module", "dropout")


class ModelError(ValueError):
  """A model that cannot be built or used; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class Model:
  """A registered model: its factory, the tasks it serves, and a check of
  its config section (domains, before any work)."""
  name: str
  factory: Callable
  tasks: tuple[str, ...] = ("lm",)
  validate: Callable | None = None
  doc: str = ""


REGISTRY: dict[str, Model] = {}


def register(name: str, tasks: tuple[str, ...] = ("lm",), validate: Callable | None = None):
  """Decorator: ``@register("mixer", tasks=("classification",))`` on a factory."""
  def deco(factory):
    REGISTRY[name] = Model(name=name, factory=factory, tasks=tuple(tasks), validate=validate,
                           doc=(inspect.getdoc(factory) or "").split("\n")[0])
    return factory
  return deco


def names() -> tuple[str, ...]:
  return tuple(sorted(REGISTRY))


def import_factory(spec: str, field: str = "model.module") -> Callable:
  """``"pkg.module:attr"`` (or ``"pkg.module.attr"``) -> the callable."""
  if ":" in spec:
    mod_name, _, attr = spec.partition(":")
  else:
    mod_name, _, attr = spec.rpartition(".")
  if not mod_name or not attr:
    raise ModelError(f"{field}={spec!r} is not 'package.module:factory'; set "
                     f"--config.{field}=my_pkg.models:make_model")
  try:
    mod = importlib.import_module(mod_name)
  except ImportError as e:
    raise ModelError(f"{field}={spec!r}: cannot import {mod_name!r} ({e}); put its "
                     "package on PYTHONPATH (or pip install it) and check the spelling") from None
  if not hasattr(mod, attr):
    public = sorted(n for n in vars(mod) if not n.startswith("_") and callable(vars(mod)[n]))
    raise ModelError(f"{field}={spec!r}: module {mod_name!r} has no {attr!r} (its callables: "
                     f"{', '.join(public) or 'none'})")
  factory = getattr(mod, attr)
  if not callable(factory):
    raise ModelError(f"{field}={spec!r} is a {type(factory).__name__}, not a callable that "
                     "returns a flax.linen.Module")
  return factory


def resolve(mcfg) -> tuple[Callable, str, Model | None]:
  """(factory, what to call it in messages, registry entry or None) of a
  ``model`` config section: ``model.module`` when set, else ``model.name``."""
  spec = mcfg.get("module", "") or ""
  if spec:
    return import_factory(spec), f"model.module={spec!r}", None
  if mcfg.name not in REGISTRY:
    raise ModelError(f"model.name={mcfg.name!r} is not one of {', '.join(names())}; set "
                     "--config.model.name=<one of them>, or --config.model.module="
                     "my_pkg.models:make_model for a model of your own")
  entry = REGISTRY[mcfg.name]
  return entry.factory, f"model.name={mcfg.name!r}", entry


def _parameters(factory) -> tuple[dict, bool]:
  try:
    sig = inspect.signature(factory)
  except (TypeError, ValueError):
    return {}, True
  params = {n: p for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
  var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
  return params, var_kw


def accepts(factory, name: str) -> bool:
  params, var_kw = _parameters(factory)
  return name in params or var_kw


def check_factory(factory, where: str) -> None:
  """A factory must take ``width`` (by that name)."""
  params, var_kw = _parameters(factory)
  if "width" not in params and not var_kw:
    raise ModelError(
        f"{where}: {getattr(factory, '__name__', factory)}{_sig(factory)} has no width "
        "knob: a model factory must take the width as a keyword argument named `width` "
        "(def make_model(width, ...) -> nn.Module, or a Module with a `width` field)")


def _sig(factory) -> str:
  try:
    return str(inspect.signature(factory))
  except (TypeError, ValueError):
    return "(...)"


def call(factory, where: str, width: int, depth: int | None = None,
         context: dict | None = None, config: dict | None = None):
  """``factory(width=..., [depth=...], **what it asks for)``, checked."""
  import flax.linen as nn
  check_factory(factory, where)
  params, var_kw = _parameters(factory)
  offered = {"width": width}
  if depth is not None:
    offered["depth"] = depth
  for source in (context or {}, {k: v for k, v in (config or {}).items() if k not in RESERVED}):
    for k, v in source.items():
      offered.setdefault(k, v)
  kwargs = {k: v for k, v in offered.items() if k in params} if not var_kw else dict(offered)
  if not var_kw:
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs
               and n not in ("self",)]
    if missing:
      raise ModelError(
          f"{where}: {getattr(factory, '__name__', factory)}{_sig(factory)} requires "
          f"{missing}, which neither the task ({', '.join(sorted(context or {})) or 'nothing'}) "
          f"nor the model config section provides: give them defaults, or add "
          f"model.<name> keys to your config file")
  try:
    module = factory(**kwargs)
  except TypeError as e:
    raise ModelError(f"{where}: calling {getattr(factory, '__name__', factory)}"
                     f"({', '.join(f'{k}=' for k in kwargs)}) failed: {e}") from None
  if not isinstance(module, nn.Module):
    raise ModelError(f"{where}: the factory returned a {type(module).__name__}, not a "
                     "flax.linen.Module")
  return module


def dropout(module, x, rate):
  """Inverted dropout of ``x`` at ``rate``, which may be traced (vmapped
  across a group's trials), inside a compact ``module``.

  Active only while the module has a ``dropout`` rng (the training step's
  ``rngs={"dropout": key}``); evaluation, init shapes and a call without it
  return ``x`` unchanged.  At rate 0 the mask keeps everything and ``x``
  comes back bit for bit.  Flax's ``nn.Dropout`` compares its rate with 0 in
  Python, so it cannot take a traced one.
  """
  if rate is None or not module.has_rng("dropout"):
    return x
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))


# Probabilists' Gauss-Hermite rule: E[g(z)], z ~ N(0, 1), is sum(w * g(x)).
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(80)
_GH_W = _GH_W / np.sqrt(2 * np.pi)


def unit_activation(fn, x, mult=None):
  """``fn(mult * x) / rms`` with ``rms = sqrt(E[fn(mult * z)^2])`` for unit
  Gaussian ``z``, so a unit-RMS input gives a unit-RMS output at any ``mult``
  (u-muP's scaled activations).  ``mult`` may be traced (a vmapped knob);
  ``None`` is ``fn(x)``."""
  if mult is None:
    return fn(x)
  mult = jnp.asarray(mult, jnp.float32)
  rms = jnp.sqrt(jnp.sum(jnp.asarray(_GH_W, jnp.float32)
                         * fn(mult * jnp.asarray(_GH_X, jnp.float32)) ** 2))
  return (fn(mult.astype(x.dtype) * x) / rms.astype(x.dtype)).astype(x.dtype)


def resolve_attention(attention: str) -> str:
  """``auto``: ``blocked`` on CPU, where skipping the masked blocks is
  1.10x (seq 128) to 1.18x (seq 256) faster for the whole training step
  (docs/performance.md), and ``xla`` elsewhere (``cudnn`` is opt-in: it needs a
  16-bit compute dtype).  The other names pass through."""
  if attention != "auto":
    return attention
  return "blocked" if jax.default_backend() == "cpu" else "xla"


def dtype(name: str) -> Any:
  if name not in DTYPES:
    raise ModelError(f"model.compute_dtype={name!r} is not one of {', '.join(DTYPES)}")
  return DTYPES[name]


for _m in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_m.name}")
