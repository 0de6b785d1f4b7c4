"""Where a CPU sweep group's fixed seconds and steady step go, piece by piece.

    python benchmarks/group_setup.py [--width 128] [--lrs 8] [--steps 20] \
        [--out docs/perf/group_setup_cpu.json]

The group is the one ``benchmarks/study.py`` times: SP and muP x ``--lrs``
learning rates of ``configs/sweeps/width_transformer.py``, K = 2 x LRS trials,
float32.  Printed, and written to ``--out`` with the machine and versions:

- ``init_compile_s``: the init program's AOT compile, vmapped over the K
  stacked trials (``init_group``'s) and unbatched for one trial
  (``init_trials``', what a ``seq`` group compiles), and whether the two
  give the same bits for every trial;
- ``builds_s``: building the other K - 1 trials once the first is built (the
  traced abstract params are shared);
- ``loop_ms``: the ``seq`` group step, interleaved rep by rep (median of
  ``--steps``-step blocks): on one fixed batch; on a fresh batch each step
  (as the sweep does); and with the sweep's loss fetch and alive check every
  10 steps besides;
- ``dots_ms``: the same guarded ``seq`` step compiled three ways,
  interleaved: Eigen dots (the float32 default), YNNPACK dots, and Eigen
  single-threaded (``xla_cpu_multi_thread_eigen=false``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from hptransfer import build as build_lib  # noqa: E402
from hptransfer import grid  # noqa: E402
from hptransfer import optim  # noqa: E402
from hptransfer import perf  # noqa: E402
from hptransfer import step as step_lib  # noqa: E402


def group(args):
  from configs.sweeps import width_transformer
  cfg = width_transformer.get_config()
  cfg.model.width = args.width
  lrs = [float(x) for x in 2.0 ** np.linspace(-11, -4, args.lrs)]
  trials = grid.expand(cfg, grid.product(grid.sweep("parameterization.name", ["sp", "mup"]),
                                         grid.sweep("optimizer.lr", lrs)))
  return cfg, trials


def init_compile(b0, builts, cfgs) -> dict:
  t0 = time.perf_counter()
  batched = step_lib.aot_init(b0, cfgs[0], len(cfgs))
  t1 = time.perf_counter()
  one = step_lib.aot_init(b0, cfgs[0])
  t2 = time.perf_counter()
  stacked = jax.device_get(step_lib.init_group(builts, cfgs, batched))
  per_trial = jax.device_get(step_lib.init_trials(builts, cfgs, one))
  same = all(np.array_equal(a, b[k]) for k, st in enumerate(per_trial)
             for a, b in zip(jax.tree_util.tree_leaves(st), jax.tree_util.tree_leaves(stacked)))
  return {"vmapped_K": t1 - t0, "unbatched": t2 - t1, "same_bits": bool(same)}


def interleaved(fns: dict, reps: int, n: int) -> dict:
  """Median ms per call of each ``fns[name](block)`` (``n`` steps a block),
  alternating the order every rep."""
  names = list(fns)
  times = {k: [] for k in names}
  for name in names:            # warm up
    fns[name](0)
  for rep in range(reps):
    for name in (names if rep % 2 else names[::-1]):
      t0 = time.perf_counter()
      fns[name](rep + 1)
      times[name].append(1000 * (time.perf_counter() - t0) / n)
  return {k: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v))}
          for k, v in times.items()}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--width", type=int, default=128)
  ap.add_argument("--lrs", type=int, default=8)
  ap.add_argument("--steps", type=int, default=20, help="steps in a timed block")
  ap.add_argument("--reps", type=int, default=6, help="timed blocks per variant")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  for name in ("width", "lrs", "steps", "reps"):
    if getattr(args, name) < 1:
      ap.error(f"--{name}={getattr(args, name)} must be >= 1")
  jax.config.update("jax_enable_compilation_cache", False)
  cfg, trials = group(args)
  cfgs = [t.cfg for t in trials]
  K = len(trials)
  b0 = build_lib.build(cfgs[0])
  t0 = time.perf_counter()
  builts = [b0] + [build_lib.build(c, check_output=False) for c in cfgs[1:]]
  builds_s = time.perf_counter() - t0
  out = {"K": K, "width": args.width, "builds_s": builds_s,
         "init_compile_s": init_compile(b0, builts, cfgs)}
  print(json.dumps(out), flush=True)

  task, B = b0.task, cfg.train.batch_size
  tx0 = optim.build(cfg.optimizer, b0.leaf_trees(), cfg.train.steps)
  mm = perf.matmul_dtype(cfg)
  consts = step_lib.unstack(step_lib.stack([b.consts() for b in builts]), K)
  batch0 = jax.device_put(task.batch(cfg.data.seed, 0, B))
  guarded = step_lib.guarded_step_of(b0, tx0, cfg)
  state0 = step_lib.init_trials(builts, cfgs)
  ab = (step_lib.abstract(state0[0]), step_lib.abstract(consts[0]), step_lib.abstract(batch0))

  def compiled(opts):
    return jax.jit(guarded, compiler_options=opts, donate_argnums=0).lower(*ab).compile()

  def loop(fn, mode):
    holder = {"s": jax.tree_util.tree_map(lambda x: x.copy(), state0)}

    def block(b):
      states = holder["s"]
      for i in range(args.steps):
        step = b * args.steps + i
        batch = batch0 if mode == "fixed" else jax.device_put(task.batch(cfg.data.seed, step, B))
        res = [fn(states[k], consts[k], batch) for k in range(K)]
        states = [r[0] for r in res]
        if mode == "sweep" and (step + 1) % 10 == 0:
          np.asarray(jax.device_get([r[1]["loss"] for r in res])).tolist()
          np.asarray(jax.device_get(step_lib.stack_on_host([s["alive"] for s in states])))
      jax.block_until_ready(states)
      holder["s"] = states
    return block

  default = compiled(perf.compiler_options(mm))
  out["loop_ms"] = interleaved({m: loop(default, m) for m in ("fixed", "fresh_batch", "sweep")},
                               args.reps, args.steps)
  print(json.dumps({"loop_ms": out["loop_ms"]}), flush=True)
  eigen = {"xla_cpu_experimental_ynn_fusion_type": ""}
  variants = {"eigen": eigen, "ynn": {},
              "eigen_1thread": {**eigen, "xla_cpu_multi_thread_eigen": False}}
  out["dots_ms"] = interleaved({k: loop(compiled(v), "fixed") for k, v in variants.items()},
                               args.reps, args.steps)
  print(json.dumps({"dots_ms": out["dots_ms"]}), flush=True)
  if args.out:
    from study import machine     # benchmarks/study.py, beside this script
    doc = {"command": "python benchmarks/group_setup.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": machine(),
           "jax": jax.__version__, "device": jax.devices()[0].device_kind, **out}
    with open(args.out, "w") as f:
      json.dump(doc, f, indent=1)


if __name__ == "__main__":
  main()
