"""Sweeps: ml_collections grids trained as vmapped trial groups.

    python -m hptransfer.sweep --config configs/sweeps/width_transformer.py \
        --workdir runs/width [--dry_run] [--worker_index i --num_workers n] \
        [--config.train.steps=100 ...]

A sweep file defines ``get_config()`` (the base config) and ``get_sweep()``, an
iterable of override dicts (dotted key -> value) built with ``sweep``,
``product`` and ``zip`` from this module.  ``--config.k=v`` overrides apply to
the base config, so to every trial; a swept key wins over such an override.

Trials that share everything that shapes the compiled program are one *group*
and train as a single ``jit(vmap(step))``: what differs between them —
``seed``, ``optimizer.lr``, ``optimizer.weight_decay``, ``optimizer.eps`` and
anything under ``parameterization.`` (per-leaf init std, forward, lr, wd and
eps multipliers, attention scale, branch multiplier) — rides on the stacked
leading axis.  Every trial of a group sees the same batches.  Groups larger than
what fits (``--max_group_size``, or a memory estimate) are cut into chunks.

A trial whose loss is non-finite, or above ``train.divergence_mult`` times its
first loss, is frozen from that step and recorded as diverged; the others run
on bitwise unchanged.

Results: one row per trial in ``<workdir>/results.jsonl`` (``hptransfer.results``),
curves in ``<workdir>/curves/``.  Rerunning the command skips finished trials
and resumes unfinished groups from their last orbax checkpoint in
``<workdir>/groups/<group_id>/``.

Scale-out: ``--worker_index/--num_workers`` split the groups deterministically
between independent processes sharing the work directory (a SLURM array, or
several machines on a shared filesystem).  Within a process the trials of a
group are spread over the local devices along a ``trials`` mesh axis (a group
smaller than the device count splits its batch instead).  For one model across hosts call
``jax.distributed.initialize()`` before anything else (``--multihost``); each
host then feeds its share of the batch — see docs/sweeps.md.
"""
from __future__ import annotations

import builtins
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hptransfer import build as build_lib
from hptransfer import configlib
from hptransfer import data as data_lib
from hptransfer import optim
from hptransfer import results as results_lib
from hptransfer import train as train_lib

VMAPPED_KEYS = ("seed", "optimizer.lr", "optimizer.weight_decay", "optimizer.eps")
VMAPPED_PREFIXES = ("parameterization.",)
# Keys that are always copied into a result row (besides the swept ones).
ROW_KEYS = ("parameterization.name", "model.name", "model.width", "model.depth",
            "optimizer.name", "optimizer.lr", "optimizer.weight_decay",
            "parameterization.base_width", "parameterization.alpha", "seed",
            "train.steps", "train.batch_size", "data.seq_len", "data.name")


class SweepError(ValueError):
  """A bad sweep definition; the message names the key."""


# ----------------------------------------------------------------------------
# Building grids.


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
# Trials and groups.


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


def _set(cfg, key: str, value) -> None:
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


def _get(cfg, key: str):
  node = cfg
  for p in key.split("."):
    node = node[p]
  return node


# Config keys added after results were published: a trial's id leaves them out
# while they hold their default, so ids, and with them resuming a workdir and
# matching the committed rows, stay what they were.
ID_OMITTED_DEFAULTS = {("model", "matmul_dtype"): ""}


def trial_id(cfg) -> str:
  d = cfg.to_dict()
  d.pop("wandb", None)   # logging does not change the trial
  for (section, key), default in ID_OMITTED_DEFAULTS.items():
    if key in d.get(section, {}) and d[section][key] == default:
      del d[section][key]
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def expand(base_cfg, overrides: Iterable[Mapping[str, Any]]) -> list[Trial]:
  """Resolved, validated trials; fails before any training, naming the key."""
  trials, seen = [], {}
  overrides = list(overrides)
  if not overrides:
    raise SweepError("get_sweep() returned no trials")
  for ov in overrides:
    cfg = base_cfg.copy_and_resolve_references()
    for key, value in ov.items():
      _set(cfg, key, _py(value))
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


def _is_vmapped(key: str) -> bool:
  return key in VMAPPED_KEYS or key.startswith(VMAPPED_PREFIXES)


