"""Performance-only switches: how the steps are compiled, nothing about what
they compute.

Three live here, and nowhere else in the library:

- the CPU matmul library of a compiled step (``cpu_dots``, ``compiler_options``,
  ``jit_step``): XLA's Eigen emitter or YNNPACK fusions;
- bfloat16 matmul operands with float32 accumulation (``hptransfer.perf.lowp``,
  switched on by ``model.matmul_dtype = "bfloat16"``);
- the host's garbage collector during a training loop (``frozen_heap``).

The measurements behind each default are in docs/performance.md.
"""
from __future__ import annotations

import contextlib
import gc
import os

import jax

from hptransfer.configlib import ConfigError

CPU_DOTS_ENV = "HPTRANSFER_CPU_DOTS"
_CPU_DOTS = {
    # XLA's own dot emitter (Eigen): no YNNPACK fusions.
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""},
    # XLA:CPU's default in jax 0.10: matmuls (and some reductions) as YNNPACK fusions.
    "ynn": {},
}
# Every CPU program (train, eval and init steps): copy insertion with XLA's
# region analysis.  Without it, XLA:CPU copies every donated optimizer-state
# leaf before the step updates it in place (85 copies in the 16-trial
# width-128 study's step, 36 with it, the rest being attention transposes).
# A copy moves bytes and never changes a value: the programs give the same
# bits (tests/test_compile_options.py), run faster and compile faster
# (docs/performance.md, "Copies and the grad norm").
_CPU_ALWAYS = {"xla_cpu_copy_insertion_use_region_analysis": True}


class PerfError(ConfigError):
  """A bad performance switch; the message names it and the fix."""


def matmul_dtype(cfg) -> str:
  """``cfg.model.matmul_dtype`` ("" when unset: the compute dtype)."""
  return cfg.model.get("matmul_dtype", "") or ""


def cpu_dots(matmul_dtype: str = "") -> str:
  """The CPU matmul library of a step: ``$HPTRANSFER_CPU_DOTS`` when set,
  else ynn for bfloat16 matmuls (Eigen has no bf16 kernels: XLA would run
  them in float32) and eigen otherwise."""
  lib = os.environ.get(CPU_DOTS_ENV) or ("ynn" if matmul_dtype == "bfloat16" else "eigen")
  if lib not in _CPU_DOTS:
    raise PerfError(
        f"{CPU_DOTS_ENV}={lib!r} is not one of {', '.join(_CPU_DOTS)}; "
        f"unset it (the default: eigen, ynn for bf16 matmuls) or set {CPU_DOTS_ENV}=ynn")
  return lib


def compiler_options(matmul_dtype: str = "") -> dict:
  """XLA options the training and evaluation steps are compiled with.

  On CPU, copy insertion uses region analysis (``_CPU_ALWAYS``; also for
  the init programs, ``init_compiler_options``).

  On CPU the float32 matmuls go to XLA's Eigen emitter instead of YNNPACK
  fusions (``$HPTRANSFER_CPU_DOTS``: eigen, the default, or ynn).  Eigen is
  1.07-1.11x faster for the Transformer step at width 256 / 16x128,
  1.20-1.23x at 128 / 32x256 and 512 / 8x512, and 1.06-1.07x for a lax.map
  sweep group, on the 2-core development VM (docs/performance.md): the
  attention's small batched matmuls run faster, and two independent ones can
  run concurrently.  With ``model.matmul_dtype = "bfloat16"`` the default is
  YNNPACK, the library with bf16 kernels (AMX, AVX512-BF16).  Off the CPU
  there are no options.
  """
  if jax.default_backend() != "cpu":
    return {}
  return {**_CPU_ALWAYS, **_CPU_DOTS[cpu_dots(matmul_dtype)]}


def init_compiler_options() -> dict:
  """XLA options of the programs that initialize a run's state: the CPU
  copy-insertion option of ``compiler_options`` (no matmuls to choose a
  library for)."""
  return dict(_CPU_ALWAYS) if jax.default_backend() == "cpu" else {}


def jit_step(fn, matmul_dtype: str = "", **kwargs):
  """``jax.jit`` with the step compiler options (see ``compiler_options``)."""
  return jax.jit(fn, compiler_options=compiler_options(matmul_dtype), **kwargs)


@contextlib.contextmanager
def frozen_heap():
  """Python's cyclic GC without the objects that exist on entry.

  A training loop allocates thousands of short-lived Python objects a step
  (every trial's state and metrics pytrees), so the collector runs often,
  and each of its oldest-generation passes walks every object the process
  holds: the imported libraries, the traced and compiled programs.  In the
  16-trial study's float32 arm that was 14 passes, 2.3-2.5 s in all
  (docs/perf/host_loop_cpu.json).
  ``gc.freeze()`` moves what exists now into the permanent generation, which
  no pass walks (the same passes then took 0.18-0.20 s); the loop's own
  garbage is collected as before.  On exit the
  objects go back (``gc.unfreeze()``).  When the caller has frozen objects
  already (a pre-fork server), nothing is changed.  Only speed changes: no
  object is freed earlier or later than its cycle would be.
  """
  if gc.get_freeze_count():
    yield
    return
  gc.freeze()
  try:
    yield
  finally:
    gc.unfreeze()
