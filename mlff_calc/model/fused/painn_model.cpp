// The whole PaiNN student (painn.py + student.py) for CPU inference: energies, and the exact
// gradient of the total energy with respect to every edge vector, in one call, no autograd.
//
// Why: on small molecules the eager model is hundreds of tiny torch ops (~3 ms for 9 atoms) while its
// arithmetic is ~10 MFLOP. Here every per-atom MLP is one small matrix product (a register-blocked
// micro-kernel, below) and every edge loop is one pass over the pairs of edges (pair_traversal), which
// computes the radial filters on the fly: nothing of size (edges, 3F x blocks) is ever stored.
//
// Notation (row-major, contiguous): F features, B blocks, K radial functions, N atoms, E edges,
// H = E/2 pairs. s (N, F), v (N, 3, F); a Linear y = x W^T + b is stored as WT (in, out) for the
// forward product and W (out, in) for the backward one (g_x = g_y W); only input gradients are formed.
//
// Forward (what the eager code computes, same order of operations where it matters):
//   d_e = |r_e|, dir_e = r_e / d_e; per pair p: basis_p = [rbf_k(d) fc(d), fc(d)] (K+1),
//   filters W_p = basis_p @ [filter weight | bias]^T  (3FB: block b owns columns [3Fb, 3F(b+1))),
//   computed per block and per pair when the pair is visited (dW_p/dd likewise in the backward)
//   s = emb[Z], v = 0; per block: message (phi = MLP(s); ds_i = sum_e phi_s[j] W_s; dv_i = sum_e
//   phi_d[j] W_d dir_e + phi_v[j] W_v v_j), then update (vu, vv = v U^T; n = sqrt(|vv|^2 + eps);
//   a = MLP([s, n]); s += a_ss + a_sv <vu, vv>; v += a_vv vu); E_i = scale * readout(s_i) + shift + ref[Z_i].
// Backward: reverse mode through the same steps with g(E_i) = 1. Edge e = (i, j, S) gets
//   dE/dr_e = (g_dir - (g_dir . dir) dir) / d + g_d dir,  g_d = sum_b g_W(e, b) . dW_b/dd (p),
// where g_W(e, b) is the gradient of the filter row as *edge e* uses it, so each edge gets exactly its
// own partial derivative (the per-pair split matters for edge_grad, not for forces or the virial).
// Forces: F_i = sum over edges e in row i of (dE/dr_e - dE/dr_rev(e)), receiver-owned, no atomics.
//
// Threads: one OpenMP parallel region per call; row-parallel products, atom-owned edge contributions
// (receivers in the forward, senders in the backward; see pair_traversal): no atomics, and the same
// bits for any thread count.
// Denormals are flushed to zero during the call (float32 Gaussian tails; see evaluate).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>
#include <omp.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int VEC_BYTES = 64;
#elif defined(__AVX__)
constexpr int VEC_BYTES = 32;
#else
constexpr int VEC_BYTES = 16;
#endif
// Rows of the micro-kernel (2 vector registers of columns per row): with AVX-512's 32 registers a tile
// holds 12 rows, so a small molecule's product reads each weight once (weights, not flops, bound it).
#if defined(__AVX512F__)
constexpr int MR = 12;
#else
constexpr int MR = 6;
#endif

template <typename T>
constexpr int nr() { return 2 * VEC_BYTES / int(sizeof(T)); }

// C[MR_, NR] = init + A[MR_, K] B[K, NR], init = (accumulate ? C : 0) + (bias ? bias : 0).
// GCC/clang vector extensions (no intrinsics: the same code builds without -march=native); the
// MR_ x 2 accumulators stay in registers, each k-step loads 2 vectors of B and broadcasts MR_ values of A.
template <typename T, int MR_, int NR>
inline void tile(int64_t K, const T* __restrict A, int64_t lda, const T* __restrict B, int64_t ldb, T* __restrict C,
                 int64_t ldc, const T* __restrict bias, bool accumulate) {
    constexpr int L = VEC_BYTES / int(sizeof(T));
    constexpr int NV = NR / L;
    typedef T vec __attribute__((vector_size(VEC_BYTES)));
    typedef T uvec __attribute__((vector_size(VEC_BYTES), aligned(sizeof(T))));  // unaligned loads/stores
    vec c[MR_][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR_; ++r)
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) {
            c[r][q] = accumulate ? vec(*reinterpret_cast<const uvec*>(C + r * ldc + q * L)) : vec{};
            if (bias) c[r][q] += vec(*reinterpret_cast<const uvec*>(bias + q * L));
        }
    for (int64_t k = 0; k < K; ++k) {
        vec b[NV];
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) b[q] = *reinterpret_cast<const uvec*>(B + k * ldb + q * L);
#pragma GCC unroll 16
        for (int r = 0; r < MR_; ++r) {
            const T a = A[r * lda + k];
#pragma GCC unroll 4
            for (int q = 0; q < NV; ++q) c[r][q] += a * b[q];
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR_; ++r)
#pragma GCC unroll 4
        for (int q = 0; q < NV; ++q) *reinterpret_cast<uvec*>(C + r * ldc + q * L) = c[r][q];
}

