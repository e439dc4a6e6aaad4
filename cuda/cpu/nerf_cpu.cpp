// CPU kernels of splatkit's hash-grid NeRF: multiresolution hash encoding (forward, backward),
// occupancy-grid ray marching into nerfacc's packed layout, and packed volume rendering (forward,
// backward). Same maths, rule for rule, as the PyTorch references they are tested against:
// splatkit/models/hashgrid.py (_corners: level layout, dense indexing, Instant-NGP's hash) and
// splatkit/render/volume.py (march_torch, occupied, render_torch). Per-sample maths sits in small
// inline functions (corner rows and weights, lattice step, cell lookup, compositing step) that the
// CUDA versions of a later issue can share.
//
// Determinism: no atomics. The hash-table gradient is accumulated level by level, one thread per
// level, samples in input order, so it does not depend on the thread count; marching and
// compositing work per ray.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

void check(const at::Tensor &t, const char *name, at::ScalarType st = at::kFloat) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(t.scalar_type() == st, name, " has the wrong dtype");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// -- hash encoding ---------------------------------------------------------------------------------
// Instant-NGP's primes (Mueller et al. 2022, eq. 4), as HASH_PRIMES in hashgrid.py.
constexpr uint64_t kPrimes[3] = {1ull, 2654435761ull, 805459861ull};

struct Level {
    float res;        // N_l
    int64_t side;     // N_l + 1 (dense levels)
    int64_t offset;   // first table row of the level
    bool dense;
};

// The 8 corner rows and trilinear weights of point p at one level (hashgrid.py _corners and
// _trilinear): corner c = 4i + 2j + k is vertex cell + (i, j, k), weight wx[i] wy[j] wz[k].
inline void corners(const float p[3], const Level &lv, uint64_t mask, int64_t rows[8], float w[8]) {
    int64_t cell[3];
    float wa[3][2];
    for (int a = 0; a < 3; ++a) {
        const float pos = p[a] * lv.res;
        const float c = std::min(std::floor(pos), lv.res - 1.0f);
        const float f = pos - c;
        cell[a] = (int64_t)c;
        wa[a][0] = 1.0f - f;
        wa[a][1] = f;
    }
    int64_t term[3][2];
    if (lv.dense) {
        const int64_t mult[3] = {1, lv.side, lv.side * lv.side};
        for (int a = 0; a < 3; ++a) {
            term[a][0] = cell[a] * mult[a];
            term[a][1] = term[a][0] + mult[a];
        }
        term[0][0] += lv.offset;
        term[0][1] += lv.offset;
    } else {
        for (int a = 0; a < 3; ++a) {
            const uint64_t t0 = (uint64_t)cell[a] * kPrimes[a];
            term[a][0] = (int64_t)(t0 & mask);
            term[a][1] = (int64_t)((t0 + kPrimes[a]) & mask);
        }
        term[0][0] += lv.offset;  // a multiple of T: the same as OR-ing it in
        term[0][1] += lv.offset;
    }
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
            const float wxy = wa[0][i] * wa[1][j];
            for (int k = 0; k < 2; ++k) {
                const int c = 4 * i + 2 * j + k;
                rows[c] = lv.dense ? term[0][i] + term[1][j] + term[2][k] : (term[0][i] ^ term[1][j] ^ term[2][k]);
                w[c] = wxy * wa[2][k];
            }
        }
}

// Points are clamped to the unit cube and NaN read as 0, as hashgrid.py does.
inline void load_point(const float *x, float p[3]) {
    for (int a = 0; a < 3; ++a) {
        float v = x[a];
        if (std::isnan(v)) v = 0.0f;
        p[a] = std::min(std::max(v, 0.0f), 1.0f);
    }
}

std::vector<Level> levels_of(const at::Tensor &res, const at::Tensor &offsets, const at::Tensor &dense) {
    check(res, "resolutions", at::kLong);
    check(offsets, "offsets", at::kLong);
    check(dense, "dense", at::kBool);
    const int64_t L = res.numel();
    std::vector<Level> out(L);
    for (int64_t l = 0; l < L; ++l) {
        const int64_t r = res.data_ptr<int64_t>()[l];
        out[l] = {(float)r, r + 1, offsets.data_ptr<int64_t>()[l], dense.data_ptr<bool>()[l]};
    }
    return out;
}

// Samples per block of the forward pass: a block walks one level's table at a time (at most T
// rows, in cache) and its outputs stay in cache across the levels.
constexpr int64_t kBlock = 2048;

