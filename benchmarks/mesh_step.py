"""One run's training step over device meshes, and against a plain JAX step.

    python benchmarks/mesh_step.py --fake_devices 8 --meshes 8x1x1,2x4x1,2x2x2,1x4x2 \
        [--width 256 --depth 4 --batch 16 --seq 128] [--out docs/perf/mesh_step_cpu.json]
    python benchmarks/mesh_step.py --plain --width 2048 --depth 8 --batch 8 --seq 1024 \
        --head_dim 128 --dtype bf16 --attention cudnn          (a GPU)

Mesh rows: ``hptransfer.train``'s own compiled step (the guarded step under
``hptransfer.sharding``'s layout, the same in and out shardings) for each
``data x fsdp x tensor`` shape: ``tokens_per_s``, ``step_ms`` (median of the
timed steps after compilation and warm-up), ``compile_s``, and
``param_bytes_per_device`` / ``opt_state_bytes_per_device`` as the run's
``summary.json`` counts them.  ``--fake_devices N`` makes N CPU devices
(XLA's host-platform device count); on fake devices the numbers say what
the layout costs in collectives and bookkeeping, not what N chips would gain.

``--plain`` adds the anchor of issue 19: the project's step at one device
against a plain JAX step of the same shape in the same run (hand-written
pre-norm GPT: RMSNorm, GELU MLP, learned positions, untied readout, the same
attention call, ``optax.adamw``; no flax, no per-leaf multipliers, no guard),
interleaved round by round, with ``vs_plain`` = plain step time / ours
(above 1: ours is faster).  ``--out`` writes every row with the machine,
versions and command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if "--fake_devices" in sys.argv:   # before jax is imported
  _n = sys.argv[sys.argv.index("--fake_devices") + 1]
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={_n}").strip()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def config(args, mesh=(0, 1, 1)):
  from configs import transformer
  cfg = transformer.get_config()
  cfg.model.width, cfg.model.depth = args.width, args.depth
  cfg.model.head_dim = min(args.head_dim, args.width)
  cfg.model.compute_dtype = "bfloat16" if args.dtype == "bf16" else "float32"
  cfg.model.attention = args.attention
  cfg.parameterization.base_width = max(cfg.model.head_dim,
                                        min(cfg.parameterization.base_width, args.width))
  cfg.train.batch_size, cfg.data.seq_len = args.batch, args.seq
  cfg.optimizer.weight_decay = 0.1
  cfg.train.log_leaf_rms = False
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
  return cfg


def project_step(cfg, devices=None):
  """(step callable, state holder, layout) of ``hptransfer.train``'s step."""
  from hptransfer import build as build_lib
  from hptransfer import optim, perf, sharding, train
  from hptransfer import step as step_lib
  p = build_lib.build(cfg)
  tx = optim.build(cfg.optimizer, p.leaf_trees(), cfg.train.steps)
  fn = step_lib.guarded_step_of(p, tx, cfg, False)
  mm = perf.matmul_dtype(cfg)
  layout = None if devices == 1 else sharding.Layout.of(cfg, p)
  batch = np.random.default_rng(0).integers(0, 256, (cfg.train.batch_size,
                                                     cfg.data.seq_len + 1)).astype(np.int32)
  consts = p.consts()
  if layout is None:
    jitted = perf.jit_step(fn, mm, donate_argnums=0)
    state = train.init_state(p, tx, 0)
    batch = jnp.asarray(batch)
  else:
    abstract = jax.eval_shape(lambda: train.init_state(p, tx, 0))
    sh = layout.state(abstract)
    jitted = perf.jit_step(fn, mm, donate_argnums=0,
                           in_shardings=(sh, layout.rep, layout.batch),
                           out_shardings=(sh, layout.rep))
    state = jax.jit(lambda: train.init_state(p, tx, 0), out_shardings=sh)()
    consts = sharding.put_global(consts, lambda x: layout.rep)
    batch = sharding.put_global(batch, lambda x: layout.batch)
  holder = {"s": state}

  def step():
    holder["s"], m = jitted(holder["s"], consts, batch)
    return m["loss"]
  return step, holder, layout