// Columns that do not fill a micro-kernel: plain loops (only for hidden sizes that are not multiples of NR).
template <typename T>
inline void tile_rest(int64_t mr, int64_t n, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                      int64_t ldc, const T* bias, bool accumulate) {
    for (int64_t r = 0; r < mr; ++r) {
        T* c = C + r * ldc;
        for (int64_t q = 0; q < n; ++q) c[q] = (accumulate ? c[q] : T(0)) + (bias ? bias[q] : T(0));
        for (int64_t k = 0; k < K; ++k) {
            const T a = A[r * lda + k];
            const T* b = B + k * ldb;
#pragma omp simd
            for (int64_t q = 0; q < n; ++q) c[q] += a * b[q];
        }
    }
}

template <typename T, int MR_>
inline void row_panel(int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                      const T* bias, bool accumulate) {
    constexpr int NR = nr<T>();
    int64_t q = 0;
    for (; q + NR <= N; q += NR)
        tile<T, MR_, NR>(K, A, lda, B + q, ldb, C + q, ldc, bias ? bias + q : nullptr, accumulate);
    if (q < N) tile_rest<T>(MR_, N - q, K, A, lda, B + q, ldb, C + q, ldc, bias ? bias + q : nullptr, accumulate);
}

// mr rows of C = init + A B, on the calling thread, MR rows at a time.
template <typename T>
void panel(int64_t mr, int64_t N, int64_t K, const T* a, int64_t lda, const T* B, int64_t ldb, T* c, int64_t ldc,
           const T* bias, bool accumulate) {
    for (int64_t r0 = 0; r0 < mr; r0 += MR) {
        const int64_t rows = mr - r0 < MR ? mr - r0 : MR;
        const T* ar = a + r0 * lda;
        T* cr = c + r0 * ldc;
        switch (rows) {
#define MLFF_CASE(R) \
    case R: row_panel<T, (R <= MR ? R : 1)>(N, K, ar, lda, B, ldb, cr, ldc, bias, accumulate); break;
            MLFF_CASE(12) MLFF_CASE(11) MLFF_CASE(10) MLFF_CASE(9) MLFF_CASE(8) MLFF_CASE(7)
            MLFF_CASE(6) MLFF_CASE(5) MLFF_CASE(4) MLFF_CASE(3) MLFF_CASE(2)
#undef MLFF_CASE
            default: row_panel<T, 1>(N, K, ar, lda, B, ldb, cr, ldc, bias, accumulate); break;
        }
    }
}

// C[M, N] = (accumulate ? C : 0) + A[M, K] B[K, N] (+ bias[N]). Called by every thread of the team.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
          const T* bias, bool accumulate) {
    // Rows split into equal tiles of at most MR (9 rows: one tile of 9, not 6 + 3), as many per thread
    // (81 rows on 2 threads: 8 tiles, not 7). A row's result does not depend on its tile.
    const int64_t threads = omp_get_num_threads();
    int64_t tiles = (M + MR - 1) / MR;
    if (tiles > 1 && threads > 1) tiles = std::min(M, (tiles + threads - 1) / threads * threads);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
        const int64_t r0 = t * M / tiles, r1 = (t + 1) * M / tiles;
        panel<T>(r1 - r0, N, K, A + r0 * lda, lda, B, ldb, C + r0 * ldc, ldc, bias, accumulate);
    }
}

// Per-thread scratch of the pair traversal.
template <typename T>
struct PairScratch {
    std::vector<int64_t> order;               // cross edges of one row, sorted
    std::vector<int64_t> pairs, calls;        // queued pairs; queued side calls (k, e, slot)
    std::vector<T> a, w;                      // basis rows of the queued pairs; their filter rows
};