// One level, samples [n0, n1): out[n, l, :] = s_n sum_c w_c table[row_c, :], s_n = scale[n] (1
// without a scale). F as a template parameter for the common F = 2 (the inner loops unroll).
template <int64_t FT>
inline void encode_level(const float *xp, const float *tp, float *op, const bool *kp, const float *sp, int64_t n0,
                         int64_t n1, const Level &lv, int64_t l, int64_t L, int64_t Frt, uint64_t mask) {
    const int64_t F = FT > 0 ? FT : Frt;
    int64_t rows[8];
    float w[8];
    for (int64_t n = n0; n < n1; ++n) {
        if (kp != nullptr && !kp[n]) continue;  // masked out: no lookups at all
        float p[3];
        load_point(xp + 3 * n, p);
        corners(p, lv, mask, rows, w);
        float acc[FT > 0 ? FT : 1] = {};
        float *o = op + n * L * F + l * F;
        if constexpr (FT > 0) {
            for (int c = 0; c < 8; ++c) {
                const float *row = tp + rows[c] * F;
                for (int64_t f = 0; f < F; ++f) acc[f] += w[c] * row[f];
            }
            const float s = sp != nullptr ? sp[n] : 1.0f;
            for (int64_t f = 0; f < F; ++f) o[f] = s * acc[f];
        } else {
            for (int c = 0; c < 8; ++c) {
                const float *row = tp + rows[c] * F;
                for (int64_t f = 0; f < F; ++f) o[f] += w[c] * row[f];
            }
            if (sp != nullptr)
                for (int64_t f = 0; f < F; ++f) o[f] *= sp[n];
        }
    }
}

// x [N, 3] in [0, 1], table [rows, F] -> [N, L * F]. HollowNeRF's saliency (Xie et al., ICCV 2023),
// fused: keep [N] bool (optional): samples with keep = false skip their lookups and get zero
// features; scale [N] (optional): each sample's features are multiplied by its saliency.
at::Tensor hash_encode_fwd(const at::Tensor &x, const at::Tensor &table, const at::Tensor &res,
                           const at::Tensor &offsets, const at::Tensor &dense, int64_t table_size,
                           const std::optional<at::Tensor> &keep, const std::optional<at::Tensor> &scale) {
    check(x, "x");
    check(table, "table");
    if (keep.has_value()) {
        check(*keep, "keep", at::kBool);
        TORCH_CHECK(keep->numel() == x.size(0), "keep must have one value per point");
    }
    if (scale.has_value()) {
        check(*scale, "scale");
        TORCH_CHECK(scale->numel() == x.size(0), "scale must have one value per point");
    }
    const auto lv = levels_of(res, offsets, dense);
    const int64_t N = x.size(0), L = (int64_t)lv.size(), F = table.size(1);
    const uint64_t mask = (uint64_t)table_size - 1;
    at::Tensor out = at::zeros({N, L * F}, x.options());
    const float *xp = x.data_ptr<float>(), *tp = table.data_ptr<float>();
    float *op = out.data_ptr<float>();
    const bool *kp = keep.has_value() ? keep->data_ptr<bool>() : nullptr;
    const float *sp = scale.has_value() ? scale->data_ptr<float>() : nullptr;
    const int64_t blocks = (N + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t n0 = b * kBlock, n1 = std::min(N, n0 + kBlock);
        for (int64_t l = 0; l < L; ++l) {
            if (F == 2) encode_level<2>(xp, tp, op, kp, sp, n0, n1, lv[l], l, L, F, mask);
            else encode_level<0>(xp, tp, op, kp, sp, n0, n1, lv[l], l, L, F, mask);
        }
    }
    return out;
}

// One level's share of the backward pass. Table: row_c += s_n w_c g (s_n = scale[n] or 1).
// Saliency (when dp is given): dp[n] = sum_f g_f feat_f, the level's term of d out / d s_n, with
// feat the unscaled feature (the same corner lookups again).
template <int64_t FT>
inline void grad_level(const float *xp, const float *gp, const float *tp, float *gt, float *dp, const bool *kp,
                       const float *sp, int64_t N, const Level &lv, int64_t l, int64_t L, int64_t Frt,
                       uint64_t mask) {
    const int64_t F = FT > 0 ? FT : Frt;
    int64_t rows[8];
    float w[8];
    for (int64_t n = 0; n < N; ++n) {
        if (kp != nullptr && !kp[n]) continue;
        float p[3];
        load_point(xp + 3 * n, p);
        corners(p, lv, mask, rows, w);
        const float *g = gp + n * L * F + l * F;
        const float s = sp != nullptr ? sp[n] : 1.0f;
        if (gt != nullptr) {
            for (int c = 0; c < 8; ++c) {
                float *row = gt + rows[c] * F;
                const float ws = w[c] * s;
                for (int64_t f = 0; f < F; ++f) row[f] += ws * g[f];
            }
        }
        if (dp != nullptr) {
            float dot = 0.0f;
            for (int c = 0; c < 8; ++c) {
                const float *row = tp + rows[c] * F;
                float d = 0.0f;
                for (int64_t f = 0; f < F; ++f) d += row[f] * g[f];
                dot += w[c] * d;
            }
            dp[n] = dot;
        }
    }
}

