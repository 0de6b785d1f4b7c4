"""The grid language: axes, trials, stable trial ids, and groups.

A sweep is a list of override dicts (dotted key -> value), built with

    sweep("optimizer.lr", 2.0 ** np.arange(-12, -4))      # one axis
    product(axis, axis, ...)                               # every combination
    zip(axis, axis, ...)                                   # side by side

``expand(base_cfg, overrides)`` resolves and validates every trial before
anything trains (an unknown key, a wrong type or a bad value is an error
naming it).  A trial's id is a hash of its resolved config, so a rerun finds
the trials it already has.

Trials that share everything that shapes the compiled program form a group
(``make_groups``) and train as one ``jit(vmap(step))``: what differs between
them — ``seed``, the optimizer's numbers (``optimizer.lr``,
``optimizer.weight_decay``, the schedule's warmup and ratios, and the
optimizer's own, e.g. Adam's betas and epsilon: ``optim.vmapped_fields``),
``model.dropout`` (a rate above 0 draws masks, which shapes the program: rate 0
is a group of its own) and anything under ``parameterization.`` — rides on the
stacked leading axis.
"""
from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
from typing import Any, Iterable, Mapping

import jax
import ml_collections
import numpy as np

from hptransfer import configlib


class SweepError(ValueError):
  """A bad sweep definition; the message names the key."""


# ----------------------------------------------------------------------------
# Axes.


def _py(v):
  return v.item() if isinstance(v, np.generic) else v


def sweep(key: str, values: Iterable) -> list[dict]:
  """One axis: ``[{key: v} for v in values]``."""
  values = [_py(v) for v in values]
  if not values:
    raise SweepError(f"sweep({key!r}, ...) has an empty value list")
  return [{key: v} for v in values]


def product(*axes: list[dict]) -> list[dict]:
  """Every combination of the axes (the last varies fastest)."""
  out: list[dict] = [{}]
  for axis in axes:
    axis = list(axis)
    if not axis:
      raise SweepError("product(...) got an empty axis")
    out = [{**a, **b} for a in out for b in axis]
  return out


def zip(*axes: list[dict]) -> list[dict]:  # noqa: A001 - the documented name
  """The axes side by side (equal lengths)."""
  axes = [list(a) for a in axes]
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    keys = [sorted({k for d in a for k in d}) for a in axes]
    raise SweepError(f"zip(...) of axes with different lengths {[len(a) for a in axes]} "
                     f"(keys {keys})")
  return [{k: v for d in ds for k, v in d.items()} for ds in builtins.zip(*axes)]


# ----------------------------------------------------------------------------
# Config access by dotted key.


def set_key(cfg, key: str, value) -> None:
  """``cfg[key] = value`` for a dotted key that the config has; an unknown key
  or a value of the wrong type is a ``SweepError`` naming it."""
  node = cfg
  parts = key.split(".")
  for i, p in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or p not in node:
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      where = ".".join(parts[:i]) or "the config"
      raise SweepError(f"unknown key {key!r}: {where} has no field {p!r}"
                       + (f" (fields: {', '.join(known)})" if known else ""))
    if i < len(parts) - 1:
      node = node[p]
  try:
    node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise SweepError(f"{key}={value!r} has the wrong type: the config holds "
                     f"{type(node[parts[-1]]).__name__} {node[parts[-1]]!r} ({e})") from None


def get_key(cfg, key: str):
  node = cfg
  for p in key.split("."):
    node = node[p]
  return node