// Visit every pair of edges {e, rev[e]} once per side, in pair order, computing the pair's filter row
// (and its derivative in |r|) on the fly: filters are never stored (an (E/2, 3F x blocks) array would
// be ~1 GB for 10,000 atoms, and writing then re-reading it cost more than computing it). Queued
// pairs are evaluated MR at a time as one small matrix product, basis (pairs, K+1) x filt (K+1, 3F).
//
// side(k, e, w, dw) applies the part of the pair owned by atom k, where e is the pair's edge in CSR
// row k and w (dw) its filter row (derivative); it may only write data owned by k. Threads own
// contiguous atom ranges. A pair inside a range is visited once (both sides back to back); a pair
// across ranges is visited by both owners. Every atom receives its contributions in the order of the
// pair's canonical edge (min(e, rev[e])) whatever the thread count, so sums are bit-identical for any
// thread count. Called by every thread of the team; ends with a barrier.
template <typename T, typename Side>
void pair_traversal(int64_t N, const int64_t* rowptr, const int64_t* col, const int64_t* rev, const int64_t* half,
                    int64_t K1, int64_t F3, const T* basis, const T* dbasis, const T* filt, int64_t ldf,
                    PairScratch<T>& sc, Side side) {
    const int64_t T_ = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t a0 = t * N / T_, a1 = (t + 1) * N / T_;
    const int64_t G = dbasis ? MR / 2 : MR;  // pairs per product (a derivative row per pair when asked)
    sc.a.resize(size_t(2 * G * K1));
    sc.w.resize(size_t(2 * G * F3));
    sc.pairs.clear();
    sc.calls.clear();
    auto flush = [&]() {
        const int64_t np = int64_t(sc.pairs.size());
        if (np == 0) return;
        for (int64_t x = 0; x < np; ++x) {
            std::memcpy(&sc.a[x * K1], basis + sc.pairs[x] * K1, sizeof(T) * K1);
            if (dbasis) std::memcpy(&sc.a[(np + x) * K1], dbasis + sc.pairs[x] * K1, sizeof(T) * K1);
        }
        panel<T>(dbasis ? 2 * np : np, F3, K1, sc.a.data(), K1, filt, ldf, sc.w.data(), F3, nullptr, false);
        for (size_t c = 0; c < sc.calls.size(); c += 3) {
            const int64_t slot = sc.calls[c + 2];
            side(sc.calls[c], sc.calls[c + 1], &sc.w[slot * F3], dbasis ? &sc.w[(np + slot) * F3] : nullptr);
        }
        sc.pairs.clear();
        sc.calls.clear();
    };
    auto visit = [&](int64_t k, int64_t e, bool same_pair) {
        if (!same_pair) {
            if (int64_t(sc.pairs.size()) == G) flush();
            sc.pairs.push_back(half[e]);
        }
        sc.calls.insert(sc.calls.end(), {k, e, int64_t(sc.pairs.size()) - 1});
    };
    // Pairs whose canonical edge lies in an earlier range come first in pair order: sort each row's
    // such edges (a prefix of the row, sorted by sender) by their canonical edge.
    for (int64_t k = a0; k < a1 && a0 > 0; ++k) {
        sc.order.clear();
        for (int64_t e = rowptr[k]; e < rowptr[k + 1] && col[e] < a0; ++e) sc.order.push_back(e);
        for (size_t x = 1; x < sc.order.size(); ++x)  // insertion sort: runs of one sender are reversed
            for (size_t y = x; y > 0 && rev[sc.order[y]] < rev[sc.order[y - 1]]; --y)
                std::swap(sc.order[y], sc.order[y - 1]);
        for (int64_t e : sc.order) visit(k, e, false);
    }
    for (int64_t i = a0; i < a1; ++i)
        for (int64_t e = rowptr[i]; e < rowptr[i + 1]; ++e) {
            const int64_t r = rev[e];
            if (e >= r) continue;  // not canonical: visited from the other end
            visit(i, e, false);
            const int64_t j = col[e];
            if (j >= a0 && j < a1) visit(j, r, true);
        }
    flush();
#pragma omp barrier
}

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// SiLU and its derivative, d/dh [h sigmoid(h)].
template <typename T>
inline T silu(T h) { return h * sigmoid(h); }
template <typename T>
inline T dsilu(T h) {
    const T sg = sigmoid(h);
    return sg * (T(1) + h * (T(1) - sg));
}

// A Linear layer as the kernel reads it.
template <typename T>
struct Linear {
    const T* WT;  // (in, out)
    const T* b;   // (out,) or nullptr
    const T* W;   // (out, in)
};

template <typename T>
struct Block {
    Linear<T> m1, m2;       // message MLP: F -> F -> 3F
    Linear<T> mix;          // update vector_mix: F -> 2F, no bias
    Linear<T> u1, u2;       // update MLP: 2F -> F -> 3F
    T eps;
};

template <typename T>
struct Net {
    int64_t F, B, K, Fh, max_z;
    const T* emb;       // (max_z + 1, F)
    const T* filt;      // (K + 1, 3FB): filter weight^T with the bias as the last row
    const T* centers;   // (K,)
    const T* atom_ref;  // (max_z + 1,)
    T coeff, cutoff, scale, shift, r2b, pi_over_rc;
    Linear<T> r1;       // readout F -> Fh
    const T* r2;        // (Fh,) readout Fh -> 1
    std::vector<Block<T>> blocks;
};

