"""How long Python's garbage collector takes inside the study's sweep.

    python benchmarks/sweep_gc.py [frozen|unfrozen]

Runs the float32 arm of benchmarks/study.py (16 trials, width 128, 200
steps) in this process with a ``gc.callbacks`` timer, and prints the arm's
wall, its steady step, and the collector's passes and seconds by generation.
``unfrozen`` replaces ``perf.frozen_heap`` (the sweep loop's ``gc.freeze``)
by a no-op, as the loop was before 2026-12-05.
"""
import argparse
import contextlib
import gc
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import study  # noqa: E402
from hptransfer import perf  # noqa: E402


def main():
  mode = sys.argv[1] if len(sys.argv) > 1 else "frozen"
  if mode not in ("frozen", "unfrozen"):
    raise SystemExit(f"mode={mode!r} is not one of frozen, unfrozen")
  if mode == "unfrozen":
    perf.frozen_heap = contextlib.nullcontext
  stats = {"passes": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}
  start = [0.0]

  def timer(phase, info):
    if phase == "start":
      start[0] = time.perf_counter()
    else:
      stats["passes"][info["generation"]] += 1
      stats["seconds"][info["generation"]] += time.perf_counter() - start[0]
  gc.callbacks.append(timer)
  a = argparse.Namespace(widths="128", lrs=8, steps=200, trial_loop="auto", child="hptransfer")
  out = study.arm_hptransfer(a, False)
  stats["seconds"] = [round(s, 3) for s in stats["seconds"]]
  print(json.dumps({"mode": mode, "wall_s": round(out["wall_s"], 2),
                    "step_s": out["groups"][0]["step_s"], "gc": stats}))


if __name__ == "__main__":
  main()
