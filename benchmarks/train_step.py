"""Training-step throughput of the project's own model and step.

    python benchmarks/train_step.py --model transformer --width 256 --depth 4 \
        --batch 16 --seq 128 [--vmap K] [--dtype bf16] [--matmul_dtype bf16] [--torch] \
        [--torch_dtype fp32|bf16] [--peak_flops F]
    python benchmarks/train_step.py --table [cpu|gpu] [--torch] [--out docs/train_step]

Prints one JSON line per configuration: ``tokens_per_s``, ``step_ms`` (median
of the timed steps after compilation and warm-up), ``mfu`` (model FLOPs per
second over ``--peak_flops``, when given), ``compile_s`` (first call) and
``peak_mem_mb`` (device peak on an accelerator, process max RSS on CPU).
``--vmap K`` times the sweep engine's guarded step over K stacked trials
(``--vmap 1``: the same step for one trial).  ``--attention`` is the model's
(default auto: blocked on CPU, xla elsewhere); ``--attention cudnn`` uses
cuDNN's fused attention (GPU, bf16).  ``--ceiling`` first times one large
matmul, the practical peak the MFU is read against.  ``--grads_only`` times the
JAX loss and gradients without the optimizer update, a diagnostic of the
update's share of the step (its row says ``grads_only``).  On CUDA the torch model is
compiled with ``mode="reduce-overhead"`` (CUDA graphs) and uses fused AdamW.
Peak memory is the process's running peak, so in table mode it only grows.
``--torch`` also times a PyTorch model of the same shape and step (pre-norm
GPT, RMSNorm, GELU MLP, learned positions, untied readout, AdamW) under
``torch.compile``, from ``requirements-bench.txt``; the two are interleaved
step by step (in a random order each round) so both see the same machine
state, and the JAX row carries ``vs_torch``, the median over rounds of the
per-round ratio of tokens/s, with its quartiles.  ``--matmul_dtype bf16``
gives the JAX model bf16 matmul operands with f32 accumulation and float32
activations (``model.matmul_dtype``); torch then runs under bf16 autocast
(``--torch_dtype`` overrides), so both do their matmuls in bf16.

Model FLOPs: 6 x (matmul parameters) + 12 x depth x seq x width per token
(``hptransfer.grid.flops_per_token``), the same for both frameworks.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Table mode: the shapes of issue 6.  Each row may override any flag below.
TABLES = {
    "cpu": [
        dict(width=128, depth=4, batch=32, seq=256),
        dict(width=256, depth=4, batch=16, seq=128),
        # 6.5 s (JAX) and 4.4 s (torch) a step on the 2-core VM: fewer rounds,
        # so the whole table stays inside issue 6's 5 minutes (it took 4 min 50 s
        # with 10 + 3 for every row).
        dict(width=512, depth=8, batch=8, seq=512, steps=6, warmup=1),
    ],
    "gpu": [
        dict(width=128, depth=4, batch=32, seq=256),
        dict(width=128, depth=4, batch=32, seq=256, vmap=1, torch=False),
        dict(width=128, depth=4, batch=32, seq=256, vmap=32, torch=False),
        # The 4x target: XLA's attention materialises 32 trials' score tensors;
        # cuDNN's fused kernel (bf16) may not.
        dict(width=128, depth=4, batch=32, seq=256, vmap=32, attention="cudnn", torch=False),
        dict(width=2048, depth=8, batch=8, seq=1024, head_dim=128, attention="cudnn"),
    ],
    # XLA's own attention at width 2048 (0.72x of cuDNN's on the H100 lease).
    "gpu_xla": [dict(width=2048, depth=8, batch=8, seq=1024, head_dim=128, attention="xla",
                     torch=False)],
}
TABLES["gpu_mfu"] = [r for r in TABLES["gpu"] if r["width"] == 2048]   # its large rows alone


def jax_step(args):
  from configs import transformer
  from hptransfer import build as build_lib
  from hptransfer import grid
  from hptransfer import optim
  from hptransfer import perf
  from hptransfer import step as step_lib
  cfg = transformer.get_config()
  cfg.model.width, cfg.model.depth = args.width, args.depth
  cfg.model.head_dim = min(args.head_dim, args.width)
  cfg.model.compute_dtype = "bfloat16" if args.dtype == "bf16" else "float32"
  cfg.model.matmul_dtype = "bfloat16" if args.matmul_dtype == "bf16" else ""
  cfg.model.attention = args.attention
  # Base shape: at most the width, and a whole number of heads.
  cfg.parameterization.base_width = max(cfg.model.head_dim,
                                        min(cfg.parameterization.base_width, args.width))
  cfg.train.batch_size, cfg.data.seq_len = args.batch, args.seq
  cfg.optimizer.name = "adamw"
  cfg.optimizer.weight_decay = 0.1
  built = build_lib.build(cfg)
  rng = np.random.default_rng(0)
  batch = jnp.asarray(rng.integers(0, 256, (args.batch, args.seq + 1)), jnp.int32)
  flops = grid.flops_per_token(built) * args.batch * args.seq
  if args.vmap:
    trials = grid.expand(cfg, grid.sweep("optimizer.lr", 2.0 ** np.linspace(-12, -6, args.vmap)))
    builts = [build_lib.build(t.cfg) for t in trials]
    tx0 = optim.build(cfg.optimizer, builts[0].leaf_trees(), cfg.train.steps)
    state = step_lib.init_group(builts, [t.cfg for t in trials])
    consts = step_lib.stack([b.consts() for b in builts])
    fn, _ = step_lib.compile_group(builts[0], tx0, cfg, "vmap")   # the sweep engine's own step
    flops *= args.vmap
  else:
    tx = optim.build(cfg.optimizer, built.leaf_trees(), cfg.train.steps)
    state = step_lib.init_state(built, tx, 0)
    consts = built.consts()
    step_fn = (_grads_only_step(built) if args.grads_only
               else step_lib.make_train_step(built, tx, leaf_rms=False))
    fn = perf.jit_step(step_fn, perf.matmul_dtype(cfg), donate_argnums=0)
  holder = {"s": state}

  def step():
    holder["s"], out = fn(holder["s"], consts, batch)
    return out
  # The optimized HLO, for benchmarks/profile_step.py --hlo.
  step.compiled_text = lambda: fn.lower(holder["s"], consts, batch).compile().as_text()
  step.fn, step.holder, step.consts, step.batch = fn, holder, consts, batch
  step.matmul_dtype = perf.matmul_dtype(cfg)
  return step, flops, built.num_params()


def _grads_only_step(built):
  """(state, consts, batch) -> (state, metrics) that computes the loss and the
  gradients and leaves the state as it is: no optimizer update.  A diagnostic
  of the update's share of a step (``--grads_only``), not a training step."""
  from hptransfer import step as step_lib
  grad_fn = jax.value_and_grad(lambda p, c, b: step_lib.loss_fn(built, p, c, b)[0])

  def step(state, consts, batch_BxT1):
    loss, grads = grad_fn(state["params"], consts, batch_BxT1)
    # Every gradient is an output, so none of the backward pass is dropped.
    return state, {"loss": loss, "grads": grads}
  return step


