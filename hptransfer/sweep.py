"""Sweeps: ml_collections grids trained as vmapped trial groups.

    python -m hptransfer.sweep --config configs/sweeps/width_transformer.py \
        --workdir runs/width [--dry_run] [--worker_index i --num_workers n] \
        [--config.train.steps=100 ...]

A sweep file defines ``get_config()`` (the base config) and ``get_sweep()``, an
iterable of override dicts (dotted key -> value) built with ``sweep``,
``product`` and ``zip`` from this module.  ``--config.k=v`` overrides apply to
the base config, so to every trial; a swept key wins over such an override.

The grid language (``sweep``, ``product``, ``zip``, trial ids, groups) is
``hptransfer.grid``, re-exported here.  Trials that share everything that
shapes the compiled program are one *group* and train as a single
``jit(vmap(step))`` (``hptransfer.step``): what differs between them —
``seed``, the optimizer's numbers (LR, weight decay, schedule warmup and
ratios, Adam's betas and epsilon, ...) and anything under
``parameterization.`` (per-leaf init std, forward, lr, wd and eps
multipliers, attention scale, branch multiplier) — rides on the stacked
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

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import threading
import time

import jax
import numpy as np

from hptransfer import build as build_lib
from hptransfer import checkpoint as ckpt
from hptransfer import locks
from hptransfer import perf
from hptransfer import provenance
from hptransfer import results as results_lib
from hptransfer import step as step_lib
from hptransfer import tracking
from hptransfer.grid import (Group, SweepError, expand, flops_per_token, get_key, group_id,
                             make_groups, program_key, split_for_worker)
# The grid language, re-exported: sweep files write ``from hptransfer.sweep
# import product, sweep``.
from hptransfer.grid import (HOST_ONLY_KEYS, ID_OMITTED_DEFAULTS, Trial,
                             bytes_per_trial, group_key, memory_budget, product, set_key,
                             sweep, trial_id, zip)
from hptransfer.step import TRIAL_LOOPS

__all__ = ["run", "run_group", "main", "run_cli", "load_sweep_file", "summary_table",
           "ROW_KEYS", "SweepError", "Group", "Trial", "expand", "make_groups", "group_key",
           "program_key", "trial_id", "sweep", "product", "zip", "set_key", "get_key",
           "split_for_worker", "bytes_per_trial", "memory_budget", "flops_per_token",
           "HOST_ONLY_KEYS", "ID_OMITTED_DEFAULTS", "TRIAL_LOOPS", "resolve_trial_loop"]

# Keys that are always copied into a result row (besides the swept ones).
ROW_KEYS = ("parameterization.name", "model.name", "model.width", "model.depth",
            "optimizer.name", "optimizer.lr", "optimizer.weight_decay",
            "parameterization.base_width", "parameterization.alpha", "seed",
            "train.steps", "train.batch_size", "data.seq_len", "data.name")
# Recorded where the config has them (the decay mode and the schedule decide
# what a weight decay or a warmup means: analysis/weight_decay.py).
OPTIONAL_ROW_KEYS = ("optimizer.weight_decay_mode", "optimizer.schedule",
                     "optimizer.warmup_steps")


def resolve_trial_loop(trial_loop: str, sharded: bool) -> str:
  try:
    return step_lib.resolve_trial_loop(trial_loop, sharded)
  except step_lib.StepError as e:
    raise SweepError(str(e)) from None


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


# Compiled programs by program key (``_program_key``): chunks of one group,
# resumed groups and groups that differ only in run length share them.  Each
# entry is {"init", "step", "eval": Future} of (jax.stages.Compiled, seconds).
_COMPILED: dict = {}
# Groups prepared ahead (builds, consts, abstract state): group id -> Future.
_PLANS: dict = {}
_POOL = None
_POOL_WORKERS = [0]      # the compile pool's threads, once it exists
# Builds that make_groups already made, by trial id, for the plan of the
# group that starts with that trial (taken once; checked to be of the same
# config object).
_FIRST_BUILDS: dict = {}


def _compile_pool():
  """The background threads that compile programs ahead of their group."""
  global _POOL
  if _POOL is None:
    from concurrent.futures import ThreadPoolExecutor
    # Two where the host has cores to spare (a group's init program compiles
    # beside its train step); one on a small CPU host, where XLA's compile of
    # one program already keeps both cores busy: on the 2-core VM, with two
    # threads the init and step programs were both ready 4.2-5.7 s after
    # they began, against 4.2-5.3 s one after the other, 3 runs each
    # (docs/perf/fixed_cost_probes_cpu.json, ``timeline``).
    workers = 2 if (os.cpu_count() or 1) > 4 else 1
    _POOL = ThreadPoolExecutor(workers, thread_name_prefix="hptransfer-compile")
    _POOL_WORKERS[0] = workers
  return _POOL


def _program_key(group: Group, trial_loop: str) -> tuple:
  """What a group's compiled programs depend on: the program key, K, the
  shardings, the trial loop and the XLA options.  Cheap: no model is built."""
  cfg = group.cfg
  K = len(_pad(group.trials))
  state_sharding, batch_sharding = _shardings(K, cfg.train.batch_size)
  loop = resolve_trial_loop(trial_loop, state_sharding is not None or batch_sharding is not None)
  return (program_key(cfg), K, repr(state_sharding), repr(batch_sharding), loop,
          tuple(sorted(perf.compiler_options(perf.matmul_dtype(cfg)).items())))


class _Plan:
  """Everything a group needs before its first step, but no state: its padded
  trials, builds, stacked consts, the abstract state and batch, shardings and
  trial loop.  The abstract state and consts come from the first trial's
  build (a group's trials share every shape), so its programs can compile
  while the other trials are built (``builds``)."""

  def __init__(self, group: Group, trial_loop: str):
    import threading
    self.group = group
    self.trials = _pad(group.trials)
    self.K = K = len(self.trials)
    self.cfg = cfg = group.cfg
    self.B = cfg.train.batch_size
    self.cfgs = [t.cfg for t in self.trials]
    b0 = _FIRST_BUILDS.pop(self.trials[0].id, None)
    self.b0 = b0 if b0 is not None and b0.cfg is self.cfgs[0] else build_lib.build(self.cfgs[0])
    self.task = self.b0.task
    self.tx0 = optim_build(self.b0, cfg)
    self.abstract_consts = jax.eval_shape(lambda: step_lib.stack([self.b0.consts()] * K))
    self.state_sharding, self.batch_sharding = _shardings(K, self.B)
    self.loop = resolve_trial_loop(trial_loop, self.state_sharding is not None
                                   or self.batch_sharding is not None)
    # The init program's one trace gives the abstract state (stacked: what
    # a checkpoint restores) and, lowered, the program (seq: one trial's).
    self._init_traced = step_lib.init_traced(self.b0, self.cfgs[0],
                                             None if self.loop == "seq" else K)
    self.abstract = step_lib.abstract_state(self._init_traced, K, stacked=self.loop != "seq")
    self.key = _program_key(group, trial_loop)
    self.batch = step_lib.abstract(self.task.batch(cfg.data.seed, 0, self.B),
                                   self.batch_sharding)
    self.val_batch = step_lib.abstract(self.task.batch(cfg.data.seed, 0, self.B, "val"),
                                       self.batch_sharding)
    self._lock = threading.Lock()
    self._builds = None
    self._lowered: dict = {}   # which -> (Lowered, seconds), from lower_ahead

  def builds(self):
    """(every trial's build, their consts: stacked, or a list of K for
    ``seq``), made once (thread-safe)."""
    with self._lock:
      if self._builds is None:
        # Same program key, same shapes: the first trial's build checked them.
        builts = [self.b0] + [build_lib.build(c, check_output=False) for c in self.cfgs[1:]]
        consts = [b.consts() for b in builts]   # seq: each trial's own, unstacked
        self._builds = builts, consts if self.loop == "seq" else step_lib.stack(consts)
      return self._builds

  def compile(self, which: str):
    """(compiled program, seconds): ``which`` is "init", "step" or "eval";
    lowered here unless ``lower_ahead`` lowered it (its seconds count)."""
    t0 = time.perf_counter()
    lowered, secs = self._lowered.pop(which, (None, 0.0))
    out = (lowered if lowered is not None else self.lower(which)).compile()
    return out, secs + time.perf_counter() - t0

  def lower_ahead(self, which: str) -> None:
    """Trace and lower ``which`` now, for a later ``compile``; a failure is
    left to ``compile``, which lowers again and raises it."""
    t0 = time.perf_counter()
    try:
      self._lowered[which] = (self.lower(which), time.perf_counter() - t0)
    except Exception:   # noqa: BLE001
      pass

  def lower(self, which: str):
    """The ``jax.stages.Lowered`` that ``compile(which)`` compiles: the same
    program ``step.aot`` would compile (benchmarks/fixed_cost_probes.py
    compiles it under other XLA options)."""
    if which == "init":      # seq: one trial's init, called K times
      return self._init_traced.lower()
    vstep, veval = step_lib.compile_group(self.b0, self.tx0, self.cfg, self.loop)
    sh = None if self.loop == "seq" else self.state_sharding
    state = self.abstract
    consts = step_lib.abstract(self.abstract_consts, sh)
    if self.loop == "seq":      # one trial's state and consts
      state, consts = (jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), t) for t in (state, consts))
    state = step_lib.abstract(state, sh)
    if which == "step":
      return vstep.lower(state, consts, self.batch)
    return veval.lower(state["params"], consts, self.val_batch)


def _prepare(group: Group, trial_loop: str, ahead: bool) -> None:
  """Start preparing ``group``: its plan, and its programs unless a group of
  the same program key has them.  ``ahead``: on the compile thread, so this
  returns at once; else here, before returning.  A failure is kept in the
  futures and raised by ``run_group`` of the group that needs them."""
  from concurrent.futures import Future
  if group.id in _PLANS:
    return
  key = _program_key(group, trial_loop)
  plan_f = _PLANS[group.id] = Future()
  jobs = None
  if key not in _COMPILED:
    jobs = _COMPILED[key] = {"init": Future(), "step": Future(), "eval": Future()}

  def work():
    try:
      plan = _Plan(group, trial_loop)
    except BaseException as e:   # noqa: BLE001 - raised where the group is run
      for f in [plan_f] + (list(jobs.values()) if jobs else []):
        f.set_exception(e)
      return
    plan_f.set_result(plan)

    def compile_(which, f):
      try:
        f.set_result(plan.compile(which))
      except BaseException as e:   # noqa: BLE001
        f.set_exception(e)

    def build_trials():    # run_group makes them (and raises) if this fails
      try:
        plan.builds()
      except Exception:    # noqa: BLE001
        pass
    if jobs and ahead and _POOL_WORKERS[0] == 1:
      # One compile thread: the init program compiles on a thread of its
      # own while this one makes the trials' builds and traces and lowers
      # the step and eval programs (Python, beside XLA's compile, which
      # leaves part of a core idle); then the step and eval compiles queue.  The
      # same programs, compiled one after another as before.
      side = threading.Thread(target=compile_, args=("init", jobs["init"]),
                              name="hptransfer-compile-init")
      side.start()
      build_trials()       # first, so run_group waits for them instead of
      plan.lower_ahead("step")   # making them beside the lowering (one GIL)
      plan.lower_ahead("eval")
      side.join()
      for which in ("step", "eval"):
        _compile_pool().submit(compile_, which, jobs[which])
      return
    # The step and eval programs go to the pool first, so that with two
    # compile threads the step compiles beside the init program (compiled
    # here).
    for which in (("step", "eval", "init") if jobs else ()):
      f = jobs[which]
      if ahead and which != "init":
        _compile_pool().submit(compile_, which, f)
      else:
        compile_(which, f)
    if ahead:
      build_trials()

  if ahead:
    _compile_pool().submit(work)
  else:
    work()


def _wait(future, group: Group, what: str):
  """A prepared result, timing the wait; a failure names the group and is
  not cached (a rerun in this process tries again)."""
  t0 = time.perf_counter()
  try:
    out = future.result()
  except BaseException as e:
    for k, jobs in list(_COMPILED.items()):
      if any(f is future for f in jobs.values()):
        del _COMPILED[k]
    _PLANS.pop(group.id, None)
    if hasattr(e, "add_note"):
      e.add_note(f"(while preparing the {what} of sweep group {group.id}, "
                 f"{len(group.trials)} trials, width {group.cfg.model.width})")
    raise
  return out, time.perf_counter() - t0


def run_group(group: Group, workdir: str, *, sweep_name: str = "", worker: int = 0,
              progress: bool = True, log=print, trial_loop: str = "auto",
              on_eval=None, extra_rows: dict | None = None,
              compile_ahead: bool = True, on_ready=None) -> list[dict]:
  """Train one group to the end (resuming its checkpoint); returns its rows.

  ``on_eval(step, metrics, alive)`` (a search's pruner) is called at every
  eval with the per-trial eval metrics and alive flags of the group's own
  trials; the indices it returns are *pruned*: frozen from that step as a
  diverged trial is (the others run on bitwise unchanged) and recorded with
  ``pruned: true`` and ``pruned_step``.  ``extra_rows`` adds fields to the
  rows, by trial id.

  ``compile_ahead``: the eval program compiles on a compile thread while
  the first steps train; ``on_ready()`` is called once this group's train
  step is compiled (``run`` starts the next group's preparation there).  Each row's ``timing`` says where the group's seconds went:
  ``compile_s`` (its programs' compile time; 0 when an earlier group's were
  reused), ``compile_exposed_s`` (how long training waited for them),
  ``compile_hidden_s`` (the rest), ``step_s`` (a steady training step),
  ``train_s``, ``eval_s``, ``checkpoint_s``, ``setup_s``.
  """
  t0 = time.time()
  _prepare(group, trial_loop, compile_ahead)
  t_plan = time.perf_counter()
  plan, _ = _wait(_PLANS[group.id], group, "builds")
  _PLANS.pop(group.id, None)
  jobs = _COMPILED[plan.key]
  trials, K, cfg, B = plan.trials, plan.K, plan.cfg, plan.B
  steps = cfg.train.steps
  b0, task, cfgs = plan.b0, plan.task, plan.cfgs
  builts, consts = plan.builds()
  plan_wait = time.perf_counter() - t_plan
  seq = plan.loop == "seq"

  t_init = time.perf_counter()
  gdir = os.path.join(workdir, "groups", group.id)
  mngr = ckpt.manager(os.path.join(gdir, "checkpoints"), keep=1)
  start, curves = 0, {"train": [], "eval": []}
  restored, start = ckpt.restore_latest_good(mngr, plan.abstract, with_json=True, log=log,
                                             what=f"group {group.id}")
  init_compile_s = init_wait = 0.0
  if restored is not None:
    state, curves = restored.state, restored.curves
    if seq:   # each trial's state as its own arrays
      state = step_lib.unstack(state, K)
  else:
    (init_prog, init_compile_s), init_wait = _wait(jobs["init"], group, "init program")
    state = (step_lib.init_trials(builts, cfgs, init_prog) if seq
             else step_lib.init_group(builts, cfgs, init_prog))
  state_sharding, batch_sharding = plan.state_sharding, plan.batch_sharding
  if state_sharding is not None:
    state = jax.device_put(state, state_sharding)
    consts = jax.device_put(consts, state_sharding)
  init_s = time.perf_counter() - t_init - init_wait

  def stacked(st):
    return step_lib.stack_on_host(st) if seq else st

  def batch_at(step, split="train"):   # on the device once, for every trial
    return jax.device_put(task.batch(cfg.data.seed, step, B, split), batch_sharding)

  (vstep, step_compile_s), step_wait = _wait(jobs["step"], group, "train step")
  if on_ready is not None:
    on_ready()
  loop = plan.loop
  exposed = step_wait + init_wait
  timing = {"setup_s": time.time() - t0 - exposed, "plan_s": plan_wait, "init_s": init_s,
            "compile_exposed_s": exposed,
            "eval_s": 0.0, "checkpoint_s": 0.0}
  eval_prog: list = []

  def evaluate():
    if not eval_prog:
      (prog, secs), wait = _wait(jobs["eval"], group, "eval step")
      eval_prog.append((prog, secs))
      timing["compile_exposed_s"] += wait
    veval = eval_prog[0][0]
    if seq:
      ms = jax.device_get([step_lib.stack([veval(state[k]["params"], consts[k],
                                                 batch_at(i, "val")) for k in range(K)])
                           for i in range(cfg.train.eval_batches)])
    else:
      ms = jax.device_get([veval(state["params"], consts, batch_at(i, "val"))
                           for i in range(cfg.train.eval_batches)])
    return {k: np.mean(np.stack([m[k] for m in ms]), axis=0) for k in ms[0]}

  def alive():
    return np.asarray(jax.device_get(stacked([s["alive"] for s in state]) if seq
                                     else state["alive"]))

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=start, desc=f"group {group.id[:8]} K={K}",
               leave=False, dynamic_ncols=True, disable=None)
  last_eval: dict = {}
  t_loop = time.perf_counter()
  t_first = in_flight = None
  with perf.frozen_heap():   # no GC pass walks the setup's objects every few steps
    for step in range(start, steps):
      batch = batch_at(step)
      if seq:
        out = [vstep(state[k], consts[k], batch) for k in range(K)]   # (grid's zip shadows zip)
        state = [o[0] for o in out]
        loss = [o[1]["loss"] for o in out]
      else:
        state, metrics = vstep(state, consts, batch)
        loss = metrics["loss"]
      done = step + 1
      # At most two steps in flight: wait for the previous one.  Left to run
      # ahead to the next loss fetch, the host queues up to ten steps of
      # executions and their buffers, and the steps ran 15-20% slower
      # (docs/performance.md); the results are the same bits either way.
      if in_flight is not None:
        jax.block_until_ready(in_flight)
      in_flight = loss
      if t_first is None:
        jax.block_until_ready(loss)
        t_first = time.perf_counter()
        timing["first_step_s"] = t_first - t_loop
      if done % cfg.train.log_every == 0 or done == steps:
        curves["train"].append([done, np.asarray(jax.device_get(loss)).tolist()])
      if done % cfg.train.eval_every == 0 or done == steps:
        jax.block_until_ready(loss)
        te = time.perf_counter()
        last_eval = evaluate()
        curves["eval"].append([done, last_eval["loss"].tolist()])
        for k, v in last_eval.items():
          if k != "loss":
            curves.setdefault(f"eval_{k}", []).append([done, v.tolist()])
        if on_eval is not None and done < steps:
          n = len(group.trials)
          alive_now = alive()[:n]
          stop = [k for k in on_eval(done, {m: np.asarray(v)[:n] for m, v in last_eval.items()},
                                     alive_now) if alive_now[k]]
          if stop:
            curves.setdefault("pruned", {}).update({str(k): done for k in stop})
            if seq:
              for k in stop:
                state[k] = {**state[k], "alive": jax.numpy.zeros_like(state[k]["alive"])}
            else:
              state = {**state, "alive": state["alive"].at[np.asarray(stop)].set(False)}
        timing["eval_s"] += time.perf_counter() - te
      if done % cfg.train.checkpoint_every == 0 and done < steps:
        jax.block_until_ready(loss)
        tc = time.perf_counter()
        ckpt.save(mngr, done, stacked(state), curves)
        timing["checkpoint_s"] += time.perf_counter() - tc
      if bar is not None:
        bar.update(1)
      if done % cfg.train.log_every == 0 and not alive().any():
        log(f"group {group.id}: every trial diverged by step {done}")
        break
  tc = time.perf_counter()
  mngr.wait_until_finished()
  mngr.close()
  if bar is not None:
    bar.close()
  # Every trial's step count and guard numbers (the rows need nothing else:
  # a seq group's params are not stacked again after its last checkpoint).
  keys = ("step",) + step_lib.GUARD_KEYS
  if seq:
    host = jax.device_get([{k: s[k] for k in keys} for s in state])
    final = {k: np.stack([h[k] for h in host]) for k in keys}
  else:
    final = jax.device_get({k: state[k] for k in keys})
  t_end = time.perf_counter()
  timing["checkpoint_s"] += t_end - tc
  timing["train_s"] = t_end - t_loop - timing["eval_s"] - timing["checkpoint_s"]
  trained_steps = int(np.max(final["step"])) - start
  timing["step_s"] = ((timing["train_s"] - timing.get("first_step_s", 0.0))
                      / max(1, trained_steps - 1))
  eval_compile_s = eval_prog[0][1] if eval_prog else 0.0
  # The programs' own compile seconds: 0 when an earlier group compiled them.
  shared = getattr(jobs["step"], "hpt_owner", group.id) != group.id
  jobs["step"].hpt_owner = getattr(jobs["step"], "hpt_owner", group.id)
  timing["compile_s"] = 0.0 if shared else step_compile_s + eval_compile_s + init_compile_s
  if not compile_ahead:   # compiled in the foreground (in _prepare): all exposed
    timing["setup_s"] = max(0.0, timing["setup_s"] - timing["compile_s"])
    timing["compile_exposed_s"] = timing["compile_s"]
  timing["compile_hidden_s"] = max(0.0, timing["compile_s"] - timing["compile_exposed_s"])
  timing["compiled_ahead"] = bool(compile_ahead)
  timing = {k: round(v, 4) if isinstance(v, float) else v for k, v in timing.items()}

  wall = time.time() - t0
  versions = provenance.versions(perf.matmul_dtype(cfg))
  fpt = flops_per_token(b0)
  per_row = task.examples_per_batch_row
  extra_metrics = sorted(k[len("eval_"):] for k in curves if k.startswith("eval_"))
  rows = []
  pruned = {int(k): int(v) for k, v in curves.get("pruned", {}).items()}
  for k, trial in enumerate(group.trials):   # padding copies are dropped here
    pstep = pruned.get(k)
    diverged = not bool(final["alive"][k]) and pstep is None
    dstep = int(final["diverged_step"][k]) if diverged else None
    cut_at = dstep if diverged else (pstep + 1 if pstep is not None else None)
    cut = (lambda c: [[s, l] for s, l in c if s < cut_at]) if cut_at else (lambda c: c)
    train_curve = cut([[s, l[k]] for s, l in curves["train"]])
    eval_curve = cut([[s, l[k]] for s, l in curves["eval"]])
    extra = {m: cut([[s, v[k]] for s, v in curves[f"eval_{m}"]]) for m in extra_metrics}
    finite = lambda c: [l for _, l in c if l is not None and np.isfinite(l)]
    row = {key: get_key(trial.cfg, key) for key in ROW_KEYS}
    for key in OPTIONAL_ROW_KEYS:
      try:
        row[key] = get_key(trial.cfg, key)
      except (KeyError, AttributeError):
        pass
    if trial.cfg.model.get("module"):
      row["model.module"] = trial.cfg.model.module
    if "task" in trial.cfg and trial.cfg.task.name != "lm":
      row["task.name"] = trial.cfg.task.name
    row.update(trial.overrides)
    trained = int(final["step"][k])
    row.update({
        "trial_id": trial.id, "group_id": group.id, "group_size": len(group.trials),
        "sweep": sweep_name, "worker": worker,
        "final_train_loss": step_lib.final_train_loss(final["tail_sum"][k], final["tail_n"][k],
                                                      final["alive"][k]),
        "best_train_loss": min(finite(train_curve), default=None),
        "final_eval_loss": None if diverged or not eval_curve else eval_curve[-1][1],
        "best_eval_loss": min(finite(eval_curve), default=None),
        "diverged": diverged, "diverged_step": dstep,
        "pruned": pstep is not None, "pruned_step": pstep,
        "steps": trained, "tokens": trained * B * per_row,
        # The planned budget (train.steps x batch x predictions per row): the
        # D of scaling-law fits, the same for a trial that diverged early.
        "token_budget": int(trial.cfg.train.steps) * B * per_row,
        "num_params": builts[k].num_params(),
        "num_params_embedding_free": num_params_embedding_free(builts[k]),
        "flops": fpt * trained * B * per_row,
        "wall_s": wall, "device": versions["device"], "versions": versions,
        "devices": len(jax.local_devices()),
        "trial_loop": loop,
        "sharding": "trials" if state_sharding is not None and batch_sharding is None
        else "batch" if batch_sharding is not None else "none",
        "timing": timing,
        "data_sha256": task.sha256,
    })
    if pstep is not None:
      row["final_eval_loss"] = None          # stopped early: no final numbers
    for m, c in extra.items():
      row[f"final_eval_{m}"] = None if diverged or pstep is not None or not c else c[-1][1]
    row.update((extra_rows or {}).get(trial.id, {}))
    results_lib.write_curve(workdir, trial.id, {"train": train_curve, "eval": eval_curve,
                                                **{f"eval_{m}": c for m, c in extra.items()},
                                                "overrides": trial.overrides})
    rows.append(row)
  results_lib.append(workdir, rows)
  shutil.rmtree(gdir, ignore_errors=True)
  return rows


@contextlib.contextmanager
def group_lock(workdir: str, gid: str):
  """An exclusive, non-blocking lock on one group: yields False when another
  process holds it (it is training that group), True otherwise.  So processes
  sharing a workdir, with or without worker flags, never train one group
  twice or write into one another's checkpoints."""
  with locks.file_lock(os.path.join(workdir, "groups", f"{gid}.lock"), blocking=False) as held:
    yield held


def optim_build(built, cfg):
  """The optimizer of a trial (its numbers are replaced per trial in a group)."""
  from hptransfer import optim
  return optim.build(cfg.optimizer, built.leaf_trees(), cfg.train.steps)


def num_params_embedding_free(built) -> int:
  """Parameters outside lookup tables (embeddings): the N of scaling laws."""
  return sum(int(np.prod(leaf.shape)) for leaf in built.table.values() if not leaf.lookup)


# ----------------------------------------------------------------------------
# The driver.


def load_sweep_file(path: str):
  """The module of a sweep file: ``get_config()`` and either ``get_sweep()``
  (a grid) or ``get_search_space()`` (a search, ``hptransfer.search``)."""
  spec = importlib.util.spec_from_file_location("_hptransfer_sweep", path)
  module = importlib.util.module_from_spec(spec)
  if os.getcwd() not in sys.path:   # sweep files import configs/ from the repo root
    sys.path.insert(0, os.getcwd())
  spec.loader.exec_module(module)
  grid_, space = hasattr(module, "get_sweep"), hasattr(module, "get_search_space")
  if grid_ and space:
    raise SweepError(f"{path} defines both get_sweep() and get_search_space(); a file is a "
                     "grid or a search: move one of them to a file of its own")
  if not grid_ and not space:
    raise SweepError(f"{path} defines neither get_sweep() nor get_search_space(); a sweep "
                     "file needs get_config() and one of them")
  return module


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


def _check_mesh(cfg) -> None:
  """A sweep lays its trials over the devices itself (a ``trials`` axis);
  ``mesh.*`` lays out one run, in ``hptransfer.train``."""
  m = cfg.get("mesh")
  if m is not None and (m.get("fsdp", 1) != 1 or m.get("tensor", 1) != 1):
    raise SweepError(f"mesh.fsdp={m.fsdp}, mesh.tensor={m.tensor}: a sweep spreads its "
                     "trials over the devices itself; FSDP and tensor sharding are for one "
                     "large run (python -m hptransfer.train --config.mesh.fsdp=...): set "
                     "them to 1 here")


def run(base_cfg, overrides, workdir: str, *, worker_index: int = 0, num_workers: int = 1,
        max_group_size: int = 0, memory_gb: float = 0.0, dry_run: bool = False,
        sweep_name: str = "", progress: bool = True, log=print,
        trial_loop: str = "auto", compile_ahead: bool = True) -> list[dict]:
  """Train the grid's unfinished trials, group by group; returns the new rows.

  ``compile_ahead``: while a group trains, the next group's builds and
  programs are prepared on a background thread (AOT ``lower().compile()``),
  so on an accelerator every group's compile but the first hides behind
  training; each row's ``timing`` reports hidden and exposed compile seconds.
  The programs are the same XLA programs as a foreground compile's.
  """
  resolve_trial_loop(trial_loop, False)   # a bad value fails before any training
  _check_mesh(base_cfg)
  trials = expand(base_cfg, overrides)
  _FIRST_BUILDS.clear()
  groups = make_groups(trials, max_group_size, int(memory_gb * (1 << 30)),
                       None if dry_run else _FIRST_BUILDS)
  if dry_run:
    total = 0.0
    for g in groups:
      b = build_lib.build(g.cfg)
      f = (flops_per_token(b) * g.cfg.train.steps * g.cfg.train.batch_size
           * b.task.examples_per_batch_row)
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
  todo_groups = [Group(id=group_id(ts), trials=ts) for ts in todo]
  n_done = sum(len(g.trials) for g in mine) - sum(len(ts) for ts in todo)
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=sum(len(g.trials) for g in mine), initial=n_done, desc="trials",
               dynamic_ncols=True, disable=None)
  rows, elsewhere = [], []
  for i, g in enumerate(todo_groups):
    nxt = todo_groups[i + 1] if i + 1 < len(todo_groups) else None
    # Once this group's step is compiled, the next group is prepared beside it.
    on_ready = ((lambda n=nxt: _prepare(n, trial_loop, True))
                if compile_ahead and nxt is not None else None)
    with group_lock(workdir, g.id) as mine_now:
      if not mine_now:             # another process is training this group
        elsewhere.append(g.id)
        _PLANS.pop(g.id, None)
        continue
      left = [t for t in g.trials if t.id not in results_lib.finished_ids(workdir)]
      if left:                     # it may have finished while we waited for it
        if len(left) < len(g.trials):   # what was prepared for it no longer fits
          _PLANS.pop(g.id, None)
          g = Group(id=g.id, trials=left)
        t_group = time.time()
        new = run_group(g, workdir, sweep_name=sweep_name, worker=worker_index,
                        progress=progress, log=log, trial_loop=trial_loop,
                        compile_ahead=compile_ahead, on_ready=on_ready)
        rows += new
        if progress and not sys.stderr.isatty():   # no progress bar: one line a group
          losses = [r["final_train_loss"] for r in new if r["final_train_loss"] is not None]
          log(f"group {g.id} ({len(new)} trials, width {g.cfg.model.width}) done in "
              f"{time.time() - t_group:.0f} s; best final train loss "
              f"{min(losses) if losses else float('nan'):.4f}, "
              f"{sum(r['diverged'] for r in new)} diverged; {len(rows)} trials this run")
    if bar is not None:
      bar.update(len(g.trials))
  if bar is not None:
    bar.close()
  if elsewhere:
    log(f"{len(elsewhere)} group(s) were being trained by another process sharing "
        f"{workdir} and were left to it: {', '.join(elsewhere)}; rerun when it is done "
        "to see every row")
  _wandb_trials(base_cfg, rows, workdir, sweep_name)
  if rows and tracking.mlflow_uri(base_cfg, workdir):
    tracking.log_trials_mlflow(base_cfg, rows, {r["trial_id"]: results_lib.load_curve(
        workdir, r["trial_id"]) for r in rows}, workdir, sweep_name)
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
    name = os.path.splitext(os.path.basename(FLAGS["config"].config_filename))[0]
    _check_mesh(FLAGS.config)
    if hasattr(module, "get_search_space"):
      from hptransfer import search
      if FLAGS.num_workers != 1 or FLAGS.dry_run:
        raise SweepError("a search shares its work through its Optuna storage: start more "
                         "processes with the same --workdir (or search.storage) instead of "
                         "--worker_index/--num_workers; --dry_run is for grids")
      summary = search.run(FLAGS.config, module.get_search_space(), FLAGS.workdir,
                           sweep_name=name, max_group_size=FLAGS.max_group_size,
                           memory_gb=FLAGS.memory_gb, trial_loop=FLAGS.trial_loop,
                           enqueue=module.get_enqueued() if hasattr(module, "get_enqueued")
                           else ())
      print(json.dumps(summary, indent=1, default=str))
    else:
      run(FLAGS.config, module.get_sweep(), FLAGS.workdir,
          worker_index=FLAGS.worker_index, num_workers=FLAGS.num_workers,
          max_group_size=FLAGS.max_group_size, memory_gb=FLAGS.memory_gb,
          trial_loop=FLAGS.trial_loop, dry_run=FLAGS.dry_run, sweep_name=name,
          compile_ahead=FLAGS.compile_ahead)
  if not FLAGS.dry_run:
    df = results_lib.load(FLAGS.workdir)
    print(summary_table(df))
    print(f"\n{len(df)} trials in {results_lib.results_path(FLAGS.workdir)}")


def run_cli():
  """``python -m hptransfer.sweep`` / ``hptransfer-sweep``."""
  from absl import flags
  from hptransfer import cli
  cli.config_flag("configs/sweeps/width_transformer.py")
  flags.DEFINE_string("workdir", None, "sweep directory (results.jsonl, curves/, groups/)")
  flags.DEFINE_bool("dry_run", False, "list trials, groups and FLOPs; train nothing")
  flags.DEFINE_integer("worker_index", 0, "this worker's index")
  flags.DEFINE_integer("num_workers", 1, "independent workers sharing --workdir")
  flags.DEFINE_integer("max_group_size", 0, "cap on trials per vmapped group (0: memory estimate)")
  flags.DEFINE_enum("trial_loop", "auto", list(TRIAL_LOOPS),
                    "how a group steps its trials: vmap (batched), map (one after the "
                    "other in one program), seq (one program per trial, dispatched in "
                    "turn), auto (seq on CPU, vmap on accelerators)")
  flags.DEFINE_bool("compile_ahead", True, "compile the next group's programs on a "
                    "background thread while this one trains")
  flags.DEFINE_float("memory_gb", 0.0, "memory budget per group (0: 60% of the device, 4 GiB on CPU)")
  flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() first")
  flags.mark_flags_as_required(["workdir"])
  cli.init_distributed()
  cli.run_app(main, __doc__)


if __name__ == "__main__":
  run_cli()
