"""Probes of the float32 study arm's fixed seconds on CPU (issue 20).

    python benchmarks/fixed_cost_probes.py options '{}'            # or an XLA option dict
    python benchmarks/fixed_cost_probes.py init_bits '{"xla_backend_optimization_level": 1}'
    python benchmarks/fixed_cost_probes.py dispatch
    python benchmarks/fixed_cost_probes.py pool WORKERS [STEPS]
    python benchmarks/fixed_cost_probes.py timeline WORKERS [STEPS]
    python benchmarks/fixed_cost_probes.py all --out docs/perf/fixed_cost_probes_cpu.json
    python benchmarks/fixed_cost_probes.py all --modes timeline --out OUT.json

``options``: wall and process-CPU seconds to compile the study group's init,
step and eval programs (benchmarks/study.py's 16-trial width-128 group, seq
loop) with the given XLA compile options; one fresh process per call, so
run the variants alternately.  ``init_bits``: the init program's compile
seconds and a hash of its 16 trials' initial states, with and without the
options (same hash: same bits).  ``dispatch``: microseconds to call a
compiled program of tiny arrays with N inputs and M outputs (the seq step
has 163 inputs and 140 outputs), donated or not.  ``pool``: the float32
arm with a compile pool of WORKERS threads instead of the sweep's default,
printing its wall and the group's timing.  ``timeline``: the same, printing
when (seconds from the sweep call) each piece of the group's preparation
began and ended, and on which thread.  ``all``: each of the above in a
fresh process, variants alternated, ``--rounds`` times (``--modes``: only
those; ``--steps``: a timeline's steps); writes every row with the machine,
versions and commands to ``--out``.
"""
import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def _cpu():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _plan(steps: int = 2):
  """The study group's ``_Plan`` (benchmarks/study.py's float32 group)."""
  import study
  from hptransfer import sweep as S
  jax.config.update("jax_enable_compilation_cache", False)
  a = argparse.Namespace(widths="128", lrs=8, steps=steps, trial_loop="auto")
  cfg = study.study_config(a)
  return S._Plan(S.make_groups(S.expand(cfg, study.study_grid(a)), 64, 1 << 34)[0], "auto")


def _lowered(plan):
  return {which: plan.lower(which) for which in ("init", "step", "eval")}


def _use_pool(workers):
  from concurrent.futures import ThreadPoolExecutor
  from hptransfer import sweep as S
  S._POOL = ThreadPoolExecutor(workers, thread_name_prefix="hptransfer-compile")
  S._POOL_WORKERS[0] = workers


def options(opts):
  out = {"options": opts}
  for which, lo in _lowered(_plan()).items():
    t, c = time.perf_counter(), _cpu()
    lo.compile(opts or None)
    out[which] = {"wall_s": round(time.perf_counter() - t, 3), "cpu_s": round(_cpu() - c, 3)}
  print(json.dumps(out))


def init_bits(opts):
  from hptransfer import step as st
  plan = _plan()
  builds, _ = plan.builds()
  lo = _lowered(plan)["init"]
  for o in (None, opts):   # a third compile would hit the in-process cache
    t = time.perf_counter()
    prog = lo.compile(o)
    secs = time.perf_counter() - t
    states = jax.device_get([prog(*st.trial_init_args(b, c)) for b, c in zip(builds, plan.cfgs)])
    h = hashlib.sha256(b"".join(np.asarray(x).tobytes()
                                for x in jax.tree_util.tree_leaves(states))).hexdigest()[:16]
    print(json.dumps({"options": o, "compile_s": round(secs, 3), "sha256_16": h}))


def dispatch():
  import jax.numpy as jnp
  for nin, nout in [(163, 140), (163, 54), (163, 1), (77, 54), (10, 1)]:
    row = {"inputs": nin, "outputs": nout}
    for donate in (False, True):
      xs = [jnp.ones((4,), jnp.float32) + i for i in range(nin)]
      f = jax.jit(lambda xs, n=nout: [x + 1 for x in xs[:n]],
                  donate_argnums=(0,) if donate else ())
      c = f.lower(xs).compile()
      ts = []
      for _ in range(300):
        if donate:
          xs = [jnp.ones((4,), jnp.float32) for _ in range(nin)]
        jax.block_until_ready(xs)
        t = time.perf_counter()
        out = c(xs)
        ts.append(time.perf_counter() - t)
        jax.block_until_ready(out)
      row["donated_us" if donate else "us"] = round(float(np.median(ts)) * 1e6, 1)
    print(json.dumps(row))


def pool(workers, steps):
  import study
  _use_pool(workers)
  a = argparse.Namespace(widths="128", lrs=8, steps=steps, trial_loop="auto", child="hptransfer")
  out = study.arm_hptransfer(a, False)
  g = out["groups"][0]
  print(json.dumps({"workers": workers, "steps": steps, "wall_s": round(out["wall_s"], 2),
                    **{k: g[k] for k in ("setup_s", "compile_exposed_s", "first_step_s",
                                         "step_s", "eval_s")}}))


