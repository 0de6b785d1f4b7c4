"""The sweep's CPU group step with and without its two 2026-12-06 changes,
interleaved in one process (issue 20).

    python benchmarks/step_copies.py [--rounds 30] [--out docs/perf/step_copies_cpu.json]

The group is benchmarks/study.py's float32 study group: 16 trials (SP and
muP x 8 LRs) at width 128, depth 2, batch 8 x 64, the ``seq`` trial loop.
Four variants of its train step are compiled, each as the sweep compiles it
(``hptransfer.perf.compiler_options``, state donated):

- ``before``: copy insertion without region analysis
  (``xla_cpu_copy_insertion_use_region_analysis=False``) and the grad norm
  among the step's metrics: the step as it was before;
- ``region``: region analysis on, grad norm still computed;
- ``no_norm``: no grad norm, region analysis off;
- ``now``: both (``hptransfer.step.compile_group``'s step today).

Each round runs 4 group steps (16 trial steps each) of every variant, in a
shuffled order, from each variant's own copy of the 16 initial states.  A
row reports the median group step, the median of its per-round ratio to
``before`` with quartiles, the copies in the compiled program, its compile
seconds, and a hash of all 16 trials' states at the end (the same hash: the
same bits).
"""
import argparse
import hashlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

VARIANTS = {"before": (False, True), "region": (True, True), "no_norm": (False, False),
            "now": (True, False)}   # (region analysis, grad norm)


def _hash(tree) -> str:
  host = jax.device_get(tree)
  return hashlib.sha256(b"".join(np.asarray(x).tobytes()
                                 for x in jax.tree_util.tree_leaves(host))).hexdigest()[:16]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rounds", type=int, default=30)
  ap.add_argument("--out", default="")
  a = ap.parse_args()
  if a.rounds < 2:
    raise SystemExit(f"--rounds={a.rounds} must be at least 2 (the first is a warm-up)")
  import study
  from fixed_cost_probes import _plan
  from hptransfer import perf
  from hptransfer import provenance
  from hptransfer import step as st
  plan = _plan(steps=200)
  cfg = plan.cfg
  assert plan.loop == "seq", plan.loop
  builds, consts = plan.builds()
  one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                               plan.abstract)
  mm = perf.matmul_dtype(cfg)
  progs, rows = {}, {}
  for name, (region, norm) in VARIANTS.items():
    fn = st.guarded_step_of(plan.b0, plan.tx0, cfg, grad_norm=norm)
    opts = {**perf.compiler_options(mm), "xla_cpu_copy_insertion_use_region_analysis": region}
    t = time.perf_counter()
    progs[name] = jax.jit(fn, donate_argnums=0, compiler_options=opts).lower(
        one, st.abstract(consts[0]), plan.batch).compile()
    rows[name] = {"variant": name, "region_analysis": region, "grad_norm": norm,
                  "compile_s": round(time.perf_counter() - t, 3),
                  "copies": progs[name].as_text().count(" copy(")}
  init = plan.compile("init")[0]
  batches = [jax.device_put(plan.task.batch(cfg.data.seed, s, plan.B)) for s in range(200)]
  states = {n: st.init_trials(builds, plan.cfgs, init) for n in VARIANTS}
  times = {n: [] for n in VARIANTS}
  rng = np.random.default_rng(0)
  s = 0
  for rnd in range(a.rounds):
    order = list(VARIANTS)
    rng.shuffle(order)
    for n in order:
      for j in range(4):
        t = time.perf_counter()
        out = [progs[n](states[n][k], consts[k], batches[(s + j) % 200]) for k in range(16)]
        states[n] = [o[0] for o in out]
        jax.block_until_ready(states[n])
        if rnd:
          times[n].append(time.perf_counter() - t)
    s += 4
  for n in VARIANTS:
    r = np.asarray(times[n]) / np.asarray(times["before"])
    rows[n].update({"group_step_ms_median": round(1000 * float(np.median(times[n])), 1),
                    "vs_before_median": round(float(np.median(r)), 3),
                    "vs_before_quartiles": [round(float(q), 3) for q in np.quantile(r, [.25, .75])],
                    "state_sha256_16": _hash(states[n])})
    print(json.dumps(rows[n]), flush=True)
  if a.out:
    doc = {"command": "python benchmarks/step_copies.py " + " ".join(sys.argv[1:]),
           "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "machine": study.machine(), "versions": provenance.versions(),
           "group": "16 trials (SP, muP x 8 LRs), width 128, depth 2, batch 8x64, seq loop",
           "rounds": a.rounds, "group_steps_per_round": 4, "rows": list(rows.values())}
    with open(a.out, "w") as f:
      json.dump(doc, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
  main()
