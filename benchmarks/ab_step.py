"""A/B variants of the Transformer training step, interleaved in one process.

    python benchmarks/ab_step.py --variants same,rms_vjp,fused_qkv --rounds 60 \
        [--width 256 --depth 4 --batch 16 --seq 128] [--torch]

Builds ``benchmarks/train_step.py``'s JAX step once for the current code
(``base``) and once per named variant (the model patched while it is traced,
or other XLA options), then times them all in a random order each round.  For
each variant it prints one JSON line: the median step, and the median and
quartiles of the paired per-round ratio of ``base``'s time to the variant's
(above 1: the variant is faster), plus the ratio of the two 20th percentiles,
which ignores the slow outliers this VM's interference adds.  With
``--torch`` the torch.compile step runs in the same rounds and each line also
has the variant's ratio against it.

Only this VM's paired ratios are worth reading: one program's step times
ranged from 299 to 513 ms within one run (docs/performance.md, fifth pass).

Variants (none of them is in the library; each one was tried and measured):

- ``same``: the current step again (the harness's own noise),
- ``rms_vjp``: RMSNorm with a hand-written VJP,
- ``rms_plain``: RMSNorm as ``x * rsqrt(mean(x^2) + eps) * scale``,
- ``fused_qkv``: query, key and value as one [D, 3D] product,
- ``no_mults``: no per-leaf forward multipliers (a bound on folding them away;
  it changes the model unless every multiplier is 1),
- ``vw512``: ``xla_cpu_prefer_vector_width=512``,
- ``blas_callback``: every dense layer's three products in numpy's BLAS
  (OpenBLAS, as fast as torch's on these shapes) through ``jax.pure_callback``,
- ``blas_ffi``: the same products through an XLA FFI custom call into that
  BLAS (benchmarks/native/blas_gemm.cc, built with g++ on first use).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import train_step  # noqa: E402
from hptransfer import parameterization as P  # noqa: E402
from hptransfer import train as train_lib  # noqa: E402
from hptransfer.models import transformer as T  # noqa: E402


@contextlib.contextmanager
def _patched(obj, name, value):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


_EPS = 1e-6   # flax's RMSNorm default


def _rms(x, s):
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + _EPS) * s


@jax.custom_vjp
def _rms_vjp(x, s):
  return _rms(x, s)


def _rms_vjp_fwd(x, s):
  r = jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + _EPS)
  return x * r * s, (x, r, s)


def _rms_vjp_bwd(res, dy):
  x, r, s = res
  g = dy * s
  dx = r * g - x * (r * r * r) * jnp.mean(x * g, -1, keepdims=True)
  return dx, jnp.sum(dy * x * r, axis=tuple(range(x.ndim - 1)))


_rms_vjp.defvjp(_rms_vjp_fwd, _rms_vjp_bwd)


class _RMSNorm(nn.Module):
  custom_vjp: bool

  @nn.compact
  def __call__(self, x):
    s = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    return (_rms_vjp if self.custom_vjp else _rms)(x, s)


def _norm(custom_vjp):
  return _patched(T, "make_norm", lambda kind, use_bias, dtype, name:
                  _RMSNorm(custom_vjp, name=name))


class _Kernel(nn.Module):
  """Holds one projection's kernel under its usual name (attn/query/kernel...)."""
  features: int

  @nn.compact
  def __call__(self, d_in):
    return self.param("kernel", nn.initializers.lecun_normal(), (d_in, self.features))


class _FusedQKV(T.Attention):
  """The three projections as one product; for the benchmark's model only
  (no biases, no qk-norm, float32 matmuls)."""

  @nn.compact
  def __call__(self, x_MxD, T_, attn_scale):
    B, N, H = x_MxD.shape[0] // T_, self.width // self.head_dim, self.head_dim
    w = jnp.concatenate([_Kernel(self.width, name=n)(x_MxD.shape[-1])
                         for n in ("query", "key", "value")], axis=1)
    y = (x_MxD @ w).reshape(B, T_, 3, N, H)
    q, k, v = y[:, :, 0] * jnp.asarray(attn_scale, y.dtype), y[:, :, 1], y[:, :, 2]
    if self.attention == "blocked":
      o = T.blocked_causal_attention(q, k, v, self.attention_block)
    else:
      o = jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=True,
                                       implementation=self.attention)
    return T.dense(self.width, False, self.dtype, None, "out")(o.reshape(B * T_, N * H))


def _host_product(form):
  """One 2-D product of a dense layer's step in numpy, on the host."""
  fns = {"nn": lambda a, b: np.matmul(a, b), "nt": lambda a, b: np.matmul(a, b.T),
         "tn": lambda a, b: np.matmul(a.T, b)}
  shapes = {"nn": lambda a, b: (a.shape[0], b.shape[1]),
            "nt": lambda a, b: (a.shape[0], b.shape[0]),
            "tn": lambda a, b: (a.shape[1], b.shape[1])}

  def product(a, b):
    return jax.pure_callback(fns[form], jax.ShapeDtypeStruct(shapes[form](a, b), a.dtype), a, b,
                             vmap_method="sequential")
  return product


@jax.custom_vjp
def _blas_matmul(x, w):
  return _host_product("nn")(x, w)


_blas_matmul.defvjp(
    lambda x, w: (_host_product("nn")(x, w), (x, w)),
    lambda res, g: (_host_product("nt")(g, res[1]), _host_product("tn")(res[0], g)))


