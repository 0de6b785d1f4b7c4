"""Parameterizations as data: roles, per-leaf scales, and a registry of rules.

Every parameter leaf ``w`` enters the model as ``W = forward_mult * w`` with
``w0 ~ N(0, init_std**2)`` and is trained with learning rate
``lr * schedule(t) * lr_mult`` (Everett et al. 2024, "abc" view).  Each factor is
a power of the leaf's fan-in and fan-out width multipliers

    m_in  = fan_in  / base_fan_in        m_out = fan_out / base_fan_out

(and, for leaves inside residual blocks, of the depth multiplier
``d = depth / base_depth``), so at the base shape every parameterization *is*
standard parameterization, bit for bit.

Shape conventions.  A leaf's last axis is its fan-out and the product of the
others its fan-in; a 1-D leaf (bias, norm gain) has fan-in 1.  A lookup table
(flax ``nn.Embed``'s ``embedding`` leaf) is a one-hot input layer: its rows are
read one at a time, so its init uses fan-in 1 (std = ``init_std``), not the
vocabulary size.

Roles (microsoft/mup's "infshape" view).  Comparing the leaf's shape in a model
at ``base_width`` and at ``2 * base_width`` (``jax.eval_shape``: no memory) tells
which axes grow with width:

    input   fan-in fixed,   fan-out grows     (embeddings, first layer)
    hidden  both grow                         (attention and MLP matrices)
    output  fan-in grows,   fan-out fixed     (readout)
    vector  a 1-D leaf that grows             (biases, norm gains)
    scalar  nothing grows                     (readout bias, qk-norm gains)

``parameterization.role_rules`` — a list of ``(regex, role)`` — overrides the
inference; a rule that matches no leaf, or a leaf that two rules give different
roles, is an error naming it.

Width rules: a ``Parameterization`` is one ``Rule`` per role (exponents on
(m_in, m_out) of the init std, the forward multiplier and the LR of each
optimizer family), registered by name.  SP, muP, NTK and mean-field are in
``hptransfer/parameterizations/abc.py``; adding one is one module in that
package that calls ``register``.  ``python -m hptransfer.describe`` (or
``Parameterized.describe()``) shows what one does to a given model.

Depth rules (Depth-muP, Yang et al. 2023 / Bordelon et al. 2023; CompleteP,
Dey et al. 2025).  The model multiplies every residual branch by ``d**-alpha``.
For ``alpha > 0`` every leaf inside a residual block (``block_regex``) also gets

    Adam-family LR  x d**(alpha - 1)      (alpha=1/2: 1/sqrt(d); alpha=1: 1)
    SGD LR          x d**(2*alpha - 1)    (alpha=1/2: 1)
    Adam epsilon    x d**-alpha           (the block gradients shrink by d**-alpha)

derived from asking each block's contribution to the residual stream to move by
Theta(1/d) per step.  ``alpha = 0`` is plain muP: no depth correction at all.

Weight decay.  ``wd_mult`` keeps the per-step decay fraction of a matrix the
same at every width and depth: with decay coupled to the LR (torch/optax AdamW:
``p -= lr * lr_mult * wd * wd_mult * p``) that is ``wd_mult = 1 / lr_mult`` (as
microsoft/mup and CompleteP do); with independent decay (``p -= schedule * wd *
p``, Wortsman et al. 2023) it is 1.  Vectors and scalars are not decayed
(``wd_mult = 0``).  With torch's L2 decay (``weight_decay_mode=l2``, added to
the gradient) every leaf is decayed, at ``wd_mult = 1 / lr_mult``, as
microsoft/mup's MuSGD and MuAdam scale torch's ``weight_decay``.

Adam epsilon (``eps_rule``).  ``none`` (the default) leaves it unscaled
across width, as microsoft/mup does (the depth rule above still applies in
blocks).  ``width``: hidden matrices' epsilon x ``1/m_in``, since their
gradients shrink as 1/fan_in under muP and a fixed epsilon would come to
dominate them.  ``completep``: CompleteP's rule (Dey et al. 2025), every
leaf's epsilon x ``(width/base_width)^-1 (depth/base_depth)^-alpha``.  Or use
``adam_atan2``, which has no epsilon.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ROLES = ("input", "hidden", "output", "vector", "scalar")
EPS_RULES = ("none", "width", "completep")


@dataclasses.dataclass(frozen=True)
class Rule:
  """Width exponents of one role: each pair is (exponent of m_in, of m_out)."""
  init: tuple[float, float]      # stored std, relative to SP's std at base shape
  forward: tuple[float, float]   # forward multiplier
  lr_sgd: tuple[float, float]
  lr_adam: tuple[float, float]
  # Muon on a hidden matrix, by width convention (hptransfer/optim/muon.py):
  # RMS-matched (x 0.2 sqrt(max fan)) and spectral (x sqrt(fan_out/fan_in)).
  # None: the parameterization has no Muon rule for this role.
  lr_muon: tuple[float, float] | None = None
  lr_muon_spectral: tuple[float, float] | None = None

  def lr(self, family: str, update: str = "", muon_scale: str = "rms"):
    if update == "muon":
      return self.lr_muon if muon_scale == "rms" else self.lr_muon_spectral
    return self.lr_sgd if family == "sgd" else self.lr_adam


@dataclasses.dataclass(frozen=True)
class Parameterization:
  """A registered parameterization: one ``Rule`` per role, and how the
  attention logits scale with the head dimension (``sqrt``: 1/sqrt(d_head) as
  in SP; ``linear``: 1/d_head, anchored to equal SP at the base head dim;
  ``unit``: ``attn_mult / d_head``, no anchor).

  ``scale="relative"`` (SP, muP, NTK, MF): the exponents apply to the width
  multipliers (m_in, m_out) and the init std is relative to SP's at the base
  shape, so the parameterization is SP at the base shape.  ``"absolute"``
  (u-muP): they apply to the leaf's own fan-in and fan-out and the init std is
  absolute (exponents (0, 0): unit init), so there is no base shape; the base
  width still tells which axes grow (the roles).

  ``lookup`` is a rule for embedding tables that replaces the input rule
  (u-muP's embedding LR differs from a dense input layer's).  ``unit_ops``:
  the model's residual adds and activation are unit-scaled (the ``residual``
  and ``act_mult`` call knobs, ``hptransfer.models``).  ``depth_lr``: an
  exponent of the absolute depth on the LR of every leaf in a residual block,
  for every optimizer family, in place of ``alpha``'s rules.  ``fixed`` maps
  knobs the parameterization does not have to the one value they must keep.
  The knobs only a parameterization with unit ops has are ``UNIT_KNOBS``."""
  name: str
  rules: Mapping[str, Rule]
  attention: str = "sqrt"
  doc: str = ""
  scale: str = "relative"
  lookup: Rule | None = None
  unit_ops: bool = False
  depth_lr: float | None = None
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)


REGISTRY: dict[str, Parameterization] = {}


def register(p: Parameterization) -> Parameterization:
  missing = set(ROLES) - set(p.rules)
  if missing:
    raise ValueError(f"parameterization {p.name!r} has no rule for roles {sorted(missing)}")
  if p.attention not in ("sqrt", "linear", "unit"):
    raise ValueError(f"parameterization {p.name!r}: attention={p.attention!r} is not "
                     "'sqrt', 'linear' or 'unit'")
  if p.scale not in ("relative", "absolute"):
    raise ValueError(f"parameterization {p.name!r}: scale={p.scale!r} is not "
                     "'relative' or 'absolute'")
  REGISTRY[p.name] = p
  return p


def names() -> tuple[str, ...]:
  return tuple(REGISTRY)


def get(name: str) -> Parameterization:
  if name not in REGISTRY:
    raise ParameterizationError(
        f"parameterization.name={name!r} is not one of {', '.join(names())}; set "
        "--config.parameterization.name=<one of them>")
  return REGISTRY[name]


class _Table(Mapping):
  """``TABLE[name][role] -> Rule``, read from the registry."""

  def __getitem__(self, name):
    return get(name).rules

  def __iter__(self):
    return iter(REGISTRY)

  def __len__(self):
    return len(REGISTRY)


TABLE = _Table()


@dataclasses.dataclass(frozen=True)
class Knobs:
  """The parameterization's settings besides its name (the ``parameterization``
  config section; ``hptransfer.parameterize`` takes them as keywords)."""
  base_width: int = 64
  base_depth: int = 1
  alpha: float = 0.0              # branch mult (depth/base_depth)^-alpha
  init_std: float = 1.0           # matrices N(0, init_std^2/fan_in), tables N(0, init_std^2)
  output_mult: float = 1.0        # readout forward multiplier
  embed_mult: float = 1.0         # embedding-table forward multiplier
  embed_lr_mult: float = 1.0      # embedding tables' LR multiplier (u-muP's eta_emb)
  attn_mult: float = 1.0          # multiplies the attention-logit scale
  base_head_dim: int = 0          # 0: the model's head dim (muP's 1/d anchor)
  zero_init_readout: bool = False
  zero_init_query: bool = False
  query_regex: str = r"(^|/)query/kernel$"
  block_regex: str = r"(^|/)block_\d+/"
  role_rules: tuple = ()          # ((regex, role), ...) overriding inference
  eps_rule: str = "none"          # Adam epsilon across width: none | width | completep
  # u-muP's own (parameterizations with unit_ops; the others refuse them):
  residual_mult: float = 1.0      # residual branches' weight against the embedding
  residual_attn_ratio: float = 1.0  # attention branches' weight against the MLP's
  act_mult: float = 1.0           # activation input multiplier, act(a x) / rms

  @classmethod
  def from_config(cls, pcfg) -> "Knobs":
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: pcfg[k] for k in fields if k in pcfg}
    kw["role_rules"] = tuple(tuple(r) for r in kw.get("role_rules", ()))
    return cls(**kw)


UNIT_KNOBS = ("residual_mult", "residual_attn_ratio", "act_mult")


def check_knobs(name: str, knobs: "Knobs") -> None:
  """Refuse a knob that parameterization ``name`` does not have: u-muP's
  fixed ones (``Parameterization.fixed``) away from their value, and
  u-muP's own (``UNIT_KNOBS``) under a parameterization without unit ops."""
  p = get(name)
  for field, value in p.fixed.items():
    if getattr(knobs, field) != value:
      raise ParameterizationError(
          f"parameterization.{field}={getattr(knobs, field)!r}: {name} has no such knob "
          f"({p.doc}); set --config.parameterization.{field}={value!r}, or pick a "
          "parameterization that has it (mup)")
  if not p.unit_ops:
    for field in UNIT_KNOBS:
      if getattr(knobs, field) != 1.0:
        raise ParameterizationError(
            f"parameterization.{field}={getattr(knobs, field)} is a u-muP knob; {name} "
            f"has none: set --config.parameterization.{field}=1.0, or "
            "--config.parameterization.name=umup")


