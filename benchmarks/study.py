"""A proxy study's wall clock: hptransfer's sweep against the PyTorch loop it replaces.

    pip install -r requirements-bench.txt && pip install --no-deps mup==1.0.0
    python benchmarks/study.py [--widths 128] [--lrs 8] [--steps 200] [--repeats 3] \
        [--arms hptransfer,hptransfer_bf16,torch_eager,torch_compile] \
        [--out docs/perf/study_cpu]

The study is one group of ``configs/sweeps/width_transformer.py`` per width:
SP and muP x ``--lrs`` learning rates (2^-11 .. 2^-4 for 8) at each of
``--widths`` (several widths: several groups, whose compiles the sweep hides
behind the previous group's training; depth 2, head
dim 16, batch 8 x 64 bytes, Adam, 200 steps, eval of 8 batches every 100
steps, the loss fetched every 10).  Each *arm* trains every trial of it, in a
fresh Python process of its own, with no compilation cache:

- ``hptransfer``: ``hptransfer.sweep.run`` on the trials, as a user runs it
  (one vmapped or mapped group, guarded steps, orbax checkpoints every 50
  steps, results and curves written);
- ``hptransfer_bf16``: the same with ``model.matmul_dtype=bfloat16``;
- ``hptransfer_no_ckpt`` (not run by default): the float32 arm with no
  checkpoint before the end (``train.checkpoint_every`` = the run length),
  to see what the checkpoints cost, written by orbax on its own threads
  beside the training;
- ``torch_eager``: microsoft/mup on a PyTorch GPT of the same shape (pre-norm,
  RMSNorm, tanh-GELU MLP, separate q/k/v, learned positions, untied readout),
  one trial after another: ``MuReadout`` + ``set_base_shapes`` (base width
  ``parameterization.base_width``) + ``MuAdam`` for muP, ``nn.Linear`` + Adam
  for SP; the same batches (written by this script from hptransfer's task),
  the same evals and loss fetches; no checkpoints (they would only cost
  torch time).  A trial whose loss is non-finite or above 3x its first stops
  there, as a user's loop would (hptransfer keeps computing a frozen trial,
  so this favours torch);
- ``torch_compile``: the same with the model under ``torch.compile``.

Each arm reports its ``wall_s`` (the study call, after imports; imports are
``import_s``), split into a *per-step* part (the training steps' own time:
the steady-state step time x steps, for every trial) and a *fixed* part (the
rest: building, compiling, initialising, evals, checkpoints, writing rows).
hptransfer's arm also reports its groups' compile seconds, hidden behind
training and exposed (``hptransfer.sweep``'s per-group ``timing``).

The arms of one repeat run back to back, in an order rotated every repeat
(the machine drifts by +-15% between minutes).  The ratios (torch wall /
hptransfer wall) are formed within a repeat; the summary gives their median,
min and max.  ``--out`` writes OUT.json (every row, the machine, versions,
command) and OUT.md (the table).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("hptransfer", "hptransfer_bf16", "torch_eager", "torch_compile", "hptransfer_no_ckpt")
DEFAULT_ARMS = ARMS[:4]


# ----------------------------------------------------------------------------
# The study: one group of the width sweep.


def study_config(args):
  sys.path.insert(0, ROOT)
  from configs.sweeps import width_transformer
  cfg = width_transformer.get_config()
  cfg.model.width = widths(args)[0]
  cfg.train.steps = args.steps
  cfg.train.eval_every = min(cfg.train.eval_every, args.steps)
  cfg.train.checkpoint_every = min(cfg.train.checkpoint_every, args.steps)
  return cfg


def study_lrs(n: int):
  import numpy as np
  return [float(x) for x in 2.0 ** np.linspace(-11, -4, n)] if n > 1 else [2.0 ** -7]


def widths(args) -> list[int]:
  return [int(w) for w in str(args.widths).split(",") if w]


def study_grid(args):
  from hptransfer.sweep import product, sweep
  return product(sweep("model.width", widths(args)),
                 sweep("parameterization.name", ["sp", "mup"]),
                 sweep("optimizer.lr", study_lrs(args.lrs)))


def write_batches(args, path: str) -> None:
  """The study's train and eval batches, from hptransfer's own task, for the
  torch arms (so every arm sees the same bytes)."""
  import numpy as np
  from hptransfer import build as build_lib
  cfg = study_config(args)
  task = build_lib.build(cfg).task
  B = cfg.train.batch_size
  train = np.stack([np.asarray(task.batch(cfg.data.seed, s, B)) for s in range(cfg.train.steps)])
  val = np.stack([np.asarray(task.batch(cfg.data.seed, i, B, "val"))
                  for i in range(cfg.train.eval_batches)])
  np.savez(path, train=train, val=val)


# ----------------------------------------------------------------------------
# Arms (each in its own process).


def arm_hptransfer(args, bf16: bool, checkpoints: bool = True) -> dict:
  import jax
  jax.config.update("jax_enable_compilation_cache", False)
  from hptransfer import sweep as sweep_lib
  cfg = study_config(args)
  if bf16:
    cfg.model.matmul_dtype = "bfloat16"
  if not checkpoints:
    cfg.train.checkpoint_every = cfg.train.steps
  workdir = tempfile.mkdtemp(prefix="study_")
  t0 = time.perf_counter()
  rows = sweep_lib.run(cfg, study_grid(args), workdir, progress=False, log=lambda *a: None,
                       trial_loop=args.trial_loop)
  wall = time.perf_counter() - t0
  timings = {}
  for r in rows:
    timings.setdefault(r["group_id"], r["timing"])
  per_step = sum(t["step_s"] for t in timings.values()) * args.steps
  return {"wall_s": wall, "per_step_s": per_step, "fixed_s": wall - per_step,
          "trials": len(rows), "diverged": sum(r["diverged"] for r in rows),
          "groups": list(timings.values()), "trial_loop": rows[0]["trial_loop"],
          "device": jax.devices()[0].device_kind, "jax": jax.__version__,
          "best_final_eval_loss": min((r["final_eval_loss"] for r in rows
                                       if r["final_eval_loss"] is not None), default=None)}


def torch_gpt(cfg, width: int, mup: bool):
  """A GPT of the hptransfer Transformer's shape; ``mup``: microsoft/mup's
  ``MuReadout`` readout (its base shapes are set by the caller)."""
  import torch
  from torch import nn
  import mup as mup_lib
  W, L, T, V = width, cfg.model.depth, cfg.data.seq_len, 256
  H = cfg.model.head_dim
  F = int(cfg.model.mlp_ratio * W)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.n1, self.n2 = nn.RMSNorm(W), nn.RMSNorm(W)
      self.q, self.k, self.v = (nn.Linear(W, W, bias=False) for _ in range(3))
      self.out = nn.Linear(W, W, bias=False)
      self.fc_in, self.fc_out = nn.Linear(W, F, bias=False), nn.Linear(F, W, bias=False)

    def forward(self, x):
      B = x.shape[0]
      h = self.n1(x)
      q, k, v = (f(h).view(B, T, W // H, H).transpose(1, 2) for f in (self.q, self.k, self.v))
      # The head dim is fixed across widths, so muP's 1/d and SP's 1/sqrt(d)
      # differ by a constant: both use 1/sqrt(d) (hptransfer's base_head_dim rule).
      a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.out(a.transpose(1, 2).reshape(B, T, W))
      return x + self.fc_out(nn.functional.gelu(self.fc_in(self.n2(x)), approximate="tanh"))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.tok, self.pos = nn.Embedding(V, W), nn.Embedding(T, W)
      self.blocks = nn.ModuleList(Block() for _ in range(L))
      self.norm = nn.RMSNorm(W)
      self.readout = (mup_lib.MuReadout(W, V, bias=False) if mup
                      else nn.Linear(W, V, bias=False))

    def forward(self, idx):
      x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
      for b in self.blocks:
        x = b(x)
      return self.readout(self.norm(x))

  return GPT()


def arm_torch(args, compiled: bool) -> dict:
  import numpy as np
  import torch
  from torch import nn
  import mup as mup_lib
  cfg = study_config(args)
  data = np.load(args.batches)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  train = torch.as_tensor(data["train"], dtype=torch.long, device=dev)
  val = torch.as_tensor(data["val"], dtype=torch.long, device=dev)
  V = 256
  steps = cfg.train.steps
  base_w = cfg.parameterization.base_width
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

  def ce(model, batch):
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.float().reshape(-1, V), batch[:, 1:].reshape(-1))

  t0 = time.perf_counter()
  step_times, stopped, best_eval, trials = [], 0, float("inf"), 0
  for W, param, lr in [(w, p, lr) for w in widths(args) for p in ("sp", "mup")
                       for lr in study_lrs(args.lrs)]:
    if True:
      trials += 1
      torch.manual_seed(cfg.seed)
      model = torch_gpt(cfg, W, param == "mup")
      if param == "mup":
        mup_lib.set_base_shapes(model, torch_gpt(cfg, base_w, True),
                                delta=torch_gpt(cfg, 2 * base_w, True))
        opt = mup_lib.MuAdam(model.parameters(), lr=lr, betas=(cfg.optimizer.b1, cfg.optimizer.b2),
                             eps=cfg.optimizer.eps)
      else:
        opt = torch.optim.Adam(model.parameters(), lr=lr,
                               betas=(cfg.optimizer.b1, cfg.optimizer.b2), eps=cfg.optimizer.eps)
      model.to(dev)
      run = torch.compile(model) if compiled else model
      loss0 = None
      times = []
      for s in range(steps):
        ts = time.perf_counter()
        loss = ce(run, train[s])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = s + 1
        if done % cfg.train.log_every == 0 or done == steps or s == 0:
          value = loss.item()              # the loss fetch a user's logger makes
          loss0 = value if loss0 is None else loss0
          if not np.isfinite(value) or value > cfg.train.divergence_mult * loss0:
            stopped += 1
            break
        else:
          sync()
        times.append(time.perf_counter() - ts)
        if done % cfg.train.eval_every == 0 or done == steps:
          with torch.no_grad():
            ev = float(np.mean([ce(run, val[i]).item() for i in range(len(val))]))
          if done == steps:
            best_eval = min(best_eval, ev)
      step_times.append(times)
  wall = time.perf_counter() - t0
  # Per-step part: each trial's median step time x the steps it trained (its
  # first steps, which include torch.compile's compiling, are fixed cost).
  per_step = sum(float(np.median(t[2:] or t)) * len(t) for t in step_times if t)
  return {"wall_s": wall, "per_step_s": per_step, "fixed_s": wall - per_step,
          "trials": trials, "diverged": stopped, "device": dev, "torch": torch.__version__,
          "mup": getattr(mup_lib, "__version__", "") or _dist_version("mup"),
          "threads": torch.get_num_threads(), "best_final_eval_loss": best_eval}


def _dist_version(name: str) -> str:
  from importlib import metadata
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return ""


def child(args) -> dict:
  t0 = time.perf_counter()
  if args.child.startswith("torch"):
    import torch  # noqa: F401
    import mup  # noqa: F401
  else:
    import jax  # noqa: F401
    import hptransfer.sweep  # noqa: F401
  import_s = time.perf_counter() - t0
  if args.child == "hptransfer":
    out = arm_hptransfer(args, False)
  elif args.child == "hptransfer_bf16":
    out = arm_hptransfer(args, True)
  elif args.child == "hptransfer_no_ckpt":
    out = arm_hptransfer(args, False, checkpoints=False)
  elif args.child == "torch_eager":
    out = arm_torch(args, False)
  elif args.child == "torch_compile":
    out = arm_torch(args, True)
  else:
    raise SystemExit(f"--child {args.child!r} is not one of {', '.join(ARMS)}")
  return {"arm": args.child, "import_s": import_s, **out}


# ----------------------------------------------------------------------------
# The parent: arms in rotated order, ratios within a repeat.


def machine() -> dict:
  import numpy as np  # noqa: F401
  cpu = ""
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  except OSError:
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "platform": platform.platform()}


def summarize(rows: list[dict], arms: list[str]) -> dict:
  import numpy as np
  out = {}
  for a in arms:
    rs = [r for r in rows if r["arm"] == a]
    if rs:
      out[a] = {k: float(np.median([r[k] for r in rs])) for k in ("wall_s", "fixed_s",
                                                                   "per_step_s")}
  ratios = {}
  for num in ("torch_eager", "torch_compile"):
    for den in [a for a in arms if a.startswith("hptransfer")]:
      per_rep = []
      for rep in sorted({r["repeat"] for r in rows}):
        a = [r for r in rows if r["repeat"] == rep and r["arm"] == num]
        b = [r for r in rows if r["repeat"] == rep and r["arm"] == den]
        if a and b:
          per_rep.append(a[0]["wall_s"] / b[0]["wall_s"])
      if per_rep:
        ratios[f"{num}/{den}"] = {"median": float(np.median(per_rep)),
                                  "min": float(min(per_rep)), "max": float(max(per_rep)),
                                  "repeats": per_rep}
  return {"arms": out, "ratios": ratios}


def markdown(summary: dict, steps: int) -> str:
  md = ["| arm | wall s | fixed s | s per 100 steps |", "| --- | --- | --- | --- |"]
  for a, s in summary["arms"].items():
    md.append(f"| {a} | {s['wall_s']:.1f} | {s['fixed_s']:.1f} | "
              f"{100 * s['per_step_s'] / steps:.1f} |")
  md += ["", "| ratio (wall) | median | min | max |", "| --- | --- | --- | --- |"]
  for k, r in summary["ratios"].items():
    md.append(f"| {k} | {r['median']:.2f} | {r['min']:.2f} | {r['max']:.2f} |")
  return "\n".join(md)


def parser():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--widths", default="128", help="comma-separated model widths")
  ap.add_argument("--lrs", type=int, default=8, help="learning rates per parameterization "
                  "(the group has 2 x LRS trials)")
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                  help=f"comma-separated, of {', '.join(ARMS)}")
  ap.add_argument("--trial_loop", default="auto", choices=["auto", "vmap", "map"])
  ap.add_argument("--out", default="", help="write OUT.json and OUT.md")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  ap.add_argument("--batches", default="", help=argparse.SUPPRESS)
  return ap


def main():
  ap = parser()
  args = ap.parse_args()
  if args.child:
    print(json.dumps(child(args)), flush=True)
    return
  arms = [a for a in args.arms.split(",") if a]
  bad = [a for a in arms if a not in ARMS]
  if bad:
    ap.error(f"--arms: {', '.join(bad)} not one of {', '.join(ARMS)}")
  if not widths(args) or min(widths(args)) < 16 or any(w % 16 for w in widths(args)):
    ap.error(f"--widths={args.widths}: give multiples of the head dim 16, e.g. 128,256")
  for name in ("lrs", "steps", "repeats"):
    if getattr(args, name) < 1:
      ap.error(f"--{name}={getattr(args, name)} must be >= 1")
  sys.path.insert(0, ROOT)
  tmp = tempfile.mkdtemp(prefix="study_")
  batches = os.path.join(tmp, "batches.npz")
  write_batches(args, batches)
  rows = []
  for rep in range(args.repeats):
    order = arms[rep % len(arms):] + arms[:rep % len(arms)]
    for arm in order:
      cmd = [sys.executable, os.path.abspath(__file__), "--child", arm, "--batches", batches,
             "--widths", args.widths, "--lrs", str(args.lrs), "--steps", str(args.steps),
             "--trial_loop", args.trial_loop]
      res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
      if res.returncode:
        print(json.dumps({"arm": arm, "repeat": rep, "error": res.stderr[-2000:]}), flush=True)
        continue
      row = {**json.loads(res.stdout.strip().splitlines()[-1]), "repeat": rep}
      print(json.dumps(row), flush=True)
      rows.append(row)
      if args.out:                    # a killed run keeps what it measured
        _write(args, rows, arms)
  summary = _write(args, rows, arms)
  print(markdown(summary, args.steps))


def _write(args, rows, arms) -> dict:
  summary = summarize(rows, arms)
  if args.out:
    doc = {"command": "python benchmarks/study.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "settings": {k: getattr(args, k) for k in ("widths", "lrs", "steps", "repeats",
                                                      "trial_loop")},
           "summary": summary, "rows": rows}
    with open(args.out + ".json", "w") as f:
      json.dump(doc, f, indent=1)
    with open(args.out + ".md", "w") as f:
      f.write(markdown(summary, args.steps) + "\n")
  return summary


if __name__ == "__main__":
  main()
