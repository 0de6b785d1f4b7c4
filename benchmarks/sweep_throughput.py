"""Vmapped trial groups against one trial at a time: tokens/s and the ratio.

    python benchmarks/sweep_throughput.py [--widths 64,128] [--ks 1,8,32] \
        [--steps 10] [--out docs/sweep_throughput.json]

For each width and group size K, trains the same K trials (the width sweep's
base config, K learning rates) three ways — the sweep engine's group step as
one ``jit(vmap(step))`` and as one ``jit(lax.map(step))`` over the stacked
group, and K separate jitted single-trial steps run one after the other — and
prints tokens/s for each (median of the timed steps, after compilation and two
warm-up steps) and each group way over sequential.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from hptransfer import build as build_lib
from hptransfer import grid
from hptransfer import optim
from hptransfer import perf
from hptransfer import step as step_lib


def _time(fn, steps):
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def bench(width: int, K: int, steps: int) -> dict:
  sys.path.insert(0, os.getcwd())
  from configs.sweeps import width_transformer
  cfg = width_transformer.get_config()
  cfg.model.width = width
  trials = grid.expand(cfg, grid.sweep("optimizer.lr", 2.0 ** np.linspace(-12, -6, K)))
  builts = [build_lib.build(t.cfg) for t in trials]
  txs = [optim.build(t.cfg.optimizer, b.leaf_trees(), cfg.train.steps) for t, b in zip(trials, builts)]
  B, T = cfg.train.batch_size, cfg.data.seq_len
  batch = builts[0].task.batch(0, 0, B)

  # The sweep engine's group step, vmapped and mapped (hptransfer.step.compile_group).
  consts = step_lib.stack([b.consts() for b in builts])
  group_s, compile_s = {}, {}
  for loop in ("vmap", "map"):
    gstep, _ = step_lib.compile_group(builts[0], txs[0], cfg, loop)
    holder = {"s": step_lib.init_group(builts, [t.cfg for t in trials])}

    def g():
      holder["s"], metrics = gstep(holder["s"], consts, batch)
      return metrics["loss"]
    t0 = time.perf_counter()
    jax.block_until_ready(g())
    compile_s[loop] = time.perf_counter() - t0
    g(); g()
    group_s[loop] = _time(g, steps)
  vm_s, map_s = group_s["vmap"], group_s["map"]

  # One trial at a time (each trial its own state; the compiled step is shared,
  # as it would be in a plain per-trial loop with the multipliers as inputs).
  step = perf.jit_step(step_lib.make_train_step(builts[0], txs[0], leaf_rms=False),
                       donate_argnums=0)
  states = [step_lib.init_state(b, tx, 0) for b, tx in zip(builts, txs)]
  cs = [b.consts() for b in builts]

  def seq():
    out = None
    for k in range(K):
      states[k], m = step(states[k], cs[k], batch)
      out = m["loss"]
    return out
  jax.block_until_ready(seq())
  seq(); seq()
  seq_s = _time(seq, steps)
  tokens = K * B * T
  return {"width": width, "K": K, "batch": B, "seq_len": T, "depth": cfg.model.depth,
          "vmapped_tokens_per_s": tokens / vm_s, "mapped_tokens_per_s": tokens / map_s,
          "sequential_tokens_per_s": tokens / seq_s,
          "ratio": seq_s / vm_s, "map_ratio": seq_s / map_s, "vmapped_step_ms": 1e3 * vm_s,
          "mapped_step_ms": 1e3 * map_s, "sequential_step_ms": 1e3 * seq_s,
          "vmapped_compile_s": compile_s["vmap"], "mapped_compile_s": compile_s["map"],
          "device": jax.devices()[0].device_kind, "jax": jax.__version__}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--widths", default="64,128")
  ap.add_argument("--ks", default="1,8,32")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  rows = []
  for w in map(int, args.widths.split(",")):
    for k in map(int, args.ks.split(",")):
      r = bench(w, k, args.steps)
      print(json.dumps(r), flush=True)
      rows.append(r)
  print("\n| width | K | vmap tokens/s | map tokens/s | sequential tokens/s | vmap / seq | "
        "map / seq |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['width']} | {r['K']} | {r['vmapped_tokens_per_s']:,.0f} | "
          f"{r['mapped_tokens_per_s']:,.0f} | {r['sequential_tokens_per_s']:,.0f} | "
          f"{r['ratio']:.2f} | {r['map_ratio']:.2f} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
