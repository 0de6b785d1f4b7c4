"""Training one run: held-out eval, metrics, checkpoints, resume.

    python -m hptransfer.train --config configs/transformer.py --workdir runs/tfm \
        [--config.model.width=256 ...] [--config.model.module=my_pkg.models:make_model]

Work directory layout::

    config.json       the resolved config, dataset sha256, versions
    metrics.jsonl     one row per log/eval step (train loss, eval metrics, lr,
                      per-leaf rms of params / grads / updates)
    checkpoints/      orbax CheckpointManager (the guarded train state)
    summary.json      final and best losses, diverged flag, wall time, paths

The step is ``hptransfer.step``'s guarded step, the one sweeps use, so
"diverged" and ``final_train_loss`` mean here what they mean in a sweep's rows.
Running the same command again resumes from the last checkpoint that
restores (a damaged one is reported and the one before it used); a kill loses
at most ``train.checkpoint_every`` steps.  A resume with another config (other
than the run-length keys ``configlib.RESUMABLE_CHANGES``) is refused, naming
the keys; rerunning a finished run returns its summary and changes nothing.  Batches are a pure function of
(data.seed, step), so a resumed run computes exactly what an uninterrupted one
would.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from hptransfer import build as build_lib
from hptransfer import checkpoint as ckpt
from hptransfer import cli
from hptransfer import configlib
from hptransfer import optim
from hptransfer import perf
from hptransfer import provenance
from hptransfer import sharding
from hptransfer import step as step_lib
from hptransfer import tracking
from hptransfer.grid import flatten as grid_flatten

# Names this module had before ``hptransfer.step`` and ``hptransfer.perf``.
versions = provenance.versions
matmul_dtype = perf.matmul_dtype
jit_step = perf.jit_step


def init_state(p, tx, seed: int) -> dict:
  """The guarded state of one run (``hptransfer.step``)."""
  return step_lib.guard(step_lib.init_state(p, tx, seed))


def load_checkpoint(cfg, workdir: str, step: int | None = None):
  """The train state saved in ``workdir`` (latest step by default), as arrays,
  laid out over ``cfg.mesh`` (which need not be the mesh it was saved from)."""
  p = build_lib.build(cfg)
  tx = optim.build(cfg.optimizer, p.leaf_trees(), cfg.train.steps)
  abstract = jax.eval_shape(lambda: init_state(p, tx, cfg.seed))
  abstract = sharding.restore_target(abstract, sharding.Layout.of(cfg, p))
  mngr = ckpt.manager(os.path.join(workdir, "checkpoints"))
  try:
    return ckpt.restore(mngr, abstract, step)
  finally:
    mngr.close()


def _warn(msg: str) -> None:
  import sys
  print(f"warning: {msg}", file=sys.stderr)


def _change_run_length(state, start: int, steps: int, workdir: str):
  """A resumed run whose ``train.steps`` changed: its schedule gets the new
  length, and its final-loss tail restarts (the new tail is later)."""
  old = int(sharding.fetch(optim.get_hparams(state["opt_state"])["steps"]))
  if start > steps:
    raise configlib.ConfigError(
        f"{workdir} is at step {start}, beyond train.steps={steps}: a run can be "
        f"extended, not cut (it was started with train.steps={old})")
  if start > int(step_lib.tail_start(steps)):
    raise configlib.ConfigError(
        f"{workdir} is at step {start}, inside the final-loss tail of train.steps={steps} "
        f"(from step {int(step_lib.tail_start(steps))}); extend it further or keep "
        f"train.steps={old}")
  _warn(f"run {workdir}: train.steps {old} -> {steps}; the schedule follows the new length "
        "from here on")
  import jax.numpy as jnp
  return {**state, "opt_state": optim.with_run_length(state["opt_state"], steps),
          "tail_sum": jnp.zeros_like(state["tail_sum"]),
          "tail_n": jnp.zeros_like(state["tail_n"])}


def _dotted(d: dict, key: str):
  for part in key.split("."):
    if not isinstance(d, dict) or part not in d:
      return "<absent>"
    d = d[part]
  return d


class _Log:
  """metrics.jsonl, truncated to the restored step on resume, plus wandb."""

  def __init__(self, path: str, resume_step: int, wandb_run=None, mlflow_run=None,
               write: bool = True):
    self.path, self.writes = path, write
    rows = []
    if resume_step and os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            row = json.loads(line)
          except json.JSONDecodeError:
            break  # a torn last line from a kill
          if row["step"] <= resume_step:
            rows.append(row)
    if write:
      with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    self.rows = rows
    self.wandb_run = wandb_run
    self.mlflow_run = mlflow_run

  def write(self, row: dict):
    self.rows.append(row)
    if not self.writes:       # another process of a multi-host run writes the file
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.wandb_run is not None:
      self.wandb_run.log(row, step=row["step"])
    if self.mlflow_run is not None:
      self.mlflow_run.log(row)


def _flatten(prefix: str, tree) -> dict[str, float]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(f"{prefix}/{k}" if prefix else k, v))
    return out
  return {prefix: float(tree)}


def _start_wandb(cfg, workdir):
  if cfg.wandb.mode == "disabled":
    return None
  import wandb
  return wandb.init(mode=cfg.wandb.mode, project=cfg.wandb.project,
                    group=cfg.wandb.group or None, dir=workdir,
                    config=cfg.to_dict(), resume="allow",
                    id=cfg.wandb.get("run_id") or None)


def train(cfg, workdir: str, progress: bool = True) -> dict[str, Any]:
  """Train ``cfg`` in ``workdir`` (resuming if it holds a checkpoint)."""
  t_start = time.time()
  p = build_lib.build(cfg)          # every config and model check, before any work
  task = p.task
  task.sha256                       # loads and checks the data, before any work too
  B, steps = cfg.train.batch_size, cfg.train.steps
  mm = perf.matmul_dtype(cfg)
  layout = sharding.Layout.of(cfg, p)   # the mesh's checks, before any work too
  primary = sharding.is_primary()
  cfg_json = json.loads(cfg.to_json_best_effort())
  cfg_path = os.path.join(workdir, "config.json")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  stored = None
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      stored = json.load(f)
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
      diff = configlib.differing_keys(stored["config"], cfg_json)
      if diff:
        shown = ", ".join(f"{k}: {_dotted(stored['config'], k)!r} -> {_dotted(cfg_json, k)!r}"
                          for k in diff[:8])
        raise configlib.ConfigError(
            f"{workdir} holds a run of another config ({shown}{', ...' if len(diff) > 8 else ''}); "
            "resuming would mix the two: use a new --workdir, or set these back (only "
            f"{', '.join(configlib.RESUMABLE_CHANGES)} may change on resume)")
  summary_path = os.path.join(workdir, "summary.json")
  if stored is not None and os.path.exists(summary_path):
    with open(summary_path) as f:
      done_summary = json.load(f)
    if done_summary.get("diverged") or done_summary.get("steps") == steps:
      return done_summary           # finished: a rerun changes nothing
  os.makedirs(workdir, exist_ok=True)

  consts = p.consts()
  tx = optim.build(cfg.optimizer, p.leaf_trees(), steps)
  mngr = ckpt.manager(ckpt_dir)
  abstract = jax.eval_shape(lambda: init_state(p, tx, cfg.seed))
  step_fn = step_lib.guarded_step_of(p, tx, cfg, cfg.train.log_leaf_rms)
  eval_fn = step_lib.make_eval_step(p)
  if layout is None:
    put_batch = lambda b: b
    train_step = perf.jit_step(step_fn, mm, donate_argnums=0)
    eval_step = perf.jit_step(eval_fn, mm)
    fresh_state = lambda: init_state(p, tx, cfg.seed)
    abstract = sharding.restore_target(abstract, None)
  else:
    if primary and layout.note():
      _warn(layout.note())
    state_sh = layout.state(abstract)
    abstract = sharding.with_shardings(abstract, state_sh)   # restores onto this mesh
    consts = sharding.put_global(consts, lambda x: layout.rep)
    put_batch = lambda b: sharding.put_global(b, lambda x: layout.batch)
    train_step = perf.jit_step(step_fn, mm, donate_argnums=0,
                               in_shardings=(state_sh, layout.rep, layout.batch),
                               out_shardings=(state_sh, layout.rep))
    eval_step = perf.jit_step(eval_fn, mm, in_shardings=(state_sh["params"], layout.rep,
                                                         layout.batch),
                              out_shardings=layout.rep)
    fresh_state = jax.jit(lambda: init_state(p, tx, cfg.seed), out_shardings=state_sh)
  get = sharding.fetch
  state, start = ckpt.restore_latest_good(mngr, abstract, log=_warn, what=f"run {workdir}")
  if state is None:
    state = fresh_state()
  elif int(get(optim.get_hparams(state["opt_state"])["steps"])) != steps:
    state = _change_run_length(state, start, steps, workdir)
    if layout is not None:
      state = jax.device_put(state, state_sh)
  # Written once the restore has succeeded (or there was nothing to restore).
  if primary:
    with open(cfg_path, "w") as f:
      json.dump({"config": cfg_json, "data_sha256": task.sha256, "num_params": p.num_params(),
                 "versions": provenance.versions(mm)}, f, indent=1)
  log = _Log(os.path.join(workdir, "metrics.jsonl"), start,
             _start_wandb(cfg, workdir) if primary else None,
             tracking.RunLogger(cfg, workdir, grid_flatten(cfg_json)) if primary else None,
             write=primary)
  sched = optim.schedule(cfg.optimizer, steps)

  def evaluate(params):
    ms = get([eval_step(params, consts, put_batch(task.batch(cfg.data.seed, i, B, "val")))
              for i in range(cfg.train.eval_batches)])
    return {f"eval_{k}": float(np.mean([m[k] for m in ms])) for k in ms[0]}

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True,
               disable=None)  # None: off when stderr is not a terminal
  recent: list[float] = []
  pending = None  # (step, metrics) of the previous step: fetched one step late

  def flush(item):
    s, m = item
    m = get(m)
    loss = float(m["loss"])
    recent.append(loss)
    del recent[:-10]
    if s % cfg.train.log_every == 0 or s == steps:
      row = {"step": s, "train_loss": loss, "train_ce": float(m["ce"]),
             "grad_norm": float(m["grad_norm"]),
             "lr": float(cfg.optimizer.lr * sched(s - 1))}
      if "rms" in m:
        row.update(_flatten("rms", m["rms"]))
      log.write(row)
    if bar is not None:
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.4f}")

  alive = bool(get(state["alive"]))
  for step in range(start, steps if alive else start):
    batch = put_batch(task.batch(cfg.data.seed, step, B))
    state, metrics = train_step(state, consts, batch)
    if pending is not None:
      flush(pending)
    pending = (step + 1, metrics)
    done = step + 1
    # One step late as well: the guard's verdict on the previous step.
    if done % cfg.train.log_every == 0 or done == steps or done % 10 == 0:
      if not bool(get(state["alive"])):
        break
    if done % cfg.train.eval_every == 0 or done == steps:
      flush(pending)
      pending = None
      if bool(get(state["alive"])):
        log.write({"step": done, **evaluate(state["params"])})
        if progress:
          from tqdm.auto import tqdm
          tqdm.write(f"step {done}: train loss {np.mean(recent):.4f}, "
                     f"eval loss {log.rows[-1]['eval_loss']:.4f}")
    if done % cfg.train.checkpoint_every == 0 or done == steps:
      if pending is not None:   # a checkpoint implies its log rows are written
        flush(pending)
        pending = None
      ckpt.save(mngr, done, state)
  if pending is not None:
    flush(pending)
  mngr.wait_until_finished()
  mngr.close()
  if bar is not None:
    bar.close()

  final = get({k: state[k] for k in ("step",) + step_lib.GUARD_KEYS})
  diverged = not bool(final["alive"])
  evals = [r for r in log.rows if "eval_loss" in r]
  trained = int(final["step"])
  summary = {
      "workdir": os.path.abspath(workdir),
      "steps": int(final["diverged_step"]) if diverged else trained,
      "final_train_loss": step_lib.final_train_loss(final["tail_sum"], final["tail_n"],
                                                    final["alive"]),
      "final_eval_loss": evals[-1]["eval_loss"] if evals and not diverged else None,
      "best_eval_loss": min(r["eval_loss"] for r in evals) if evals else None,
      "diverged": diverged,
      "diverged_step": int(final["diverged_step"]) if diverged else None,
      "num_params": p.num_params(),
      "tokens": trained * B * task.examples_per_batch_row,
      "mesh": layout.axis_sizes if layout is not None else dict.fromkeys(sharding.AXES, 1),
      "param_bytes_per_device": sharding.bytes_per_device(state["params"]),
      "opt_state_bytes_per_device": sharding.bytes_per_device(state["opt_state"]),
      "processes": jax.process_count(),
      "data_sha256": task.sha256,
      "wall_s": time.time() - t_start,
      "metrics": os.path.abspath(log.path),
      "checkpoints": os.path.abspath(os.path.join(workdir, "checkpoints")),
  }
  for k in sorted(evals[-1] if evals else {}):
    if k.startswith("eval_") and k != "eval_loss":
      summary[f"final_{k}"] = evals[-1][k] if not diverged else None
  if primary:
    tmp = summary_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(summary, f, indent=1)
    os.replace(tmp, summary_path)
  if log.mlflow_run is not None:
    log.mlflow_run.finish(summary)
  if log.wandb_run is not None:
    log.wandb_run.summary.update({k: v for k, v in summary.items()
                                  if isinstance(v, (int, float, bool))})
    log.wandb_run.finish()
  return summary


def main(argv):
  from absl import flags
  del argv
  FLAGS = flags.FLAGS
  cli.setup()
  with cli.user_errors():
    summary = train(FLAGS.config, FLAGS.workdir)
  print(json.dumps(summary, indent=1))
  print(f"\noutputs in {summary['workdir']}: metrics.jsonl, summary.json, checkpoints/")


def run_cli():
  """``python -m hptransfer.train`` / ``hptransfer-train``."""
  from absl import flags
  cli.config_flag()
  flags.DEFINE_string("workdir", None, "output directory (resumes if it exists)")
  flags.DEFINE_bool("multihost", False,
                    "one run over several processes: jax.distributed.initialize() first "
                    "(SLURM and other launchers are detected; docs/training.md)")
  flags.mark_flags_as_required(["workdir"])
  cli.init_distributed()
  cli.run_app(main, __doc__)


if __name__ == "__main__":
  run_cli()
