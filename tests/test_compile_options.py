"""How the steps are compiled on CPU: Eigen dots and blocked attention by default."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import transformer
from hptransfer import perf
from hptransfer import models
from hptransfer.configlib import ConfigError


def _compiled_text(fn, *args):
  return perf.jit_step(fn).lower(*args).compile().as_text()


def test_cpu_steps_use_eigen_dots_unless_told_otherwise(monkeypatch):
  a = jnp.ones((64, 32))
  b = jnp.ones((32, 16))
  monkeypatch.delenv(perf.CPU_DOTS_ENV, raising=False)
  assert perf.cpu_dots() == "eigen"
  assert "ynn_fusion" not in _compiled_text(lambda x, y: x @ y, a, b)
  monkeypatch.setenv(perf.CPU_DOTS_ENV, "ynn")
  assert "xla_cpu_experimental_ynn_fusion_type" not in perf.compiler_options()
  assert "__ynn_fusion" in _compiled_text(lambda x, y: x @ y, a, b)


def test_bad_cpu_dots_names_the_variable_and_the_fix(monkeypatch):
  monkeypatch.setenv(perf.CPU_DOTS_ENV, "mkl")
  with pytest.raises(ConfigError, match=r"HPTRANSFER_CPU_DOTS='mkl'.*eigen, ynn"):
    perf.compiler_options()


def test_auto_attention_is_blocked_on_cpu_and_passes_other_names_through():
  cfg = transformer.get_config()
  assert cfg.model.attention == "auto"
  assert jax.default_backend() == "cpu"
  from hptransfer import build as build_lib
  assert build_lib.build(cfg).model.attention == "blocked"
  assert models.resolve_attention("xla") == "xla"
  assert models.resolve_attention("cudnn") == "cudnn"


def test_xla_flag_choice_weighs_compile_against_step_time():
  """benchmarks/xla_flags.py picks the cheapest group (compile + steps) among
  the variants that do not slow the step, and never a failed one."""
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "xla_flags.py")
  spec = importlib.util.spec_from_file_location("xla_flags", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  ref = {"flags": "", "compile_s": 20.0, "step_ms": 100.0}
  fast_compile = {"flags": "a", "compile_s": 5.0, "step_ms": 104.0}      # 36.2 s
  slow_step = {"flags": "b", "compile_s": 1.0, "step_ms": 110.0}        # 34.0 s, but 1.10x
  broken = {"flags": "c", "error": "Unknown flag"}
  rows = [dict(r) for r in (ref, fast_compile, slow_step, broken)]
  assert mod.choose(rows, 300, 1.05)["flags"] == "a"
  assert mod.choose([dict(r) for r in (ref, fast_compile, slow_step)], 300, 1.2)["flags"] == "b"
  assert mod.choose([dict(r) for r in (ref, fast_compile)], 5000, 1.05)["flags"] == ""
  assert mod.choose([dict(broken), dict(fast_compile)], 300, 1.05) is None


def test_frozen_heap_keeps_gc_off_the_setup_objects_and_restores():
  import gc
  assert gc.get_freeze_count() == 0
  before = len(gc.get_objects())
  with perf.frozen_heap():
    # what existed on entry is out of every generation a pass walks
    assert gc.get_freeze_count() >= before - 100
    assert len(gc.get_objects()) < before // 10
  assert gc.get_freeze_count() == 0
  # a caller's own freeze is left as it was
  gc.freeze()
  try:
    n = gc.get_freeze_count()
    with perf.frozen_heap():
      assert gc.get_freeze_count() == n
    assert gc.get_freeze_count() == n
  finally:
    gc.unfreeze()


def test_region_analysis_drops_the_state_copies_and_keeps_the_bits():
  """With copy insertion's region analysis (in every CPU step's options),
  a donated guarded Adam step updates its state in place: fewer copies, and
  the same state bit for bit after three steps as without the option."""
  from conftest import tiny_config
  from hptransfer import build as build_lib
  from hptransfer import step as step_lib
  from hptransfer import sweep as S
  assert perf.compiler_options()["xla_cpu_copy_insertion_use_region_analysis"] is True
  assert perf.init_compiler_options() == {"xla_cpu_copy_insertion_use_region_analysis": True}
  cfg = tiny_config()
  built = build_lib.build(cfg)
  tx = S.optim_build(built, cfg)
  state0 = step_lib.init_trials([built], [cfg])[0]
  consts = built.consts()
  batches = [built.task.batch(0, s, cfg.train.batch_size) for s in range(3)]
  step = step_lib.guarded_step_of(built, tx, cfg)
  out, copies = {}, {}
  for region in (False, True):
    opts = {**perf.compiler_options(), "xla_cpu_copy_insertion_use_region_analysis": region}
    state = jax.tree_util.tree_map(lambda x: x.copy(), state0)
    prog = jax.jit(step, donate_argnums=0, compiler_options=opts).lower(
        *step_lib.abstract((state, consts, batches[0]))).compile()
    copies[region] = prog.as_text().count(" copy(")
    for b in batches:
      state, _ = prog(state, consts, b)
    out[region] = jax.device_get(state)
  n_params = len(jax.tree_util.tree_leaves(state0["params"]))
  assert copies[True] <= copies[False] - n_params, copies   # Adam's moments no longer copied
  jax.tree_util.tree_map(np.testing.assert_array_equal, out[False], out[True])
  assert int(out[True]["step"]) == 3
