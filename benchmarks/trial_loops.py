"""Where a sweep group's step time goes on CPU: the trial loops, and the guard.

    python benchmarks/trial_loops.py [--width 128] [--lrs 8] [--steps 20] \
        [--matmul_dtype bfloat16] [--out docs/perf/trial_loops_cpu.json]

One group of ``configs/sweeps/width_transformer.py`` (SP and muP x ``--lrs``
learning rates, batch 8 x 64), timed one group step at a time (median of
``--steps`` after 3 warm-up steps) five ways:

- ``vmap``, ``map``, ``seq``: the sweep engine's guarded step under each
  trial loop (``hptransfer.step.compile_group``);
- ``map_unguarded``: ``lax.map`` of the plain train step (no divergence
  guard): ``map`` minus this is the guard's cost inside the map;
- ``seq_unguarded``: the plain train step dispatched once per trial:
  ``seq`` minus this is the guard's cost, and ``map_unguarded`` minus this is
  what ``lax.map`` itself costs (slicing each trial's state out of the stack
  and writing it back).

Each row has the group step in ms and the ratio to ``map`` (the CPU default
before ``seq``).
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

WAYS = ("map", "vmap", "seq", "map_unguarded", "seq_unguarded")


def group_step(way: str, args):
  """(step() -> the last loss, compile seconds) for one way."""
  from configs.sweeps import width_transformer
  cfg = width_transformer.get_config()
  cfg.model.width = args.width
  cfg.model.matmul_dtype = args.matmul_dtype
  trials = grid.expand(cfg, grid.product(
      grid.sweep("parameterization.name", ["sp", "mup"]),
      grid.sweep("optimizer.lr", [float(x) for x in 2.0 ** np.linspace(-11, -4, args.lrs)])))
  K = len(trials)
  builts = [build_lib.build(t.cfg) for t in trials]
  b0 = builts[0]
  tx0 = optim.build(cfg.optimizer, b0.leaf_trees(), cfg.train.steps)
  mm = perf.matmul_dtype(cfg)
  consts = step_lib.stack([b.consts() for b in builts])
  state = step_lib.init_group(builts, [t.cfg for t in trials])
  batch = b0.task.batch(0, 0, cfg.train.batch_size)
  if way in ("map", "vmap"):
    fn, _ = step_lib.compile_group(b0, tx0, cfg, way)
    holder = {"s": state}

    def step():
      holder["s"], m = fn(holder["s"], consts, batch)
      return m["loss"]
  elif way == "map_unguarded":
    plain = step_lib.make_train_step(b0, tx0, leaf_rms=False)

    def body(s, c, b):
      return jax.lax.map(lambda sc: plain(sc[0], sc[1], b), (s, c))
    fn = perf.jit_step(body, mm, donate_argnums=0)
    holder = {"s": {k: state[k] for k in ("step", "params", "opt_state")}}

    def step():
      holder["s"], m = fn(holder["s"], consts, batch)
      return m["loss"]
  else:
    if way == "seq":
      fn, _ = step_lib.compile_group(b0, tx0, cfg, "seq")
      states = step_lib.unstack(state, K)
    else:
      fn = perf.jit_step(step_lib.make_train_step(b0, tx0, leaf_rms=False), mm,
                         donate_argnums=0)
      states = step_lib.unstack({k: state[k] for k in ("step", "params", "opt_state")}, K)
    cs = step_lib.unstack(consts, K)

    def step():
      out = None
      for k in range(K):
        states[k], m = fn(states[k], cs[k], batch)
        out = m["loss"]
      jax.block_until_ready([s["step"] for s in states])
      return out
  t0 = time.perf_counter()
  jax.block_until_ready(step())
  return step, time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--width", type=int, default=128)
  ap.add_argument("--lrs", type=int, default=8)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--matmul_dtype", default="", choices=["", "bfloat16"])
  ap.add_argument("--ways", default=",".join(WAYS))
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  sys.path.insert(0, os.getcwd())
  rows = []
  for way in args.ways.split(","):
    step, compile_s = group_step(way, args)
    for _ in range(3):
      step()
    jax.block_until_ready(step())
    times = []
    for _ in range(args.steps):
      t = time.perf_counter()
      jax.block_until_ready(step())
      times.append(time.perf_counter() - t)
    rows.append({"way": way, "group_step_ms": 1e3 * float(np.median(times)),
                 "min_ms": 1e3 * min(times), "compile_s": compile_s, "K": 2 * args.lrs,
                 "width": args.width, "matmul_dtype": args.matmul_dtype or "float32",
                 "device": jax.devices()[0].device_kind, "jax": jax.__version__})
    print(json.dumps(rows[-1]), flush=True)
  base = next((r["group_step_ms"] for r in rows if r["way"] == "map"), None)
  for r in rows:
    r["vs_map"] = base / r["group_step_ms"] if base else None
  print("| way | group step ms | map / way |\n| --- | --- | --- |")
  for r in rows:
    print(f"| {r['way']} | {r['group_step_ms']:.1f} | "
          f"{'' if r['vs_map'] is None else format(r['vs_map'], '.2f')} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"command": "python benchmarks/trial_loops.py " + " ".join(sys.argv[1:]),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
