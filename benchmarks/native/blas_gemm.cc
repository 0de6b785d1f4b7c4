// One float32 GEMM as an XLA FFI handler, calling numpy's bundled OpenBLAS.
//
// For benchmarks/ab_step.py's `blas_ffi` variant only: it asks whether the
// float32 step gets faster when its dense products go to a BLAS that is
// faster than XLA:CPU's Eigen dots on the products alone.  It does not (the
// step ran at 0.79x; docs/performance.md, fifth pass).  ab_step.py compiles
// this file with g++ against jaxlib's FFI headers on first use.
//
// c = op(a) @ op(b), op transposing when the attribute ta / tb is true; all
// arrays row-major.  numpy's OpenBLAS has the 64-bit-integer interface with
// a scipy_ prefix (CBLAS enums: 101 row-major, 111 no transpose, 112 transpose).
#include <cstdint>
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;

extern "C" void scipy_cblas_sgemm64_(int layout, int transa, int transb, int64_t m, int64_t n,
                                     int64_t k, float alpha, const float* a, int64_t lda,
                                     const float* b, int64_t ldb, float beta, float* c,
                                     int64_t ldc);

static ffi::Error Gemm(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                       ffi::ResultBuffer<ffi::F32> c, bool ta, bool tb) {
  auto da = a.dimensions();
  auto db = b.dimensions();
  int64_t m = ta ? da[1] : da[0], k = ta ? da[0] : da[1], n = tb ? db[0] : db[1];
  scipy_cblas_sgemm64_(101, ta ? 112 : 111, tb ? 112 : 111, m, n, k, 1.0f, a.typed_data(), da[1],
                       b.typed_data(), db[1], 0.0f, c->typed_data(), n);
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(HptGemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("ta")
                                  .Attr<bool>("tb"));