OPTION_VARIANTS = [{}, {"xla_llvm_disable_expensive_passes": True},
                   {"xla_cpu_parallel_codegen_split_count": 1}]
O1 = {"xla_backend_optimization_level": 1}


MODES = ("options", "pool", "timeline", "init_bits", "dispatch")


def run_all(rounds: int, out_path: str, modes=MODES, steps: int = 20):
  import study
  from hptransfer import provenance
  cmds = []
  for _ in range(rounds):
    if "options" in modes:
      cmds += [["options", json.dumps(o)] for o in OPTION_VARIANTS]
    if "pool" in modes:
      cmds += [["pool", "1"], ["pool", "2"]]
    if "timeline" in modes:
      cmds += [["timeline", "1", str(steps)], ["timeline", "2", str(steps)]]
  if "init_bits" in modes:
    cmds += [["init_bits", json.dumps(O1)]]
  if "dispatch" in modes:
    cmds += [["dispatch"]]
  rows = []
  for c in cmds:
    line = "python benchmarks/fixed_cost_probes.py " + " ".join(
        f"'{x}'" if x.startswith("{") else x for x in c)
    print(line, flush=True)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), *c], capture_output=True,
                       text=True, check=True, cwd=ROOT)
    got = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    for g in got:
      print("  ", json.dumps(g), flush=True)
    rows.append({"command": line, "rows": got})
  doc = {"command": "python benchmarks/fixed_cost_probes.py " + " ".join(sys.argv[1:]),
         "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
         "machine": study.machine(),
         "versions": provenance.versions(),
         "runs": rows}
  with open(out_path, "w") as f:
    json.dump(doc, f, indent=1)
  print("wrote", out_path)


def timeline(workers, steps):
  import functools
  import tempfile
  import threading
  import study
  from hptransfer import checkpoint as ckpt
  from hptransfer import step as st
  from hptransfer import sweep as S
  jax.config.update("jax_enable_compilation_cache", False)
  _use_pool(workers)
  t0, events = [0.0], []

  def watch(obj, name, label):
    f = getattr(obj, name)

    @functools.wraps(f)
    def g(*a, **k):
      t = time.perf_counter()
      out = f(*a, **k)
      what = f"{label} {a[1]}" if label == "compile" else label
      events.append([round(t - t0[0], 3), round(time.perf_counter() - t0[0], 3), what,
                     "main" if threading.current_thread() is threading.main_thread()
                     else "compile thread"])
      return out
    setattr(obj, name, g)
  for obj, name, label in [(S, "make_groups", "make_groups"), (S._Plan, "__init__", "plan"),
                           (S._Plan, "compile", "compile"), (ckpt, "manager", "checkpoint manager"),
                           (st, "init_trials", "init run (16 trials)")]:
    watch(obj, name, label)
  a = argparse.Namespace(widths="128", lrs=8, steps=steps, trial_loop="auto")
  cfg = study.study_config(a)
  t0[0] = time.perf_counter()
  rows = S.run(cfg, study.study_grid(a), tempfile.mkdtemp(prefix="probe_"), progress=False,
               log=lambda *x: None)
  wall = time.perf_counter() - t0[0]
  g = rows[0]["timing"]
  print(json.dumps({"workers": workers, "steps": steps, "wall_s": round(wall, 2),
                    "events": sorted(events),
                    **{k: g[k] for k in ("compile_exposed_s", "first_step_s", "step_s")}}))


def main():
  if len(sys.argv) < 2 or sys.argv[1] not in ("options", "init_bits", "dispatch", "pool", "timeline",
                                                 "all"):
    raise SystemExit("usage: fixed_cost_probes.py options|init_bits OPTS_JSON | dispatch | "
                     "pool|timeline WORKERS [STEPS] | all [--rounds N] --out OUT.json")
  mode = sys.argv[1]
  if mode == "all":
    ap = argparse.ArgumentParser(prog="fixed_cost_probes.py all")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, of {','.join(MODES)}")
    ap.add_argument("--steps", type=int, default=20, help="a timeline run's steps")
    a = ap.parse_args(sys.argv[2:])
    if a.rounds < 1:
      raise SystemExit(f"--rounds={a.rounds} must be at least 1")
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
      raise SystemExit(f"--modes={a.modes!r}: each must be one of {', '.join(MODES)}")
    if a.steps < 1:
      raise SystemExit(f"--steps={a.steps} must be at least 1")
    return run_all(a.rounds, a.out, modes, a.steps)
  if mode in ("options", "init_bits"):
    opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    if not isinstance(opts, dict):
      raise SystemExit(f"OPTS_JSON={sys.argv[2]!r} must be a JSON object of XLA options")
    (options if mode == "options" else init_bits)(opts)
  elif mode == "dispatch":
    dispatch()
  else:
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    if workers < 1:
      raise SystemExit(f"WORKERS={workers} must be at least 1")
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    if steps < 1:
      raise SystemExit(f"STEPS={steps} must be at least 1")
    (pool if mode == "pool" else timeline)(workers, steps)


if __name__ == "__main__":
  main()