def torch_step(args):
  import torch
  from torch import nn
  torch.manual_seed(0)
  W, L, T, V = args.width, args.depth, args.seq, 256
  H = min(args.head_dim, W)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.n1, self.n2 = nn.RMSNorm(W), nn.RMSNorm(W)
      self.qkv = nn.Linear(W, 3 * W, bias=False)
      self.out = nn.Linear(W, W, bias=False)
      self.fc_in = nn.Linear(W, 4 * W, bias=False)
      self.fc_out = nn.Linear(4 * W, W, bias=False)

    def forward(self, x):
      B = x.shape[0]
      q, k, v = self.qkv(self.n1(x)).view(B, T, 3, W // H, H).permute(2, 0, 3, 1, 4)
      a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.out(a.transpose(1, 2).reshape(B, T, W))
      # tanh-approximate GELU, as flax.linen.gelu (the JAX model) computes it
      return x + self.fc_out(nn.functional.gelu(self.fc_in(self.n2(x)), approximate="tanh"))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.tok, self.pos = nn.Embedding(V, W), nn.Embedding(T, W)
      self.blocks = nn.ModuleList(Block() for _ in range(L))
      self.norm, self.readout = nn.RMSNorm(W), nn.Linear(W, V, bias=False)

    def forward(self, idx):
      x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
      for b in self.blocks:
        x = b(x)
      return self.readout(self.norm(x))

  dev = "cuda" if torch.cuda.is_available() else "cpu"
  if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
  model = GPT().to(dev)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1,
                          fused=dev == "cuda")
  mode = args.torch_mode or ("reduce-overhead" if dev == "cuda" else "default")
  compiled = torch.compile(model, mode=mode)
  data = torch.randint(0, V, (args.batch, T + 1), device=dev)
  dtype = torch.bfloat16 if _torch_dtype(args) == "bf16" else None

  def step():
    with torch.autocast(dev, dtype=dtype, enabled=dtype is not None):
      logits = compiled(data[:, :-1])
      loss = nn.functional.cross_entropy(logits.float().reshape(-1, V), data[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if dev == "cuda":
      torch.cuda.synchronize()
    return loss.item()
  return step


def _torch_dtype(args) -> str:
  """torch's autocast dtype: ``--torch_dtype``, else bf16 when the JAX step's
  matmuls are bf16 (``--dtype bf16`` or ``--matmul_dtype bf16``), so that both
  run the same matmul precision."""
  if args.torch_dtype:
    return args.torch_dtype
  return "bf16" if "bf16" in (args.dtype, args.matmul_dtype) else "fp32"


def _peak_mem_mb(framework="jax"):
  if framework == "torch":
    import torch
    if torch.cuda.is_available():
      return torch.cuda.max_memory_allocated() / 2 ** 20
  dev = jax.local_devices()[0]
  stats = getattr(dev, "memory_stats", lambda: None)() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2 ** 20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved(runners: dict, rounds: int, order: np.random.Generator) -> dict:
  """Each runner's wall times over ``rounds`` rounds.  Interleaved, so all see
  the same machine, in a random order each round (drawn from ``order``) so
  that none always runs right after another."""
  times = {k: [] for k in runners}
  for _ in range(rounds):
    for k in order.permutation(list(runners)):
      t = time.perf_counter()
      runners[k]()
      times[k].append(time.perf_counter() - t)
  return times


def measure(args) -> list[dict]:
  from hptransfer import perf
  from hptransfer.models import resolve_attention
  runners = {}
  t0 = time.perf_counter()
  step, flops, n_params = jax_step(args)
  jax.block_until_ready(step())
  compile_s = {"jax": time.perf_counter() - t0}
  runners["jax"] = lambda: jax.block_until_ready(step())
  if args.torch and not args.vmap:
    t0 = time.perf_counter()
    tstep = torch_step(args)
    tstep()
    compile_s["torch"] = time.perf_counter() - t0
    runners["torch"] = tstep
  for run in runners.values():        # warm-up
    for _ in range(args.warmup):
      run()
  times = interleaved(runners, args.steps, np.random.default_rng(0))
  out = []
  K = max(args.vmap, 1)
  for k, ts in times.items():
    s = float(np.median(ts))
    row = {"framework": k, "model": "transformer", "width": args.width, "depth": args.depth,
           "batch": args.batch, "seq": args.seq, "vmap": args.vmap,
           "dtype": args.dtype if k == "jax" else _torch_dtype(args),
           "matmul_dtype": (args.matmul_dtype or args.dtype) if k == "jax" else _torch_dtype(args),
           "params": n_params, "tokens_per_s": K * args.batch * args.seq / s,
           "step_ms": 1e3 * s, "round_ms": [round(1e3 * t, 2) for t in ts],
           "compile_s": compile_s[k],
           "mfu": (flops / s / args.peak_flops) if args.peak_flops else None,
           "model_tflops_per_s": flops / s / 1e12, "peak_mem_mb": _peak_mem_mb(k),
           "head_dim": min(args.head_dim, args.width),
           "attention": resolve_attention(args.attention) if k == "jax" else "sdpa",
           "device": jax.devices()[0].device_kind, "jax": jax.__version__}
    if k == "jax" and "torch" in times:
      # Per-round ratio of tokens/s (torch step time over JAX step time): its
      # median and quartiles are robust to the machine's drift between rounds.
      r = np.asarray(times["torch"]) / np.asarray(ts)
      row["vs_torch"] = float(np.median(r))
      row["vs_torch_iqr"] = [float(np.percentile(r, 25)), float(np.percentile(r, 75))]
    if k == "jax" and args.grads_only:
      row["grads_only"] = True     # no optimizer update: not a training step
    if k == "jax" and jax.default_backend() == "cpu":
      row["cpu_dots"] = perf.cpu_dots(step.matmul_dtype)
    if k == "torch":
      import torch
      row["torch"] = torch.__version__
    out.append(row)
  return out


def matmul_ceiling(args) -> dict:
  """TFLOP/s of one large matmul in the benchmark's dtype: the machine's
  ceiling that MFU is read against."""
  n = 8192 if jax.default_backend() == "gpu" else 2048
  dt = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dt)
  b = jax.random.normal(kb, (n, n), dt)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  ts = []
  for _ in range(10):
    t = time.perf_counter()
    jax.block_until_ready(f(a, b))
    ts.append(time.perf_counter() - t)
  s = float(np.median(ts))
  return {"matmul": n, "dtype": args.dtype, "tflops_per_s": 2 * n ** 3 / s / 1e12,
          "device": jax.devices()[0].device_kind, "jax": jax.__version__}


def _ratio(r) -> str:
  if "vs_torch" not in r:
    return ""
  lo, hi = r["vs_torch_iqr"]
  return f"{r['vs_torch']:.2f} [{lo:.2f}, {hi:.2f}]"


def markdown(rows) -> str:
  md = ["| framework | width | depth | head dim | batch×seq | vmap | attention | matmuls | "
        "tokens/s | step ms | compile s | MFU | peak MiB | JAX / torch [IQR] |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    mfu = "" if r["mfu"] is None else f"{r['mfu']:.1%}"
    md.append(f"| {r['framework']} | {r['width']} | {r['depth']} | {r['head_dim']} | "
              f"{r['batch']}×{r['seq']} | {r['vmap'] or ''} | {r['attention']} | "
              f"{r.get('matmul_dtype', r['dtype'])} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.2f} | {r['compile_s']:.1f} | {mfu} | "
              f"{r['peak_mem_mb']:,.0f} | {_ratio(r)} |")
  return "\n".join(md)


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="transformer", choices=["transformer"])
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--depth", type=int, default=4)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--vmap", type=int, default=0)
  ap.add_argument("--grads_only", action="store_true",
                  help="JAX: time the loss and gradients without the optimizer update "
                  "(a diagnostic of the update's share; not with --vmap)")
  ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
  ap.add_argument("--matmul_dtype", default="", choices=["", "bf16"],
                  help="bf16: the JAX model's dense-layer operands in bf16 with f32 "
                  "accumulation, activations in --dtype (model.matmul_dtype)")
  ap.add_argument("--torch_dtype", default="", choices=["", "fp32", "bf16"],
                  help="torch's autocast dtype; default: bf16 when the JAX matmuls are")
  ap.add_argument("--attention", default="auto", choices=["auto", "xla", "blocked", "cudnn"])
  ap.add_argument("--torch", action="store_true")
  ap.add_argument("--torch_mode", default="",
                  help="torch.compile mode (default: reduce-overhead on CUDA, default on CPU)")
  ap.add_argument("--peak_flops", type=float, default=0.0)
  ap.add_argument("--ceiling", action="store_true", help="also time one large matmul")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--table", nargs="?", const="cpu", default="", choices=["", *TABLES],
                  help="run the shapes of TABLES[name] (default cpu)")
  ap.add_argument("--out", default="", help="table mode: write OUT.json and OUT.md")
  return ap