// The two-layer MLPs of a block, y = W2 silu(W1 x + b1) + b2 over N rows (x: (N, in), hidden F,
// y: (N, out)); ``pre`` keeps W1 x + b1 for the backward, ``tmp`` is scratch. Called inside the parallel
// region (gemm and the loop are work-shared).
template <typename T>
void mlp_forward(int64_t N, int64_t in, int64_t F, int64_t out, const T* x, const Linear<T>& l1,
                 const Linear<T>& l2, T* pre, T* tmp, T* y) {
    gemm<T>(N, F, in, x, in, l1.WT, F, pre, F, l1.b, false);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i)
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) tmp[i * F + f] = silu(pre[i * F + f]);
    gemm<T>(N, out, F, tmp, F, l2.WT, out, y, out, l2.b, false);
}

// Its backward: gx (+)= W1^T (silu'(pre) * (W2^T gy)); ``gh`` (N, F) is scratch.
template <typename T>
void mlp_backward(int64_t N, int64_t in, int64_t F, int64_t out, const T* gy, const Linear<T>& l1,
                  const Linear<T>& l2, const T* pre, T* gh, T* gx, bool accumulate) {
    gemm<T>(N, F, out, gy, out, l2.W, F, gh, F, nullptr, false);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i)
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) gh[i * F + f] *= dsilu(pre[i * F + f]);
    gemm<T>(N, in, F, gh, F, l1.W, in, gx, in, nullptr, accumulate);
}

// Weight pointers in the order whole.py packs them (see _pointer_list there).
template <typename T>
Net<T> unpack(const int64_t* dims, const void* const* w) {
    Net<T> net;
    net.F = dims[0];
    net.B = dims[1];
    net.K = dims[2];
    net.Fh = dims[3];
    net.max_z = dims[4];
    int at = 0;
    auto next = [&]() { return static_cast<const T*>(w[at++]); };
    const T* scalars = next();  // coeff, cutoff, scale, shift, readout bias, pi / cutoff, eps per block
    net.coeff = scalars[0];
    net.cutoff = scalars[1];
    net.scale = scalars[2];
    net.shift = scalars[3];
    net.r2b = scalars[4];
    net.pi_over_rc = scalars[5];
    net.emb = next();
    net.filt = next();
    net.centers = next();
    net.atom_ref = next();
    auto linear = [&](bool bias) {
        Linear<T> l;
        l.WT = next();
        l.b = bias ? next() : nullptr;
        l.W = next();
        return l;
    };
    net.r1 = linear(true);
    net.r2 = next();
    for (int64_t b = 0; b < net.B; ++b) {
        Block<T> blk;
        blk.m1 = linear(true);
        blk.m2 = linear(true);
        blk.mix = linear(false);
        blk.u1 = linear(true);
        blk.u2 = linear(true);
        blk.eps = scalars[6 + b];
        net.blocks.push_back(blk);
    }
    return net;
}

// One buffer per calling thread, kept between calls up to 1 GiB (an MD run asks for the same size every
// step, and fresh pages cost ~15% of a 10,000-atom call in page faults), not zero-filled;
// painn_whole_release() frees it.
struct Arena {
    std::unique_ptr<unsigned char[]> data;
    size_t size = 0;
    static constexpr size_t limit = size_t(1024) << 20;
};
thread_local Arena arena;

template <typename T>
struct Buffers {
    T *dist, *dir, *pd, *basis, *dbasis, *gdir, *gd;
    T *s, *vm, *x, *h5;
    std::vector<T*> h1, phi, vin, vuv, cat, h3, a;
    T *gs, *gv, *gv2, *ga, *gh, *gcat, *gvuv, *gphi;
};