def depth_exponents(alpha: float, family: str) -> dict[str, float]:
  """Exponents of d = depth/base_depth for leaves inside residual blocks."""
  if alpha == 0:
    return {"branch": 0.0, "lr": 0.0, "eps": 0.0}
  lr = (alpha - 1.0) if family in ("adam", "muon") else (2.0 * alpha - 1.0)
  return {"branch": -alpha, "lr": lr, "eps": -alpha}


DESCRIBE_KEYS = ("path", "shape", "role", "fan_in_mult", "fan_out_mult",
                 "init_std", "forward_mult", "lr_mult", "wd_mult", "eps_mult", "update")


@dataclasses.dataclass(frozen=True)
class Leaf:
  path: str
  shape: tuple[int, ...]
  role: str
  fan_in_mult: float
  fan_out_mult: float
  init_std: float          # std of the stored leaf at init (0: constant init)
  forward_mult: float      # what the model multiplies the stored leaf by
  lr_mult: float           # what multiplies the global learning rate
  wd_mult: float           # what multiplies the global weight decay
  eps_mult: float | None   # what multiplies Adam's epsilon (None: no epsilon)
  in_block: bool
  lookup: bool             # an embedding table (one-hot input)
  update: str = ""         # which direction updates it: the family's, or "muon"

  def row(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["shape"] = list(self.shape)
    return {k: d[k] for k in DESCRIBE_KEYS}


class ParameterizationError(ValueError):
  """A leaf or rule the parameterization cannot place; the message names it."""


def path_str(key_path) -> str:
  parts = []
  for k in key_path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return "/".join(parts)


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_str(p): tuple(x.shape) for p, x in leaves}


