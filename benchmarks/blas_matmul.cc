// A float32 (batched) matmul by numpy's bundled OpenBLAS, as an XLA FFI custom call for CPU.
// Built and registered by benchmarks/blas_dots.py, which the A/B in benchmarks/compare.py uses
// (`--dots=openblas`) to time a train step whose dots run outside XLA.
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// OpenBLAS's cblas_sgemm with 64-bit integers, under the symbol prefix of numpy's wheels (scipy-openblas64).
extern "C" void scipy_cblas_sgemm64_(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                                     const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                                     int64_t ldc);

namespace {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

// c[i] = op(a[i]) @ op(b[i]) for i < batch; a[i] is [m, k] ([k, m] when trans_a), b[i] is [k, n] ([n, k] when
// trans_b), c[i] is [m, n], all row-major and contiguous.
ffi::Error BatchedMatmul(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c,
                         int64_t trans_a, int64_t trans_b, int64_t m, int64_t n, int64_t k, int64_t batch) {
  for (int64_t i = 0; i < batch; ++i) {
    scipy_cblas_sgemm64_(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, 1.0f,
                         a.typed_data() + i * m * k, trans_a ? m : k, b.typed_data() + i * k * n, trans_b ? k : n,
                         0.0f, c->typed_data() + i * m * n, n);
  }
  return ffi::Error::Success();
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OpenblasMatmul, BatchedMatmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("trans_a")
                                  .Attr<int64_t>("trans_b")
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("k")
                                  .Attr<int64_t>("batch"));