template <typename T>
int evaluate(const Net<T>& net, int64_t N, int64_t E, int64_t H, const int64_t* Z, const T* vec, const int64_t* rowptr,
             const int64_t* col, const int64_t* rev, const int64_t* half, T* energies, T* forces, T* edge_grad,
             int grad, int nthreads, T* features) {
    const int64_t F = net.F, B = net.B, K = net.K, Fh = net.Fh, F3 = 3 * F, FB3 = 3 * F * B, K1 = K + 1;
    for (int64_t i = 0; i < N; ++i)
        if (Z[i] < 0 || Z[i] > net.max_z) return 1;
    if (E != 2 * H) return 2;

    // Sizes in elements; every buffer starts on a 64-byte boundary.
    std::vector<std::pair<T**, int64_t>> plan;
    Buffers<T> m;
    m.h1.resize(B);
    m.phi.resize(B);
    m.vin.resize(B + 1);
    m.vuv.resize(B);
    m.cat.resize(B);
    m.h3.resize(B);
    m.a.resize(B);
    plan.push_back({&m.dist, E});
    plan.push_back({&m.dir, 3 * E});
    plan.push_back({&m.pd, H});
    plan.push_back({&m.basis, H * K1});
    plan.push_back({&m.s, N * F});
    plan.push_back({&m.vm, N * F3});
    plan.push_back({&m.x, N * (F3 > Fh ? F3 : Fh)});
    plan.push_back({&m.h5, N * Fh});
    for (int64_t b = 0; b < B; ++b) {
        plan.push_back({&m.h1[b], N * F});
        plan.push_back({&m.phi[b], N * F3});
        plan.push_back({&m.vin[b], N * F3});
        plan.push_back({&m.vuv[b], N * 2 * F3});
        plan.push_back({&m.cat[b], N * 2 * F});
        plan.push_back({&m.h3[b], N * F});
        plan.push_back({&m.a[b], N * F3});
    }
    plan.push_back({&m.vin[B], N * F3});
    if (grad) {
        plan.push_back({&m.dbasis, H * K1});
        plan.push_back({&m.gdir, 3 * E});
        plan.push_back({&m.gd, E});
        plan.push_back({&m.gs, N * F});
        plan.push_back({&m.gv, N * F3});
        plan.push_back({&m.gv2, N * F3});
        plan.push_back({&m.ga, N * F3});
        plan.push_back({&m.gh, N * (F > Fh ? F : Fh)});
        plan.push_back({&m.gcat, N * 2 * F});
        plan.push_back({&m.gvuv, N * 2 * F3});
        plan.push_back({&m.gphi, N * F3});
    }
    const size_t align = 64 / sizeof(T);
    size_t total = 0;
    for (auto& p : plan) total += (size_t(p.second) + align - 1) / align * align;
    const size_t need = total * sizeof(T) + 64;
    std::unique_ptr<unsigned char[]> local;
    unsigned char* store;
    if (need <= Arena::limit) {
        if (arena.size < need) {
            arena.data.reset();
            arena.data.reset(new unsigned char[need]);
            arena.size = need;
        }
        store = arena.data.get();
    } else {
        local.reset(new unsigned char[need]);
        store = local.get();
    }
    T* base = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(store) + 63) & ~uintptr_t(63));
    for (auto& p : plan) {
        *p.first = base;
        base += (size_t(p.second) + align - 1) / align * align;
    }

    const T pi_over_rc = net.pi_over_rc;
    const T coeff = net.coeff, rc = net.cutoff;
    const T half_pi_rc = T(0.5) * pi_over_rc;

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
#if defined(__SSE__)
        // Flush denormals to zero in this call (restored below): in float32 the Gaussians of distant
        // centres reach 1e-38..1e-45 and every product with them would take a ~100-cycle microcode
        // assist (the filter product ran 30x slower). Values below 1e-38 change no result.
        const unsigned int saved_csr = _mm_getcsr();
        _mm_setcsr(saved_csr | 0x8040);  // FTZ | DAZ
#endif
        PairScratch<T> scratch;
        // ---- geometry and radial filters -------------------------------------------------------