def infer_roles(target: Mapping[str, tuple], base: Mapping[str, tuple],
                delta: Mapping[str, tuple],
                rules: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
  """Role of every leaf from its shapes at the target, base and delta widths."""
  for rx, role in rules:
    if role not in ROLES:
      raise ParameterizationError(
          f"parameterization.role_rules: role {role!r} for {rx!r} is not one of "
          f"{', '.join(ROLES)}")
  used = set()
  roles = {}
  for path, shape in target.items():
    if path not in base or path not in delta:
      raise ParameterizationError(
          f"leaf {path!r} is missing from the model at base width "
          f"{'' if path in base else '(base)'}{'' if path in delta else '(delta)'}; "
          "a leaf that exists only at some widths cannot be given a role")
    b, d = base[path], delta[path]
    if not (len(shape) == len(b) == len(d)):
      raise ParameterizationError(
          f"leaf {path!r} changes rank with width ({b} at base, {d} at delta); "
          "cannot infer its role: add a (regex, role) rule for it to "
          "parameterization.role_rules (role_rules= in hptransfer.parameterize)")
    matched = {role for rx, role in rules if re.search(rx, path)}
    used |= {rx for rx, role in rules if re.search(rx, path)}
    if len(matched) > 1:
      raise ParameterizationError(
          f"leaf {path!r} is matched by parameterization.role_rules with "
          f"different roles {sorted(matched)}; make the rules exclusive")
    if matched:
      roles[path] = matched.pop()
      continue
    shrinks = [i for i, (bi, di) in enumerate(zip(b, d)) if di < bi]
    if shrinks:
      raise ParameterizationError(
          f"leaf {path!r} has axes {shrinks} that shrink as the width grows ({b} at "
          f"base width, {d} at twice it); no role fits: add a (regex, role) rule for it "
          f"to parameterization.role_rules (role_rules= in hptransfer.parameterize), "
          f"e.g. ({'^' + re.escape(path) + '$'!r}, 'hidden')")
    grows = [bi != di for bi, di in zip(b, d)]
    if len(shape) <= 1:
      roles[path] = "vector" if any(grows) else "scalar"
    else:
      fan_in, fan_out = any(grows[:-1]), grows[-1]
      roles[path] = {(True, True): "hidden", (False, True): "input",
                     (True, False): "output", (False, False): "scalar"}[(fan_in, fan_out)]
  unused = [rx for rx, _ in rules if rx not in used]
  if unused:
    raise ParameterizationError(
        f"parameterization.role_rules: {unused} match no parameter leaf; "
        f"leaves are {sorted(target)}")
  return roles


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
  if len(shape) == 0:
    return 1, 1
  if len(shape) == 1:
    return 1, shape[0]
  return int(np.prod(shape[:-1])), shape[-1]


def _power(m_in: float, m_out: float, e: tuple[float, float]) -> float:
  # Written so that m == 1 gives exactly 1.0 (bitwise SP at base shape).
  out = 1.0
  if e[0]:
    out *= m_in ** e[0]
  if e[1]:
    out *= m_out ** e[1]
  return out


def check_eps_rule(rule: str, has_eps: bool, optimizer: str = "this optimizer") -> None:
  """``parameterization.eps_rule`` is a known rule, and names none for an
  optimizer without an epsilon."""
  if rule not in EPS_RULES:
    raise ParameterizationError(
        f"parameterization.eps_rule={rule!r} is not one of {', '.join(EPS_RULES)}; "
        "set --config.parameterization.eps_rule=none")
  if rule != "none" and not has_eps:
    raise ParameterizationError(
        f"parameterization.eps_rule={rule!r}, but {optimizer} has no epsilon; set "
        "--config.parameterization.eps_rule=none (or pick adam / adamw)")


def build_table(name: str, knobs: Knobs, family: str, has_eps: bool,
                weight_decay_mode: str, target: Mapping[str, tuple],
                base: Mapping[str, tuple], delta: Mapping[str, tuple],
                depth: int, width: int | None = None,
                muon_scale: str = "rms") -> dict[str, Leaf]:
  """Per-leaf scales of one model under parameterization ``name``, for an
  optimizer of ``family`` (``hptransfer.optim``).  ``width`` (the model's)
  is needed by ``eps_rule="completep"``.  Under the ``muon`` family a hidden
  leaf of two dims is Muon's (``update="muon"``: its LR by ``Rule.lr_muon``
  or ``lr_muon_spectral`` as ``muon_scale`` says, no epsilon) and every other
  leaf Adam's."""
  par = get(name)
  rules_by_role = par.rules
  absolute = par.scale == "absolute"
  check_knobs(name, knobs)
  if family == "muon" and float(knobs.alpha):
    raise ParameterizationError(
        f"parameterization.alpha={knobs.alpha} with Muon: depth rules for Muon's "
        "orthogonalised updates are not derived here; use alpha=0 (or an Adam-family "
        "optimizer for depth transfer)")
  check_eps_rule(knobs.eps_rule, has_eps)
  if knobs.eps_rule == "completep" and width is None:
    raise ParameterizationError("eps_rule='completep' needs the model's width")
  roles = infer_roles(target, base, delta, knobs.role_rules)
  d = depth / knobs.base_depth
  dexp = depth_exponents(float(knobs.alpha), family)
  block_rx = re.compile(knobs.block_regex)
  query_rx = re.compile(knobs.query_regex)
  table = {}
  for path, shape in target.items():
    role = roles[path]
    lookup = path.split("/")[-1] == "embedding"
    table_in = lookup and role == "input"   # an embedding table
    rule = par.lookup if table_in and par.lookup is not None else rules_by_role[role]
    base_in, base_out = _fans(base[path])
    fan_in, fan_out = _fans(shape)
    m_in, m_out = fan_in / base_in, fan_out / base_out
    # What the exponents apply to: the multipliers, or (absolute scale) the
    # fans themselves, a lookup table's fan-in being 1 (one row per token).
    s_in, s_out = (m_in, m_out) if not absolute else (1 if lookup else fan_in, fan_out)
    in_block = bool(block_rx.search(path))

    if len(shape) >= 2:
      if absolute:
        base_std = knobs.init_std
      else:
        base_std = knobs.init_std * (1.0 if lookup else 1.0 / math.sqrt(base_in))
      init_std = base_std * _power(s_in, s_out, rule.init)
      if role == "output" and knobs.zero_init_readout:
        init_std = 0.0
      if knobs.zero_init_query and query_rx.search(path):
        init_std = 0.0
    else:
      init_std = 0.0  # biases and gains keep the model's constant init

    forward = _power(s_in, s_out, rule.forward)
    if role == "output":
      forward *= knobs.output_mult
    if table_in:
      forward *= knobs.embed_mult

    update = family
    if family == "muon":
      update = "muon" if role == "hidden" and len(shape) == 2 else "adam"
    exps = rule.lr(family, update, muon_scale)
    if exps is None:
      raise ParameterizationError(
          f"parameterization.name={name!r} has no Muon rule for {role} leaves ({path}); "
          "give its Rule lr_muon / lr_muon_spectral, or pick sp or mup")
    lr = _power(s_in, s_out, exps)
    if table_in and knobs.embed_lr_mult != 1.0:
      lr *= float(knobs.embed_lr_mult)
    eps = 1.0
    if in_block and par.depth_lr is not None and depth != 1:
      lr *= float(depth) ** par.depth_lr
    if in_block and dexp["lr"]:
      lr *= d ** dexp["lr"]
    if knobs.eps_rule == "completep":
      # Every leaf: m_width^-1 m_depth^-alpha (in blocks or not).
      if width != knobs.base_width:
        eps *= (width / knobs.base_width) ** -1.0
      if float(knobs.alpha) and d != 1:
        eps *= d ** -float(knobs.alpha)
    else:
      if in_block and dexp["eps"]:
        eps *= d ** dexp["eps"]
      if knobs.eps_rule == "width" and role == "hidden" and m_in != 1:
        eps *= m_in ** -1.0

    if weight_decay_mode == "l2":
      # torch's L2 decay reaches every leaf; microsoft/mup's MuSGD/MuAdam
      # divide its weight_decay by the LR's width factor (1 at base shape).
      wd = 1.0 / lr if lr else 0.0
    elif len(shape) >= 2:
      wd = (1.0 / lr) if weight_decay_mode == "coupled" else 1.0
    else:
      wd = 0.0
    table[path] = Leaf(path=path, shape=tuple(shape), role=role,
                       fan_in_mult=m_in, fan_out_mult=m_out, init_std=init_std,
                       forward_mult=forward, lr_mult=lr, wd_mult=wd,
                       eps_mult=eps if has_eps and update != "muon" else None,
                       in_block=in_block, lookup=lookup, update=update)
  if dexp["branch"] and not any(l.in_block for l in table.values()):
    raise ParameterizationError(
        f"parameterization.alpha={knobs.alpha} needs residual blocks, but no leaf "
        f"matches parameterization.block_regex={knobs.block_regex!r}; use alpha=0, "
        "or name your residual blocks block_<i>, or set block_regex to match them")
  return table


def attention_scale(name: str, knobs: Knobs, head_dim: int) -> float:
  """Attention-logit multiplier: SP/NTK 1/sqrt(d_head); muP/MF 1/d_head;
  u-muP ``attn_mult / d_head`` (its alpha_attn, no base head dim).

  muP's 1/d_head is anchored at the base head dimension so that at base shape
  it equals SP's 1/sqrt(d_head) exactly:
  ``attn_mult * (1/sqrt(base_hd)) * (base_hd / hd)``.
  """
  base_hd = knobs.base_head_dim or head_dim
  if get(name).attention == "unit":
    return knobs.attn_mult / head_dim
  if get(name).attention == "sqrt":
    return knobs.attn_mult * (1.0 / math.sqrt(head_dim))
  scale = knobs.attn_mult * (1.0 / math.sqrt(base_hd))
  if head_dim != base_hd:
    scale *= base_hd / head_dim
  return scale


def branch_multiplier(knobs: Knobs, depth: int) -> float:
  alpha = float(knobs.alpha)
  if alpha == 0:
    return 1.0
  return (depth / knobs.base_depth) ** (-alpha)


def unit_residual(knobs: Knobs, depth: int) -> np.ndarray:
  """u-muP's residual adds for ``depth`` blocks of two branches (attention,
  then MLP): ``[2 * depth, 2]`` rows ``(a, b)``, the stream after branch
  ``i`` being ``a_i x + b_i f_i(norm(x))``.

  Blake et al. (2024, App. G): think of the stream as a weighted sum of unit
  sources whose weights (variances) are the embedding's, ``depth`` (half the
  branch count), and each branch's, ``alpha_attn^2`` or ``alpha_mlp^2`` with
  ``alpha_mlp = residual_mult sqrt(2 / (1 + ratio^2))``, ``alpha_attn = ratio
  alpha_mlp``.  With ``S_i`` the weight gathered before branch ``i``, adding a
  unit-RMS branch of weight ``w_i`` keeps a unit-RMS stream with
  ``a_i = sqrt(S_i / S_{i+1})`` and ``b_i = sqrt(w_i / S_{i+1})``.  Both
  knobs at 1: embedding, all attention and all MLP branches weigh the same;
  ``b_i`` falls as ``depth^-1/2`` (Depth-muP's branch scale)."""
  ratio = float(knobs.residual_attn_ratio)
  alpha_mlp = float(knobs.residual_mult) * math.sqrt(2.0 / (1.0 + ratio ** 2))
  alpha_attn = ratio * alpha_mlp
  out = np.zeros((2 * depth, 2), np.float64)
  total = float(depth)
  for i in range(2 * depth):
    w = (alpha_attn if i % 2 == 0 else alpha_mlp) ** 2
    out[i] = (math.sqrt(total / (total + w)), math.sqrt(w / (total + w)))
    total += w
  return out


LEAF_FIELDS = ("init_std", "forward_mult", "lr_mult", "wd_mult", "eps_mult")


def leaf_trees(params_like, table: Mapping[str, Leaf],
               fields: tuple[str, ...] = LEAF_FIELDS) -> dict[str, Any]:
  """The per-leaf scalars as pytrees shaped like params (for jit/vmap); with
  Muon also ``labels``, a static tree of ``"muon"`` / ``"adam"`` strings.

  ``fields``: which of ``LEAF_FIELDS`` (all by default).  The scalars are
  float32 device arrays, fresh on every call (a caller may donate them), put
  on the device in one call: a ``jnp.asarray`` a leaf was 0.6 s of a
  16-trial width-128 sweep group's setup (docs/performance.md)."""
  bad = [f for f in fields if f not in LEAF_FIELDS]
  if bad:
    raise ValueError(f"leaf_trees fields {bad} are not among {', '.join(LEAF_FIELDS)}")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params_like)
  rows = [table[path_str(p)] for p, _ in leaves]
  out = jax.device_put({f: jax.tree_util.tree_unflatten(treedef, [
      np.asarray(1.0 if getattr(r, f) is None else getattr(r, f), np.float32) for r in rows])
                        for f in fields})
  if any(leaf.update == "muon" for leaf in table.values()):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params_like)
    out["labels"] = jax.tree_util.tree_unflatten(
        treedef, ["muon" if table[path_str(p)].update == "muon" else "adam"
                  for p, _ in leaves])
  return out