def group_key(cfg) -> str:
  """Everything that changes compiled shapes or program structure."""
  flat = _flatten(cfg.to_dict())
  kept = {k: v for k, v in flat.items() if not _is_vmapped(k) and not k.startswith("wandb.")}
  return json.dumps(kept, sort_keys=True, default=str)


# Keys the host loop reads but the compiled step does not (the run length is in
# the optimizer state): groups that differ only in them share one program.
HOST_ONLY_KEYS = ("train.steps", "train.log_every", "train.eval_every",
                  "train.checkpoint_every")


def program_key(cfg) -> str:
  """The part of the group key that the compiled step depends on."""
  kept = {k: v for k, v in json.loads(group_key(cfg)).items() if k not in HOST_ONLY_KEYS}
  return json.dumps(kept, sort_keys=True)


def _flatten(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def bytes_per_trial(built) -> int:
  """Rough training memory of one trial: params, grads, updates, two Adam
  moments (4 bytes each) and the activations kept for the backward pass."""
  cfg = built.cfg
  n = built.num_params()
  B, T = cfg.train.batch_size, cfg.data.seq_len
  W, L = cfg.model.width, cfg.model.depth
  V = built.table["readout/kernel"].shape[-1]
  acts = B * T * (L * W * 24 + 3 * V)
  return 4 * (6 * n + acts)


def memory_budget() -> int:
  dev = jax.local_devices()[0]
  stats = getattr(dev, "memory_stats", lambda: None)() or {}
  if "bytes_limit" in stats:
    return int(0.6 * stats["bytes_limit"])
  return 4 << 30   # CPU: 4 GiB per group unless told otherwise


def make_groups(trials: list[Trial], max_group_size: int = 0,
                memory_bytes: int = 0) -> list[Group]:
  by_key: dict[str, list[Trial]] = {}
  for t in trials:
    by_key.setdefault(group_key(t.cfg), []).append(t)
  groups = []
  for key in sorted(by_key):
    members = by_key[key]
    built = build_lib.build(members[0].cfg)
    cap = max(1, (memory_bytes or memory_budget()) // bytes_per_trial(built))
    if max_group_size:
      cap = min(cap, max_group_size)
    for i in range(0, len(members), cap):
      chunk = members[i:i + cap]
      gid = hashlib.sha256(" ".join(t.id for t in chunk).encode()).hexdigest()[:16]
      groups.append(Group(id=gid, trials=chunk))
  return sorted(groups, key=lambda g: g.id)


def flops_per_token(built) -> float:
  """Training FLOPs per token: 6 x matmul params + attention (12 L T D)."""
  n = sum(int(np.prod(l.shape)) for l in built.table.values()
          if len(l.shape) >= 2 and not l.lookup)
  cfg = built.cfg
  attn = 12 * cfg.model.depth * cfg.data.seq_len * cfg.model.width \
      if cfg.model.name == "transformer" else 0
  return 6.0 * n + attn


# ----------------------------------------------------------------------------
# Running one group.


def _stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _guarded_step(built, tx, cfg):
  """A train step that freezes a trial from the step its loss goes bad."""
  inner_step = train_lib.make_train_step(built, tx, cfg.model.get("z_loss", 0.0),
                                         leaf_rms=False)
  mult = float(cfg.train.get("divergence_mult", 3.0))

  def step(state, consts, batch):
    # The run length comes from the optimizer state, so the program does not
    # depend on it (runs of different lengths share it).
    total = optim.get_hparams(state["opt_state"])["steps"]
    tail_start = total - jnp.maximum(1, total // 10)
    inner = {k: state[k] for k in ("step", "params", "opt_state")}
    new, m = inner_step(inner, consts, batch)
    loss = m["loss"]
    loss0 = jnp.where(state["step"] == 0, loss, state["loss0"])
    bad = ~jnp.isfinite(loss) | (loss > mult * loss0)
    alive = state["alive"] & ~bad
    new = jax.tree_util.tree_map(lambda n, o: jnp.where(alive, n, o), new, inner)
    in_tail = alive & (state["step"] >= tail_start)
    return {**new, "alive": alive, "loss0": loss0,
            "diverged_step": jnp.where(state["alive"] & bad, state["step"] + 1,
                                       state["diverged_step"]),
            "tail_sum": state["tail_sum"] + jnp.where(in_tail, loss, 0.0),
            "tail_n": state["tail_n"] + in_tail.astype(jnp.int32)}, loss

  return step


def _init_group(builts, txs, trials):
  """The stacked state of a group, initialised in one compiled call: params
  from each trial's seed and init stds, optimizer state from the first trial's
  optimizer with every trial's hyperparameters swapped in."""
  b0, tx0 = builts[0], txs[0]
  init_fn = b0.init_fn()

  def init_one(key, stds):
    params = init_fn(key, stds)
    return params, tx0.init(params)

  keys = jnp.stack([jax.random.key_data(jax.random.key(t.cfg.seed)) for t in trials])
  stds = _stack([b.leaf_trees()["init_std"] for b in builts])
  params, opt = jax.jit(jax.vmap(lambda k, s: init_one(jax.random.wrap_key_data(k), s)))(
      keys, stds)
  hp = _stack([optim.hparams(t.cfg.optimizer, b.leaf_trees(), t.cfg.train.steps)
               for t, b in builtins.zip(trials, builts)])
  K = len(trials)
  return {"step": jnp.zeros([K], jnp.int32), "params": params,
          "opt_state": optim.with_hparams(opt, hp),
          "alive": jnp.ones([K], bool), "loss0": jnp.zeros([K], jnp.float32),
          "diverged_step": jnp.zeros([K], jnp.int32),
          "tail_sum": jnp.zeros([K], jnp.float32), "tail_n": jnp.zeros([K], jnp.int32)}


def _shardings(K: int, batch_size: int):
  """(stacked-state sharding, batch sharding) over the local devices.

  K a multiple of the device count: trials are split along a ``trials`` mesh
  axis.  Otherwise, when the batch divides, every device holds all trials and a
  slice of the batch (data parallel; the gradient all-reduce is inserted by
  jit).  One device, or neither divides: (None, None).
  """
  devs = jax.local_devices()
  if len(devs) < 2:
    return None, None
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  if K % len(devs) == 0:
    mesh = Mesh(np.array(devs), ("trials",))
    return NamedSharding(mesh, PartitionSpec("trials")), None
  if batch_size % len(devs) == 0:
    mesh = Mesh(np.array(devs), ("batch",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))
  return None, None


def _pad(trials: list[Trial]) -> list[Trial]:
  """Pad to a multiple of the local device count with copies (dropped later);
  a group smaller than the device count is left alone (it splits its batch)."""
  n = len(jax.local_devices())
  extra = (-len(trials)) % n if len(trials) >= n else 0
  return trials + [trials[-1]] * extra


_COMPILED: dict = {}
TRIAL_LOOPS = ("auto", "vmap", "map")


def resolve_trial_loop(trial_loop: str, sharded: bool) -> str:
  """How a group steps its stacked trials.

  ``vmap``: one batched program over the K trials (what pays on a GPU: 32
  width-128 trials ran at 3.0x one trial's tokens/s on an H100).
  ``map``: ``jax.lax.map``, the unbatched step applied to each trial in turn
  inside one compiled program: same stacked state, checkpoints and results,
  but plain 2-D matmuls.  On 2 CPU cores this is 1.1-1.8x faster than vmap
  (docs/sweeps.md), because the batched matmuls' weight gradients need
  transposing copies there.  ``auto``: map on an unsharded CPU group, else vmap.
  """
  if trial_loop not in TRIAL_LOOPS:
    raise SweepError(f"trial_loop={trial_loop!r} is not one of {', '.join(TRIAL_LOOPS)}; "
                     "pass --trial_loop=auto (map on CPU, vmap on accelerators)")
  if trial_loop != "auto":
    return trial_loop
  return "map" if jax.default_backend() == "cpu" and not sharded else "vmap"


def compile_group(built, tx, cfg, loop: str):
  """(step, eval) over a group's stacked state: vmapped or mapped (see
  resolve_trial_loop); the batch is shared by every trial."""
  guarded = _guarded_step(built, tx, cfg)
  evaluate = train_lib.make_eval_step(built)
  mm = train_lib.matmul_dtype(cfg)
  if loop == "vmap":
    return (train_lib.jit_step(jax.vmap(guarded, in_axes=(0, 0, None)), mm, donate_argnums=0),
            train_lib.jit_step(jax.vmap(evaluate, in_axes=(0, 0, None)), mm))

  def step(state, consts, batch):
    return jax.lax.map(lambda sc: guarded(sc[0], sc[1], batch), (state, consts))

  def evaluate_all(params, consts, batch):
    return jax.lax.map(lambda pc: evaluate(pc[0], pc[1], batch), (params, consts))
  return (train_lib.jit_step(step, mm, donate_argnums=0),
          train_lib.jit_step(evaluate_all, mm))


def run_group(group: Group, workdir: str, *, sweep_name: str = "", worker: int = 0,
              progress: bool = True, log=print, trial_loop: str = "auto") -> list[dict]:
  """Train one group to the end (resuming its checkpoint); returns its rows."""
  import orbax.checkpoint as ocp
  t0 = time.time()
  trials = _pad(group.trials)
  K = len(trials)
  cfg = group.cfg
  steps, B, T = cfg.train.steps, cfg.train.batch_size, cfg.data.seq_len
  builts = [build_lib.build(t.cfg) for t in trials]
  b0 = builts[0]
  txs = [optim.build(t.cfg.optimizer, b.leaf_trees(), steps) for t, b in builtins.zip(trials, builts)]
  dataset = data_lib.get_dataset(cfg.data)
  consts = _stack([b.consts() for b in builts])

  gdir = os.path.join(workdir, "groups", group.id)
  mngr = ocp.CheckpointManager(
      os.path.abspath(os.path.join(gdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           cleanup_tmp_directories=True))
  abstract = jax.eval_shape(lambda: _init_group(builts, txs, trials))
  start, curves = 0, {"train": [], "eval": []}
  if mngr.latest_step() is not None:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), curves=ocp.args.JsonRestore()))
    state, curves = restored.state, restored.curves
    start = mngr.latest_step()
  else:
    state = _init_group(builts, txs, trials)
  state_sharding, batch_sharding = _shardings(K, B)
  if state_sharding is not None:
    state = jax.device_put(state, state_sharding)
    consts = jax.device_put(consts, state_sharding)

  def batch_at(step, split="train"):
    batch = dataset.batch(cfg.data.seed, step, B, T, split)
    return batch if batch_sharding is None else jax.device_put(batch, batch_sharding)

  # Chunks of one group, resumed groups and groups that differ only in run
  # length share the compiled program: it depends only on the program key, K,
  # the shardings, the trial loop and the XLA options (HPTRANSFER_CPU_DOTS).
  loop = resolve_trial_loop(trial_loop, state_sharding is not None or batch_sharding is not None)
  ckey = (program_key(cfg), K, repr(state_sharding), repr(batch_sharding), loop,
          tuple(sorted(train_lib.compiler_options(train_lib.matmul_dtype(cfg)).items())))
  if ckey not in _COMPILED:
    _COMPILED[ckey] = compile_group(b0, txs[0], cfg, loop)
  vstep, veval = _COMPILED[ckey]

  def evaluate():
    losses = [veval(state["params"], consts, batch_at(i, "val"))
              for i in range(cfg.train.eval_batches)]
    return np.mean(np.stack(jax.device_get(losses)), axis=0)

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=start, desc=f"group {group.id[:8]} K={K}",
               leave=False, dynamic_ncols=True, disable=None)
  for step in range(start, steps):
    state, loss = vstep(state, consts, batch_at(step))
    done = step + 1
    if done % cfg.train.log_every == 0 or done == steps:
      curves["train"].append([done, np.asarray(jax.device_get(loss)).tolist()])
    if done % cfg.train.eval_every == 0 or done == steps:
      curves["eval"].append([done, evaluate().tolist()])
    if done % cfg.train.checkpoint_every == 0 and done < steps:
      mngr.save(done, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), curves=ocp.args.JsonSave(curves)))
    if bar is not None:
      bar.update(1)
    if done % cfg.train.log_every == 0 and not bool(jax.device_get(state["alive"]).any()):
      log(f"group {group.id}: every trial diverged by step {done}")
      break
  mngr.wait_until_finished()
  mngr.close()
  if bar is not None:
    bar.close()

  final = jax.device_get({k: state[k] for k in ("step", "alive", "diverged_step",
                                                "tail_sum", "tail_n")})
  wall = time.time() - t0
  versions = train_lib.versions(train_lib.matmul_dtype(cfg))
  fpt = flops_per_token(b0)
  rows = []
  for k, trial in enumerate(group.trials):   # padding copies are dropped here
    diverged = not bool(final["alive"][k])
    train_curve = [[s, l[k]] for s, l in curves["train"]]
    eval_curve = [[s, l[k]] for s, l in curves["eval"]]
    if diverged:
      dstep = int(final["diverged_step"][k])
      eval_curve = [[s, l] for s, l in eval_curve if s < dstep]
      train_curve = [[s, l] for s, l in train_curve if s < dstep]
    finite = lambda c: [l for _, l in c if l is not None and np.isfinite(l)]
    row = {key: _get(trial.cfg, key) for key in ROW_KEYS}
    row.update(trial.overrides)
    trained = int(final["step"][k])
    row.update({
        "trial_id": trial.id, "group_id": group.id, "group_size": len(group.trials),
        "sweep": sweep_name, "worker": worker,
        "final_train_loss": None if diverged or not final["tail_n"][k]
        else float(final["tail_sum"][k] / final["tail_n"][k]),
        "best_train_loss": min(finite(train_curve), default=None),
        "final_eval_loss": None if diverged or not eval_curve else eval_curve[-1][1],
        "best_eval_loss": min(finite(eval_curve), default=None),
        "diverged": diverged,
        "diverged_step": int(final["diverged_step"][k]) if diverged else None,
        "steps": trained, "tokens": trained * B * T,
        "num_params": builts[k].num_params(), "flops": fpt * trained * B * T,
        "wall_s": wall, "device": versions["device"], "versions": versions,
        "devices": len(jax.local_devices()),
        "trial_loop": loop,
        "sharding": "trials" if state_sharding is not None and batch_sharding is None
        else "batch" if batch_sharding is not None else "none",
        "data_sha256": dataset.sha256,
    })
    results_lib.write_curve(workdir, trial.id, {"train": train_curve, "eval": eval_curve,
                                                "overrides": trial.overrides})
    rows.append(row)
  results_lib.append(workdir, rows)
  shutil.rmtree(gdir, ignore_errors=True)
  return rows