#pragma omp for schedule(static)
        for (int64_t e = 0; e < E; ++e) {
            const T x = vec[3 * e], y = vec[3 * e + 1], z = vec[3 * e + 2];
            const T d = std::sqrt(x * x + y * y + z * z);
            m.dist[e] = d;
            m.dir[3 * e] = x / d;
            m.dir[3 * e + 1] = y / d;
            m.dir[3 * e + 2] = z / d;
            if (e < rev[e]) m.pd[half[e]] = d;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < H; ++p) {
            const T d = m.pd[p];
            const bool inside = d < rc;
            const T fc = inside ? T(0.5) * (std::cos(d * pi_over_rc) + T(1)) : T(0);
            const T dfc = inside ? -half_pi_rc * std::sin(d * pi_over_rc) : T(0);
            T* bp = m.basis + p * K1;
            T* dbp = grad ? m.dbasis + p * K1 : nullptr;
#pragma omp simd
            for (int64_t k = 0; k < K; ++k) {
                const T u = d - net.centers[k];
                bp[k] = std::exp(coeff * u * u);
            }
            if (dbp) {
#pragma omp simd
                for (int64_t k = 0; k < K; ++k) dbp[k] = bp[k] * (T(2) * coeff * (d - net.centers[k]) * fc + dfc);
            }
#pragma omp simd
            for (int64_t k = 0; k < K; ++k) bp[k] *= fc;
            bp[K] = fc;
            if (dbp) dbp[K] = dfc;
        }

        // ---- embedding -------------------------------------------------------------------------
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N; ++i) {
            std::memcpy(m.s + i * F, net.emb + Z[i] * F, sizeof(T) * F);
            std::memset(m.vin[0] + i * F3, 0, sizeof(T) * F3);
        }

        // ---- blocks ----------------------------------------------------------------------------
        for (int64_t b = 0; b < B; ++b) {
            const Block<T>& blk = net.blocks[b];
            T* h1 = m.h1[b];
            T* phi = m.phi[b];
            const T* v = m.vin[b];
            mlp_forward<T>(N, F, F, F3, m.s, blk.m1, blk.m2, h1, m.x, phi);

            // message: ds_k = sum_e phi_s[j] W_s(e), dv_k = sum_e phi_d[j] W_d(e) dir_e + phi_v[j] W_v(e) v_j
            // over the edges e = (k, j, S) of row k
#pragma omp for schedule(static)
            for (int64_t i = 0; i < N; ++i) std::memcpy(m.vm + i * F3, v + i * F3, sizeof(T) * F3);
            pair_traversal<T>(N, rowptr, col, rev, half, K1, F3, m.basis, nullptr, net.filt + b * F3, FB3, scratch,
                              [&](int64_t k, int64_t e, const T* we, const T*) {
                const int64_t j = col[e];
                T* si = m.s + k * F;
                T* vmi = m.vm + k * F3;
                const T* pj = phi + j * F3;
                const T* vj = v + j * F3;
                const T d0 = m.dir[3 * e], d1 = m.dir[3 * e + 1], d2 = m.dir[3 * e + 2];
#pragma omp simd
                for (int64_t f = 0; f < F; ++f) {
                    const T xs = pj[f] * we[f];
                    const T xd = pj[F + f] * we[F + f];
                    const T xv = pj[2 * F + f] * we[2 * F + f];
                    si[f] += xs;
                    vmi[f] += xd * d0 + xv * vj[f];
                    vmi[F + f] += xd * d1 + xv * vj[F + f];
                    vmi[2 * F + f] += xd * d2 + xv * vj[2 * F + f];
                }
            });

            // update
            T* vuv = m.vuv[b];  // (N, 3, 2F): [vu | vv] per Cartesian axis
            T* cat = m.cat[b];  // (N, 2F): [s | n]
            gemm<T>(3 * N, 2 * F, F, m.vm, F, blk.mix.WT, 2 * F, vuv, 2 * F, nullptr, false);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < N; ++i) {
                const T* vv = vuv + i * 6 * F + F;
                T* c = cat + i * 2 * F;
                std::memcpy(c, m.s + i * F, sizeof(T) * F);
#pragma omp simd
                for (int64_t f = 0; f < F; ++f) {
                    const T a0 = vv[f], a1 = vv[2 * F + f], a2 = vv[4 * F + f];
                    c[F + f] = std::sqrt(a0 * a0 + a1 * a1 + a2 * a2 + blk.eps);
                }
            }
            T* h3 = m.h3[b];
            T* a = m.a[b];
            mlp_forward<T>(N, 2 * F, F, F3, cat, blk.u1, blk.u2, h3, m.x, a);
            T* vnext = m.vin[b + 1];
