"""The host side of a seq group's training loop, without the sweep around it.

    python benchmarks/host_loop.py MODE      # MODE: lag1 | async | sync

Builds the study's 16-trial width-128 group (benchmarks/study.py), compiles
its init and step programs, and runs 200 steps of the seq loop: every trial's
step dispatched in turn, the loss fetched every 10 steps.  ``async`` waits
for nothing else (the loop before 2026-12-05: up to ten steps queued);
``lag1`` waits for the previous step before going on (the sweep's loop now);
``sync`` waits for each step.  Prints the median and mean group-step time
after 20 warm-up steps, and the main thread's CPU time a step (dispatch).
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import study  # noqa: E402
from hptransfer import step as st  # noqa: E402
from hptransfer import sweep as S  # noqa: E402


def main():
  mode = sys.argv[1] if len(sys.argv) > 1 else "lag1"
  if mode not in ("lag1", "async", "sync"):
    raise SystemExit(f"MODE={mode!r} is not one of lag1, async, sync")
  jax.config.update("jax_enable_compilation_cache", False)
  a = argparse.Namespace(widths="128", lrs=8, steps=200, trial_loop="auto")
  cfg = study.study_config(a)
  g = S.make_groups(S.expand(cfg, study.study_grid(a)), 64, 1 << 34)[0]
  plan = S._Plan(g, "auto")
  builts, consts = plan.builds()
  (init, _), (vstep, _) = plan.compile("init"), plan.compile("step")
  state = st.init_trials(builts, plan.cfgs, init)
  times, disp, prev = [], [], None
  for step in range(200):
    t, c = time.perf_counter(), time.thread_time()
    batch = jax.device_put(plan.task.batch(cfg.data.seed, step, plan.B))
    out = [vstep(state[k], consts[k], batch) for k in range(plan.K)]
    state, loss = [o[0] for o in out], [o[1]["loss"] for o in out]
    disp.append(time.thread_time() - c)
    if (step + 1) % 10 == 0:
      np.asarray(jax.device_get(loss))
    if mode == "sync":
      jax.block_until_ready(loss)
    if mode == "lag1":
      if prev is not None:
        jax.block_until_ready(prev)
      prev = loss
    times.append(time.perf_counter() - t)
  jax.block_until_ready(state)
  tt = np.array(times[20:])
  print(f"{mode} step ms median {np.median(tt) * 1e3:.1f} mean {tt.mean() * 1e3:.1f} "
        f"main-thread cpu ms/step {np.mean(disp[20:]) * 1e3:.2f}")


if __name__ == "__main__":
  main()
