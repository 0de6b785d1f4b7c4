"""Searches: Optuna proposes the trials, vmapped groups train them.

A sweep file with ``get_search_space()`` (dotted key -> distribution) beside
``get_config()`` is a search; ``python -m hptransfer.sweep --config FILE
--workdir DIR`` runs it::

    from configs import transformer
    from hptransfer.search import loguniform   # also uniform, int_uniform, choice
    def get_config():
        c = transformer.get_config()
        c.search.sampler = "tpe"; c.search.num_trials = 12; c.search.batch_size = 4
        return c
    def get_search_space():
        return {"optimizer.lr": loguniform(2.0 ** -12, 2.0 ** -3),
                "parameterization.output_mult": loguniform(0.25, 4.0)}

Each round asks Optuna for ``search.batch_size`` trials (pending ones are not
proposed again: TPE's constant liar), trains them as the sweep engine trains
a grid (trials that share a compiled shape in one vmapped group, the same
batches, divergence freezing, checkpoints, one results row each), and tells
Optuna their ``search.metric``.  A diverged trial is told ``inf``.  A pruner
(``search.pruner``: median, successive_halving, hyperband) decides at every
eval which live trials of a group stop; a stopped trial is frozen as a
diverged one is and told as pruned.

The study lives in Optuna's storage (``search.storage``): SQLite in the work
directory by default, any RDB URL, or ``journal:<path>`` for Optuna's journal
file.  That storage is how several processes share a search; the trial being
trained is locked (a file lock per trial in ``<workdir>/groups/``), so a
trial whose worker was killed, still RUNNING in the study without a row, is
trained again by the next process that finds its lock free, and a trial with
a row is told that row.  A rerun after the study reached ``num_trials`` adds
nothing.  Results rows carry ``search.trial_number`` and ``search.study``.

Browse a study with ``optuna-dashboard sqlite:///<workdir>/study.db``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Mapping

from hptransfer import grid
from hptransfer import locks as locks_lib
from hptransfer.grid import SweepError

SAMPLERS = ("random", "qmc", "tpe", "cmaes", "gp")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
# What a search's config section holds (configs/transformer.py writes it out).
DEFAULTS = dict(sampler="tpe", num_trials=0, batch_size=0, metric="final_eval_loss",
                seed=0, storage="", study_name="", pruner="none", startup_trials=0)


# ----------------------------------------------------------------------------
# Distributions.


@dataclasses.dataclass(frozen=True)
class Distribution:
  kind: str                     # float | int | categorical
  low: Any = None
  high: Any = None
  log: bool = False
  choices: tuple = ()

  def to_optuna(self):
    import optuna.distributions as D
    if self.kind == "float":
      return D.FloatDistribution(float(self.low), float(self.high), log=self.log)
    if self.kind == "int":
      return D.IntDistribution(int(self.low), int(self.high), log=self.log)
    return D.CategoricalDistribution(list(self.choices))

  def contains(self, v) -> bool:
    if self.kind == "categorical":
      return v in self.choices
    return isinstance(v, (int, float)) and not isinstance(v, bool) and self.low <= v <= self.high

  def corners(self) -> list:
    """Values that span the distribution (each is checked against the config)."""
    if self.kind == "categorical":
      return list(self.choices)
    return [self.low, self.high]


def loguniform(low: float, high: float) -> Distribution:
  """Log-uniform on [low, high] (both > 0)."""
  return Distribution("float", low, high, log=True)


def uniform(low: float, high: float) -> Distribution:
  return Distribution("float", low, high)


def int_uniform(low: int, high: int, log: bool = False) -> Distribution:
  return Distribution("int", low, high, log=log)


def choice(values) -> Distribution:
  """One of ``values`` (a categorical: keys that change compiled shapes, such
  as a width or the optimizer, group their trials as a sweep's do)."""
  return Distribution("categorical", choices=tuple(values))


def check_space(base_cfg, space) -> dict[str, Distribution]:
  """Every key a config key, every distribution well formed, and every value
  it can take a valid config; a ``SweepError`` naming the key otherwise."""
  if not isinstance(space, Mapping) or not space:
    raise SweepError("get_search_space() must return a non-empty {dotted key: distribution} "
                     "dict, e.g. {'optimizer.lr': loguniform(1e-4, 1e-1)}")
  out = {}
  for key, dist in space.items():
    if not isinstance(dist, Distribution):
      raise SweepError(f"search space {key!r}: {dist!r} is not a distribution; use "
                       "loguniform, uniform, int_uniform or choice from hptransfer.search")
    if dist.kind == "categorical":
      if not dist.choices:
        raise SweepError(f"search space {key!r}: choice() needs at least one value")
    else:
      for name, v in (("low", dist.low), ("high", dist.high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
          raise SweepError(f"search space {key!r}: {name}={v!r} must be a finite number")
      if dist.low > dist.high:
        raise SweepError(f"search space {key!r}: low={dist.low} is above high={dist.high}; "
                         "swap them")
      if dist.log and dist.low <= 0:
        raise SweepError(f"search space {key!r}: a log distribution needs low > 0 (got "
                         f"low={dist.low}); use uniform() for a range that reaches 0")
    for value in dist.corners():
      cfg = base_cfg.copy_and_resolve_references()
      grid.set_key(cfg, key, value)
    out[key] = dist
  # Every combination of the corners is a config the search may train.
  grid.expand(base_cfg, grid.product(*[grid.sweep(k, d.corners()) for k, d in out.items()]))
  return out


def check_settings(scfg) -> None:
  if scfg.sampler not in SAMPLERS:
    raise SweepError(f"search.sampler={scfg.sampler!r} is not one of {', '.join(SAMPLERS)}; "
                     "set --config.search.sampler=tpe")
  if scfg.get("pruner", "none") not in PRUNERS:
    raise SweepError(f"search.pruner={scfg.pruner!r} is not one of {', '.join(PRUNERS)}; "
                     "set --config.search.pruner=median (or none)")
  for field in ("num_trials",):
    v = scfg[field]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise SweepError(f"search.{field}={v!r} must be a positive integer")
  v = scfg.batch_size
  if isinstance(v, bool) or not isinstance(v, int) or v < 0:
    raise SweepError(f"search.batch_size={v!r} must be >= 0 (0: the group size the memory "
                     "estimate allows)")
  if scfg.sampler == "gp":
    import importlib.util
    if importlib.util.find_spec("torch") is None:
      raise SweepError("search.sampler='gp' is Optuna's GPSampler, which needs torch: pip "
                       "install torch, or use --config.search.sampler=tpe")


# ----------------------------------------------------------------------------
# The study.


def storage_url(scfg, workdir: str) -> str:
  return scfg.get("storage", "") or "sqlite:///" + os.path.abspath(
      os.path.join(workdir, "study.db"))


def _storage(url: str):
  import optuna
  if url.startswith("journal:"):
    from optuna.storages.journal import JournalFileBackend
    return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
  return optuna.storages.RDBStorage(url)


def make_sampler(scfg, offset: int = 0):
  """The sampler of ``search.sampler``, seeded by ``search.seed`` and
  ``offset`` (the trials the study already holds): a resumed search goes on
  with a fresh random stream instead of proposing its first trials again."""
  import optuna
  seed = (int(scfg.get("seed", 0)) * 1_000_003 + offset) % (2 ** 31)
  startup = int(scfg.get("startup_trials", 0)) or None
  if scfg.sampler == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  if scfg.sampler == "qmc":
    return optuna.samplers.QMCSampler(seed=seed, scramble=True)
  if scfg.sampler == "tpe":
    kw = {"n_startup_trials": startup} if startup else {}
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, **kw)
  if scfg.sampler == "cmaes":
    kw = {"n_startup_trials": startup} if startup else {}
    return optuna.samplers.CmaEsSampler(seed=seed, **kw)
  return optuna.samplers.GPSampler(seed=seed)


def make_pruner(scfg):
  import optuna
  name = scfg.get("pruner", "none")
  if name == "median":
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
  if name == "successive_halving":
    return optuna.pruners.SuccessiveHalvingPruner()
  if name == "hyperband":
    return optuna.pruners.HyperbandPruner()
  return optuna.pruners.NopPruner()


def open_study(scfg, workdir: str, sweep_name: str):
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  url = storage_url(scfg, workdir)
  try:
    storage = _storage(url)
  except Exception as e:   # a URL the storage cannot open
    raise SweepError(f"search.storage={url!r} cannot be opened ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:200] if str(e) else ''}); give an RDB URL "
                     "(sqlite:///path/study.db), journal:<path>, or '' for SQLite in the "
                     "workdir") from None
  name = scfg.get("study_name", "") or sweep_name or "hptransfer"
  study = optuna.create_study(storage=storage, study_name=name, sampler=make_sampler(scfg),
                              pruner=make_pruner(scfg), direction="minimize",
                              load_if_exists=True)
  study.sampler = make_sampler(scfg, offset=len(study.get_trials(deepcopy=False)))
  return study


def _trial_locks(workdir: str) -> "locks_lib.HeldLocks":
  return locks_lib.HeldLocks(os.path.join(workdir, "groups"), "trial_")


def _overrides(params: dict) -> dict:
  return {k: grid._py(v) for k, v in params.items()}


# ----------------------------------------------------------------------------
# The loop.


def seed(study, base_cfg, dists: dict, rows_by_id: dict, value_of, enqueue=()) -> int:
  """Give the study what it should know before it asks: rows already in the
  workdir that are trials of this search (a grid run there before: a row
  whose space values, put into the base config, give its own trial id) are
  added as finished trials, and ``enqueue`` points (e.g. a rule's predicted
  LR) are queued to be proposed first.  Returns how many rows were added."""
  import optuna
  known = {t.user_attrs.get("trial_id") for t in study.get_trials(deepcopy=False)}
  added = 0
  for tid, row in rows_by_id.items():
    if tid in known or not all(k in row for k in dists):
      continue
    params = {k: row[k] for k in dists}
    if not all(dists[k].contains(v) for k, v in params.items()):
      continue
    try:
      trial = grid.expand(base_cfg, [_overrides(params)])[0]
    except SweepError:
      continue
    if trial.id != tid:
      continue
    value, state = value_of(row)
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={k: d.to_optuna() for k, d in dists.items()},
        value=value if state.name == "COMPLETE" else None, state=state,
        user_attrs={"trial_id": tid, "seeded": True}))
    added += 1
  queued = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)
            if t.state.name == "WAITING"}
  for point in enqueue:
    unknown = sorted(set(point) - set(dists))
    if unknown:
      raise SweepError(f"get_enqueued(): keys {unknown} are not in the search space "
                       f"({', '.join(dists)})")
    if tuple(sorted(point.items())) not in queued and len(study.trials) == added:
      study.enqueue_trial(dict(point), skip_if_exists=True)
  return added