// Gradients of the table and (when scale is given and want_scale) of the scale. One thread per
// level (levels own disjoint rows), samples in order; the scale's per-level terms go to an
// [L, N] buffer summed over levels in order afterwards: the same bits on any thread count.
std::tuple<at::Tensor, at::Tensor> hash_encode_bwd(const at::Tensor &x, const at::Tensor &grad_out, int64_t n_rows,
                                                   const at::Tensor &res, const at::Tensor &offsets,
                                                   const at::Tensor &dense, int64_t table_size,
                                                   const std::optional<at::Tensor> &keep,
                                                   const std::optional<at::Tensor> &scale,
                                                   const std::optional<at::Tensor> &table, bool want_table,
                                                   bool want_scale) {
    check(x, "x");
    check(grad_out, "grad_out");
    const auto lv = levels_of(res, offsets, dense);
    const int64_t N = x.size(0), L = (int64_t)lv.size(), F = grad_out.size(1) / L;
    const uint64_t mask = (uint64_t)table_size - 1;
    if (keep.has_value()) check(*keep, "keep", at::kBool);
    if (scale.has_value()) check(*scale, "scale");
    want_scale = want_scale && scale.has_value();
    TORCH_CHECK(!want_scale || table.has_value(), "the saliency gradient needs the table");
    if (want_scale) check(*table, "table");
    at::Tensor grad = want_table ? at::zeros({n_rows, F}, x.options()) : at::zeros({0, F}, x.options());
    at::Tensor part = want_scale ? at::zeros({L, N}, x.options()) : at::zeros({0}, x.options());
    const float *xp = x.data_ptr<float>(), *gp = grad_out.data_ptr<float>();
    const float *tp = want_scale ? table->data_ptr<float>() : nullptr;
    float *gt = want_table ? grad.data_ptr<float>() : nullptr;
    float *pp = want_scale ? part.data_ptr<float>() : nullptr;
    const bool *kp = keep.has_value() ? keep->data_ptr<bool>() : nullptr;
    const float *sp = scale.has_value() ? scale->data_ptr<float>() : nullptr;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t l = 0; l < L; ++l) {
        float *dp = pp != nullptr ? pp + l * N : nullptr;
        if (F == 2) grad_level<2>(xp, gp, tp, gt, dp, kp, sp, N, lv[l], l, L, F, mask);
        else grad_level<0>(xp, gp, tp, gt, dp, kp, sp, N, lv[l], l, L, F, mask);
    }
    at::Tensor gscale = want_scale ? at::zeros({N}, x.options()) : at::zeros({0}, x.options());
    if (want_scale) {
        float *gs = gscale.data_ptr<float>();
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            float acc = 0.0f;
            for (int64_t l = 0; l < L; ++l) acc += pp[l * N + n];
            gs[n] = acc;
        }
    }
    return {grad, gscale};
}

// -- occupancy-grid marching -----------------------------------------------------------------------
struct Grid {
    const bool *bin;
    const float *aabbs;
    int64_t L, rx, ry, rz;
};

// volume.py occupied(): the finest level whose box holds p decides; outside every box: empty.
inline bool occupied_at(const Grid &g, const float p[3]) {
    for (int64_t l = 0; l < g.L; ++l) {
        const float *box = g.aabbs + 6 * l;
        float u[3];
        bool inside = true;
        for (int a = 0; a < 3; ++a) {
            u[a] = (p[a] - box[a]) / (box[a + 3] - box[a]);
            inside = inside && u[a] >= 0.0f && u[a] <= 1.0f;
        }
        if (!inside) continue;
        const int64_t r[3] = {g.rx, g.ry, g.rz};
        int64_t c[3];
        for (int a = 0; a < 3; ++a) c[a] = std::min(std::max((int64_t)(u[a] * (float)r[a]), (int64_t)0), r[a] - 1);
        return g.bin[((l * g.rx + c[0]) * g.ry + c[1]) * g.rz + c[2]];
    }
    return false;
}

