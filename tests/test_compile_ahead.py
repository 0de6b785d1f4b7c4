"""Compile ahead: the next group's programs compile on a background thread
while the current group trains (``hptransfer.sweep``, ``step.aot``)."""
import jax
import numpy as np
import pytest

from conftest import tiny_config
from hptransfer import build as build_lib
from hptransfer import perf
from hptransfer import results as results_lib
from hptransfer import step as step_lib
from hptransfer import sweep as S

FAST = {"train.steps": 12, "train.log_every": 4, "train.eval_every": 6,
        "train.checkpoint_every": 6}
GRID = S.product(S.sweep("model.width", [32, 64]), S.sweep("optimizer.lr", [1e-3, 1e-2]))


def _by_trial(rows):
  return {r["trial_id"]: r for r in rows}


@pytest.mark.parametrize("loop", ["seq", "map"])
def test_aot_program_gives_bitwise_the_jitted_results(loop):
  """``step.aot`` (what the compile thread runs) and the jitted step's own
  first-call compile are the same program: the same state, bit for bit,
  after three steps."""
  cfg = tiny_config(**FAST)
  trials = S.expand(cfg, S.sweep("optimizer.lr", [1e-3, 3e-2]))
  builts = [build_lib.build(t.cfg) for t in trials]
  tx = S.optim_build(builts[0], cfg)
  init = lambda: step_lib.init_group(builts, [t.cfg for t in trials])
  consts = step_lib.stack([b.consts() for b in builts])
  batches = [builts[0].task.batch(0, s, cfg.train.batch_size) for s in range(3)]
  if loop == "seq":
    state0, consts = step_lib.unstack(init(), 2)[1], step_lib.unstack(consts, 2)[1]
  else:
    state0 = init()
  out = {}
  for how in ("jit", "aot"):
    fn, _ = step_lib.compile_group(builts[0], tx, cfg, loop)
    state = jax.tree_util.tree_map(lambda x: x.copy(), state0)
    if how == "aot":
      fn = step_lib.aot(fn, step_lib.abstract(state), step_lib.abstract(consts),
                        step_lib.abstract(batches[0]))
    for b in batches:
      state, metrics = fn(state, consts, b)
    out[how] = jax.device_get((state, metrics))
  jax.tree_util.tree_map(np.testing.assert_array_equal, out["jit"], out["aot"])
  assert np.all(np.asarray(out["aot"][0]["step"]) == 3)


def test_group_step_drops_the_grad_norm_and_keeps_the_state_bits():
  """A group's step returns only the metrics a sweep reads (no grad norm);
  its state after three steps is bit for bit the state of the guarded step
  that also computes the norm (what ``train`` runs)."""
  cfg = tiny_config(**{"parameterization.name": "mup"})
  built = build_lib.build(cfg)
  tx = S.optim_build(built, cfg)
  state0 = step_lib.init_trials([built], [cfg])[0]
  consts = built.consts()
  batches = [built.task.batch(0, s, cfg.train.batch_size) for s in range(3)]
  group_step, _ = step_lib.compile_group(built, tx, cfg, "seq")
  full_step = perf.jit_step(step_lib.guarded_step_of(built, tx, cfg), donate_argnums=0)
  out = {}
  for name, fn in (("group", group_step), ("full", full_step)):
    state = jax.tree_util.tree_map(lambda x: x.copy(), state0)
    for b in batches:
      state, metrics = fn(state, consts, b)
    out[name] = jax.device_get((state, metrics))
  assert set(out["group"][1]) == {"loss", "ce"}
  assert float(out["full"][1]["grad_norm"]) > 0
  jax.tree_util.tree_map(np.testing.assert_array_equal, out["group"][0], out["full"][0])
  assert out["group"][1]["loss"] == out["full"][1]["loss"]


@pytest.mark.parametrize("overrides", [
    {"parameterization.name": "mup", "optimizer.schedule": "cosine", "optimizer.warmup_steps": 3},
    {"optimizer.name": "muon"},
    {"optimizer.name": "lion", "parameterization.name": "umup"},
])
def test_per_trial_init_is_the_vmapped_init_bit_for_bit(overrides):
  """The seq loop initialises each trial with the unbatched init program
  (``step.init_trials``, compiled ahead as one trial's program): every leaf
  of every trial equals its slice of ``init_group``'s vmapped state, so a
  group starts from the same bits whatever its trial loop."""
  cfg = tiny_config(**overrides)
  trials = S.expand(cfg, S.product(S.sweep("optimizer.lr", [1e-3, 3e-2]),
                                   S.sweep("seed", [0, 5])))
  builts = [build_lib.build(t.cfg) for t in trials]
  cfgs = [t.cfg for t in trials]
  stacked = jax.device_get(step_lib.init_group(builts, cfgs))
  prog = step_lib.aot_init(builts[0], cfgs[0])              # one trial's program
  per_trial = jax.device_get(step_lib.init_trials(builts, cfgs, prog))
  assert len(per_trial) == 4
  leaves = jax.tree_util.tree_leaves(stacked)
  assert len(leaves) > 20
  for k, st in enumerate(per_trial):
    assert jax.tree_util.tree_structure(st) == jax.tree_util.tree_structure(stacked)
    for a, b in zip(jax.tree_util.tree_leaves(st), leaves):
      assert a.dtype == b.dtype and a.shape == b.shape[1:]
      np.testing.assert_array_equal(a, b[k])
  # The trials differ where they should: seeds draw other params, LRs sit in the state.
  p = [jax.tree_util.tree_leaves(st["params"]) for st in per_trial]
  assert any(not np.array_equal(x, y) for x, y in zip(p[0], p[1]))


