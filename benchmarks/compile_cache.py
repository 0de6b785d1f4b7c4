"""Compile seconds of a sweep, first run against second (persistent cache).

    python benchmarks/compile_cache.py --config configs/sweeps/width_transformer.py \
        --steps 20 [--out docs/compile_cache.json]

Runs the sweep twice, each in a fresh Python process with its own empty
workdir, both pointed at one new, empty JAX compilation cache.  The first
run compiles everything and writes the cache; the second should find every
program there.  Each run reports, from ``jax.monitoring`` events:

- ``backend_compile_s``: time in XLA's compile-or-load (a cache hit counts
  only its load),
- ``trace_s`` / ``lower_s``: jaxpr tracing and lowering to MLIR (never cached:
  Python re-traces in every new process),
- ``cache_hits`` / ``cache_misses`` and ``compile_time_saved_s`` (JAX's own
  estimate), and ``wall_s`` of the whole sweep call.

``--steps`` shortens every trial so the run measures compilation, not training.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = {
    "/jax/core/compile/backend_compile_duration": "backend_compile_s",
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/compilation_cache/compile_time_saved_sec": "compile_time_saved_s",
}


def child(args) -> dict:
  sys.path.insert(0, ROOT)
  os.chdir(ROOT)
  import jax
  from hptransfer import cli
  from hptransfer import sweep as sweep_lib
  totals = collections.Counter()

  def on_duration(event, duration_secs, **kw):
    if event in EVENTS:
      totals[EVENTS[event]] += duration_secs

  def on_event(event, **kw):
    if event == "/jax/compilation_cache/cache_hits":
      totals["cache_hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
      totals["cache_misses"] += 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  cli.quiet_logs()
  cli.enable_compilation_cache(args.cache)
  module = sweep_lib.load_sweep_file(args.config)
  cfg = module.get_config()
  if args.steps:
    cfg.train.steps = args.steps
    cfg.train.eval_every = args.steps
    cfg.train.checkpoint_every = args.steps
    cfg.train.log_every = max(1, args.steps // 4)
  t0 = time.perf_counter()
  sweep_lib.run(cfg, module.get_sweep(), args.workdir, progress=False, log=lambda *a: None)
  out = {k: round(v, 3) if isinstance(v, float) else v for k, v in totals.items()}
  out["wall_s"] = round(time.perf_counter() - t0, 2)
  out["device"] = jax.devices()[0].device_kind
  out["jax"] = jax.__version__
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default=os.path.join(ROOT, "configs/sweeps/width_transformer.py"))
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--out", default="")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
  ap.add_argument("--cache", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    print(json.dumps(child(args)), flush=True)
    return
  tmp = tempfile.mkdtemp(prefix="compile_cache_")
  cache = os.path.join(tmp, "cache")
  runs = []
  for i in (1, 2):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--config",
           os.path.abspath(args.config), "--steps", str(args.steps),
           "--workdir", os.path.join(tmp, f"run{i}"), "--cache", cache]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
      sys.exit(f"run {i} failed:\n{res.stderr[-3000:]}")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    row.update(run=i, process_s=round(time.perf_counter() - t0, 2))
    print(json.dumps(row), flush=True)
    runs.append(row)
  first, second = runs
  summary = {"config": os.path.relpath(os.path.abspath(args.config), ROOT),
             "steps": args.steps, "runs": runs,
             "compile_s_first": first.get("backend_compile_s", 0.0),
             "compile_s_second": second.get("backend_compile_s", 0.0),
             "second_run_all_hits": second.get("cache_misses", 0) == 0
             and second.get("cache_hits", 0) > 0}
  print(f"compile-or-load seconds: first {summary['compile_s_first']:.1f}, second "
        f"{summary['compile_s_second']:.1f}; second run: {second.get('cache_hits', 0)} hits, "
        f"{second.get('cache_misses', 0)} misses; sweep wall {first['wall_s']:.1f} s -> "
        f"{second['wall_s']:.1f} s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(summary, f, indent=1)


if __name__ == "__main__":
  main()