def run(base_cfg, space, workdir: str, *, sweep_name: str = "", progress: bool = True,
        log=print, trial_loop: str = "auto", max_group_size: int = 0,
        memory_gb: float = 0.0, enqueue=()) -> dict:
  """Run (or resume, or join) the search of ``base_cfg`` over ``space``;
  returns a summary (trials complete, pruned, failed, best value and params).
  ``enqueue``: points to try first (``get_enqueued()`` in a sweep file)."""
  import optuna
  from optuna.trial import TrialState
  from hptransfer import results as results_lib
  from hptransfer import sweep as sweep_lib
  scfg = base_cfg.search
  check_settings(scfg)
  dists = check_space(base_cfg, space)
  odists = {k: d.to_optuna() for k, d in dists.items()}
  os.makedirs(workdir, exist_ok=True)
  locks = _trial_locks(workdir)
  study_lock = os.path.join(workdir, "groups", "study.lock")
  with locks_lib.file_lock(study_lock):   # processes starting together create the schema once
    study = open_study(scfg, workdir, sweep_name)
  metric = scfg.get("metric", "final_eval_loss")
  trained, repeats = 0, 0

  def value_of(row) -> tuple[float | None, Any]:
    if row.get("pruned"):
      return None, TrialState.PRUNED
    v = row.get(metric)
    if row.get("diverged") or v is None or not math.isfinite(v):
      return float("inf"), TrialState.COMPLETE
    return float(v), TrialState.COMPLETE

  with locks_lib.file_lock(study_lock):
    n = seed(study, base_cfg, dists, {r["trial_id"]: r for r in results_lib.read_rows(workdir)},
             value_of, enqueue)
  if n:
    log(f"search {study.study_name}: {n} trials already in {workdir} seeded the study")

  def tell(number, row):
    value, state = value_of(row)
    study.tell(number, value if state == TrialState.COMPLETE else None, state=state,
               skip_if_finished=True)

  while True:
    rows_by_id = {r["trial_id"]: r for r in results_lib.read_rows(workdir)}
    with locks_lib.file_lock(study_lock):
      # Tell what has a row; take the RUNNING trials nobody is training (their
      # worker was killed) before asking for new ones, so that a killed
      # round's groups form again and resume from their checkpoints.
      todo = []
      for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = ft.user_attrs.get("trial_id")
        if tid in rows_by_id:
          tell(ft.number, rows_by_id[tid])
        elif tid is None or tid in locks.held or locks.try_lock(tid):
          todo.append(optuna.trial.Trial(study, ft._trial_id))
      # The budget counts distinct configs: a proposal that repeats a trained
      # one is told its row, and does not use up a trial.
      finished = len({t.user_attrs.get("trial_id", t.number) for t in study.get_trials(
          deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))})
      running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
      k = scfg.batch_size or _group_capacity(base_cfg, max_group_size, memory_gb)
      n_new = 0 if todo else max(0, min(k, scfg.num_trials - finished - running))
      if n_new:   # a stream that depends on the study, not on which process asks
        study.sampler = make_sampler(scfg, offset=len(study.get_trials(deepcopy=False)))
      round_trials = todo + [study.ask(odists) for _ in range(n_new)]
      if not round_trials:
        break
      # Resolve every trial to its config and trial id.
      members, by_id = [], {}
      for t in round_trials:
        trial = grid.expand(base_cfg, [_overrides(t.params)])[0]
        t.set_user_attr("trial_id", trial.id)
        if trial.id in rows_by_id:          # trained before (a repeat proposal, a seed)
          tell(t.number, rows_by_id[trial.id])
          continue
        if trial.id in by_id:               # proposed twice in one round: train once
          by_id[trial.id]["optuna"].append(t)
          continue
        if trial.id not in locks.held and not locks.try_lock(trial.id):
          continue                          # another process is training that config
        by_id[trial.id] = {"optuna": [t]}
        members.append(trial)
    if not members:
      if not todo and n_new:
        repeats += 1
        if repeats >= 20:
          log(f"search {study.study_name}: the sampler proposed only configs already "
              f"trained for 20 rounds; the space seems exhausted at {finished} configs")
          break
      time.sleep(0.05)
      continue
    repeats = 0
    pruner_on = scfg.get("pruner", "none") != "none"
    for g in grid.make_groups(members, max_group_size, int(memory_gb * (1 << 30))):

      def on_eval(step, m, alive, g=g):
        stop = []
        for j, t in enumerate(g.trials):
          if not alive[j]:
            continue
          v = float(m["loss"][j])
          for ot in by_id[t.id]["optuna"]:
            ot.report(v if math.isfinite(v) else float("inf"), step)
          if pruner_on and by_id[t.id]["optuna"][0].should_prune():
            stop.append(j)
        return stop

      extra = {t.id: {"search.trial_number": by_id[t.id]["optuna"][0].number,
                      "search.study": study.study_name} for t in g.trials}
      rows = sweep_lib.run_group(g, workdir, sweep_name=sweep_name, progress=progress, log=log,
                                 trial_loop=trial_loop, on_eval=on_eval, extra_rows=extra)
      trained += len(rows)
      with locks_lib.file_lock(study_lock):
        for r in rows:
          for ot in by_id[r["trial_id"]]["optuna"]:
            tell(ot.number, r)
          locks.release(r["trial_id"])
      if progress:
        best = _best(study)
        log(f"search {study.study_name}: {trained} trials trained this run; best "
            f"{metric} so far {best['value']:.4f}" if best else
            f"search {study.study_name}: {trained} trials trained this run")
  for tid in list(locks.held):
    locks.release(tid)
  summary = summarize(study)
  summary["trained_this_run"] = trained
  return summary


def _group_capacity(base_cfg, max_group_size: int, memory_gb: float) -> int:
  """Trials per round when ``search.batch_size`` is 0: what one group may hold."""
  from hptransfer import build as build_lib
  built = build_lib.build(base_cfg)
  cap = max(1, int(memory_gb * (1 << 30) or grid.memory_budget())
            // grid.bytes_per_trial(built))
  return min(cap, max_group_size) if max_group_size else min(cap, 64)


def _best(study):
  from optuna.trial import TrialState
  done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
          if t.value is not None and math.isfinite(t.value)]
  if not done:
    return None
  t = min(done, key=lambda t: t.value)
  return {"number": t.number, "value": t.value, "params": dict(t.params),
          "trial_id": t.user_attrs.get("trial_id")}


def summarize(study) -> dict:
  from optuna.trial import TrialState
  count = lambda s: len(study.get_trials(deepcopy=False, states=(s,)))
  return {"study": study.study_name, "complete": count(TrialState.COMPLETE),
          "pruned": count(TrialState.PRUNED), "failed": count(TrialState.FAIL),
          "running": count(TrialState.RUNNING), "best": _best(study)}
