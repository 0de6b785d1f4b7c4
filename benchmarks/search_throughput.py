"""A search's trials per hour: K-trial vmapped rounds against Optuna's
ordinary loop, one trial at a time.

    python benchmarks/search_throughput.py [--trials 16] [--round 8] [--steps 50] \
        [--width 32] [--out docs/perf/search_throughput_cpu.json]

Both arms search the same space with the same TPE settings on the same proxy
(the CPU width sweep's Transformer: depth 2, 8x64 bytes a step) and train
with the same compiled step engine (``hptransfer.sweep.run_group``):

- ``vmapped``: ``hptransfer.search.run``, each round of ``--round`` asked trials
  one group (on CPU its trials step one after another inside one compiled
  program, ``lax.map``; on a GPU they are vmapped);
- ``one_at_a_time``: ``optuna.Study.optimize`` with an objective that trains its
  one trial as a group of one (what a plain Optuna loop around a training
  function does, with the compiled step cached across trials).

Prints one JSON row per arm (wall seconds, trials per hour, best value) and
their ratio; ``--out`` writes them with the machine and versions.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def config(args):
  os.chdir(ROOT)
  from configs.sweeps import width_transformer
  c = width_transformer.get_config()
  c.model.width = args.width
  c.parameterization.base_width = min(c.parameterization.base_width, args.width)
  c.train.steps = args.steps
  c.train.eval_every = args.steps
  c.train.log_every = max(args.steps // 5, 1)
  c.train.checkpoint_every = args.steps
  c.search.num_trials = args.trials
  c.search.batch_size = args.round
  c.search.sampler = "tpe"
  c.search.seed = 0
  c.search.startup_trials = max(args.trials // 3, 2)
  return c


def space():
  from hptransfer import search
  return {"optimizer.lr": search.loguniform(2.0 ** -12, 2.0 ** -3),
          "parameterization.output_mult": search.loguniform(0.25, 4.0)}


def vmapped(args, workdir) -> dict:
  from hptransfer import search
  t0 = time.perf_counter()
  s = search.run(config(args), space(), workdir, sweep_name="vmapped", progress=False,
                 log=lambda *a: None)
  wall = time.perf_counter() - t0
  return {"arm": "vmapped", "round": args.round, "wall_s": wall,
          "trials_per_hour": args.trials / wall * 3600, "best": s["best"]["value"]}


def one_at_a_time(args, workdir) -> dict:
  import optuna
  from hptransfer import grid, search
  from hptransfer import sweep as sweep_lib
  cfg = config(args)
  dists = space()
  study = optuna.create_study(sampler=search.make_sampler(cfg.search), direction="minimize")

  def objective(trial):
    params = {k: trial.suggest_float(k, d.low, d.high, log=d.log) for k, d in dists.items()}
    t = grid.expand(cfg, [params])[0]
    row = sweep_lib.run_group(grid.Group(id=t.id, trials=[t]), workdir, progress=False,
                              log=lambda *a: None)[0]
    return row["final_eval_loss"] if row["final_eval_loss"] is not None else float("inf")

  t0 = time.perf_counter()
  study.optimize(objective, n_trials=args.trials)
  wall = time.perf_counter() - t0
  return {"arm": "one_at_a_time", "round": 1, "wall_s": wall,
          "trials_per_hour": args.trials / wall * 3600, "best": study.best_value}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--trials", type=int, default=16)
  ap.add_argument("--round", type=int, default=8)
  ap.add_argument("--steps", type=int, default=50)
  ap.add_argument("--width", type=int, default=32)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  import jax
  import optuna
  from hptransfer import cli, provenance
  cli.quiet_logs()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  os.environ.setdefault("HPTRANSFER_JAX_CACHE", "off")
  rows = []
  for arm in (vmapped, one_at_a_time):
    d = tempfile.mkdtemp(prefix="hpt-search-bench-")
    try:
      r = arm(args, d)
    finally:
      shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(r), flush=True)
    rows.append(r)
  ratio = rows[0]["trials_per_hour"] / rows[1]["trials_per_hour"]
  print(f"vmapped rounds of {args.round}: {ratio:.2f}x the trials per hour of one at a time")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "speedup": ratio, "settings": vars(args),
                 "versions": provenance.versions(), "device": jax.devices()[0].device_kind,
                 "command": "python benchmarks/search_throughput.py " + " ".join(sys.argv[1:])},
                f, indent=1)


if __name__ == "__main__":
  main()