def init_params(model_init: Callable, rng, init_std):
  """Model init (for constant leaves) with every matrix redrawn at its std.

  ``init_std`` is a params-shaped tree of scalars (``leaf_trees()["init_std"]``;
  arrays, so a sweep can vmap over it).  Each matrix gets its own key, folded
  from the leaf's path, so the draw depends neither on which other leaves exist
  nor on the parameterization: SP and muP at base shape produce identical bits.
  """
  params = model_init(rng)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  stds = treedef.flatten_up_to(init_std)
  out = []
  for (p, x), std in zip(leaves, stds):
    if x.ndim >= 2:
      key = jax.random.fold_in(rng, _path_hash(path_str(p)))
      x = (jax.random.normal(key, x.shape, jnp.float32) * std).astype(x.dtype)
    out.append(x)
  return jax.tree_util.tree_unflatten(treedef, out)


def _path_hash(path: str) -> int:
  import zlib
  return zlib.crc32(path.encode()) & 0x7FFFFFFF


def apply_forward_mults(params, forward_mults):
  return jax.tree_util.tree_map(lambda w, m: w * m.astype(w.dtype), params, forward_mults)


def _register_builtins() -> None:
  import importlib
  import pkgutil
  from hptransfer import parameterizations
  for m in pkgutil.iter_modules(parameterizations.__path__):
    importlib.import_module(f"{parameterizations.__name__}.{m.name}")


_register_builtins()