// Sample k of a ray spans [t_k, t_{k+1}): closed form for uniform steps, else nerfacc's _calc_dt.
inline float next_t(float t0, float t, int64_t k, float step, float cone) {
    if (cone == 0.0f) return t0 + (float)(k + 1) * step;
    return t + std::min(std::max(t * cone, step), 1e10f);
}

template <typename Emit>
inline float march_ray(const float *o, const float *d, float t0, float t1, const Grid &g, float step, float cone,
                       int64_t max_samples, Emit emit) {
    float t = t0;
    int64_t kept = 0;
    for (int64_t k = 0;; ++k) {
        const float tn = next_t(t0, t, k, step, cone);
        const float mid = (t + tn) * 0.5f;
        if (!(mid < t1)) break;
        float p[3];
        for (int a = 0; a < 3; ++a) p[a] = o[a] + mid * d[a];
        if (occupied_at(g, p)) {
            emit(t, tn);
            if (max_samples > 0 && ++kept == max_samples) return tn;
        }
        t = tn;
    }
    return std::max(t0, t1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> march(
    const at::Tensor &rays_o, const at::Tensor &rays_d, const at::Tensor &t_start, const at::Tensor &t_end,
    const at::Tensor &binaries, const at::Tensor &aabbs, double step, double cone_angle, int64_t max_samples) {
    check(rays_o, "rays_o");
    check(rays_d, "rays_d");
    check(t_start, "t_start");
    check(t_end, "t_end");
    check(binaries, "binaries", at::kBool);
    check(aabbs, "aabbs");
    const int64_t R = rays_o.size(0);
    const Grid g{binaries.data_ptr<bool>(), aabbs.data_ptr<float>(), binaries.size(0), binaries.size(1),
                 binaries.size(2), binaries.size(3)};
    const float st = (float)step, cone = (float)cone_angle;
    const float *o = rays_o.data_ptr<float>(), *d = rays_d.data_ptr<float>();
    const float *t0 = t_start.data_ptr<float>(), *t1 = t_end.data_ptr<float>();
    at::Tensor info = at::empty({R, 2}, rays_o.options().dtype(at::kLong));
    at::Tensor t_next = at::empty({R}, rays_o.options());
    int64_t *ip = info.data_ptr<int64_t>();
    float *tn = t_next.data_ptr<float>();
    // Pass 1: count; pass 2 (after the prefix sum): write.
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t r = 0; r < R; ++r) {
        int64_t n = 0;
        tn[r] = march_ray(o + 3 * r, d + 3 * r, t0[r], t1[r], g, st, cone, max_samples,
                          [&](float, float) { ++n; });
        ip[2 * r + 1] = n;
    }
    int64_t total = 0;
    for (int64_t r = 0; r < R; ++r) {
        ip[2 * r] = total;
        total += ip[2 * r + 1];
    }
    at::Tensor ray_idx = at::empty({total}, info.options());
    at::Tensor ts = at::empty({total}, rays_o.options()), te = at::empty({total}, rays_o.options());
    int64_t *ri = ray_idx.data_ptr<int64_t>();
    float *tsp = ts.data_ptr<float>(), *tep = te.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t r = 0; r < R; ++r) {
        int64_t i = ip[2 * r];
        march_ray(o + 3 * r, d + 3 * r, t0[r], t1[r], g, st, cone, max_samples, [&](float a, float b) {
            ri[i] = r;
            tsp[i] = a;
            tep[i] = b;
            ++i;
        });
    }
    return {ray_idx, ts, te, info, t_next};
}

