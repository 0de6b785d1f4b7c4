"""Compile seconds against step time for sets of XLA flags, one process each.

    python benchmarks/xla_flags.py --out flags.json \
        --variant= --variant=--xla_gpu_enable_triton_gemm=false -- \
        --width 512 --depth 2 --batch 16 --seq 256 --head_dim 64 --dtype bf16 --vmap 16

Everything after ``--`` goes to ``benchmarks/train_step.py``.  Each variant
runs that step in a fresh process with ``XLA_FLAGS`` set to it (XLA reads its
flags once per process) and no compilation cache, and reports ``compile_s``
and ``step_ms``.  A sweep group of ``--group_steps`` steps costs about
``compile_s + group_steps * step_ms``; the last line printed is the variant
with the lowest such cost whose step is at most ``--max_slowdown`` times the
first variant's (the reference, normally XLA's defaults), so a script can use
it: ``FLAGS=$(python benchmarks/xla_flags.py ... | tail -1)``.

Why: on a GPU one program took 15-40 s to compile (docs/performance.md), which
dominates short sweep groups, and the flag one might reach for first
(``--xla_gpu_autotune_level=0``) saved little compile time and slowed training.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_variant(flags: str, step_args: list[str], timeout: float) -> dict:
  env = dict(os.environ, XLA_FLAGS=flags, HPTRANSFER_JAX_CACHE="off")
  try:
    p = subprocess.run([sys.executable, os.path.join(HERE, "train_step.py"), *step_args],
                       env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"flags": flags, "error": f"timed out after {timeout:.0f} s"}
  rows = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
  if p.returncode or not rows:
    return {"flags": flags, "error": ((p.stderr or p.stdout).strip().splitlines() or ["no output"])[-1]}
  r = rows[-1]
  return {"flags": flags, "compile_s": r["compile_s"], "step_ms": r["step_ms"],
          "tokens_per_s": r["tokens_per_s"], "mfu": r.get("mfu"), "device": r.get("device")}


def choose(results: list[dict], group_steps: int, max_slowdown: float) -> dict | None:
  """The variant with the lowest compile + group_steps steps, among those whose
  step is at most max_slowdown times the reference's (the first variant)."""
  ok = [r for r in results if "error" not in r]
  if not ok or "error" in results[0]:
    return None
  ref = results[0]["step_ms"]
  for r in ok:
    r["group_s"] = r["compile_s"] + group_steps * r["step_ms"] / 1e3
  fair = [r for r in ok if r["step_ms"] <= max_slowdown * ref]
  return min(fair, key=lambda r: r["group_s"])


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  split = argv.index("--") if "--" in argv else len(argv)
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variant", action="append", default=None,
                  help="an XLA_FLAGS value, written --variant=VALUE; repeat; the first is "
                  "the reference")
  ap.add_argument("--group_steps", type=int, default=300)
  ap.add_argument("--max_slowdown", type=float, default=1.05)
  ap.add_argument("--timeout", type=float, default=120)
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv[:split])
  variants = args.variant if args.variant is not None else [""]
  step_args = argv[split + 1:]
  results = []
  for flags in variants:
    r = run_variant(flags, step_args, args.timeout)
    results.append(r)
    print(json.dumps(r), flush=True)
  best = choose(results, args.group_steps, args.max_slowdown)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"step_args": step_args, "group_steps": args.group_steps,
                 "max_slowdown": args.max_slowdown, "results": results, "chosen": best}, f,
                indent=1)
  for r in results:
    cost = f"{r['group_s']:.1f} s" if "group_s" in r else r.get("error")
    print(f"# {r['flags'] or '(defaults)'}: {cost}", file=sys.stderr)
  print(best["flags"] if best else "")


if __name__ == "__main__":
  main()
