"""Where a training step's time goes: a jax.profiler trace, summed by op.

    python benchmarks/profile_step.py --width 256 --depth 4 --batch 16 --seq 128 \
        [--vmap K] [--dtype bf16] [--matmul_dtype bf16] [--steps 5] [--top 30] [--trace_dir /tmp/trace]

Builds the same step as ``train_step.py``, warms it up, traces ``--steps``
steps with ``jax.profiler.trace(create_perfetto_trace=True)``, and prints the
XLA ops that took the most time (per step, summed over threads, so on a
multi-core CPU an op's total can exceed the wall time) with their share.  Add
``--hlo`` to also write the optimized HLO of the step to ``<trace_dir>/step.hlo``
to read what XLA fused.

On CPU the steps use XLA's Eigen dots (``HPTRANSFER_CPU_DOTS``, see
``hptransfer.perf.compiler_options``), which run asynchronously beside the
other ops, so the trace cannot attribute their time (nor that of the ops that
overlap them).  For an attribution by op, profile with
``HPTRANSFER_CPU_DOTS=ynn``, whose dot fusions are timed where they run.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import train_step  # noqa: E402


def summarize(trace_path: str, steps: int, top: int) -> list[tuple[str, float, int]]:
  with gzip.open(trace_path, "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total = collections.Counter()
  count = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    name = e.get("name", "")
    # Python-side and whole-program events are not ops.
    if name.startswith(("$", "PjitFunction", "TfrtCpuExecutable", "ThunkExecutor",
                        "jit_", "PjRt")):
      continue
    total[name] += e["dur"] / 1e3
    count[name] += 1
  rows = [(n, ms / steps, count[n] // steps) for n, ms in total.most_common(top)]
  kinds = collections.Counter()
  for n, ms in total.items():
    kinds[n.rsplit(".", 1)[0]] += ms / steps
  return rows, kinds


def main():
  ap = argparse.ArgumentParser()
  for k, v in dict(width=256, depth=4, head_dim=64, batch=16, seq=128, vmap=0,
                   steps=5, top=30).items():
    ap.add_argument(f"--{k}", type=int, default=v)
  ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
  ap.add_argument("--matmul_dtype", default="", choices=["", "bf16"])
  ap.add_argument("--attention", default="auto", choices=["auto", "xla", "blocked", "cudnn"])
  ap.add_argument("--trace_dir", default="/tmp/hptransfer_trace")
  ap.add_argument("--hlo", action="store_true")
  args = train_step.step_args(**vars(ap.parse_args()))
  step, flops, _ = train_step.jax_step(args)
  for _ in range(3):
    jax.block_until_ready(step())
  t = time.perf_counter()
  for _ in range(args.steps):
    jax.block_until_ready(step())
  wall = (time.perf_counter() - t) / args.steps
  os.makedirs(args.trace_dir, exist_ok=True)
  with jax.profiler.trace(args.trace_dir, create_perfetto_trace=True):
    for _ in range(args.steps):
      jax.block_until_ready(step())
  path = max(glob.glob(os.path.join(args.trace_dir, "**", "perfetto_trace.json.gz"),
                       recursive=True), key=os.path.getmtime)
  rows, kinds = summarize(path, args.steps, args.top)
  print(f"step {wall * 1e3:.1f} ms untraced, {flops / wall / 1e9:.1f} model GFLOP/s; "
        f"top ops per step (ms summed over threads):")
  for name, ms, n in rows:
    print(f"{ms:9.2f} ms  {100 * ms / (wall * 1e3):5.1f}%  x{n:<4d} {name[:110]}")
  print("by kind (ms per step, summed over threads):")
  for name, ms in kinds.most_common(15):
    print(f"{ms:9.2f} ms  {100 * ms / (wall * 1e3):5.1f}%  {name}")
  if args.hlo:
    path = os.path.join(args.trace_dir, "step.hlo")
    with open(path, "w") as f:
      f.write(step.compiled_text())
    print("optimized HLO:", path)


if __name__ == "__main__":
  main()