#pragma omp for schedule(static)
            for (int64_t i = 0; i < N; ++i) {
                const T* ai = a + i * F3;
                const T* q = vuv + i * 6 * F;
                const T* vmi = m.vm + i * F3;
                T* si = m.s + i * F;
                T* vo = vnext + i * F3;
#pragma omp simd
                for (int64_t f = 0; f < F; ++f) {
                    const T sp = q[f] * q[F + f] + q[2 * F + f] * q[3 * F + f] + q[4 * F + f] * q[5 * F + f];
                    si[f] = si[f] + ai[2 * F + f] + ai[F + f] * sp;
                    vo[f] = vmi[f] + ai[f] * q[f];
                    vo[F + f] = vmi[F + f] + ai[f] * q[2 * F + f];
                    vo[2 * F + f] = vmi[2 * F + f] + ai[f] * q[4 * F + f];
                }
            }
        }

        // ---- readout ---------------------------------------------------------------------------
        gemm<T>(N, Fh, F, m.s, F, net.r1.WT, Fh, m.h5, Fh, net.r1.b, false);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N; ++i) {
            const T* h = m.h5 + i * Fh;
            T out = 0;
#pragma omp simd reduction(+ : out)
            for (int64_t c = 0; c < Fh; ++c) out += silu(h[c]) * net.r2[c];
            energies[i] = net.scale * (out + net.r2b) + net.shift + net.atom_ref[Z[i]];
            // [uncertainty] optional output: the readout's last hidden features silu(h) (N, Fh), what
            // mlff_calc.uncertainty reads; nullptr when off (no cost then).
            if (features) {
                T* phi = features + i * Fh;
#pragma omp simd
                for (int64_t c = 0; c < Fh; ++c) phi[c] = silu(h[c]);
            }
        }

        if (grad) {
            // ---- backward: readout -------------------------------------------------------------
#pragma omp for schedule(static)
            for (int64_t i = 0; i < N; ++i) {
                const T* h = m.h5 + i * Fh;
                T* g = m.x + i * Fh;
#pragma omp simd
                for (int64_t c = 0; c < Fh; ++c) g[c] = net.scale * net.r2[c] * dsilu(h[c]);
                std::memset(m.gv + i * F3, 0, sizeof(T) * F3);
            }
#pragma omp for schedule(static) nowait
            for (int64_t e = 0; e < E; ++e) {
                m.gdir[3 * e] = m.gdir[3 * e + 1] = m.gdir[3 * e + 2] = 0;
                m.gd[e] = 0;
            }
            gemm<T>(N, F, Fh, m.x, Fh, net.r1.W, F, m.gs, F, nullptr, false);

            for (int64_t b = B - 1; b >= 0; --b) {
                const Block<T>& blk = net.blocks[b];
                const T* vuv = m.vuv[b];
                const T* cat = m.cat[b];
                const T* h3 = m.h3[b];
                const T* a = m.a[b];
                // update: g_a = [sum_x g_v vu, g_s <vu, vv>, g_s]
#pragma omp for schedule(static)
                for (int64_t i = 0; i < N; ++i) {
                    const T* q = vuv + i * 6 * F;
                    const T* gs = m.gs + i * F;
                    const T* gv = m.gv + i * F3;
                    T* ga = m.ga + i * F3;
#pragma omp simd
                    for (int64_t f = 0; f < F; ++f) {
                        const T sp = q[f] * q[F + f] + q[2 * F + f] * q[3 * F + f] + q[4 * F + f] * q[5 * F + f];
                        ga[f] = gv[f] * q[f] + gv[F + f] * q[2 * F + f] + gv[2 * F + f] * q[4 * F + f];
                        ga[F + f] = gs[f] * sp;
                        ga[2 * F + f] = gs[f];
                    }
                }
                mlp_backward<T>(N, 2 * F, F, F3, m.ga, blk.u1, blk.u2, h3, m.gh, m.gcat, false);
#pragma omp for schedule(static)
                for (int64_t i = 0; i < N; ++i) {
                    const T* q = vuv + i * 6 * F;
                    const T* ai = a + i * F3;
                    const T* n = cat + i * 2 * F + F;
                    const T* gc = m.gcat + i * 2 * F;
                    const T* gv = m.gv + i * F3;
                    T* gs = m.gs + i * F;
                    T* g = m.gvuv + i * 6 * F;
#pragma omp simd
                    for (int64_t f = 0; f < F; ++f) {
                        const T gsp = gs[f] * ai[F + f];
                        const T gn = gc[F + f] / n[f];
                        for (int x = 0; x < 3; ++x) {
                            const T vu = q[2 * x * F + f], vv = q[(2 * x + 1) * F + f];
                            g[2 * x * F + f] = gv[x * F + f] * ai[f] + gsp * vv;
                            g[(2 * x + 1) * F + f] = gsp * vu + gn * vv;
                        }
                        gs[f] += gc[f];
                    }
                }
                gemm<T>(3 * N, F, 2 * F, m.gvuv, 2 * F, blk.mix.W, F, m.gv, F, nullptr, true);

                // message, by senders: atom k owns the share of edge (j, k, -S) = rev[e] for e = (k, j, S) in row k
                const T* phi = m.phi[b];
                const T* v = m.vin[b];
#pragma omp for schedule(static)
                for (int64_t i = 0; i < N; ++i) {
                    std::memset(m.gphi + i * F3, 0, sizeof(T) * F3);
                    std::memset(m.gv2 + i * F3, 0, sizeof(T) * F3);
                }
                pair_traversal<T>(N, rowptr, col, rev, half, K1, F3, m.basis, m.dbasis, net.filt + b * F3, FB3, scratch,
                                  [&](int64_t k, int64_t e2, const T* we, const T* dwe) {
                    const int64_t i = col[e2];  // receiver of edge e = (i, k, S)
                    const int64_t e = rev[e2];
                    const T* pj = phi + k * F3;
                    const T* vj = v + k * F3;
                    T* gp = m.gphi + k * F3;
                    T* acc = m.gv2 + k * F3;  // sum_e g_dv[i] W_v(e), times phi_v[k] below
                    const T* gsi = m.gs + i * F;
                    const T* gvi = m.gv + i * F3;
                    const T d0 = m.dir[3 * e], d1 = m.dir[3 * e + 1], d2 = m.dir[3 * e + 2];
                    T gd0 = 0, gd1 = 0, gd2 = 0, gdist = 0;
#pragma omp simd reduction(+ : gd0, gd1, gd2, gdist)
                    for (int64_t f = 0; f < F; ++f) {
                        const T g0 = gvi[f], g1 = gvi[F + f], g2 = gvi[2 * F + f];
                        const T gdd = g0 * d0 + g1 * d1 + g2 * d2;
                        const T gvv = g0 * vj[f] + g1 * vj[F + f] + g2 * vj[2 * F + f];
                        gp[f] += gsi[f] * we[f];
                        gp[F + f] += gdd * we[F + f];
                        gp[2 * F + f] += gvv * we[2 * F + f];
                        acc[f] += g0 * we[2 * F + f];
                        acc[F + f] += g1 * we[2 * F + f];
                        acc[2 * F + f] += g2 * we[2 * F + f];
                        const T xd = pj[F + f] * we[F + f];
                        gd0 += g0 * xd;
                        gd1 += g1 * xd;
                        gd2 += g2 * xd;
                        gdist += gsi[f] * pj[f] * dwe[f] + gdd * pj[F + f] * dwe[F + f] +
                                 gvv * pj[2 * F + f] * dwe[2 * F + f];
                    }
                    m.gdir[3 * e] += gd0;
                    m.gdir[3 * e + 1] += gd1;
                    m.gdir[3 * e + 2] += gd2;
                    m.gd[e] += gdist;
                });
#pragma omp for schedule(static)
                for (int64_t k = 0; k < N; ++k) {
                    const T* pv = phi + k * F3 + 2 * F;
                    const T* gvk = m.gv + k * F3;
                    T* acc = m.gv2 + k * F3;
#pragma omp simd
                    for (int64_t f = 0; f < F; ++f) {
                        acc[f] = gvk[f] + pv[f] * acc[f];
                        acc[F + f] = gvk[F + f] + pv[f] * acc[F + f];
                        acc[2 * F + f] = gvk[2 * F + f] + pv[f] * acc[2 * F + f];
                    }
                }
                // gv2 is now the gradient with respect to the block's input v; gs gets the MLP's share
                mlp_backward<T>(N, F, F, F3, m.gphi, blk.m1, blk.m2, m.h1[b], m.gh, m.gs, true);
#pragma omp single
                std::swap(m.gv, m.gv2);
            }

            // ---- edge gradients and forces -----------------------------------------------------
#pragma omp for schedule(static)
            for (int64_t e = 0; e < E; ++e) {
                const T* u = m.dir + 3 * e;
                const T* g = m.gdir + 3 * e;
                const T radial = g[0] * u[0] + g[1] * u[1] + g[2] * u[2];
                const T d = m.dist[e];
                for (int x = 0; x < 3; ++x) edge_grad[3 * e + x] = (g[x] - radial * u[x]) / d + m.gd[e] * u[x];
            }
#pragma omp for schedule(static)
            for (int64_t i = 0; i < N; ++i) {
                T f0 = 0, f1 = 0, f2 = 0;
                for (int64_t e = rowptr[i]; e < rowptr[i + 1]; ++e) {
                    const int64_t r = rev[e];
                    f0 += edge_grad[3 * e] - edge_grad[3 * r];
                    f1 += edge_grad[3 * e + 1] - edge_grad[3 * r + 1];
                    f2 += edge_grad[3 * e + 2] - edge_grad[3 * r + 2];
                }
                forces[3 * i] = f0;
                forces[3 * i + 1] = f1;
                forces[3 * i + 2] = f2;
            }
        }