# ----------------------------------------------------------------------------
# The driver.


def load_sweep_file(path: str):
  spec = importlib.util.spec_from_file_location("_hptransfer_sweep", path)
  module = importlib.util.module_from_spec(spec)
  if os.getcwd() not in sys.path:   # sweep files import configs/ from the repo root
    sys.path.insert(0, os.getcwd())
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"{path} defines no get_sweep(); a sweep file needs "
                     "get_config() and get_sweep()")
  return module


def split_for_worker(groups: list[Group], index: int, num: int) -> list[Group]:
  if not 0 <= index < num:
    raise SweepError(f"--worker_index={index} must lie in [0, --num_workers={num})")
  return [g for i, g in enumerate(groups) if i % num == index]


def summary_table(df) -> str:
  """Best final eval loss and its LR per scale and parameterization."""
  if df.empty:
    return "(no results)"
  by = [c for c in ("parameterization.name", "model.width", "model.depth")
        if c in df and df[c].nunique() > 1] or ["parameterization.name"]
  ok = df[~df.diverged & df.final_eval_loss.notna()]
  if ok.empty:
    return "(every trial diverged)"
  best = ok.loc[ok.groupby(by).final_eval_loss.idxmin()]
  out = best[by + ["optimizer.lr", "final_eval_loss"]].copy()
  out["log2_lr"] = np.log2(out["optimizer.lr"])
  counts = df.groupby(by).agg(trials=("trial_id", "size"), diverged=("diverged", "sum"))
  return out.merge(counts.reset_index(), on=by).to_string(index=False, float_format="%.4g")