def step_args(**overrides) -> argparse.Namespace:
  """This script's flags at their defaults, with ``overrides``: what
  ``jax_step`` and ``torch_step`` read, for the scripts and tests that build
  the same steps (ab_step.py, profile_step.py)."""
  args = parser().parse_args([])
  vars(args).update(overrides)
  return args


def main():
  ap = parser()
  args = ap.parse_args()
  if args.grads_only and args.vmap:
    ap.error("--grads_only times one trial's loss and gradients; drop --vmap")
  rows = []
  if args.ceiling:
    print(json.dumps(matmul_ceiling(args)), flush=True)
  shapes = TABLES[args.table] if args.table else [{}]
  base = vars(args).copy()
  for shape in shapes:
    run_args = argparse.Namespace(**{**base, **shape})
    run_args.torch = base["torch"] and shape.get("torch", True)
    try:
      measured = measure(run_args)
    except Exception as e:  # noqa: BLE001 - a table keeps the rows that ran
      if not args.table:
        raise
      print(json.dumps({"error": f"{type(e).__name__}: {str(e)[:500]}", **shape}), flush=True)
      continue
    for r in measured:
      print(json.dumps(r), flush=True)
      rows.append(r)
      if args.out:        # rewrite after every row: a killed run keeps what it measured
        with open(args.out + ".json", "w") as f:
          json.dump(rows, f, indent=1)
  if args.table:
    md = markdown(rows)
    print(md)
    if args.out:
      with open(args.out + ".md", "w") as f:
        f.write(md + "\n")


if __name__ == "__main__":
  main()