def _dense_through(matmul):
  """A stand-in for ``transformer.dense`` whose 2-D products x @ w go to
  ``matmul`` (any other contraction to XLA)."""
  def dot_general(x, w, dimension_numbers, precision=None, preferred_element_type=None):
    if x.ndim == 2 and w.ndim == 2 and dimension_numbers == (((1,), (0,)), ((), ())):
      return matmul(x, w)
    return jax.lax.dot_general(x, w, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)

  def dense(features, use_bias, dtype, matmul_dtype, name):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    dot_general=dot_general)
  return dense


_FFI_TARGET = "hptransfer_bench_blas_gemm"


def build_blas_ffi() -> None:
  """Compile benchmarks/native/blas_gemm.cc against jaxlib's FFI headers and
  numpy's OpenBLAS, and register it (once per process).  Raises RuntimeError
  naming what is missing (g++, or numpy's bundled OpenBLAS)."""
  import ctypes
  import glob
  import shutil
  import subprocess
  import tempfile
  if getattr(build_blas_ffi, "done", False):
    return
  libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                "libscipy_openblas64_*.so"))
  if not shutil.which("g++") or not libs:
    raise RuntimeError("blas_ffi needs g++ and numpy's bundled OpenBLAS "
                       "(numpy.libs/libscipy_openblas64_*.so from numpy's wheel)")
  src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "blas_gemm.cc")
  out = os.path.join(tempfile.mkdtemp(prefix="blas_ffi_"), "libblas_gemm.so")
  libdir = os.path.realpath(os.path.dirname(libs[0]))
  subprocess.run(["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
                  f"-I{jax.ffi.include_dir()}", src, "-o", out, f"-L{libdir}",
                  f"-l:{os.path.basename(libs[0])}", f"-Wl,-rpath,{libdir}"],
                 check=True, capture_output=True)
  lib = ctypes.cdll.LoadLibrary(out)
  jax.ffi.register_ffi_target(_FFI_TARGET, jax.ffi.pycapsule(lib.HptGemm), platform="cpu")
  build_blas_ffi.done = True


def _ffi_gemm(a, b, ta=False, tb=False):
  m, n = (a.shape[1] if ta else a.shape[0]), (b.shape[0] if tb else b.shape[1])
  return jax.ffi.ffi_call(_FFI_TARGET, jax.ShapeDtypeStruct((m, n), jnp.float32))(
      a, b, ta=np.bool_(ta), tb=np.bool_(tb))


@jax.custom_vjp
def _ffi_matmul(x, w):
  return _ffi_gemm(x, w)


_ffi_matmul.defvjp(lambda x, w: (_ffi_gemm(x, w), (x, w)),
                   lambda res, g: (_ffi_gemm(g, res[1], tb=True), _ffi_gemm(res[0], g, ta=True)))


@contextlib.contextmanager
def _blas_ffi():
  build_blas_ffi()
  with _patched(T, "dense", _dense_through(_ffi_matmul)):
    yield


# name -> (patch while tracing or None, extra XLA options or None)
VARIANTS = {
    "same": (None, None),
    "rms_vjp": (lambda: _norm(True), None),
    "rms_plain": (lambda: _norm(False), None),
    "fused_qkv": (lambda: _patched(T, "Attention", _FusedQKV), None),
    "no_mults": (lambda: _patched(P, "apply_forward_mults", lambda p, m: p), None),
    "vw512": (None, {"xla_cpu_prefer_vector_width": 512}),
    "blas_callback": (lambda: _patched(T, "dense", _dense_through(_blas_matmul)), None),
    "blas_ffi": (_blas_ffi, None),
}


def build(args, patch=None, options=None):
  """A zero-argument runner of one compiled step of this variant."""
  with (patch() if patch else contextlib.nullcontext()):
    step, _, _ = train_step.jax_step(args)
    opts = dict(train_lib.compiler_options(step.matmul_dtype), **(options or {}))
    fn = step.fn.lower(step.holder["s"], step.consts, step.batch).compile(
        compiler_options=opts)
  holder = step.holder

  def run():
    holder["s"], out = fn(holder["s"], step.consts, step.batch)
    jax.block_until_ready(out)
  return run


def _ratio(num, den):
  r = np.asarray(num) / np.asarray(den)
  return {"median": round(float(np.median(r)), 3),
          "iqr": [round(float(np.percentile(r, q)), 3) for q in (25, 75)],
          "p20": round(float(np.percentile(num, 20) / np.percentile(den, 20)), 3)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variants", default="same",
                  help=f"comma-separated, of: {', '.join(VARIANTS)}")
  ap.add_argument("--rounds", type=int, default=60)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--depth", type=int, default=4)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--torch", action="store_true")
  args = ap.parse_args(argv)
  names = [v for v in args.variants.split(",") if v]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    ap.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
  step_args = train_step.step_args(width=args.width, depth=args.depth, batch=args.batch,
                                   seq=args.seq, head_dim=args.head_dim)
  runners = {"base": build(step_args)}
  for name in names:
    runners[name] = build(step_args, *VARIANTS[name])
  if args.torch:
    runners["torch"] = train_step.torch_step(step_args)
  for run in runners.values():
    for _ in range(args.warmup):
      run()
  times = train_step.interleaved(runners, args.rounds, np.random.default_rng(0))
  for k, ts in times.items():
    row = {"variant": k, "step_ms": round(1e3 * float(np.median(ts)), 1)}
    if k not in ("base", "torch"):
      row["speedup_over_base"] = _ratio(times["base"], ts)
    if "torch" in times and k != "torch":
      row["vs_torch"] = _ratio(times["torch"], ts)
    print(json.dumps(row), flush=True)
  print(json.dumps({"rounds": args.rounds, "device": jax.devices()[0].device_kind,
                    "jax": jax.__version__, "cpu_dots": train_lib.cpu_dots()
                    if jax.default_backend() == "cpu" else None}))


if __name__ == "__main__":
  main()