def run(base_cfg, overrides, workdir: str, *, worker_index: int = 0, num_workers: int = 1,
        max_group_size: int = 0, memory_gb: float = 0.0, dry_run: bool = False,
        sweep_name: str = "", progress: bool = True, log=print,
        trial_loop: str = "auto") -> list[dict]:
  resolve_trial_loop(trial_loop, False)   # a bad value fails before any training
  trials = expand(base_cfg, overrides)
  groups = make_groups(trials, max_group_size, int(memory_gb * (1 << 30)))
  if dry_run:
    total = 0.0
    for g in groups:
      b = build_lib.build(g.cfg)
      f = flops_per_token(b) * g.cfg.train.steps * g.cfg.train.batch_size * g.cfg.data.seq_len
      total += f * len(g.trials)
      log(f"group {g.id}  K={len(g.trials):3d}  width={g.cfg.model.width} "
          f"depth={g.cfg.model.depth}  params={b.num_params():,}  "
          f"FLOPs/trial={f:.3g}")
      for t in g.trials:
        log(f"    {t.id}  {t.overrides}")
    log(f"{len(trials)} trials in {len(groups)} groups, {total:.3g} training FLOPs")
    return []
  mine = split_for_worker(groups, worker_index, num_workers)
  os.makedirs(workdir, exist_ok=True)
  done_ids = results_lib.finished_ids(workdir)
  todo = []
  for g in mine:
    left = [t for t in g.trials if t.id not in done_ids]
    if left:
      todo.append(left)
  # Regroup what is left so a resumed group keeps its id (and its checkpoint).
  todo_groups = [Group(id=hashlib.sha256(" ".join(t.id for t in ts).encode()).hexdigest()[:16],
                       trials=ts) for ts in todo]
  n_done = sum(len(g.trials) for g in mine) - sum(len(ts) for ts in todo)
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=sum(len(g.trials) for g in mine), initial=n_done, desc="trials",
               dynamic_ncols=True, disable=None)
  rows = []
  for g in todo_groups:
    rows += run_group(g, workdir, sweep_name=sweep_name, worker=worker_index,
                      progress=progress, log=log, trial_loop=trial_loop)
    if bar is not None:
      bar.update(len(g.trials))
  if bar is not None:
    bar.close()
  _wandb_trials(base_cfg, rows, workdir, sweep_name)
  return rows