def test_compiling_ahead_changes_no_result_and_reports_its_seconds(tmp_path):
  """Two groups with compile ahead on and off: the same rows, bit for bit;
  the second group's programs compiled while the first trained."""
  cfg = tiny_config(**FAST)
  rows = {}
  for ahead in (False, True):
    S._COMPILED.clear()
    rows[ahead] = _by_trial(S.run(cfg, GRID, str(tmp_path / str(ahead)), progress=False,
                                  compile_ahead=ahead))
  assert rows[True].keys() == rows[False].keys() and len(rows[True]) == 4
  for tid, a in rows[True].items():
    b = rows[False][tid]
    for key in ("final_train_loss", "final_eval_loss", "best_train_loss", "best_eval_loss"):
      assert a[key] == b[key], (tid, key)
    assert (results_lib.load_curve(str(tmp_path / "True"), tid)["train"]
            == results_lib.load_curve(str(tmp_path / "False"), tid)["train"])
  groups = {r["group_id"]: r["timing"] for r in rows[True].values()}
  assert len(groups) == 2
  for t in groups.values():
    assert t["compiled_ahead"] and t["compile_s"] > 0
    assert t["compile_hidden_s"] + t["compile_exposed_s"] >= t["compile_s"] - 1e-3
    assert 0 < t["step_s"] < t["train_s"]
  for t in {r["group_id"]: r["timing"] for r in rows[False].values()}.values():
    assert not t["compiled_ahead"]
    # In the foreground every compile second is waited for.
    assert t["compile_hidden_s"] == 0 and t["compile_exposed_s"] >= t["compile_s"] - 1e-3


def test_a_failing_background_compile_fails_the_group_that_needs_it(tmp_path, monkeypatch):
  """The second group's compile fails on the compile thread while the first
  trains: the first group's rows are written, the error is raised by the
  second group and names it, and a rerun trains only the second group."""
  cfg = tiny_config(**FAST)
  groups = S.make_groups(S.expand(cfg, GRID))
  second = groups[1]
  real = S._Plan.compile

  def broken(self, which):
    if self.group.id == second.id:
      raise RuntimeError("simulated XLA failure")
    return real(self, which)
  monkeypatch.setattr(S._Plan, "compile", broken)
  S._COMPILED.clear()
  workdir = str(tmp_path / "w")
  with pytest.raises(RuntimeError, match="simulated XLA failure") as err:
    S.run(cfg, GRID, workdir, progress=False)
  assert any(second.id in note for note in getattr(err.value, "__notes__", []))
  first_rows = results_lib.read_rows(workdir)
  assert {r["group_id"] for r in first_rows} == {groups[0].id} and len(first_rows) == 2
  monkeypatch.setattr(S._Plan, "compile", real)
  new = S.run(cfg, GRID, workdir, progress=False)
  assert {r["group_id"] for r in new} == {second.id} and len(new) == 2
  assert len(results_lib.read_rows(workdir)) == 4


def test_with_two_compile_threads_the_step_compiles_beside_the_init(tmp_path, monkeypatch):
  """On a host with cores to spare (two compile threads) a group's train
  step starts compiling while its init program compiles, not after it: the
  init compile here waits until the step compile has started, which would
  never happen if the step were queued behind it."""
  import threading
  from concurrent.futures import ThreadPoolExecutor
  cfg = tiny_config(**FAST)
  real = S._Plan.compile
  step_started = threading.Event()
  seen = {}

  def watched(self, which):
    if which == "step":
      step_started.set()
    if which == "init":
      seen["step_began_first"] = step_started.wait(timeout=20)
    return real(self, which)
  monkeypatch.setattr(S._Plan, "compile", watched)
  pool = ThreadPoolExecutor(2, thread_name_prefix="hptransfer-compile")
  monkeypatch.setattr(S, "_POOL", pool)
  monkeypatch.setattr(S, "_POOL_WORKERS", [2])
  S._COMPILED.clear()
  try:
    rows = S.run(cfg, S.sweep("optimizer.lr", [1e-3, 1e-2]), str(tmp_path / "w"),
                 progress=False)
  finally:
    pool.shutdown()
    S._COMPILED.clear()
  assert seen == {"step_began_first": True}
  assert len(rows) == 2 and all(np.isfinite(r["final_train_loss"]) for r in rows)
