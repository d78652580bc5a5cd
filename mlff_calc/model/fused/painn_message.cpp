// Fused PaiNN message (forward and backward) on receiver-sorted edges, for the CPU.
//
// The eager message materialises several (E, 3, F) tensors per block (gathers, products, the
// scatter); they dominate the step time and are pure memory traffic. Here each receiver i walks its
// own CSR row of edges and accumulates directly into its outputs, so nothing per-edge of size 3F is
// written except the filter gradient. The backward walks the rows of *senders* through the
// reverse-edge map rev[e] (edge (j, i, -S) for edge (i, j, S)): every accumulation target is owned
// by one thread, no atomics, deterministic sums.
//
// Shapes (row-major, contiguous):  F features, N atoms, E edges
//   phi (N, 3F)  = [phi_s | phi_d | phi_v] per-atom scalar MLP output
//   W   (H, 3F)  = [W_s | W_d | W_v] radial filters (already times the cutoff envelope), row stride ldw,
//                one row per *pair*: edge e reads row half[e] (a filter depends on |r_ij| only, so
//                both directions of a pair share it and it is computed for H = E/2 pairs)
//   dir (E, 3)   unit vectors r_ij / |r_ij|
//   v   (N, 3, F) vector features
//   rowptr (N+1), col (E) = sender j, rev (E), half (E)
// Forward:  ds[i]    = sum_e phi_s[j] W_s[e]
//           dv[i, a] = sum_e phi_d[j] W_d[e] dir[e, a] + phi_v[j] W_v[e] v[j, a]
#include <cstdint>
#include <cstring>
#include <omp.h>

template <typename T>
static void forward(int64_t N, int64_t F, int64_t ldw, const T* phi, const T* W, const T* dir, const T* v,
                    const int64_t* rowptr, const int64_t* col, const int64_t* half, T* ds, T* dv, int nthreads) {
#pragma omp parallel for schedule(dynamic, 16) num_threads(nthreads)
    for (int64_t i = 0; i < N; ++i) {
        T* dsi = ds + i * F;
        T* dvi = dv + i * 3 * F;
        std::memset(dsi, 0, sizeof(T) * F);
        std::memset(dvi, 0, sizeof(T) * 3 * F);
        for (int64_t e = rowptr[i]; e < rowptr[i + 1]; ++e) {
            const int64_t j = col[e];
            const T* pj = phi + j * 3 * F;
            const T* we = W + half[e] * ldw;
            const T* vj = v + j * 3 * F;
            const T d0 = dir[3 * e], d1 = dir[3 * e + 1], d2 = dir[3 * e + 2];
#pragma omp simd
            for (int64_t f = 0; f < F; ++f) {
                const T xs = pj[f] * we[f];
                const T xd = pj[F + f] * we[F + f];
                const T xv = pj[2 * F + f] * we[2 * F + f];
                dsi[f] += xs;
                dvi[f] += xd * d0 + xv * vj[f];
                dvi[F + f] += xd * d1 + xv * vj[F + f];
                dvi[2 * F + f] += xd * d2 + xv * vj[2 * F + f];
            }
        }
    }
}