def flatten(d: Mapping, prefix: str = "") -> dict:
  """A nested mapping as {dotted key: value}."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


# ----------------------------------------------------------------------------
# Trials.


@dataclasses.dataclass
class Trial:
  id: str
  overrides: dict
  cfg: Any


@dataclasses.dataclass
class Group:
  id: str
  trials: list[Trial]

  @property
  def cfg(self):
    return self.trials[0].cfg


# Config keys added after results were published: a trial's id leaves them out
# while they hold their default (and drops a section they leave empty), so
# ids, and with them resuming a workdir and matching the committed rows, stay
# what they were (tests/test_trial_ids.py).
ID_OMITTED_DEFAULTS = {"model.matmul_dtype": "", "model.module": "", "task.name": "lm",
                       "model.dropout": 0.0, "parameterization.eps_rule": "none",
                       "optimizer.muon_beta": 0.95, "optimizer.ns_steps": 5,
                       "parameterization.residual_mult": 1.0,
                       "parameterization.residual_attn_ratio": 1.0,
                       "parameterization.act_mult": 1.0,
                       "parameterization.embed_lr_mult": 1.0}


def trial_id(cfg) -> str:
  d = cfg.to_dict()
  # Logging, search settings and the device layout do not change the trial.
  for section in ("wandb", "mlflow", "search", "mesh"):
    d.pop(section, None)
  for key, default in ID_OMITTED_DEFAULTS.items():
    section, _, leaf = key.rpartition(".")
    node = d.get(section)
    if isinstance(node, dict) and leaf in node and node[leaf] == default:
      del node[leaf]
      if not node:
        del d[section]
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def expand(base_cfg, overrides: Iterable[Mapping[str, Any]]) -> list[Trial]:
  """Resolved, validated trials; fails before any training, naming the key."""
  trials, seen = [], {}
  if isinstance(overrides, Mapping):
    raise SweepError("get_sweep() returned one dict; it must return a list of "
                     "{dotted key: value} dicts, one per trial: wrap it as [{...}], or build "
                     "it with sweep/product/zip")
  try:
    overrides = list(overrides)
  except TypeError:
    raise SweepError(f"get_sweep() returned a {type(overrides).__name__}, not a list of "
                     "{dotted key: value} dicts; build it with sweep/product/zip") from None
  if not overrides:
    raise SweepError("get_sweep() returned no trials")
  for i, ov in enumerate(overrides):
    if not isinstance(ov, Mapping) or not all(isinstance(k, str) for k in ov):
      raise SweepError(f"get_sweep()'s item {i} is {ov!r}, not a {{dotted key: value}} dict "
                       "with string keys; build the list with sweep/product/zip")
    cfg = base_cfg.copy_and_resolve_references()
    for key, value in ov.items():
      set_key(cfg, key, _py(value))
    try:
      configlib.validate(cfg)
    except configlib.ConfigError as e:
      raise SweepError(f"trial {dict(ov)}: {e}") from None
    tid = trial_id(cfg)
    if tid in seen:
      raise SweepError(f"trials {seen[tid]} and {dict(ov)} resolve to the same config")
    seen[tid] = dict(ov)
    trials.append(Trial(id=tid, overrides=dict(ov), cfg=cfg))
  return trials


# ----------------------------------------------------------------------------
# Groups.

# Keys the host loop reads but the compiled step does not (the run length is in
# the optimizer state): groups that differ only in them share one program.
HOST_ONLY_KEYS = ("train.steps", "train.log_every", "train.eval_every",
                  "train.checkpoint_every")


def is_vmapped(key: str, cfg=None) -> bool:
  """Whether a config key rides on a group's trial axis (else it shapes the
  program).  ``optimizer.*`` fields depend on the optimizer: its numbers
  (``optim.vmapped_fields``) are vmapped, its static settings are not."""
  from hptransfer import optim
  if key in ("seed", "model.dropout") or key.startswith("parameterization."):
    return True
  if key.startswith("optimizer."):
    field = key.split(".", 1)[1]
    if field in ("lr", "weight_decay", "eps"):
      return True
    name = cfg.optimizer.name if cfg is not None else None
    return name in optim.REGISTRY and field in optim.vmapped_fields(name)
  return False


def group_key(cfg) -> str:
  """Everything that changes compiled shapes or program structure."""
  flat = flatten(cfg.to_dict())
  kept = {k: v for k, v in flat.items()
          if not is_vmapped(k, cfg)
          and not k.startswith(("wandb.", "mlflow.", "search.", "mesh."))}
  if cfg.model.get("dropout", 0.0) > 0:
    # The rate is vmapped, but drawing masks at all shapes the program.
    kept["model.dropout_on"] = True
  from hptransfer import parameterization as P
  if cfg.parameterization.name in P.REGISTRY and P.get(cfg.parameterization.name).unit_ops:
    # u-muP's residual and activation knobs are model inputs the others lack.
    kept["parameterization.unit_ops"] = True
  return json.dumps(kept, sort_keys=True, default=str)


def program_key(cfg) -> str:
  """The part of the group key that the compiled step depends on."""
  kept = {k: v for k, v in json.loads(group_key(cfg)).items() if k not in HOST_ONLY_KEYS}
  return json.dumps(kept, sort_keys=True)


def group_id(trials: list[Trial]) -> str:
  return hashlib.sha256(" ".join(t.id for t in trials).encode()).hexdigest()[:16]


def bytes_per_trial(built) -> int:
  """Rough training memory of one trial: params, grads, updates, two Adam
  moments (4 bytes each) and the activations kept for the backward pass
  (24 floats per unit of width per layer per prediction, and 3 per output)."""
  cfg, task = built.cfg, built.task
  n = built.num_params()
  rows = cfg.train.batch_size * task.examples_per_batch_row
  outputs = task.context()["num_outputs"]
  acts = rows * ((built.depth or 1) * built.width * 24 + 3 * outputs)
  return 4 * (6 * n + acts)


def memory_budget() -> int:
  dev = jax.local_devices()[0]
  stats = getattr(dev, "memory_stats", lambda: None)() or {}
  if "bytes_limit" in stats:
    return int(0.6 * stats["bytes_limit"])
  return 4 << 30   # CPU: 4 GiB per group unless told otherwise


def make_groups(trials: list[Trial], max_group_size: int = 0,
                memory_bytes: int = 0, builds: dict | None = None) -> list[Group]:
  """Trials grouped by compiled shape, each group cut to what fits.
  ``builds``: a dict that receives the build made here of each shape's
  first trial, by trial id (a sweep's first group reuses it)."""
  from hptransfer import build as build_lib
  by_key: dict[str, list[Trial]] = {}
  for t in trials:
    by_key.setdefault(group_key(t.cfg), []).append(t)
  groups = []
  for key in sorted(by_key):
    members = by_key[key]
    built = build_lib.build(members[0].cfg)
    built.task.sha256          # loads and checks the data before any training
    if builds is not None:
      builds[members[0].id] = built
    cap = max(1, (memory_bytes or memory_budget()) // bytes_per_trial(built))
    if max_group_size:
      cap = min(cap, max_group_size)
    for i in range(0, len(members), cap):
      chunk = members[i:i + cap]
      groups.append(Group(id=group_id(chunk), trials=chunk))
  return sorted(groups, key=lambda g: g.id)


def split_for_worker(groups: list[Group], index: int, num: int) -> list[Group]:
  """Worker ``index`` of ``num``'s share of the groups (deterministic)."""
  if not 0 <= index < num:
    raise SweepError(f"--worker_index={index} must lie in [0, --num_workers={num})")
  return [g for i, g in enumerate(groups) if i % num == index]


def flops_per_token(built) -> float:
  """Training FLOPs per prediction: 6 x matmul params, plus attention
  (12 L T D) for the Transformer."""
  n = sum(int(np.prod(leaf.shape)) for leaf in built.table.values()
          if len(leaf.shape) >= 2 and not leaf.lookup)
  cfg = built.cfg
  attn = 0
  if cfg is not None and cfg.model.name == "transformer" and not cfg.model.get("module"):
    attn = 12 * cfg.model.depth * cfg.data.seq_len * cfg.model.width
  return 6.0 * n + attn
