// XLA:CPU kernel, float32: fused multi-head softmax attention (forward and backward).
//
// Called through the XLA FFI from mpjax/ops/cpu_attention.py, which compiles this file on
// first use. Layouts are the AST's: the fused projection qkv [B, N, 3 * H * Dh] (q, k, v blocks,
// heads-major inside each) and the output [B, N, H * Dh], so no transposes are needed around the
// call. Work is split over (batch, head) pairs on XLA's intra-op thread pool.
//
// Forward, per (b, h) and block of 64 query rows: S = (q * scale) k^T, m = rowmax S,
// P = exp(S - m), l = rowsum P, o = (P v) / l; the residual is lse = m + log l (flash attention:
// the [N, N] probabilities are never stored). Backward recomputes P = exp(S - lse) per block and
// accumulates dv += P^T do, dS = P * (do v^T - rowsum(do * o)), dq = dS k * scale,
// dk += dS^T (q * scale).
//
// prefix (attribute, >= 0): the first `prefix` tokens are region tokens (mpjax.ops.attention):
// a prefix token attends to itself and to the tokens after the prefix; the tokens after the
// prefix never attend to prefix tokens.
//
// The matrix products use one register-tiled kernel (up to 8 rows x 64 columns per tile)
// written with GCC vector extensions, so it compiles to AVX-512 or AVX2 (-march=native).
// Measured single-core on this project's 2-core Xeon (AVX-512, FMA peak 236 GFLOP/s):
// 160-180 GFLOP/s on the attention block products.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16 ld(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void st(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }
inline v16 bc(float x) { return v16{} + x; }
// Broadcast from memory: with AVX-512 one load uop (GCC otherwise loads a scalar and
// broadcasts it register to register on port 5, which the FMAs need too).
inline v16 bcm(const float* p) {
#ifdef __AVX512F__
  v16 a;
  asm("vbroadcastss %1, %0" : "=v"(a) : "m"(*p));
  return a;
#else
  return bc(*p);
#endif
}

