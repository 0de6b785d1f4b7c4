"""Matmuls with bfloat16 operands and float32 accumulation (``model.matmul_dtype``).

``model.matmul_dtype = "bfloat16"`` rounds the two operands of every dense
layer's product (``matmul``) and of the attention core's two products
(``attention``) to bfloat16 and accumulates in float32.  In the backward pass
the incoming gradient is rounded to bfloat16 too, so the gradient products
are bf16 x bf16 -> f32 as well.  Activations, norms, nonlinearities, the
softmax and the loss stay in the compute dtype (float32 by default).  This is
the matmul precision of PyTorch's bf16 autocast, with float32 everywhere else.

Why a module of its own: on x86 CPUs with AMX or AVX512-BF16 (Intel Sapphire
Rapids and later; the 2-core development VM has both), XLA:CPU runs
bf16 x bf16 -> f32 products through YNNPACK 4-7x faster than float32 ones;
the Transformer step gets 1.7x faster (docs/performance.md).  XLA keeps a
product in bf16 only when its left operand contracts its minor dimension.  A
weight gradient ``x.T @ g`` contracts the token dimension, the major one of
both operands; XLA then casts both operands back to float32 and runs the
product in float32, and an explicit transpose does not help (XLA folds it
into the product, or picks a layout that undoes it).  So ``weight_grad``
transposes the narrower operand by an NT product with the identity, which is
exact for bfloat16 values (every output is one product by 1.0 plus zeros),
costs ``2 k^2 m`` flops for an [m, k] operand, and leaves XLA a product it
runs in bfloat16.

On a GPU, bf16 products with float32 accumulation are what XLA does for any
bf16 matmul; there this option only changes where activations are rounded.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def _dot(a, b, contract_a: int, contract_b: int):
  """One contraction, no batch dimensions, accumulated and returned in f32."""
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                         preferred_element_type=F32)


def transpose_by_identity(x_MxK):
  """[m, k] -> [k, m] as the product I_k . x^T (an NT product): exact for
  bfloat16 and float32 values, and a product XLA:CPU keeps in bfloat16."""
  eye = jnp.eye(x_MxK.shape[1], dtype=x_MxK.dtype)
  return _dot(eye, x_MxK, 1, 1).astype(x_MxK.dtype)


def weight_grad(x_MxK, g_MxN):
  """x^T g ([k, n]) with both operands bf16, never contracting a major dim."""
  if x_MxK.shape[1] <= g_MxN.shape[1]:
    return _dot(transpose_by_identity(x_MxK), g_MxN, 1, 0)
  # Transpose the narrower operand; the barrier keeps XLA from folding the
  # final transpose into the product (which would contract a major dim again).
  return lax.optimization_barrier(_dot(transpose_by_identity(g_MxN), x_MxK, 1, 0)).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x, w_KxN, dtype):
  """x [..., k] @ w [k, n] with operands rounded to ``dtype``, accumulated in
  float32 and returned in x's dtype; gradients in the primals' dtypes."""
  return _dot(x.astype(dtype), w_KxN.astype(dtype), x.ndim - 1, 0).astype(x.dtype)


def _matmul_fwd(x, w_KxN, dtype):
  # Zero-size arrays carry the primal dtypes to the backward pass (a custom
  # VJP's residuals must be arrays).
  tags = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), w_KxN.dtype))
  xc, wc = x.astype(dtype), w_KxN.astype(dtype)
  return _dot(xc, wc, x.ndim - 1, 0).astype(x.dtype), (xc, wc, tags)


def _matmul_bwd(dtype, res, g):
  x, w_KxN, (x_tag, w_tag) = res
  g = g.astype(dtype)
  dx = _dot(g, w_KxN, g.ndim - 1, 1)                     # NT: g @ w^T
  dw = weight_grad(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
  return dx.astype(x_tag.dtype), dw.astype(w_tag.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@functools.lru_cache(maxsize=None)
def dense_dot_general(dtype):
  """A ``dot_general`` for ``flax.linen.Dense(dot_general=...)``: a dense
  layer's product goes through ``matmul``; any other contraction is passed on
  unchanged."""
  def dot_general(x, w, dimension_numbers, precision=None, preferred_element_type=None):
    if dimension_numbers == (((x.ndim - 1,), (0,)), ((), ())) and w.ndim == 2:
      return matmul(x, w, dtype)
    return lax.dot_general(x, w, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  return dot_general


def _attention_fwd_core(q, k, v, mask_TxS, dtype):
  logits_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=F32)
  if mask_TxS is not None:
    logits_BxNxTxS = jnp.where(mask_TxS, logits_BxNxTxS, jnp.finfo(F32).min)
  p_BxNxTxS = jax.nn.softmax(logits_BxNxTxS, axis=-1)
  o_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", p_BxNxTxS.astype(dtype), v,
                         preferred_element_type=F32)
  return o_BxTxNxH, p_BxNxTxS


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, mask_TxS, dtype):
  """softmax(q k^T) v with the two products' operands rounded to ``dtype``
  and float32 accumulation and softmax; the logit scale must already be in q.
  ``mask_TxS`` (bool, or None) marks the keys each query may see.  Returns
  q's dtype.  The backward is written out so that its four products get
  bf16 operands too (autodiff would hand them float32 cotangents).  Two of
  them, dk = ds^T q and dv = p^T g, contract the query axis, a major one; at
  the attention's shapes XLA lays those operands out itself and keeps the
  products in bf16 (tests/test_lowp.py checks the compiled step).  Writing
  them through identity transposes, as ``weight_grad`` must, was 4% slower."""
  o, _ = _attention_fwd_core(q_BxTxNxH.astype(dtype), k_BxSxNxH.astype(dtype),
                             v_BxSxNxH.astype(dtype), mask_TxS, dtype)
  return o.astype(q_BxTxNxH.dtype)


def _attention_fwd(q, k, v, mask_TxS, dtype):
  qc, kc, vc = q.astype(dtype), k.astype(dtype), v.astype(dtype)
  o, p = _attention_fwd_core(qc, kc, vc, mask_TxS, dtype)
  tags = tuple(jnp.zeros((0,), x.dtype) for x in (q, k, v))
  return o.astype(q.dtype), (qc, kc, vc, p, mask_TxS, tags)


def _attention_bwd(dtype, res, do_BxTxNxH):
  q, k, v, p_BxNxTxS, mask_TxS, tags = res
  g = do_BxTxNxH.astype(dtype)
  dp = jnp.einsum("btnh,bsnh->bnts", g, v, preferred_element_type=F32)
  ds = p_BxNxTxS * (dp - jnp.sum(dp * p_BxNxTxS, axis=-1, keepdims=True))
  ds = ds.astype(dtype)
  dq = jnp.einsum("bnts,bsnh->btnh", ds, k, preferred_element_type=F32)
  dk = jnp.einsum("bnts,btnh->bsnh", ds, q, preferred_element_type=F32)
  dv = jnp.einsum("bnts,btnh->bsnh", p_BxNxTxS.astype(dtype), g, preferred_element_type=F32)
  dmask = None if mask_TxS is None else jnp.zeros(mask_TxS.shape, jax.dtypes.float0)
  return (dq.astype(tags[0].dtype), dk.astype(tags[1].dtype), dv.astype(tags[2].dtype), dmask)


attention.defvjp(_attention_fwd, _attention_bwd)