// Given g_ds (N, F) and g_dv (N, 3, F), the gradients of the loss with respect to ds and dv:
//   g_W[e]   = [g_ds[i] phi_s[j],  (g_dv[i] . dir[e]) phi_d[j],  (g_dv[i] . v[j]) phi_v[j]]
//              summed over both edges of the pair into row half[e], written once, when e < rev[e]
//   g_dir[e] = sum_f g_dv[i, :, f] phi_d[j, f] W_d[e, f]
//   g_phi[j] = sum over edges e = (i, j): [g_ds[i] W_s[e], (g_dv[i] . dir[e]) W_d[e], (g_dv[i] . v[j]) W_v[e]]
//   g_v[j]   = sum over edges e = (i, j): g_dv[i] phi_v[j] W_v[e]
// Rows are walked by sender j: edge e2 in row j is (j, i, -S) and e = rev[e2] is (i, j, S).
template <typename T>
static void backward(int64_t N, int64_t F, int64_t ldw, const T* phi, const T* W, const T* dir, const T* v,
                     const int64_t* rowptr, const int64_t* col, const int64_t* rev, const int64_t* half, const T* g_ds,
                     const T* g_dv, T* g_phi, T* g_W, T* g_dir, T* g_v, int nthreads) {
#pragma omp parallel for schedule(dynamic, 16) num_threads(nthreads)
    for (int64_t j = 0; j < N; ++j) {
        const T* pj = phi + j * 3 * F;
        const T* vj = v + j * 3 * F;
        T* gpj = g_phi + j * 3 * F;
        T* gvj = g_v + j * 3 * F;
        std::memset(gpj, 0, sizeof(T) * 3 * F);
        std::memset(gvj, 0, sizeof(T) * 3 * F);
        for (int64_t e2 = rowptr[j]; e2 < rowptr[j + 1]; ++e2) {
            const int64_t i = col[e2];
            const int64_t e = rev[e2];
            const T* we = W + half[e] * ldw;
            const T* gsi = g_ds + i * F;
            const T* gvi = g_dv + i * 3 * F;
            const T d0 = dir[3 * e], d1 = dir[3 * e + 1], d2 = dir[3 * e + 2];
            T gd0 = 0, gd1 = 0, gd2 = 0;
#pragma omp simd reduction(+ : gd0, gd1, gd2)
            for (int64_t f = 0; f < F; ++f) {
                const T g0 = gvi[f], g1 = gvi[F + f], g2 = gvi[2 * F + f];
                const T gdd = g0 * d0 + g1 * d1 + g2 * d2;
                const T gvv = g0 * vj[f] + g1 * vj[F + f] + g2 * vj[2 * F + f];
                const T xd = pj[F + f] * we[F + f];
                const T xv = pj[2 * F + f] * we[2 * F + f];
                gpj[f] += gsi[f] * we[f];
                gpj[F + f] += gdd * we[F + f];
                gpj[2 * F + f] += gvv * we[2 * F + f];
                gvj[f] += g0 * xv;
                gvj[F + f] += g1 * xv;
                gvj[2 * F + f] += g2 * xv;
                gd0 += g0 * xd;
                gd1 += g1 * xd;
                gd2 += g2 * xd;
            }
            if (e < e2) {
                // Filter gradient of the pair: edge e = (i, j, S) and edge e2 = (j, i, -S), dir[e2] = -dir[e].
                const T* pi = phi + i * 3 * F;
                const T* vi = v + i * 3 * F;
                const T* gsj = g_ds + j * F;
                const T* gvj_in = g_dv + j * 3 * F;
                T* gwe = g_W + half[e] * 3 * F;
#pragma omp simd
                for (int64_t f = 0; f < F; ++f) {
                    const T g0 = gvi[f], g1 = gvi[F + f], g2 = gvi[2 * F + f];
                    const T h0 = gvj_in[f], h1 = gvj_in[F + f], h2 = gvj_in[2 * F + f];
                    const T gdd_e = g0 * d0 + g1 * d1 + g2 * d2;
                    const T gdd_e2 = -(h0 * d0 + h1 * d1 + h2 * d2);
                    const T gvv_e = g0 * vj[f] + g1 * vj[F + f] + g2 * vj[2 * F + f];
                    const T gvv_e2 = h0 * vi[f] + h1 * vi[F + f] + h2 * vi[2 * F + f];
                    gwe[f] = gsi[f] * pj[f] + gsj[f] * pi[f];
                    gwe[F + f] = gdd_e * pj[F + f] + gdd_e2 * pi[F + f];
                    gwe[2 * F + f] = gvv_e * pj[2 * F + f] + gvv_e2 * pi[2 * F + f];
                }
            }
            g_dir[3 * e] = gd0;
            g_dir[3 * e + 1] = gd1;
            g_dir[3 * e + 2] = gd2;
        }
    }
}

extern "C" {
int mlff_abi_version() { return 3; }

void painn_message_forward_f32(int64_t N, int64_t F, int64_t ldw, const float* phi, const float* W, const float* dir,
                               const float* v, const int64_t* rowptr, const int64_t* col, const int64_t* half, float* ds,
                               float* dv, int nthreads) {
    forward<float>(N, F, ldw, phi, W, dir, v, rowptr, col, half, ds, dv, nthreads);
}
void painn_message_forward_f64(int64_t N, int64_t F, int64_t ldw, const double* phi, const double* W, const double* dir,
                               const double* v, const int64_t* rowptr, const int64_t* col, const int64_t* half, double* ds,
                               double* dv, int nthreads) {
    forward<double>(N, F, ldw, phi, W, dir, v, rowptr, col, half, ds, dv, nthreads);
}
void painn_message_backward_f32(int64_t N, int64_t F, int64_t ldw, const float* phi, const float* W, const float* dir,
                                const float* v, const int64_t* rowptr, const int64_t* col, const int64_t* rev,
                                const int64_t* half, const float* g_ds, const float* g_dv, float* g_phi, float* g_W, float* g_dir,
                                float* g_v, int nthreads) {
    backward<float>(N, F, ldw, phi, W, dir, v, rowptr, col, rev, half, g_ds, g_dv, g_phi, g_W, g_dir, g_v, nthreads);
}
void painn_message_backward_f64(int64_t N, int64_t F, int64_t ldw, const double* phi, const double* W, const double* dir,
                                const double* v, const int64_t* rowptr, const int64_t* col, const int64_t* rev,
                                const int64_t* half, const double* g_ds, const double* g_dv, double* g_phi, double* g_W,
                                double* g_dir, double* g_v, int nthreads) {
    backward<double>(N, F, ldw, phi, W, dir, v, rowptr, col, rev, half, g_ds, g_dv, g_phi, g_W, g_dir, g_v, nthreads);
}
}