// exp(x) for x <= 0 (larger x is not used here), relative error ~1e-7: x = n ln2 + r with
// |r| <= ln2 / 2, exp(r) by its degree-7 Taylor polynomial, 2^n from the exponent bits.
// Inputs below -87 (exp(-87) ~ 1.6e-38, the end of the normal range) and -inf give exactly 0.
inline v16 vexp(v16 x0) {
  const v16 lo = bc(-87.0f);
  const v16 x = x0 < lo ? lo : x0;
  const v16 t = x * 1.44269504088896341f;
  const v16 magic = bc(12582912.0f);  // 1.5 * 2^23: adding and subtracting rounds to nearest
  const v16 n = (t + magic) - magic;
  v16 r = x - n * 0.693359375f;      // ln2 split in a part exact in float and the rest
  r = r - n * -2.12194440e-4f;
  v16 p = bc(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v16i e = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return x0 < lo ? v16{} : p * scale;
}

// C[r, 0:16 NV] (+)= sum_k A[r * ars + k * aks] * B[k * ldb + 0:16 NV] for r < R.
template <int R, int NV, bool ACC>
inline void tile(int K, const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb,
                 float* C, int64_t ldc) {
  // Every loop over r and v is unrolled completely, so that c[][] lives in registers.
  v16 c[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = ACC ? ld(C + r * ldc + 16 * v) : v16{};
  const float* a[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a[r] = A + r * ars;
#pragma GCC unroll 2
  for (int k = 0; k < K; ++k, B += ldb) {
    v16 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = ld(B + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const v16 x = bcm(a[r] + k * aks);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] += x * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) st(C + r * ldc + 16 * v, c[r][v]);
}

template <int NV, bool ACC, int RB = 6>
inline void row_tiles(int M, int K, const float* A, int64_t ars, int64_t aks, const float* B,
                      int64_t ldb, float* C, int64_t ldc) {
  int r = 0;
  for (; r + RB <= M; r += RB)
    tile<RB, NV, ACC>(K, A + r * ars, ars, aks, B, ldb, C + r * ldc, ldc);
  for (; r + 6 <= M; r += 6) tile<6, NV, ACC>(K, A + r * ars, ars, aks, B, ldb, C + r * ldc, ldc);
  const float* a = A + r * ars;
  float* c = C + r * ldc;
  switch (M - r) {
    case 5: tile<5, NV, ACC>(K, a, ars, aks, B, ldb, c, ldc); break;
    case 4: tile<4, NV, ACC>(K, a, ars, aks, B, ldb, c, ldc); break;
    case 3: tile<3, NV, ACC>(K, a, ars, aks, B, ldb, c, ldc); break;
    case 2: tile<2, NV, ACC>(K, a, ars, aks, B, ldb, c, ldc); break;
    case 1: tile<1, NV, ACC>(K, a, ars, aks, B, ldb, c, ldc); break;
    default: break;
  }
}

// C[M, Ncol] (+)= A(M x K, element (r, k) at A[r * ars + k * aks]) @ B[K, Ncol] (row stride
// ldb). Ncol must be a multiple of 16. ars = lda, aks = 1 is A row-major; ars = 1, aks = lda
// is A transposed.
template <bool ACC>
void gemm(int M, int Ncol, int K, const float* A, int64_t ars, int64_t aks, const float* B,
          int64_t ldb, float* C, int64_t ldc) {
  int j = 0;
  if (Ncol % 64 == 0) {
    for (; j + 64 <= Ncol; j += 64) row_tiles<4, ACC>(M, K, A, ars, aks, B + j, ldb, C + j, ldc);
  } else {  // measured faster on wide outputs (the [rows, keys] scores): 8 x 48 tiles
    for (; j + 48 <= Ncol; j += 48)
      row_tiles<3, ACC, 8>(M, K, A, ars, aks, B + j, ldb, C + j, ldc);
  }
  switch ((Ncol - j) / 16) {
    case 3: row_tiles<3, ACC>(M, K, A, ars, aks, B + j, ldb, C + j, ldc); break;
    case 2: row_tiles<2, ACC>(M, K, A, ars, aks, B + j, ldb, C + j, ldc); break;
    case 1: row_tiles<1, ACC>(M, K, A, ars, aks, B + j, ldb, C + j, ldc); break;
    default: break;
  }
}

float row_max(const float* x, int n16) {
  v16 m = bc(-std::numeric_limits<float>::infinity());
  for (int j = 0; j < n16; j += 16) {
    const v16 v = ld(x + j);
    m = v > m ? v : m;
  }
  float out = m[0];
  for (int i = 1; i < 16; ++i) out = std::max(out, m[i]);
  return out;
}

// x <- exp(x - shift) in place; returns the sum (16 partial sums, then added).
float exp_shift_sum(float* x, int n16, float shift) {
  v16 s{};
  const v16 sh = bc(shift);
  for (int j = 0; j < n16; j += 16) {
    const v16 e = vexp(ld(x + j) - sh);
    st(x + j, e);
    s += e;
  }
  float out = 0;
  for (int i = 0; i < 16; ++i) out += s[i];
  return out;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Scores a query row may not see get -inf: padded keys (j >= n) and, with a prefix, the
// prefix keys other than the row's own.
void mask_row(float* s, int i, int n, int np, int prefix) {
  for (int j = n; j < np; ++j) s[j] = kNegInf;
  for (int j = 0; j < prefix; ++j)
    if (j != i) s[j] = kNegInf;
}

// Runs body(i) for i in [0, n) on the caller and the pool's threads. Tasks that start after all
// items are taken touch only the shared counters, so the caller need not wait for them.
template <class F>
void parallel_for(ffi::ThreadPool& pool, int n, const F& body) {
  int threads = static_cast<int>(std::min<int64_t>(pool.num_threads(), n));
  if (threads <= 1) {
    for (int i = 0; i < n; ++i) body(i);
    return;
  }
  struct Counters {
    std::atomic<int> next{0};
    std::atomic<int> done{0};
  };
  auto counters = std::make_shared<Counters>();
  const F* bodyp = &body;
  auto work = [counters, n, bodyp]() {
    int i;
    while ((i = counters->next.fetch_add(1)) < n) {
      (*bodyp)(i);
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int t = 1; t < threads; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (counters->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

constexpr int kBlock = 64;  // query rows per block
// Floats between scratch sub-buffers: their sizes are multiples of 4 KiB, and loads at equal
// offsets of several of them would otherwise contend for the same L1 sets.
constexpr int kPad = 80;

struct Dims {
  int64_t b, n, h, dh, d, d3;
  int np;  // n rounded up to a multiple of 16
};

ffi::Error check(const ffi::Buffer<ffi::F32>& qkv, int64_t heads, int64_t prefix, Dims* dims) {
  auto shape = qkv.dimensions();
  if (shape.size() != 3)
    return ffi::Error::InvalidArgument("mpjax cpu attention: qkv must be [batch, tokens, 3 * hidden]");
  if (heads <= 0 || shape[2] % (3 * heads) != 0)
    return ffi::Error::InvalidArgument("mpjax cpu attention: qkv last dim " +
                                       std::to_string(shape[2]) + " is not 3 * heads * head_dim");
  Dims d;
  d.b = shape[0];
  d.n = shape[1];
  d.h = heads;
  d.d3 = shape[2];
  d.d = d.d3 / 3;
  d.dh = d.d / heads;
  if (d.dh % 16 != 0)
    return ffi::Error::InvalidArgument("mpjax cpu attention: head_dim " + std::to_string(d.dh) +
                                       " is not a multiple of 16");
  if (prefix < 0 || prefix >= d.n)
    return ffi::Error::InvalidArgument("mpjax cpu attention: prefix out of range");
  d.np = static_cast<int>((d.n + 15) / 16 * 16);
  *dims = d;
  return ffi::Error::Success();
}

// Per-thread scratch, reused across calls; 64-byte aligned (whole-cache-line vector loads).
float* scratch(size_t floats) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float, Free> buf;
  thread_local size_t size = 0;
  if (size < floats) {
    const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    buf.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!buf) throw std::bad_alloc();
    size = floats;
  }
  return buf.get();
}

// dst[c * ldd + i] = src[i * cols + c] for i < rows, c < cols, in 16 x 16 blocks (cache lines
// are read and written whole).
void transpose(const float* src, int rows, int cols, float* dst, int64_t ldd) {
  for (int i0 = 0; i0 < rows; i0 += 16)
    for (int c0 = 0; c0 < cols; c0 += 16)
      for (int c = c0; c < std::min(c0 + 16, cols); ++c)
        for (int i = i0; i < std::min(i0 + 16, rows); ++i) dst[c * ldd + i] = src[i * cols + c];
}

// Gathers head h of batch b from qkv into contiguous matrices padded with zero rows to np:
// qs = q * scale, k, v [np, dh] (row-major), kt = k^T [dh, np], and vt = v^T if asked for.
void gather(const Dims& d, const float* qkv, int64_t b, int64_t h, float scale, float* qs,
            float* k, float* kt, float* v, float* vt) {
  const int dh = static_cast<int>(d.dh), np = d.np, n = static_cast<int>(d.n);
  const v16 sc = bc(scale);
  for (int i = 0; i < n; ++i) {
    const float* row = qkv + (b * d.n + i) * d.d3 + h * dh;
    for (int c = 0; c < dh; c += 16) st(qs + i * dh + c, ld(row + c) * sc);
    std::memcpy(k + i * dh, row + d.d, sizeof(float) * dh);
    std::memcpy(v + i * dh, row + 2 * d.d, sizeof(float) * dh);
  }
  const size_t tail = sizeof(float) * (np - n) * dh;
  std::memset(qs + n * dh, 0, tail);
  std::memset(k + n * dh, 0, tail);
  std::memset(v + n * dh, 0, tail);
  transpose(k, np, dh, kt, np);
  if (vt) transpose(v, np, dh, vt, np);
}

ffi::Error AttentionFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::ResultBuffer<ffi::F32> out,
                        ffi::ResultBuffer<ffi::F32> lse, int64_t heads, float scale, int64_t prefix) {
  Dims d;
  if (auto err = check(qkv, heads, prefix, &d); err.failure()) return err;
  const float* x = qkv.typed_data();
  float* o = out->typed_data();
  float* lse_out = lse->typed_data();
  const int dh = static_cast<int>(d.dh), np = d.np, n = static_cast<int>(d.n);
  const int pre = static_cast<int>(prefix);

  parallel_for(pool, static_cast<int>(d.b * d.h), [&](int item) {
    const int64_t b = item / d.h, h = item % d.h;
    float* qs = scratch(size_t(4) * np * dh + size_t(kBlock) * np + kBlock * dh + 2 * kBlock + 5 * kPad);
    float* k = qs + np * dh + kPad;
    float* kt = k + np * dh + kPad;
    float* v = kt + np * dh + kPad;
    float* s = v + np * dh + kPad;
    float* ob = s + kBlock * np + kPad;
    float* m = ob + kBlock * dh;
    float* l = m + kBlock;
    gather(d, x, b, h, scale, qs, k, kt, v, nullptr);
    for (int i0 = 0; i0 < n; i0 += kBlock) {
      const int rows = std::min(kBlock, n - i0);
      gemm<false>(rows, np, dh, qs + i0 * dh, dh, 1, kt, np, s, np);
      for (int r = 0; r < rows; ++r) {
        float* sr = s + r * np;
        mask_row(sr, i0 + r, n, np, pre);
        m[r] = row_max(sr, np);
        l[r] = exp_shift_sum(sr, np, m[r]);
      }
      gemm<false>(rows, dh, np, s, np, 1, v, dh, ob, dh);
      for (int r = 0; r < rows; ++r) {
        const float inv = 1.0f / l[r];
        float* orow = o + (b * d.n + i0 + r) * d.d + h * dh;
        for (int c = 0; c < dh; ++c) orow[c] = ob[r * dh + c] * inv;
        lse_out[(b * d.h + h) * d.n + i0 + r] = m[r] + std::log(l[r]);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error AttentionBwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> out,
                        ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                        ffi::ResultBuffer<ffi::F32> dqkv, int64_t heads, float scale,
                        int64_t prefix) {
  Dims d;
  if (auto err = check(qkv, heads, prefix, &d); err.failure()) return err;
  const float* x = qkv.typed_data();
  const float* o = out.typed_data();
  const float* lse_in = lse.typed_data();
  const float* go = dout.typed_data();
  float* dx = dqkv->typed_data();
  const int dh = static_cast<int>(d.dh), np = d.np, n = static_cast<int>(d.n);
  const int pre = static_cast<int>(prefix);

  parallel_for(pool, static_cast<int>(d.b * d.h), [&](int item) {
    const int64_t b = item / d.h, h = item % d.h;
    float* qs = scratch(size_t(9) * np * dh + size_t(2) * kBlock * np + kBlock * dh + np + 14 * kPad);
    float* kt = qs + np * dh + kPad;
    float* k = kt + np * dh + kPad;
    float* v = k + np * dh + kPad;
    float* vt = v + np * dh + kPad;
    float* gdo = vt + np * dh + kPad;
    float* dk = gdo + np * dh + kPad;
    float* dv = dk + np * dh + kPad;
    float* dqb = dv + np * dh + kPad;
    float* p = dqb + kBlock * dh + kPad;
    float* ds = p + kBlock * np + kPad;
    float* dsum = ds + kBlock * np + kPad;
    gather(d, x, b, h, scale, qs, k, kt, v, vt);
    std::memset(gdo + n * dh, 0, sizeof(float) * (np - n) * dh);
    std::memset(dk, 0, sizeof(float) * np * dh);
    std::memset(dv, 0, sizeof(float) * np * dh);
    for (int i = 0; i < n; ++i) {
      const float* gr = go + (b * d.n + i) * d.d + h * dh;
      const float* orow = o + (b * d.n + i) * d.d + h * dh;
      std::memcpy(gdo + i * dh, gr, sizeof(float) * dh);
      v16 acc{};
      for (int c = 0; c < dh; c += 16) acc += ld(gr + c) * ld(orow + c);
      float sum = 0;
      for (int j = 0; j < 16; ++j) sum += acc[j];
      dsum[i] = sum;
    }
    for (int i0 = 0; i0 < n; i0 += kBlock) {
      const int rows = std::min(kBlock, n - i0);
      gemm<false>(rows, np, dh, qs + i0 * dh, dh, 1, kt, np, p, np);
      for (int r = 0; r < rows; ++r) {
        float* pr = p + r * np;
        mask_row(pr, i0 + r, n, np, pre);
        exp_shift_sum(pr, np, lse_in[(b * d.h + h) * d.n + i0 + r]);
      }
      // dv += p^T do_block
      gemm<true>(np, dh, rows, p, 1, np, gdo + i0 * dh, dh, dv, dh);
      // dp = do_block v^T, then ds = p * (dp - rowsum(do * o))
      gemm<false>(rows, np, dh, gdo + i0 * dh, dh, 1, vt, np, ds, np);
      for (int r = 0; r < rows; ++r) {
        float* dr = ds + r * np;
        const float* pr = p + r * np;
        const v16 sub = bc(dsum[i0 + r]);
        for (int j = 0; j < np; j += 16) st(dr + j, ld(pr + j) * (ld(dr + j) - sub));
      }
      // dq_block = ds k * scale; dk += ds^T (q * scale)
      gemm<false>(rows, dh, np, ds, np, 1, k, dh, dqb, dh);
      gemm<true>(np, dh, rows, ds, 1, np, qs + i0 * dh, dh, dk, dh);
      for (int r = 0; r < rows; ++r) {
        float* dq = dx + (b * d.n + i0 + r) * d.d3 + h * dh;
        for (int c = 0; c < dh; ++c) dq[c] = dqb[r * dh + c] * scale;
      }
    }
    for (int i = 0; i < n; ++i) {
      float* row = dx + (b * d.n + i) * d.d3 + h * dh;
      std::memcpy(row + d.d, dk + i * dh, sizeof(float) * dh);
      std::memcpy(row + 2 * d.d, dv + i * dh, sizeof(float) * dh);
    }
  });
  return ffi::Error::Success();
}


}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MpjaxAttentionFwd, AttentionFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads")
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("prefix"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MpjaxAttentionBwd, AttentionBwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads")
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("prefix"));