def plain_step(args):
  """A plain JAX training step of the same shape (see the module docstring)."""
  import optax
  D, L, V, T = args.width, args.depth, 256, args.seq
  H = min(args.head_dim, D)
  N, F = D // H, 4 * D
  dt = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
  keys = iter(jax.random.split(jax.random.key(0), 4 + 6 * L))
  normal = lambda shape, std: std * jax.random.normal(next(keys), shape, jnp.float32)
  params = {"tok": normal((V, D), 1.0), "pos": normal((T, D), 1.0),
            "norm": jnp.ones((D,)), "readout": normal((D, V), D ** -0.5),
            "blocks": [{"n1": jnp.ones((D,)), "n2": jnp.ones((D,)),
                        "q": normal((D, D), D ** -0.5), "k": normal((D, D), D ** -0.5),
                        "v": normal((D, D), D ** -0.5), "o": normal((D, D), D ** -0.5),
                        "w1": normal((D, F), D ** -0.5), "w2": normal((F, D), F ** -0.5)}
                       for _ in range(L)]}
  # cuDNN's fused kernel, or XLA's (for "blocked" too: compare with
  # --attention xla, the project's blocked attention skips the masked blocks).
  impl = "cudnn" if args.attention == "cudnn" else "xla"

  def rms(x, g):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6)
            * g).astype(dt)

  def loss_fn(prm, tokens):
    c = jax.tree_util.tree_map(lambda a: a.astype(dt), prm)
    x_BT, y_BT = tokens[:, :-1], tokens[:, 1:]
    B = x_BT.shape[0]
    x = (c["tok"][x_BT] + c["pos"][None, :T]).reshape(B * T, D)
    for b in c["blocks"]:
      h = rms(x, b["n1"])
      q, k, v = ((h @ b[n]).reshape(B, T, N, H) for n in ("q", "k", "v"))
      o = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
      x = x + o.reshape(B * T, D) @ b["o"]
      h = rms(x, b["n2"])
      x = x + jax.nn.gelu(h @ b["w1"]) @ b["w2"]
    logits = (rms(x, c["norm"]) @ c["readout"]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, y_BT.reshape(-1)).mean()

  tx = optax.adamw(2.0 ** -7, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)

  def step(state, tokens):
    prm, opt = state
    loss, g = jax.value_and_grad(loss_fn)(prm, tokens)
    upd, opt = tx.update(g, opt, prm)
    return (optax.apply_updates(prm, upd), opt), loss

  from hptransfer import perf
  step = jax.jit(step, donate_argnums=0, compiler_options=perf.compiler_options(""))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (args.batch, T + 1)), jnp.int32)
  holder = {"s": (params, tx.init(params))}

  def run():
    holder["s"], loss = step(holder["s"], tokens)
    return loss
  return run


def _time(step, steps: int) -> list[float]:
  out = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(step())
    out.append(time.perf_counter() - t)
  return out


def _compile(step) -> float:
  t = time.perf_counter()
  jax.block_until_ready(step())
  return time.perf_counter() - t


def mesh_rows(args):
  from hptransfer import sharding
  rows = []
  tokens = args.batch * args.seq
  for spec in args.meshes.split(","):
    shape = tuple(int(x) for x in spec.split("x"))
    cfg = config(args, shape)
    step, holder, layout = project_step(cfg)
    compile_s = _compile(step)
    _time(step, args.warmup)
    ts = _time(step, args.steps)
    ms = 1e3 * float(np.median(ts))
    st = holder["s"]
    rows.append({"mesh": spec, "devices": jax.device_count(),
                 "width": args.width, "depth": args.depth, "batch": args.batch,
                 "seq": args.seq, "step_ms": ms, "tokens_per_s": tokens / (ms / 1e3),
                 "compile_s": compile_s,
                 "param_bytes_per_device": sharding.bytes_per_device(st["params"]),
                 "opt_state_bytes_per_device": sharding.bytes_per_device(st["opt_state"]),
                 "fsdp_replicated_leaves": len(layout.replicated_leaves) if layout else 0})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def plain_rows(args):
  cfg = config(args, (1, 1, 1) if jax.device_count() == 1 else (0, 1, 1))
  ours, _, _ = project_step(cfg, devices=1)
  plain = plain_step(args)
  c_ours, c_plain = _compile(ours), _compile(plain)
  _time(ours, args.warmup)
  _time(plain, args.warmup)
  rng = np.random.default_rng(0)
  t_ours, t_plain = [], []
  for _ in range(args.steps):          # interleaved, in a random order each round
    pair = [(ours, t_ours), (plain, t_plain)]
    rng.shuffle(pair)
    for fn, acc in pair:
      acc.extend(_time(fn, 1))
  ratios = np.asarray(t_plain) / np.asarray(t_ours)
  row = {"what": "project step vs plain JAX step, one device", "width": args.width,
         "depth": args.depth, "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
         "attention": args.attention, "step_ms": 1e3 * float(np.median(t_ours)),
         "plain_step_ms": 1e3 * float(np.median(t_plain)),
         "vs_plain": float(np.median(ratios)),
         "vs_plain_quartiles": [float(q) for q in np.quantile(ratios, [0.25, 0.75])],
         "compile_s": c_ours, "plain_compile_s": c_plain}
  print(json.dumps(row), flush=True)
  return [row]


def parser():
  ap = argparse.ArgumentParser()
  ap.add_argument("--fake_devices", type=int, default=0,
                  help="N CPU devices (XLA host-platform device count)")
  ap.add_argument("--meshes", default="", help="data x fsdp x tensor shapes, e.g. 8x1x1,2x4x1")
  ap.add_argument("--plain", action="store_true", help="also time a plain JAX step")
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--depth", type=int, default=4)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
  ap.add_argument("--attention", default="auto", choices=["auto", "xla", "blocked", "cudnn"])
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--out", default="")
  return ap


def main(argv=None):
  args = parser().parse_args(argv)
  from hptransfer import provenance
  rows = []
  if args.meshes:
    rows += mesh_rows(args)
  if args.plain:
    rows += plain_rows(args)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "settings": vars(args), "versions": provenance.versions(),
                 "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
                 "command": "python benchmarks/mesh_step.py " + " ".join(
                     sys.argv[1:] if argv is None else argv)}, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
