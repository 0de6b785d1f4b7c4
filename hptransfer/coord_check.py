"""Coordinate check: activation sizes across widths over the first steps.

    python -m hptransfer.coord_check --config configs/transformer.py \
        --workdir runs/coord [--widths 64,128,256,512,1024] [--steps 3] [--seeds 2] \
        [--config.model.module=my_pkg.models:make_model]

For each width, each seed and each step t = 0 .. steps (t = 0 is init, t = k
after k updates), records the mean |x| of every sown layer output — the
embedding, each block's attention and MLP outputs (MLP: each hidden layer), and
the logits — on that step's training batch.  A model that sows nothing gets
every submodule's output instead (flax's ``capture_intermediates``).  Under a correct muP these stay
flat in width; under SP with Adam the logits and hidden outputs grow with width
as soon as training starts (microsoft/mup's coord check, Tensor Programs V
Fig. 5).  Writes ``coord_check.csv`` (width, seed, t, layer, mean_abs) and
``coord_check.png`` (one panel per step, log-log against width, seed-averaged).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from hptransfer import build as build_lib
from hptransfer import optim
from hptransfer.parameterization import path_str


def _layer_stats(intermediates) -> dict[str, jax.Array]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(intermediates)
  out = {}
  for p, x in leaves:
    name = path_str(p)
    name = name[: -2] if name.endswith("/0") else name  # sow stores a 1-tuple
    name = name.replace("/__call__", "").replace("__call__", "") or "output"
    out[name] = jnp.mean(jnp.abs(x.astype(jnp.float32)))
  return out


def measure(p, tx, batch_at, inputs, loss, seeds=(0, 1), steps: int = 3) -> list[dict]:
  """Mean |x| of every captured layer output of ``p`` (a ``Parameterized``)
  at init and after each of ``steps`` updates by ``tx``, per seed.

  ``batch_at(seed, t)`` gives the batch of step ``t``; ``inputs(batch)`` the
  model's inputs; ``loss(outputs, batch)`` the scalar loss.  Rows: width,
  seed, t, layer, mean_abs (the loss is the layer ``loss``).
  """
  consts = p.consts()

  def loss_and_stats(params, consts, batch):
    out, inter = p.apply(params, inputs(batch), consts=consts, capture=True)
    return loss(out, batch), _layer_stats(inter)

  # consts (forward multipliers, knobs) and the optimizer's multipliers are
  # inputs, not constants: SP and muP at one width share one compiled program.
  @jax.jit
  def step(params, opt_state, consts, batch):
    (value, stats), grads = jax.value_and_grad(loss_and_stats, has_aux=True)(
        params, consts, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, stats, value

  rows = []
  for seed in seeds:
    params = p.init(jax.random.key(seed))
    opt_state = tx.init(params)
    for t in range(steps + 1):
      params, opt_state, stats, value = step(params, opt_state, consts, batch_at(seed, t))
      stats = jax.device_get(stats)
      for layer, v in stats.items():
        rows.append({"width": p.width, "seed": seed, "t": t, "layer": layer,
                     "mean_abs": float(v)})
      rows.append({"width": p.width, "seed": seed, "t": t, "layer": "loss",
                   "mean_abs": float(value)})
  return rows


def coord_check_api(parameterize_at, widths, batch_at, inputs, loss, lr: float,
                    steps: int = 3, seeds=(0, 1), **optimizer_kwargs) -> pd.DataFrame:
  """The coordinate check of any model through the Python API.

  ``parameterize_at(width)`` returns ``hptransfer.parameterize(...)`` at that
  width; each is trained with ``p.optimizer(lr=lr, **optimizer_kwargs)``.
  See ``measure`` for the other arguments.
  """
  rows = []
  for w in widths:
    p = parameterize_at(w)
    rows += measure(p, p.optimizer(lr=lr, **optimizer_kwargs), batch_at, inputs, loss,
                    seeds, steps)
  return pd.DataFrame(rows)


def run_width(cfg, width: int, seeds, steps: int) -> list[dict]:
  cfg = cfg.copy_and_resolve_references()
  cfg.model.width = width
  p = build_lib.build(cfg)
  task = p.task
  tx = optim.build(cfg.optimizer, p.leaf_trees(), max(cfg.train.steps, steps))
  return measure(p, tx, lambda seed, t: task.batch(cfg.data.seed + seed, t,
                                                   cfg.train.batch_size),
                 task.inputs, lambda out, batch: task.loss(out, batch)[0], seeds, steps)


def coord_check(cfg, widths, steps: int = 3, seeds=(0, 1)) -> pd.DataFrame:
  rows = []
  for w in widths:
    rows += run_width(cfg, w, seeds, steps)
  return pd.DataFrame(rows)


def growth(df: pd.DataFrame, t: int, layer: str) -> float:
  """Seed-averaged mean |x| at the largest width over that at the smallest."""
  sub = df[(df.t == t) & (df.layer == layer)].groupby("width").mean_abs.mean()
  return float(sub.iloc[-1] / sub.iloc[0])


def plot(df: pd.DataFrame, path: str, title: str = "") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  df = df[df.layer != "loss"]
  ts = sorted(df.t.unique())
  fig, axes = plt.subplots(1, len(ts), figsize=(3.2 * len(ts), 3.2), sharey=True)
  axes = np.atleast_1d(axes)
  mean = df.groupby(["t", "layer", "width"]).mean_abs.mean().reset_index()
  for ax, t in zip(axes, ts):
    for layer, g in mean[mean.t == t].groupby("layer", sort=False):
      ax.plot(g.width, g.mean_abs, marker="o", ms=3, label=layer)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title("at init" if t == 0 else f"after {t} step{'s' if t > 1 else ''}")
    ax.set_xlabel("width (log2 axis)")
  axes[0].set_ylabel("mean |activation| (log axis)")
  axes[-1].legend(fontsize=6, loc="best", title="layer output", title_fontsize=6)
  fig.suptitle((title + "\n" if title else "") + "Coordinate check: each layer's mean "
               "|activation| against width (mean over seeds); flat is right", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  from absl import flags
  from hptransfer import cli
  FLAGS = flags.FLAGS
  cli.setup()
  cfg = FLAGS.config
  try:
    widths = [int(w) for w in FLAGS.widths.split(",")]
  except ValueError:
    raise SystemExit(f"error: --widths={FLAGS.widths!r} must be comma-separated integers, "
                     "e.g. --widths=64,128,256")
  with cli.user_errors():
    for w in widths:   # every width's config and model checks before any training
      c = cfg.copy_and_resolve_references()
      c.model.width = w
      build_lib.build(c)
    df = coord_check(cfg, widths, FLAGS.steps, tuple(range(FLAGS.seeds)))
  os.makedirs(FLAGS.workdir, exist_ok=True)
  csv = os.path.join(FLAGS.workdir, "coord_check.csv")
  png = os.path.join(FLAGS.workdir, "coord_check.png")
  df.to_csv(csv, index=False)
  title = (f"{cfg.parameterization.name} {cfg.optimizer.name} lr={cfg.optimizer.lr:g} "
           f"base width {cfg.parameterization.base_width}")
  plot(df, png, title)
  growths = {layer: growth(df, FLAGS.steps, layer)
             for layer in sorted(set(df.layer) - {"loss"})}
  for layer, g in growths.items():
    print(f"{layer:24s} mean|x| growth {widths[0]}->{widths[-1]} at t={FLAGS.steps}: {g:.3g}x")
  summary = os.path.join(FLAGS.workdir, "coord_check.json")
  with open(summary, "w") as f:
    json.dump({"widths": widths, "steps": FLAGS.steps, "seeds": FLAGS.seeds,
               "growth_at_last_step": growths,
               "data_sha256": build_lib.build(cfg).task.sha256,
               "config": json.loads(cfg.to_json_best_effort())}, f, indent=1)
  print(f"wrote {csv}, {png} and {summary}")


def run_cli():
  """``python -m hptransfer.coord_check`` / ``hptransfer-coord-check``."""
  from absl import flags
  from hptransfer import cli
  cli.config_flag()
  flags.DEFINE_string("workdir", None, "output directory")
  flags.DEFINE_string("widths", "64,128,256,512,1024", "comma-separated widths")
  flags.DEFINE_integer("steps", 3, "optimizer steps recorded after init")
  flags.DEFINE_integer("seeds", 2, "seeds averaged per width")
  flags.mark_flags_as_required(["workdir"])
  cli.run_app(main, __doc__)


if __name__ == "__main__":
  run_cli()