// -- packed volume rendering -----------------------------------------------------------------------
// alpha = 1 - exp(-sigma dt), T_i = exp(-sum_{j<i} sigma_j dt_j) (the sum in double, as
// render_torch's float64 cumulative sum), w = T alpha. Outputs per ray: sum w v [R, C], sum w [R],
// sum w t_mid [R].
std::tuple<at::Tensor, at::Tensor, at::Tensor> volrend_fwd(const at::Tensor &sigmas, const at::Tensor &values,
                                                           const at::Tensor &t_starts, const at::Tensor &t_ends,
                                                           const at::Tensor &packed_info) {
    check(sigmas, "sigmas");
    check(values, "values");
    check(t_starts, "t_starts");
    check(t_ends, "t_ends");
    check(packed_info, "packed_info", at::kLong);
    const int64_t R = packed_info.size(0), C = values.size(1);
    at::Tensor colors = at::zeros({R, C}, values.options()), opac = at::zeros({R}, values.options()),
               depth = at::zeros({R}, values.options());
    const float *s = sigmas.data_ptr<float>(), *v = values.data_ptr<float>(), *a = t_starts.data_ptr<float>(),
                *b = t_ends.data_ptr<float>();
    const int64_t *ip = packed_info.data_ptr<int64_t>();
    float *cp = colors.data_ptr<float>(), *op = opac.data_ptr<float>(), *dp = depth.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t r = 0; r < R; ++r) {
        double cum = 0.0;
        const int64_t i0 = ip[2 * r], n = ip[2 * r + 1];
        for (int64_t i = i0; i < i0 + n; ++i) {
            const float sdt = s[i] * (b[i] - a[i]);
            const float T = (float)std::exp(-cum);
            const float w = T * (1.0f - std::exp(-sdt));
            for (int64_t c = 0; c < C; ++c) cp[r * C + c] += w * v[i * C + c];
            op[r] += w;
            dp[r] += w * ((a[i] + b[i]) * 0.5f);
            cum += (double)sdt;
        }
    }
    return {colors, opac, depth};
}

// Gradients w.r.t. sigmas and values. For any accumulated S = sum_j w_j q_j:
// dS/dsigma_i = dt_i (T_{i+1} q_i - (S - S_{<=i})), dS/dq_i = w_i.
std::tuple<at::Tensor, at::Tensor> volrend_bwd(const at::Tensor &sigmas, const at::Tensor &values,
                                               const at::Tensor &t_starts, const at::Tensor &t_ends,
                                               const at::Tensor &packed_info, const at::Tensor &colors,
                                               const at::Tensor &opac, const at::Tensor &depth,
                                               const at::Tensor &g_colors, const at::Tensor &g_opac,
                                               const at::Tensor &g_depth) {
    for (auto *t : {&colors, &opac, &depth, &g_colors, &g_opac, &g_depth}) check(*t, "render output or gradient");
    const int64_t R = packed_info.size(0), C = values.size(1), S = sigmas.size(0);
    at::Tensor gs = at::zeros({S}, sigmas.options()), gv = at::zeros({S, C}, values.options());
    const float *s = sigmas.data_ptr<float>(), *v = values.data_ptr<float>(), *a = t_starts.data_ptr<float>(),
                *b = t_ends.data_ptr<float>();
    const int64_t *ip = packed_info.data_ptr<int64_t>();
    const float *cp = colors.data_ptr<float>(), *op = opac.data_ptr<float>(), *dp = depth.data_ptr<float>();
    const float *gcp = g_colors.data_ptr<float>(), *gop = g_opac.data_ptr<float>(), *gdp = g_depth.data_ptr<float>();
    float *gsp = gs.data_ptr<float>(), *gvp = gv.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t r = 0; r < R; ++r) {
        const int64_t i0 = ip[2 * r], n = ip[2 * r + 1];
        // The total left to come, as one number: g_C . (C - C_<=i) + g_O (O - O_<=i) + g_D (D - D_<=i).
        double rest = (double)gop[r] * op[r] + (double)gdp[r] * dp[r];
        for (int64_t c = 0; c < C; ++c) rest += (double)gcp[r * C + c] * cp[r * C + c];
        double cum = 0.0;
        for (int64_t i = i0; i < i0 + n; ++i) {
            const float dt = b[i] - a[i];
            const float sdt = s[i] * dt;
            const double T = std::exp(-cum);
            const double w = T * (1.0 - std::exp(-(double)sdt));
            const float mid = (a[i] + b[i]) * 0.5f;
            double q = (double)gop[r] + (double)gdp[r] * mid;
            for (int64_t c = 0; c < C; ++c) {
                q += (double)gcp[r * C + c] * v[i * C + c];
                gvp[i * C + c] = (float)(w * gcp[r * C + c]);
            }
            rest -= w * q;
            cum += (double)sdt;
            gsp[i] = (float)(dt * (std::exp(-cum) * q - rest));
        }
    }
    return {gs, gv};
}

void set_num_threads(int64_t n) {
#ifdef _OPENMP
    omp_set_num_threads((int)std::max<int64_t>(1, n));
#endif
}

}  // namespace

TORCH_LIBRARY(splatkit_nerf, m) {
    m.def("hash_encode_fwd", &hash_encode_fwd);
    m.def("hash_encode_bwd", &hash_encode_bwd);
    m.def("march", &march);
    m.def("volrend_fwd", &volrend_fwd);
    m.def("volrend_bwd", &volrend_bwd);
    m.def("set_num_threads", &set_num_threads);
}