def _wandb_trials(cfg, rows, workdir, sweep_name):
  """One wandb run per finished trial, grouped by sweep (off by default)."""
  if cfg.wandb.mode == "disabled" or not rows:
    return
  import wandb
  for row in rows:
    curve = results_lib.load_curve(workdir, row["trial_id"])
    run = wandb.init(mode=cfg.wandb.mode, project=cfg.wandb.project,
                     group=cfg.wandb.group or sweep_name, name=row["trial_id"],
                     config={k: v for k, v in row.items() if "." in k},
                     dir=workdir, reinit=True)
    for s, l in curve["train"]:
      run.log({"train_loss": l}, step=s)
    for s, l in curve["eval"]:
      run.log({"eval_loss": l}, step=s)
    run.summary.update({k: v for k, v in row.items()
                        if isinstance(v, (int, float, bool)) and v is not None})
    run.finish()


def main(argv):
  del argv
  from absl import flags
  from hptransfer import cli
  FLAGS = flags.FLAGS
  cli.setup()
  with cli.user_errors(extra=(SweepError,)):
    module = load_sweep_file(FLAGS["config"].config_filename)
    run(FLAGS.config, module.get_sweep(), FLAGS.workdir,
        worker_index=FLAGS.worker_index, num_workers=FLAGS.num_workers,
        max_group_size=FLAGS.max_group_size, memory_gb=FLAGS.memory_gb,
        trial_loop=FLAGS.trial_loop,
        dry_run=FLAGS.dry_run,
        sweep_name=os.path.splitext(os.path.basename(FLAGS["config"].config_filename))[0])
  if not FLAGS.dry_run:
    df = results_lib.load(FLAGS.workdir)
    print(summary_table(df))
    print(f"\n{len(df)} trials in {results_lib.results_path(FLAGS.workdir)}")


if __name__ == "__main__":
  from absl import app, flags
  from hptransfer import cli
  cli.config_flag("configs/sweeps/width_transformer.py")
  flags.DEFINE_string("workdir", None, "sweep directory (results.jsonl, curves/, groups/)")
  flags.DEFINE_bool("dry_run", False, "list trials, groups and FLOPs; train nothing")
  flags.DEFINE_integer("worker_index", 0, "this worker's index")
  flags.DEFINE_integer("num_workers", 1, "independent workers sharing --workdir")
  flags.DEFINE_integer("max_group_size", 0, "cap on trials per vmapped group (0: memory estimate)")
  flags.DEFINE_enum("trial_loop", "auto", list(TRIAL_LOOPS),
                    "how a group steps its trials: vmap (batched), map (one after the "
                    "other in one program), auto (map on CPU, vmap on accelerators)")
  flags.DEFINE_float("memory_gb", 0.0, "memory budget per group (0: 60% of the device, 4 GiB on CPU)")
  flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() first")
  flags.mark_flags_as_required(["workdir"])
  if "--multihost" in sys.argv or "--multihost=true" in sys.argv:
    jax.distributed.initialize()
  app.run(main)
