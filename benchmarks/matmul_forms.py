"""The three matmul forms of a Dense layer's training step, JAX against torch.

    python benchmarks/matmul_forms.py [--tokens 2048] [--width 256] [--rounds 40] [--split3]

A Dense layer with input x [tokens, d_in] and weight w [d_in, d_out] runs three
matmuls per training step: the forward ``x @ w`` (NN), the input gradient
``dy @ w.T`` (NT) and the weight gradient ``x.T @ dy`` (TN, contracting the
token dimension).  This times each form at the Transformer's four Dense shapes
(qkv-sized d -> 3d, the output projection d -> d, the MLP's d -> 4d and
4d -> d), in JAX with the step's compiler options (``hptransfer.train``) and,
if torch is installed, in torch eager (its matmuls are what torch.compile
calls), and in numpy (its BLAS), interleaved in a random order each round.
Prints one JSON line per shape and form with the median milliseconds and
GFLOP/s, and the medians of the per-round JAX / torch and JAX / numpy time
ratios.

Why: at width 256 the whole step's matmuls take 217-230 ms in JAX against
187-192 ms in torch (docs/performance.md); this says which form holds the gap.

``--split3`` times instead, for the forward form, float32 emulated by three
bf16 products (each operand split into a bf16 high and low part;
``hi.hi + hi.lo + lo.hi`` accumulated in float32) and one bf16 product,
against the float32 product, all in JAX, each with its error against a
float64 product (as a fraction of the output's largest magnitude).  Measured
on the 2-core VM: the three products are slower than the one float32 product,
so this is not a way to near-float32 speed (docs/performance.md, fifth pass).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import train_step  # noqa: E402
from hptransfer import train as train_lib  # noqa: E402

FORMS = {
    "NN (forward)": lambda x, w, dy: (x, w),
    "NT (input grad)": lambda x, w, dy: (dy, w.T),
    "TN (weight grad)": lambda x, w, dy: (x.T, dy),
}


def _bf16(a):
  return a.astype(jnp.bfloat16)


def _split3(a, b):
  """a @ b by three bf16 products: (a_hi + a_lo)(b_hi + b_lo) less lo.lo."""
  ah, bh = _bf16(a), _bf16(b)
  al, bl = _bf16(a - ah.astype(a.dtype)), _bf16(b - bh.astype(b.dtype))
  mm = lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32)
  return mm(ah, bh) + (mm(ah, bl) + mm(al, bh))


def split3(args):
  """float32 against three bf16 products against one, forward form, JAX only."""
  d, n = args.width, args.tokens
  rng, order = np.random.default_rng(0), np.random.default_rng(1)
  variants = {
      # float32 with the step's dots (Eigen); the bf16 ones need YNNPACK's
      # (Eigen has no bf16 kernels), as a bf16-matmul step compiles with.
      "float32": (lambda a, b: a @ b, train_lib.compiler_options()),
      "bf16x3": (_split3, train_lib.compiler_options("bfloat16")),
      "bf16x1": (lambda a, b: jnp.dot(_bf16(a), _bf16(b), preferred_element_type=jnp.float32),
                 train_lib.compiler_options("bfloat16")),
  }
  for d_in, d_out in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)):
    a = rng.standard_normal((n, d_in), dtype=np.float32)
    b = rng.standard_normal((d_in, d_out), dtype=np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    runners, errors = {}, {}
    for k, (f, opts) in variants.items():
      fn = jax.jit(f, compiler_options=opts)
      errors[k] = float(np.abs(np.asarray(fn(aj, bj), np.float64) - ref).max() / np.abs(ref).max())
      runners[k] = lambda fn=fn: fn(aj, bj).block_until_ready()
      for _ in range(3):
        runners[k]()
    times = train_step.interleaved(runners, args.rounds, order)
    row = {"shape": f"{n}x{d_in} @ {d_in}x{d_out}", "form": "NN (forward)"}
    for k, ts in times.items():
      row[f"{k}_ms"] = round(1e3 * float(np.median(ts)), 3)
      row[f"{k}_error"] = float(f"{errors[k]:.2g}")
    r = np.asarray(times["bf16x3"]) / np.asarray(times["float32"])
    row["bf16x3_over_float32"] = round(float(np.median(r)), 3)
    print(json.dumps(row), flush=True)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--tokens", type=int, default=2048)
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--rounds", type=int, default=40)
  ap.add_argument("--split3", action="store_true",
                  help="float32 against three bf16 products (forward form, JAX only)")
  args = ap.parse_args(argv)
  if args.split3:
    split3(args)
    print(json.dumps({"device": jax.devices()[0].device_kind, "jax": jax.__version__}))
    return
  d, n = args.width, args.tokens
  try:
    import torch   # its default thread count, as in benchmarks/train_step.py
  except ImportError:
    torch = None
  rng = np.random.default_rng(0)
  order = np.random.default_rng(1)
  for d_in, d_out in ((d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)):
    x = rng.standard_normal((n, d_in), dtype=np.float32)
    w = rng.standard_normal((d_in, d_out), dtype=np.float32)
    dy = rng.standard_normal((n, d_out), dtype=np.float32)
    for form, pick in FORMS.items():
      runners = {}
      # JAX: the transpose inside the jitted function, as in a gradient.
      f = train_lib.jit_step(lambda x, w, dy, pick=pick: jnp.dot(*pick(x, w, dy)))
      xj, wj, dyj = map(jnp.asarray, (x, w, dy))
      f(xj, wj, dyj).block_until_ready()
      runners["jax"] = lambda f=f: f(xj, wj, dyj).block_until_ready()
      if torch is not None:
        xt, wt, dyt = map(torch.from_numpy, (x, w, dy))
        runners["torch"] = lambda xt=xt, wt=wt, dyt=dyt, pick=pick: torch.mm(*pick(xt, wt, dyt))
      # numpy's BLAS (OpenBLAS in numpy's wheels) on the same arrays.
      out = np.empty(np.dot(*pick(x, w, dy)).shape, np.float32)
      runners["numpy"] = lambda pick=pick, out=out: np.dot(*pick(x, w, dy), out=out)
      for run in runners.values():
        for _ in range(3):
          run()
      times = train_step.interleaved(runners, args.rounds, order)
      flops = 2 * n * d_in * d_out
      row = {"shape": f"{n}x{d_in} @ {d_in}x{d_out}", "form": form}
      for k, ts in times.items():
        s = float(np.median(ts))
        row[f"{k}_ms"] = round(1e3 * s, 3)
        row[f"{k}_gflops"] = round(flops / s / 1e9, 1)
      for k in ("torch", "numpy"):
        if k in times:
          r = np.asarray(times["jax"]) / np.asarray(times[k])
          row[f"jax_over_{k}"] = round(float(np.median(r)), 3)
      print(json.dumps(row), flush=True)
  print(json.dumps({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                    "torch": torch.__version__ if torch is not None else None,
                    "numpy": np.__version__,
                    "cpu_dots": train_lib.cpu_dots() if jax.default_backend() == "cpu"
                    else None}))


if __name__ == "__main__":
  main()