#if defined(__SSE__)
        _mm_setcsr(saved_csr);
#endif
    }
    return 0;
}

}  // namespace

extern "C" {
int mlff_whole_abi_version() { return 2; }  // 2: trailing features pointer ([uncertainty])

// Frees the calling thread's workspace (kept between calls; see Arena).
void painn_whole_release() {
    arena.data.reset();
    arena.size = 0;
}

// Returns 0 on success, 1 for an atomic number outside 0..max_z, 2 when E != 2 H.
// features: (N, Fh) readout hidden features out, or nullptr ([uncertainty]).
#define PAINN_WHOLE_ENTRY(NAME, T)                                                                          \
    int NAME(const int64_t* dims, const void* const* weights, int64_t N, int64_t E, int64_t H,                \
             const int64_t* numbers, const T* vectors, const int64_t* rowptr, const int64_t* col,             \
             const int64_t* rev, const int64_t* half, T* energies, T* forces, T* edge_grad,                   \
             int compute_gradient, int nthreads, T* features) {                                               \
        const Net<T> net = unpack<T>(dims, weights);                                                        \
        return evaluate<T>(net, N, E, H, numbers, vectors, rowptr, col, rev, half, energies, forces,        \
                           edge_grad, compute_gradient, nthreads, features);                                \
    }
PAINN_WHOLE_ENTRY(painn_whole_f32, float)
PAINN_WHOLE_ENTRY(painn_whole_f64, double)
}
