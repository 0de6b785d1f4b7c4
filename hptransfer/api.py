"""``parameterize``: any Flax model under SP, muP, NTK, MF (or a registered
parameterization), with its init, forward pass, optimizer and describe table.

    import hptransfer as hpt
    p = hpt.parameterize(make_model, example_input, width=512, base_width=64,
                         parameterization="mup", optimizer="adamw")
    params = p.init(jax.random.key(0))
    tx = p.optimizer(lr=2**-7, weight_decay=0.1, schedule="cosine", steps=1000)
    logits = p.apply(params, x)          # forward multipliers applied
    print(p.describe())                  # one row per leaf

``make_model(width, [depth], ...) -> flax.linen.Module``.  The roles of the
leaves come from the model's parameter shapes at ``base_width`` and at twice
it (``jax.eval_shape``: nothing is allocated), as microsoft/mup's base shapes
do; at ``width == base_width`` every parameterization is SP, bit for bit.

``p.apply`` is the only way to run the model: it multiplies each leaf by its
forward multiplier on the way in, and passes the two model knobs when the
module's ``__call__`` declares them as keyword arguments:

- ``attn_scale``: multiply the queries by it instead of ``1/sqrt(head_dim)``
  (muP's ``1/head_dim``, anchored to SP at the base head dim; needs
  ``head_dim=``);
- ``branch_mult``: multiply every residual branch by it, ``x + branch_mult *
  f(x)`` (``(depth/base_depth)^-alpha``; 1 unless ``alpha > 0``).

They are arguments, not constants, so a sweep can vary ``attn_mult`` or
``alpha`` across the trials of one compiled group.  A third, ``dropout`` (the
rate, ``parameterize(..., dropout=0.1)``), goes to a ``__call__`` that declares
it, for the same reason: dropout is a vmapped value.  It is active only when
``apply`` gets ``rngs={"dropout": key}``, as the training steps pass it
(``hptransfer.step``: the key folds the trial's dropout key with the step, so
a resumed run draws the masks it would have drawn).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable

import jax
import jax.numpy as jnp

from hptransfer import models
from hptransfer import optim
from hptransfer import parameterization as P

KNOBS = tuple(f.name for f in dataclasses.fields(P.Knobs))


class Rows(list):
  """The describe rows (a list of dicts), printed as a table."""

  def __init__(self, rows, header: str = ""):
    super().__init__(rows)
    self.header = header

  def __str__(self) -> str:
    from hptransfer.describe import table
    return (self.header + "\n\n" if self.header else "") + table(self)

  def to_pandas(self):
    import pandas as pd
    return pd.DataFrame(list(self))


def _call_kwargs(module) -> set[str]:
  import inspect
  try:
    sig = inspect.signature(module.__call__)
  except (TypeError, ValueError):
    return set()
  if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
    return {"attn_scale", "branch_mult"}
  return {n for n in ("attn_scale", "branch_mult", "dropout", "residual", "act_mult")
          if n in sig.parameters}


DROPOUT_SALT = 0x64726F70   # "drop": separates the dropout stream from the init's


def dropout_rng(consts: dict, step):
  """The dropout rng of training step ``step`` (both may be traced): the
  trial's dropout key (``consts["dropout_key"]``, its seed folded with a
  salt) folded with the step, so a resumed run draws the same masks."""
  return jax.random.fold_in(jax.random.wrap_key_data(consts["dropout_key"]), step)


# Abstract params (ShapeDtypeStruct trees) per (factory, arguments, example
# input, width): tracing a Flax init is the slow part of building (0.1 s for
# the width-128 Transformer), and a sweep builds many trials that share shapes.
_SHAPES: dict = {}


class Parameterized:
  """A model under a parameterization.  Build it with ``parameterize``.

  Attributes: ``model`` (the Flax module at the target width), ``table``
  (path -> ``parameterization.Leaf``), ``attn_scale`` and ``branch_mult``
  (the two knobs' values), ``width``, ``base_width``, ``depth``,
  ``base_depth``, ``name`` (the parameterization), ``optimizer_name``,
  ``knobs`` (``parameterization.Knobs``).
  """

  def __init__(self, *, factory: Callable, example_input, width: int, base_width: int,
               depth: int | None, base_depth: int | None, name: str, optimizer_name: str,
               weight_decay_mode: str, knobs: P.Knobs, head_dim: int | None,
               context: dict | None = None, config: dict | None = None,
               where: str = "make_model", dropout: float = 0.0, dropout_seed: int = 0):
    self.factory, self.where = factory, where
    self.example_input = example_input
    self.width, self.base_width = width, base_width
    self.depth, self.base_depth = depth, base_depth
    self.name, self.optimizer_name = name, optimizer_name
    self.weight_decay_mode, self.knobs = weight_decay_mode, knobs
    self.head_dim = head_dim
    self._context, self._config = dict(context or {}), dict(config or {})
    self.cfg = None     # the config, when built from one (hptransfer.build)
    self.task = None    # the task, likewise

    self.model = self._module(width)
    self.call_kwargs = _call_kwargs(self.model)
    if "attn_scale" in self.call_kwargs and head_dim is None:
      raise models.ModelError(
          f"{where}: the module's __call__ takes attn_scale, so the parameterization "
          "needs its attention head dimension: pass head_dim= to hptransfer.parameterize "
          "(model.head_dim in a config)")
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
            and 0.0 <= dropout < 1.0):
      raise models.ModelError(f"dropout={dropout!r} must be a rate in [0, 1) "
                              "(0 turns dropout off)")
    if dropout and "dropout" not in self.call_kwargs:
      raise models.ModelError(
          f"{where}: dropout={dropout} was asked for, but the module's __call__ takes no "
          "`dropout` keyword: declare `dropout=None` in __call__ and apply it with "
          "hptransfer.models.dropout(self, x, dropout), or set the rate to 0")
    self.dropout, self.dropout_seed = float(dropout), int(dropout_seed)
    self.attn_scale = (P.attention_scale(name, knobs, head_dim) if head_dim else 1.0)
    self.branch_mult = P.branch_multiplier(knobs, depth or 1)
    # u-muP's unit-scaled ops, where the module takes them.
    self.unit_ops = P.get(name).unit_ops
    self.residual = self.act_mult = None
    if self.unit_ops:
      if "residual" in self.call_kwargs:
        if depth is None:
          raise models.ModelError(
              f"{where}: the module's __call__ takes residual (u-muP's unit-scaled adds, "
              "one row per branch of depth blocks), but the factory takes no `depth`")
        self.residual = P.unit_residual(knobs, depth)
      if "act_mult" in self.call_kwargs:
        self.act_mult = float(knobs.act_mult)
      missing = sorted({"residual", "act_mult"} - self.call_kwargs)
      if missing:
        import warnings
        warnings.warn(
            f"{where}: parameterization {name!r}: the module's __call__ takes no "
            f"{' / '.join(missing)}, so u-muP's unit-scaled residual adds / activation "
            "are not applied; its table (unit init, unit-scaled matmuls, LRs) is",
            stacklevel=3)
    target, base = self._shapes(width), self._shapes(base_width)
    delta = self._shapes(2 * base_width)
    if base == delta:
      raise models.ModelError(
          f"{where}: the model has the same parameters at width {base_width} and "
          f"{2 * base_width}, so it has no width knob the parameterization can scale: "
          "make the factory's `width` argument set the hidden sizes")
    opt = optim.get(optimizer_name)
    self.table = P.build_table(name, knobs, opt.family, opt.has_eps, weight_decay_mode,
                               target, base, delta, depth or 1, width,
                               muon_scale=opt.muon_scale or "rms")

  # -- building ---------------------------------------------------------------

  def _module(self, width: int):
    return models.call(self.factory, self.where, width=width, depth=self.depth,
                       context=self._context, config=self._config)

  def _knob_kwargs(self, consts=None) -> dict:
    c = consts if consts is not None else {"attn_scale": self.attn_scale,
                                           "branch_mult": self.branch_mult,
                                           "dropout": self.dropout,
                                           "residual": self.residual,
                                           "act_mult": self.act_mult}
    return {k: c[k] for k in ("attn_scale", "branch_mult", "dropout", "residual", "act_mult")
            if k in self.call_kwargs and k in c and c[k] is not None}

  def _init_variables(self, module, rng):
    rngs = {"params": rng, "dropout": rng}
    return module.init(rngs, self.example_input, **self._knob_kwargs())

  def _shapes(self, width: int) -> dict:
    return P.flat_shapes(self._abstract_at(width))

  def _abstract_at(self, width: int):
    """The params tree at ``width`` as ``jax.ShapeDtypeStruct`` leaves, traced
    once per process for what reaches the factory (``_SHAPES``)."""
    x = self.example_input
    # Keyed on what reaches the factory: models.RESERVED keys (the call-time
    # dropout rate among them) never do, so they share one entry.
    factory_cfg = {k: v for k, v in self._config.items() if k not in models.RESERVED}
    key = (self.factory, json.dumps({"ctx": self._context, "cfg": factory_cfg},
                                    sort_keys=True, default=str),
           tuple(x.shape), str(x.dtype), width, self.depth,
           tuple(sorted(self._knob_kwargs())))
    if key not in _SHAPES:
      module = self.model if width == self.width else self._module(width)
      try:
        variables = jax.eval_shape(lambda: self._init_variables(module, jax.random.key(0)))
      except (models.ModelError, P.ParameterizationError):
        raise
      except Exception as e:   # the user's module fails on its example input
        raise models.ModelError(
            f"{self.where}: the model at width {width} fails on the example input "
            f"(shape {tuple(x.shape)}, {x.dtype}): {type(e).__name__}: {e}") from e
      others = sorted(set(variables) - {"params", "intermediates"})
      if others:
        raise models.ModelError(
            f"{self.where}: the model has variable collections {others} besides params; "
            "only params can be parameterized (use a norm without running statistics, "
            "e.g. LayerNorm or RMSNorm instead of BatchNorm)")
      _SHAPES[key] = variables["params"]
    return _SHAPES[key]

  # -- parameters ---------------------------------------------------------------

  @property
  def _abstract(self):
    return self._abstract_at(self.width)

  def abstract_params(self):
    """The params tree as ``jax.ShapeDtypeStruct`` leaves."""
    return self._abstract

  def leaf_trees(self, fields: tuple[str, ...] = P.LEAF_FIELDS) -> dict:
    """Per-leaf ``init_std``, ``forward_mult``, ``lr_mult``, ``wd_mult`` and
    ``eps_mult`` (or the ``fields`` named) as params-shaped trees of scalars
    (arrays: vmappable); with Muon also the static ``labels`` tree."""
    return P.leaf_trees(self._abstract, self.table, fields)

  def init_fn(self):
    """``(rng, init_std tree) -> params`` as stored (before forward multipliers);
    the stds are an argument so that a sweep can vmap over them."""
    model_init = lambda r: self._init_variables(self.model, r)["params"]
    return lambda rng, init_std: P.init_params(model_init, rng, init_std)

  def init(self, rng):
    """The stored params: every matrix drawn ``N(0, init_std^2)`` from its own
    key (folded from its path), 1-D leaves as the module initialises them."""
    return jax.jit(self.init_fn())(rng, self.leaf_trees(("init_std",))["init_std"])

  def num_params(self) -> int:
    return sum(math.prod(leaf.shape) for leaf in self.table.values())

  # -- forward ----------------------------------------------------------------

  @property
  def dropout_on(self) -> bool:
    """Whether training draws dropout masks (a rate above 0): it shapes the
    compiled step, so trials with and without dropout are separate groups."""
    return self.dropout > 0.0

  def consts(self) -> dict:
    """What the forward pass takes besides params: the per-leaf forward
    multipliers and the knobs, as arrays (so trials can be vmapped); with
    dropout, its rate and the trial's dropout key data."""
    c = {"forward_mult": self.leaf_trees(("forward_mult",))["forward_mult"],
         "attn_scale": jnp.asarray(self.attn_scale, jnp.float32),
         "branch_mult": jnp.asarray(self.branch_mult, jnp.float32)}
    if self.residual is not None:
      c["residual"] = jnp.asarray(self.residual, jnp.float32)
    if self.act_mult is not None:
      c["act_mult"] = jnp.asarray(self.act_mult, jnp.float32)
    if "dropout" in self.call_kwargs:
      c["dropout"] = jnp.asarray(self.dropout, jnp.float32)
      c["dropout_key"] = jax.random.key_data(
          jax.random.fold_in(jax.random.key(self.dropout_seed), DROPOUT_SALT))
    return c

  def apply(self, params, *args, consts: dict | None = None, capture: bool = False,
            **kwargs):
    """The model's output on ``args``, with the forward multipliers applied.

    ``consts`` (``self.consts()`` by default) may be traced or stacked.  Other
    keywords go to ``flax.linen.Module.apply`` (``rngs={"dropout": key}``,
    ...).  With ``capture=True`` returns ``(output, intermediates)``: what the
    module sows into ``"intermediates"``, or, when it sows nothing, every
    submodule's output (flax's ``capture_intermediates``).
    """
    c = self.consts() if consts is None else consts
    effective = P.apply_forward_mults(params, c["forward_mult"])
    knob_kw = self._knob_kwargs(c)
    if not capture:
      return self.model.apply({"params": effective}, *args, **knob_kw, **kwargs)
    out, state = self.model.apply({"params": effective}, *args, **knob_kw,
                                  mutable=["intermediates"], **kwargs)
    inter = state.get("intermediates", {})
    if not jax.tree_util.tree_leaves(inter):
      out, state = self.model.apply({"params": effective}, *args, **knob_kw,
                                    mutable=["intermediates"], capture_intermediates=True,
                                    **kwargs)
      inter = state["intermediates"]
    return out, inter

  # -- the knobs ----------------------------------------------------------------

  def attention_scale(self, head_dim: int) -> float:
    """The attention-logit multiplier for heads of ``head_dim``."""
    return P.attention_scale(self.name, self.knobs, head_dim)

  @property
  def branch_multiplier(self) -> float:
    """What multiplies every residual branch: ``(depth/base_depth)^-alpha``."""
    return self.branch_mult

  # -- optimizer ---------------------------------------------------------------

  def optimizer(self, lr: float, weight_decay: float = 0.0, schedule="constant",
                steps: int | None = None, **kwargs):
    """The optax ``GradientTransformation`` of this parameterization's
    optimizer with its per-leaf LR, weight-decay and epsilon multipliers.

    ``schedule``: ``"constant"``, ``"cosine"``, ``"linear"``, ``"wsd"`` (these
    need ``steps``; ``warmup_steps=``, ``final_lr_ratio=``,
    ``decay_fraction=`` shape them), or a callable ``count -> factor`` (e.g.
    ``optax.warmup_cosine_decay_schedule(0.0, 1.0, 100, 1000)``).  Other
    keywords: ``b1``, ``b2``, ``eps``, ``nesterov``, ``grad_clip`` (defaults:
    ``optim.DEFAULTS``).  ``lr`` is the base-shape LR: the one you tuned on
    the proxy.
    """
    if "weight_decay_mode" in kwargs and kwargs["weight_decay_mode"] != self.weight_decay_mode:
      raise optim.OptimizerError(
          "weight_decay_mode is fixed when parameterizing (it sets wd_mult): pass "
          f"weight_decay_mode={kwargs['weight_decay_mode']!r} to hptransfer.parameterize")
    kwargs.pop("weight_decay_mode", None)
    if steps is None:
      if isinstance(schedule, str) and schedule != "constant":
        raise optim.OptimizerError(f"schedule={schedule!r} needs the run length: pass steps=")
      steps = max(int(kwargs.get("warmup_steps", 0)), 1)
    ocfg = optim.section(name=self.optimizer_name, lr=lr, weight_decay=weight_decay,
                         weight_decay_mode=self.weight_decay_mode,
                         schedule=schedule, **kwargs)
    optim.validate(ocfg, steps)
    return optim.build(ocfg, self.leaf_trees(), steps)

  # -- what it did --------------------------------------------------------------

  def header(self) -> str:
    absolute = P.get(self.name).scale == "absolute"
    first = (f"parameterization={self.name}  optimizer={self.optimizer_name}  "
             f"width={self.width} " + (f"(absolute scale; roles from widths {self.base_width} "
                                       f"and {2 * self.base_width})" if absolute
                                       else f"(base {self.base_width})"))
    if self.depth is not None:
      first += (f"  depth={self.depth} (block LRs x depth^{P.get(self.name).depth_lr:g})"
                if P.get(self.name).depth_lr is not None else
                f"  depth={self.depth} (base {self.base_depth}, alpha={self.knobs.alpha})")
    second = []
    if self.unit_ops:
      k = self.knobs
      second.append("unit-scaled residual adds (residual_mult="
                    f"{k.residual_mult:g}, residual_attn_ratio={k.residual_attn_ratio:g})"
                    if self.residual is not None else "residual adds NOT unit-scaled (the "
                    "model takes no `residual`)")
      second.append(f"unit-scaled activation (act_mult={k.act_mult:g})"
                    if self.act_mult is not None else "activation NOT unit-scaled (the "
                    "model takes no `act_mult`)")
    if "attn_scale" in self.call_kwargs:
      second.append(f"attention logit scale={self.attn_scale:.6g}")
    if "branch_mult" in self.call_kwargs and self.residual is None:
      second.append(f"residual branch multiplier={self.branch_mult:.6g}")
    second.append(f"params={self.num_params():,}")
    return first + "\n" + "  ".join(second)

  def describe(self) -> Rows:
    """One row per leaf: path, shape, role, fan-in and fan-out multipliers,
    init std, forward multiplier, LR / weight-decay / epsilon multipliers."""
    return Rows([leaf.row() for leaf in self.table.values()], self.header())

  def __repr__(self) -> str:
    return (f"Parameterized({self.name}, width={self.width}, base_width={self.base_width}, "
            f"depth={self.depth}, optimizer={self.optimizer_name}, "
            f"{len(self.table)} leaves)")


def parameterize(make_model: Callable, example_input, *, width: int, base_width: int,
                 parameterization: str = "mup", optimizer: str = "adamw",
                 depth: int | None = None, base_depth: int | None = None,
                 alpha: float = 0.0, head_dim: int | None = None,
                 weight_decay_mode: str = "coupled", role_rules=(), dropout: float = 0.0,
                 **knobs) -> Parameterized:
  """``make_model`` under ``parameterization`` at ``width``, relative to ``base_width``.

  Args:
    make_model: ``make_model(width, [depth]) -> flax.linen.Module`` (or a
      Module class with a ``width`` field).
    example_input: an array the module is called on (its batch size does not
      matter); used for shapes and init.
    width, base_width: the target width and the proxy's (where every
      parameterization equals SP).
    parameterization: ``sp``, ``mup``, ``ntk``, ``mf``, ``umup``
      (``parameterization.names()``).
    optimizer: ``sgd``, ``adam``, ``adamw``, ``adam_atan2``, ``lion``, ...
      (``optim.names()``); its family picks the per-leaf LR rules.
    depth, base_depth, alpha: depth rules; ``make_model`` then gets ``depth``.
      Residual branches are scaled by ``(depth/base_depth)^-alpha`` (0: muP,
      0.5: Depth-muP, 1: CompleteP's branch scale) and, for ``alpha > 0``,
      leaves inside blocks (``block_regex``, default ``block_<i>/``) get the
      depth LR and epsilon corrections.
    head_dim: the attention head dimension, when ``__call__`` takes ``attn_scale``.
    weight_decay_mode: ``coupled`` (AdamW), ``independent``, or ``l2`` (torch
      SGD/Adam's L2 decay through the gradient, as microsoft/mup's MuSGD).
    role_rules: ``[(regex, role), ...]`` for leaves whose role the shapes do
      not tell (``input``, ``hidden``, ``output``, ``vector``, ``scalar``).
    dropout: the rate passed to a ``__call__`` that declares ``dropout``
      (active when ``apply`` gets ``rngs={"dropout": key}``).
    **knobs: ``init_std``, ``output_mult``, ``embed_mult``, ``embed_lr_mult``,
      ``attn_mult``,
      ``base_head_dim``, ``eps_rule`` (``none``, ``width``, ``completep``),
      ``zero_init_readout``, ``zero_init_query``,
      ``query_regex``, ``block_regex``; u-muP's ``residual_mult``,
      ``residual_attn_ratio``, ``act_mult`` (``parameterization.Knobs``).
  """
  return _parameterize(make_model, example_input, width=width, base_width=base_width,
                       parameterization=parameterization, optimizer=optimizer, depth=depth,
                       base_depth=base_depth, alpha=alpha, head_dim=head_dim,
                       weight_decay_mode=weight_decay_mode, role_rules=role_rules,
                       dropout=dropout, **knobs)


def _positive_int(v, field):
  if not isinstance(v, int) or isinstance(v, bool) or v < 1:
    raise P.ParameterizationError(f"{field}={v!r} must be a positive integer")


def _parameterize(make_model, example_input, *, width, base_width, parameterization,
                  optimizer, depth, base_depth, alpha, head_dim, weight_decay_mode,
                  role_rules, context=None, config=None, where=None, dropout=0.0,
                  dropout_seed=0, **knobs):
  where = where or f"make_model={getattr(make_model, '__name__', make_model)}"
  unknown = sorted(set(knobs) - set(KNOBS))
  if unknown:
    raise P.ParameterizationError(f"hptransfer.parameterize: unknown settings {unknown}; "
                                  f"the knobs are {', '.join(KNOBS)}")
  _positive_int(width, "width")
  _positive_int(base_width, "base_width")
  if base_width > width:
    raise P.ParameterizationError(
        f"base_width={base_width} is larger than width={width}; the base shape is the "
        f"small proxy you tune on: set base_width to at most {width}")
  P.get(parameterization)
  optim.get(optimizer)
  if weight_decay_mode not in optim.WEIGHT_DECAY_MODES:
    raise optim.OptimizerError(f"weight_decay_mode={weight_decay_mode!r} is not one of "
                               f"{', '.join(optim.WEIGHT_DECAY_MODES)}")
  if not 0.0 <= float(alpha) <= 1.0:
    raise P.ParameterizationError(f"alpha={alpha} must lie in [0, 1] "
                                  "(0: muP, 0.5: Depth-muP, 1: CompleteP)")
  if depth is not None:
    _positive_int(depth, "depth")
    if not models.accepts(make_model, "depth"):
      raise models.ModelError(f"{where}: depth={depth} was given, but the factory takes no "
                              "`depth` argument")
  if base_depth is not None:
    _positive_int(base_depth, "base_depth")
  if float(alpha) and depth is None:
    raise P.ParameterizationError(f"alpha={alpha} needs depth= (and base_depth=)")
  models.check_factory(make_model, where)
  if not hasattr(example_input, "shape") or not hasattr(example_input, "dtype"):
    raise models.ModelError(f"{where}: example_input must be an array (got "
                            f"{type(example_input).__name__})")
  k = P.Knobs(base_width=base_width, base_depth=base_depth or depth or 1, alpha=float(alpha),
              role_rules=tuple(tuple(r) for r in role_rules), **knobs)
  return Parameterized(factory=make_model, example_input=jnp.asarray(example_input),
                       width=width, base_width=base_width, depth=depth,
                       base_depth=base_depth or depth, name=parameterization,
                       optimizer_name=optimizer, weight_decay_mode=weight_decay_mode,
                       knobs=k, head_dim=head_dim, context=context, config=config, where=where,
                       dropout=dropout, dropout_seed=dropout_seed)

