"""Training: a pure jit-compiled step, held-out eval, metrics, checkpoints.

    python -m hptransfer.train --config configs/transformer.py --workdir runs/tfm \
        [--config.model.width=256 ...]

Work directory layout::

    config.json       the resolved config, dataset sha256, versions
    metrics.jsonl     one row per log/eval step (train loss, eval loss, lr,
                      per-leaf rms of params / grads / updates)
    checkpoints/      orbax CheckpointManager (StandardSave of the train state)
    summary.json      final and best losses, diverged flag, wall time, paths

Running the same command again resumes from the last checkpoint; a kill loses at
most ``train.checkpoint_every`` steps.  Batches are a pure function of
(data.seed, step), so a resumed run computes exactly what an uninterrupted one
would.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hptransfer import build as build_lib
from hptransfer import cli
from hptransfer import configlib
from hptransfer import data as data_lib
from hptransfer import optim


def versions(matmul_dtype: str = "") -> dict[str, str]:
  import flax
  import orbax.checkpoint as ocp
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"),
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax": ocp.__version__, "numpy": np.__version__,
          "device": str(jax.devices()[0].device_kind), "platform": platform.platform(),
          "cpu_dots": cpu_dots(matmul_dtype) if jax.default_backend() == "cpu" else ""}


# ----------------------------------------------------------------------------
# How the steps are compiled.

CPU_DOTS_ENV = "HPTRANSFER_CPU_DOTS"
_CPU_DOTS = {
    # XLA's own dot emitter (Eigen): no YNNPACK fusions.
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""},
    # XLA:CPU's default in jax 0.10: matmuls (and some reductions) as YNNPACK fusions.
    "ynn": {},
}


def matmul_dtype(cfg) -> str:
  """``cfg.model.matmul_dtype`` ("" when unset: the compute dtype)."""
  return cfg.model.get("matmul_dtype", "") or ""


def cpu_dots(matmul_dtype: str = "") -> str:
  """The CPU matmul library of a step: ``$HPTRANSFER_CPU_DOTS`` when set,
  else ynn for bfloat16 matmuls (Eigen has no bf16 kernels: XLA would run
  them in float32) and eigen otherwise."""
  lib = os.environ.get(CPU_DOTS_ENV) or ("ynn" if matmul_dtype == "bfloat16" else "eigen")
  if lib not in _CPU_DOTS:
    raise configlib.ConfigError(
        f"{CPU_DOTS_ENV}={lib!r} is not one of {', '.join(_CPU_DOTS)}; "
        f"unset it (the default: eigen, ynn for bf16 matmuls) or set {CPU_DOTS_ENV}=ynn")
  return lib


def compiler_options(matmul_dtype: str = "") -> dict:
  """XLA options the training and evaluation steps are compiled with.

  On CPU the float32 matmuls go to XLA's Eigen emitter instead of YNNPACK
  fusions (``$HPTRANSFER_CPU_DOTS``: eigen, the default, or ynn).  Eigen is
  1.07-1.11x faster for the Transformer step at width 256 / 16x128,
  1.20-1.23x at 128 / 32x256 and 512 / 8x512, and 1.06-1.07x for a lax.map
  sweep group, on the 2-core development VM (docs/performance.md): the
  attention's small batched matmuls run faster, and two independent ones can
  run concurrently.  With ``model.matmul_dtype = "bfloat16"`` the default is
  YNNPACK, the library with bf16 kernels (AMX, AVX512-BF16).  Off the CPU
  there are no options.
  """
  if jax.default_backend() != "cpu":
    return {}
  return dict(_CPU_DOTS[cpu_dots(matmul_dtype)])


def jit_step(fn, matmul_dtype: str = "", **kwargs):
  """``jax.jit`` with the step compiler options (see ``compiler_options``)."""
  return jax.jit(fn, compiler_options=compiler_options(matmul_dtype), **kwargs)


# ----------------------------------------------------------------------------
# Pure functions.


def loss_fn(built, params, consts, batch_BxT1, z_loss: float = 0.0):
  """Mean next-token cross-entropy (plus z-loss); returns (loss, ce)."""
  inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
  logits_BxTxV = built.apply(params, consts, inputs_BxT)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT).mean()
  loss = ce
  if z_loss:
    loss = loss + z_loss * jnp.square(jax.nn.logsumexp(logits_BxTxV, axis=-1)).mean()
  return loss, ce


def _rms_by_leaf(tree) -> dict[str, jax.Array]:
  from hptransfer.parameterization import path_str
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_str(p): jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))
          for p, x in leaves}


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree_util.tree_leaves(tree)))


def make_train_step(built, tx, z_loss: float = 0.0, leaf_rms: bool = True):
  """(state, consts, batch) -> (state, metrics); state = {step, params, opt_state}.

  ``consts`` (``Built.consts()``) holds the forward multipliers and model knobs.
  """
  grad_fn = jax.value_and_grad(
      lambda p, c, b: loss_fn(built, p, c, b, z_loss), has_aux=True)

  def step(state, consts, batch_BxT1):
    (loss, ce), grads = grad_fn(state["params"], consts, batch_BxT1)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "ce": ce, "grad_norm": _global_norm(grads)}
    if leaf_rms:
      metrics["rms"] = {"params": _rms_by_leaf(params), "grads": _rms_by_leaf(grads),
                        "updates": _rms_by_leaf(updates)}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  return step


def make_eval_step(built):
  def step(params, consts, batch_BxT1):
    return loss_fn(built, params, consts, batch_BxT1)[1]
  return step


def init_state(built, tx, seed: int):
  params = built.init(jax.random.key(seed))
  return {"step": jnp.zeros([], jnp.int32), "params": params,
          "opt_state": tx.init(params)}


# ----------------------------------------------------------------------------
# Checkpoints.


def checkpoint_manager(workdir: str, keep: int = 2):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           cleanup_tmp_directories=True))


def restore(mngr, abstract_state, step: int | None = None):
  import orbax.checkpoint as ocp
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def load_checkpoint(cfg, workdir: str, step: int | None = None):
  """The train state saved in ``workdir`` (latest step by default), as arrays."""
  built = build_lib.build(cfg)
  tx = optim.build(cfg.optimizer, built.leaf_trees(), cfg.train.steps)
  abstract = jax.eval_shape(lambda: init_state(built, tx, cfg.seed))
  mngr = checkpoint_manager(workdir)
  try:
    return restore(mngr, abstract, step)
  finally:
    mngr.close()


# ----------------------------------------------------------------------------
# The loop.


class _Log:
  """metrics.jsonl, truncated to the restored step on resume, plus wandb."""

  def __init__(self, path: str, resume_step: int, wandb_run=None):
    self.path = path
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
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    self.rows = rows
    self.wandb_run = wandb_run

  def write(self, row: dict):
    self.rows.append(row)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.wandb_run is not None:
      self.wandb_run.log(row, step=row["step"])


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
  os.makedirs(workdir, exist_ok=True)
  built = build_lib.build(cfg)
  dataset = data_lib.get_dataset(cfg.data)
  if dataset.vocab_size != data_lib.vocab_size(cfg.data):
    raise data_lib.DataError("data.vocab_size disagrees with the dataset")
  T, B, steps = cfg.data.seq_len, cfg.train.batch_size, cfg.train.steps
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"config": json.loads(cfg.to_json_best_effort()),
               "data_sha256": dataset.sha256, "num_params": built.num_params(),
               "versions": versions(matmul_dtype(cfg))}, f, indent=1)

  trees = built.leaf_trees()
  consts = built.consts()
  tx = optim.build(cfg.optimizer, trees, steps)
  mngr = checkpoint_manager(workdir)
  abstract = jax.eval_shape(lambda: init_state(built, tx, cfg.seed))
  state = restore(mngr, abstract)
  start = 0 if state is None else int(state["step"])
  if state is None:
    state = init_state(built, tx, cfg.seed)
  log = _Log(os.path.join(workdir, "metrics.jsonl"), start, _start_wandb(cfg, workdir))

  train_step = jit_step(
      make_train_step(built, tx, cfg.model.get("z_loss", 0.0),
                      cfg.train.log_leaf_rms), matmul_dtype(cfg), donate_argnums=0)
  eval_step = jit_step(make_eval_step(built), matmul_dtype(cfg))
  sched = optim.schedule(cfg.optimizer, steps)

  def evaluate(params):
    losses = [eval_step(params, consts, dataset.batch(cfg.data.seed, i, B, T, "val"))
              for i in range(cfg.train.eval_batches)]
    return float(np.mean(jax.device_get(losses)))

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True,
               disable=None)  # None: off when stderr is not a terminal
  recent: list[float] = []
  diverged_step = None
  pending = None  # (step, metrics) of the previous step: fetched one step late

  def flush(item):
    nonlocal diverged_step
    s, m = item
    m = jax.device_get(m)
    loss = float(m["loss"])
    recent.append(loss)
    del recent[:-10]
    if not math.isfinite(loss) and diverged_step is None:
      diverged_step = s
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

  for step in range(start, steps):
    batch = dataset.batch(cfg.data.seed, step, B, T)
    state, metrics = train_step(state, consts, batch)
    if pending is not None:
      flush(pending)
    pending = (step + 1, metrics)
    if diverged_step is not None:
      break
    done = step + 1
    if done % cfg.train.eval_every == 0 or done == steps:
      flush(pending)
      pending = None
      if diverged_step is None:
        log.write({"step": done, "eval_loss": evaluate(state["params"])})
        if progress:
          from tqdm.auto import tqdm
          tqdm.write(f"step {done}: train loss {np.mean(recent):.4f}, "
                     f"eval loss {log.rows[-1]['eval_loss']:.4f}")
    if done % cfg.train.checkpoint_every == 0 or done == steps:
      import orbax.checkpoint as ocp
      if pending is not None:   # a checkpoint implies its log rows are written
        flush(pending)
        pending = None
      mngr.save(done, args=ocp.args.StandardSave(state))
  if pending is not None:
    flush(pending)
  mngr.wait_until_finished()
  mngr.close()
  if bar is not None:
    bar.close()

  evals = [r["eval_loss"] for r in log.rows if "eval_loss" in r]
  summary = {
      "workdir": os.path.abspath(workdir),
      "steps": int(state["step"]) if diverged_step is None else diverged_step,
      "final_train_loss": float(np.mean(recent)) if recent else None,
      "final_eval_loss": evals[-1] if evals else None,
      "best_eval_loss": min(evals) if evals else None,
      "diverged": diverged_step is not None, "diverged_step": diverged_step,
      "num_params": built.num_params(),
      "tokens": int(state["step"]) * B * T,
      "data_sha256": dataset.sha256,
      "wall_s": time.time() - t_start,
      "metrics": os.path.abspath(log.path),
      "checkpoints": os.path.abspath(os.path.join(workdir, "checkpoints")),
  }
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
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


if __name__ == "__main__":
  from absl import app, flags
  cli.config_flag()
  flags.DEFINE_string("workdir", None, "output directory (resumes if it exists)")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
