// CPU kernels of splatkit's Gaussian rasterizer: tile binning, forward compositing and its
// hand-written backward. They follow gsplat 1.5.3's CUDA kernels rule for rule (IntersectTile.cu,
// RasterizeToPixels3DGSFwd.cu, RasterizeToPixels3DGSBwd.cu: pixel centres at +0.5, alpha =
// min(0.999, o exp(-sigma)), skip alpha < 1/255, stop before T <= 1e-4, backward in reverse order
// recovering T from the final one) so the "cpu" and "gsplat" backends render the same images;
// splatkit/render/torch_impl.py is the PyTorch reference the tests compare them with.
//
// Layout: I images (cameras), N Gaussians per image, all float32 and contiguous:
//   means2d [I,N,2], conics [I,N,3] (a, b, c of the inverse 2D covariance), colors [I,N,D],
//   opacities [I,N]; tiles are tile_size x tile_size pixels, row-major, per image.
// Speed: each tile's Gaussians are copied into structure-of-arrays form and split into 4x4-pixel
// block lists (only those whose alpha >= 1/255 region reaches the block), and the pixels of a
// block row are processed 4 at a time with SIMD vectors.
// Parallelism: OpenMP over tiles (dynamic schedule). The backward writes each tile's per-Gaussian
// gradient sums into rows of a [n_isects, K] array that only that tile owns (race-free, no
// atomics), then reduces them per Gaussian in a fixed order: results do not depend on the number
// of threads.

// Only the ATen core and op-registration headers (not torch/extension.h, whose pybind11 and
// full ATen include tree take ~6x longer to compile); the ops are called via torch.ops.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace {

// gsplat/cuda/include/Common.h and the rasterization kernels.
constexpr float kAlphaThreshold = 1.f / 255.f;
constexpr float kMaxAlpha = 0.999f;
constexpr float kTransmittanceEps = 1e-4f;
// Channels composited per call; wider features are split into chunks by the Python side,
// as gsplat does with channel_chunk.
constexpr int kMaxChannels = 32;

void check_f32(const at::Tensor &t, const char *name) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_i32(const at::Tensor &t, const char *name) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(t.scalar_type() == at::kInt, name, " must be int32");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Order-preserving map of a float to uint32 (negative depths sort before positive ones).
inline uint32_t float_key(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Largest sigma at which a Gaussian can still pass alpha >= 1/255: lets the pixel loops skip
// exp() for pixels far from its centre. The margin covers float rounding in exp and the product,
// so the exact test below still decides every borderline case.
inline float sigma_cutoff(float opacity) {
    if (!(opacity >= kAlphaThreshold)) return -1.f;  // never visible (sigma >= 0 always fails)
    return static_cast<float>(std::log(static_cast<double>(opacity) / kAlphaThreshold)) + 1e-3f;
}


}  // namespace

// ------------------------------------------------------------------------------------------
// Tile binning: every (image, Gaussian) with radii > 0 is listed in each tile its radius box
// touches; each tile's list is sorted by (depth, Gaussian index), front to back.
// Returns tiles_per_gauss [I,N] int32, isect_ids [M] int64 (gsplat's image|tile|depth keys),
// flatten_ids [M] int32 (index into I*N) and isect_offsets [I,th,tw] int32.
std::vector<at::Tensor> bin_tiles(
    const at::Tensor &means2d, const at::Tensor &radii, const at::Tensor &depths,
    int64_t tile_size, int64_t tile_width, int64_t tile_height) {
    check_f32(means2d, "means2d");
    check_i32(radii, "radii");
    check_f32(depths, "depths");
    const int64_t I = depths.size(0), N = depths.size(1);
    const int64_t n_tiles = tile_width * tile_height;
    const float *xy = means2d.data_ptr<float>();
    const int32_t *rad = radii.data_ptr<int32_t>();
    const float *dep = depths.data_ptr<float>();

    auto tiles_per_gauss = at::zeros({I, N}, radii.options());
    auto offsets = at::zeros({I, tile_height, tile_width}, radii.options());
    int32_t *tpg = tiles_per_gauss.data_ptr<int32_t>();
    int32_t *off = offsets.data_ptr<int32_t>();

    // Tile rectangles [x0, x1) x [y0, y1) exactly as IntersectTile.cu computes them.
    std::vector<int32_t> rect(static_cast<size_t>(I * N) * 4);
#pragma omp parallel for schedule(dynamic, 2048)
    for (int64_t g = 0; g < I * N; ++g) {
        int32_t *r = &rect[g * 4];
        r[0] = r[1] = r[2] = r[3] = 0;
        tpg[g] = 0;
        const float rx = static_cast<float>(rad[g * 2]), ry = static_cast<float>(rad[g * 2 + 1]);
        if (rx <= 0.f || ry <= 0.f) continue;
        const float ts = static_cast<float>(tile_size);
        const float tx = xy[g * 2] / ts, ty = xy[g * 2 + 1] / ts;
        const float trx = rx / ts, try_ = ry / ts;
        auto clampf = [](float v, int64_t hi) {
            return static_cast<int32_t>(std::min(std::max(v, 0.f), static_cast<float>(hi)));
        };
        r[0] = clampf(std::floor(tx - trx), tile_width);
        r[1] = clampf(std::ceil(tx + trx), tile_width);
        r[2] = clampf(std::floor(ty - try_), tile_height);
        r[3] = clampf(std::ceil(ty + try_), tile_height);
        tpg[g] = std::max(0, r[1] - r[0]) * std::max(0, r[3] - r[2]);
    }

    // Counting sort by tile (Gaussians enter each list in index order), then sort each list by
    // (depth key, list position), which keeps index order among equal depths as gsplat's stable
    // radix sort does.
    std::vector<int64_t> counts(static_cast<size_t>(I * n_tiles) + 1, 0);
    for (int64_t g = 0; g < I * N; ++g) {
        if (tpg[g] == 0) continue;
        const int32_t *r = &rect[g * 4];
        const int64_t base = (g / N) * n_tiles;
        for (int32_t y = r[2]; y < r[3]; ++y)
            for (int32_t x = r[0]; x < r[1]; ++x) counts[base + y * tile_width + x + 1]++;
    }
    for (int64_t t = 0; t < I * n_tiles; ++t) counts[t + 1] += counts[t];
    const int64_t n_isects = counts[I * n_tiles];
    TORCH_CHECK(n_isects < std::numeric_limits<int32_t>::max(), "too many tile intersections");
    for (int64_t t = 0; t < I * n_tiles; ++t) off[t] = static_cast<int32_t>(counts[t]);

    auto flatten_ids = at::empty({n_isects}, radii.options());
    auto isect_ids = at::empty({n_isects}, radii.options().dtype(at::kLong));
    int32_t *fid = flatten_ids.data_ptr<int32_t>();
    int64_t *iid = isect_ids.data_ptr<int64_t>();
    {
        std::vector<int64_t> cursor(counts.begin(), counts.end() - 1);
        for (int64_t g = 0; g < I * N; ++g) {
            if (tpg[g] == 0) continue;
            const int32_t *r = &rect[g * 4];
            const int64_t base = (g / N) * n_tiles;
            for (int32_t y = r[2]; y < r[3]; ++y)
                for (int32_t x = r[0]; x < r[1]; ++x)
                    fid[cursor[base + y * tile_width + x]++] = static_cast<int32_t>(g);
        }
    }
    int tile_bits = 0;
    while ((int64_t(1) << tile_bits) <= n_tiles) ++tile_bits;  // n_tiles.bit_length()

#pragma omp parallel
    {
        std::vector<uint64_t> keys;
#pragma omp for schedule(dynamic, 4)
        for (int64_t t = 0; t < I * n_tiles; ++t) {
            const int64_t s = counts[t], e = counts[t + 1];
            if (e == s) continue;
            keys.resize(e - s);
            for (int64_t k = s; k < e; ++k)
                keys[k - s] = (static_cast<uint64_t>(float_key(dep[fid[k]])) << 32) |
                              static_cast<uint64_t>(k - s);
            std::sort(keys.begin(), keys.end());
            std::vector<int32_t> ids(fid + s, fid + e);
            const int64_t image = t / n_tiles, tile = t % n_tiles;
            for (int64_t k = s; k < e; ++k) {
                const int32_t g = ids[keys[k - s] & 0xFFFFFFFFu];
                fid[k] = g;
                uint32_t bits;
                std::memcpy(&bits, &dep[g], 4);
                iid[k] = (image << (32 + tile_bits)) | (tile << 32) | static_cast<int64_t>(bits);
            }
        }
    }
    return {tiles_per_gauss, isect_ids, flatten_ids, offsets};
}

namespace {

// Pixels are processed in kSub x kSub blocks, each with its own front-to-back list of the tile's
// Gaussians that can reach it: with Gaussians a few pixels wide in 16x16 tiles this cuts the
// per-pixel work ~3x. Each Gaussian is appended directly to the blocks its box overlaps.
constexpr int kSub = 4;

struct Geometry {
    int64_t I, N, width, height, tile_size, tile_width, tile_height, n_isects;
    const int32_t *off, *fid;
    int64_t n_tiles() const { return tile_width * tile_height; }
    int64_t range_end(int64_t t) const { return t + 1 < I * n_tiles() ? off[t + 1] : n_isects; }
};

// Per Gaussian (of I*N): the largest sigma that can pass alpha >= 1/255, and the half-widths of
// the box of the ellipse {d : 0.5 d^T Q d <= cut}, sqrt(2 cut (Q^-1)_ii), outside which it is
// skipped. The 1% + 0.01 px margin keeps the box conservative against float error in sigma; a
// negative cut means "never visible", an infinite half-width "cannot bound it".
struct Footprints {
    std::vector<float> cut, hx, hy;
    Footprints(int64_t n, const float *con, const float *opa) : cut(n), hx(n), hy(n) {
#pragma omp parallel for schedule(dynamic, 2048)
        for (int64_t g = 0; g < n; ++g) {
            cut[g] = sigma_cutoff(opa[g]);
            const double a = con[g * 3], b = con[g * 3 + 1], c = con[g * 3 + 2];
            const double det = a * c - b * b;
            if (cut[g] >= 0.f && det > 0.0 && std::isfinite(det)) {
                hx[g] = static_cast<float>(std::sqrt(2.0 * cut[g] * c / det) * 1.01 + 0.01);
                hy[g] = static_cast<float>(std::sqrt(2.0 * cut[g] * a / det) * 1.01 + 0.01);
            } else {
                hx[g] = hy[g] = std::numeric_limits<float>::infinity();
            }
        }
    }
};

// One tile: its Gaussians in list order (structure of arrays) and the block lists.
struct TileWork {
    std::vector<float> x, y, a, b, c, o, cut, col;
    std::vector<int32_t> lists, count;  // lists[block * M + n], n < count[block]
    int64_t image = 0, M = 0, x0 = 0, y0 = 0, x1 = 0, y1 = 0, nbx = 0, nby = 0;

    void load(const Geometry &geo, int64_t t, const float *xy, const float *con, const float *opa,
              const float *colors, int D, const Footprints &fp) {
        image = t / geo.n_tiles();
        const int64_t tile = t % geo.n_tiles();
        const int64_t s = geo.off[t];
        M = geo.range_end(t) - s;
        y0 = (tile / geo.tile_width) * geo.tile_size;
        x0 = (tile % geo.tile_width) * geo.tile_size;
        y1 = std::min(y0 + geo.tile_size, geo.height);
        x1 = std::min(x0 + geo.tile_size, geo.width);
        nbx = (x1 - x0 + kSub - 1) / kSub;
        nby = (y1 - y0 + kSub - 1) / kSub;
        for (auto *v : {&x, &y, &a, &b, &c, &o, &cut}) v->resize(M);
        col.resize(M * D);
        lists.resize(nbx * nby * M);
        count.assign(nbx * nby, 0);
        for (int64_t k = 0; k < M; ++k) {
            const int64_t g = geo.fid[s + k];
            x[k] = xy[g * 2];
            y[k] = xy[g * 2 + 1];
            a[k] = con[g * 3];
            b[k] = con[g * 3 + 1];
            c[k] = con[g * 3 + 2];
            o[k] = opa[g];
            cut[k] = fp.cut[g];
            for (int d = 0; d < D; ++d) col[k * D + d] = colors[g * D + d];
            if (cut[k] < 0.f) continue;  // never passes alpha >= 1/255
            // Pixel columns j with x - hx <= j + 0.5 <= x + hx, and rows likewise, clamped to the
            // tile (clamped as floats first, so huge boxes cannot overflow the conversion).
            const float jl = std::ceil(std::max(x[k] - fp.hx[g] - 0.5f, static_cast<float>(x0)));
            const float jh = std::floor(std::min(x[k] + fp.hx[g] - 0.5f, static_cast<float>(x1 - 1)));
            const float il = std::ceil(std::max(y[k] - fp.hy[g] - 0.5f, static_cast<float>(y0)));
            const float ih = std::floor(std::min(y[k] + fp.hy[g] - 0.5f, static_cast<float>(y1 - 1)));
            if (!(jl <= jh && il <= ih)) continue;
            const int64_t bx0 = (static_cast<int64_t>(jl) - x0) / kSub, bx1 = (static_cast<int64_t>(jh) - x0) / kSub;
            const int64_t by0 = (static_cast<int64_t>(il) - y0) / kSub, by1 = (static_cast<int64_t>(ih) - y0) / kSub;
            for (int64_t by = by0; by <= by1; ++by)
                for (int64_t bx = bx0; bx <= bx1; ++bx) {
                    const int64_t blk = by * nbx + bx;
                    lists[blk * M + count[blk]++] = static_cast<int32_t>(k);
                }
        }
    }
};

// ---- SIMD over the kSub pixels of a block row --------------------------------------------------
// GCC/Clang vector extensions of one 16-byte register: portable (SSE2 baseline on x86-64, NEON
// on ARM, no -march flag). Wider vectors spill: the per-pixel state (colour sums, T, masks) must
// stay in registers.
constexpr int kLanes = kSub;
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef int64_t vl __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf splat(float x) { return vf{} + x; }
inline vi splati(int32_t x) { return vi{} + x; }
inline bool any(vi m) {
#if defined(__SSE2__)
    return _mm_movemask_ps(reinterpret_cast<__m128 &>(m)) != 0;  // one instruction
#else
    const vl w = reinterpret_cast<vl &>(m);
    return (w[0] | w[1]) != 0;
#endif
}
inline float hsum(vf v) {
    float r = 0.f;
    for (int i = 0; i < kLanes; ++i) r += v[i];
    return r;
}

// exp(x) for x in [-88, 88], Cephes expf (relative error ~1e-7, like libm's and PyTorch's).
inline vf vexp(vf x) {
    x = x > splat(88.3762626647949f) ? splat(88.3762626647949f) : x;
    x = x < splat(-88.3762626647949f) ? splat(-88.3762626647949f) : x;
    vf fx = x * 1.44269504088896341f + 0.5f;
    vf fl = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);
    fl = fl > fx ? fl - 1.f : fl;  // floor
    x = x - fl * 0.693359375f;
    x = x - fl * -2.12194440e-4f;
    const vf z = x * x;
    vf y = splat(1.9875691500E-4f);
    y = y * x + 1.3981999507E-3f;
    y = y * x + 8.3334519073E-3f;
    y = y * x + 4.1665795894E-2f;
    y = y * x + 1.6666665459E-1f;
    y = y * x + 5.0000001201E-1f;
    y = y * z + x + 1.f;
    vi e = (__builtin_convertvector(fl, vi) + 127) << 23;
    return y * reinterpret_cast<vf &>(e);
}

// Lane l is pixel (i, j0 + l) of a block row.
struct Lanes {
    vf px, py;
    vi inside;
    Lanes(int64_t i, int64_t j0, int64_t j1) {
        for (int l = 0; l < kLanes; ++l) {
            px[l] = static_cast<float>(j0 + l) + 0.5f;
            py[l] = static_cast<float>(i) + 0.5f;
            inside[l] = (j0 + l < j1) ? -1 : 0;
        }
    }
};

// CD > 0: channel count known at compile time (unrolled loops: 1 = depth, 3 = RGB, 4 = RGB+depth);
// CD == 0: any other D <= 32, at runtime.
template <int CD>
void fwd_impl(const Geometry geo, const float *xy, const float *con, const float *colors,
              const float *opa, const float *bg, int D_rt, float *out_col, float *out_alpha,
              int32_t *last) {
    const int D = CD > 0 ? CD : D_rt;
    const int64_t width = geo.width, height = geo.height;
    const Footprints fp(geo.I * geo.N, con, opa);
#pragma omp parallel
    {
        TileWork tw;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < geo.I * geo.n_tiles(); ++t) {
            tw.load(geo, t, xy, con, opa, colors, D, fp);
            const int64_t image = tw.image;
            const float *bgi = bg ? bg + image * D : nullptr;
            const float *X = tw.x.data(), *Y = tw.y.data(), *A = tw.a.data(), *B = tw.b.data(),
                        *Cc = tw.c.data(), *O = tw.o.data(), *CUT = tw.cut.data();
            for (int64_t blk = 0; blk < tw.nbx * tw.nby; ++blk) {
                const int64_t i0 = tw.y0 + (blk / tw.nbx) * kSub, j0 = tw.x0 + (blk % tw.nbx) * kSub;
                const int64_t i1 = std::min(i0 + kSub, tw.y1), j1 = std::min(j0 + kSub, tw.x1);
                const int32_t *list = tw.lists.data() + blk * tw.M;
                const int32_t n = tw.count[blk];
                for (int64_t i = i0; i < i1; ++i) {
                const Lanes ln(i, j0, j1);
                vf acc[CD > 0 ? CD : kMaxChannels];
                for (int d = 0; d < D; ++d) acc[d] = splat(0.f);
                vf T = splat(1.f);
                vi done = ~ln.inside;
                vi n_used = splati(0);
                for (int32_t k = 0; k < n; ++k) {
                    const int32_t q = list[k];
                    const vf dx = X[q] - ln.px, dy = Y[q] - ln.py;
                    const vf sigma = 0.5f * (A[q] * dx * dx + Cc[q] * dy * dy) + B[q] * dx * dy;
                    vi m = ~((sigma > CUT[q]) | (sigma < 0.f) | done);
                    if (!any(m)) continue;
                    const vf ov = O[q] * vexp(-sigma);
                    const vf alpha = ov < kMaxAlpha ? ov : splat(kMaxAlpha);
                    m &= alpha >= kAlphaThreshold;
                    const vf next_T = T * (1.f - alpha);
                    const vi stop = m & (next_T <= kTransmittanceEps);  // exclusive, as gsplat
                    done |= stop;
                    m &= ~stop;
                    const vf vis = m ? alpha * T : splat(0.f);
                    const float *ck = tw.col.data() + static_cast<int64_t>(q) * D;
                    for (int d = 0; d < D; ++d) acc[d] += ck[d] * vis;
                    T = m ? next_T : T;
                    n_used = m ? splati(k + 1) : n_used;
                    if (!any(~done)) break;
                }
                for (int l = 0; l < kLanes; ++l) {
                    if (!ln.inside[l]) continue;
                    const int64_t pix = (image * height + i) * width + j0 + l;
                    out_alpha[pix] = 1.f - T[l];
                    for (int d = 0; d < D; ++d)
                        out_col[pix * D + d] = bgi ? acc[d][l] + T[l] * bgi[d] : acc[d][l];
                    last[pix] = n_used[l];
                }
                }
            }
        }
    }
}

template <int CD>
void bwd_impl(const Geometry geo, const float *xy, const float *con, const float *colors,
              const float *opa, const float *bg, int D_rt, const float *render_alpha,
              const int32_t *last, const float *v_col_out, const float *v_alpha_out, bool absgrad,
              float *isect_grad, int K) {
    const int D = CD > 0 ? CD : D_rt;
    const int64_t width = geo.width, height = geo.height;
    const Footprints fp(geo.I * geo.N, con, opa);
#pragma omp parallel
    {
        TileWork tw;
        // Per listed Gaussian, K lane-wise sums [x, y, a, b, c, o, |x|, |y|, colour...]; lanes are
        // added up once per tile rather than once per visit.
        std::vector<vf> acc;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < geo.I * geo.n_tiles(); ++t) {
            if (geo.range_end(t) == geo.off[t]) continue;
            tw.load(geo, t, xy, con, opa, colors, D, fp);
            const int64_t image = tw.image, M = tw.M, s = geo.off[t];
            acc.assign(static_cast<size_t>(M) * K, splat(0.f));
            const float *bgi = bg ? bg + image * D : nullptr;
            const float *X = tw.x.data(), *Y = tw.y.data(), *A = tw.a.data(), *B = tw.b.data(),
                        *Cc = tw.c.data(), *O = tw.o.data(), *CUT = tw.cut.data();
            for (int64_t blk = 0; blk < tw.nbx * tw.nby; ++blk) {
                const int64_t i0 = tw.y0 + (blk / tw.nbx) * kSub, j0 = tw.x0 + (blk % tw.nbx) * kSub;
                const int64_t i1 = std::min(i0 + kSub, tw.y1), j1 = std::min(j0 + kSub, tw.x1);
                const int32_t *list = tw.lists.data() + blk * tw.M;
                for (int64_t i = i0; i < i1; ++i) {
                const Lanes ln(i, j0, j1);
                vi n_used = splati(0);
                vf T_final = splat(1.f), v_a = splat(0.f), bg_dot = splat(0.f);
                vf v_c[CD > 0 ? CD : kMaxChannels], buf[CD > 0 ? CD : kMaxChannels];
                for (int d = 0; d < D; ++d) v_c[d] = buf[d] = splat(0.f);
                int32_t k_end = 0;
                for (int l = 0; l < kLanes; ++l) {
                    if (!ln.inside[l]) continue;
                    const int64_t pix = (image * height + i) * width + j0 + l;
                    n_used[l] = last[pix];
                    k_end = std::max(k_end, last[pix]);
                    T_final[l] = 1.f - render_alpha[pix];
                    v_a[l] = v_alpha_out[pix];
                    for (int d = 0; d < D; ++d) {
                        v_c[d][l] = v_col_out[pix * D + d];
                        if (bgi) bg_dot[l] += bgi[d] * v_col_out[pix * D + d];
                    }
                }
                vf T = T_final;
                for (int32_t k = k_end - 1; k >= 0; --k) {
                    const int32_t q = list[k];
                    const vf dx = X[q] - ln.px, dy = Y[q] - ln.py;
                    const vf sigma = 0.5f * (A[q] * dx * dx + Cc[q] * dy * dy) + B[q] * dx * dy;
                    vi m = (splati(k) < n_used) & ~((sigma > CUT[q]) | (sigma < 0.f));
                    if (!any(m)) continue;
                    const vf vis = vexp(-sigma);
                    const vf ov = O[q] * vis;
                    const vf alpha = ov < kMaxAlpha ? ov : splat(kMaxAlpha);
                    m &= alpha >= kAlphaThreshold;
                    if (!any(m)) continue;
                    // Transmittance in front of this Gaussian, recovered from the final one.
                    const vf ra = 1.f / (1.f - alpha);
                    T = m ? T * ra : T;
                    const vf fac = m ? alpha * T : splat(0.f);
                    const int64_t kk = q;
                    const float *ck = tw.col.data() + kk * D;
                    vf *g = acc.data() + kk * K;
                    vf v_alpha = splat(0.f);
                    for (int d = 0; d < D; ++d) {
                        g[8 + d] += fac * v_c[d];
                        v_alpha += (ck[d] * T - buf[d] * ra) * v_c[d];
                    }
                    v_alpha += T_final * ra * v_a;
                    if (bgi) v_alpha -= T_final * ra * bg_dot;
                    // Where alpha is clamped at 0.999 it depends on neither opacity nor sigma.
                    const vi free = m & (ov <= kMaxAlpha);
                    const vf v_sigma = free ? -ov * v_alpha : splat(0.f);
                    const vf gx = v_sigma * (A[q] * dx + B[q] * dy);
                    const vf gy = v_sigma * (B[q] * dx + Cc[q] * dy);
                    g[0] += gx;
                    g[1] += gy;
                    g[2] += 0.5f * v_sigma * dx * dx;
                    g[3] += v_sigma * dx * dy;
                    g[4] += 0.5f * v_sigma * dy * dy;
                    g[5] += free ? vis * v_alpha : splat(0.f);
                    if (absgrad) {
                        g[6] += gx < 0.f ? -gx : gx;
                        g[7] += gy < 0.f ? -gy : gy;
                    }
                    for (int d = 0; d < D; ++d) buf[d] += ck[d] * fac;
                }
                }
            }
            float *out = isect_grad + s * K;
            for (int64_t q = 0; q < M * K; ++q) out[q] = hsum(acc[q]);
        }
    }
}

template <typename F>
void dispatch_channels(int D, F &&f) {
    switch (D) {
        case 1: f(std::integral_constant<int, 1>{}); break;
        case 3: f(std::integral_constant<int, 3>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        default: f(std::integral_constant<int, 0>{}); break;
    }
}

struct Inputs {
    int64_t I, N, D, n_isects;
    const float *xy, *con, *col, *opa, *bg;
    const int32_t *off, *fid;
};

Inputs check_inputs(const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &colors,
                    const at::Tensor &opacities, const std::optional<at::Tensor> &backgrounds,
                    const at::Tensor &offsets, const at::Tensor &flatten_ids,
                    int64_t tile_width, int64_t tile_height) {
    check_f32(means2d, "means2d");
    check_f32(conics, "conics");
    check_f32(colors, "colors");
    check_f32(opacities, "opacities");
    check_i32(offsets, "isect_offsets");
    check_i32(flatten_ids, "flatten_ids");
    Inputs in;
    in.I = means2d.size(0);
    in.N = means2d.size(1);
    in.D = colors.size(2);
    TORCH_CHECK(in.D >= 1 && in.D <= kMaxChannels, "colors must have 1 to 32 channels per call");
    TORCH_CHECK(offsets.numel() == in.I * tile_width * tile_height, "isect_offsets has the wrong size");
    in.n_isects = flatten_ids.numel();
    in.xy = means2d.data_ptr<float>();
    in.con = conics.data_ptr<float>();
    in.col = colors.data_ptr<float>();
    in.opa = opacities.data_ptr<float>();
    in.bg = nullptr;
    if (backgrounds.has_value() && backgrounds->defined()) {
        check_f32(*backgrounds, "backgrounds");
        TORCH_CHECK(backgrounds->numel() == in.I * in.D, "backgrounds must be [I, D]");
        in.bg = backgrounds->data_ptr<float>();
    }
    in.off = offsets.data_ptr<int32_t>();
    in.fid = flatten_ids.data_ptr<int32_t>();
    return in;
}

}  // namespace

// Returns render_colors [I,H,W,D], render_alphas [I,H,W,1], and n_used [I,H,W] int32: how many
// entries of the pixel's block list the forward walked up to its last contributing Gaussian.
std::vector<at::Tensor> rasterize_fwd(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &colors,
    const at::Tensor &opacities, const std::optional<at::Tensor> &backgrounds,
    int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor &offsets, const at::Tensor &flatten_ids) {
    const int64_t tw = offsets.size(-1), th = offsets.size(-2);
    Inputs in = check_inputs(means2d, conics, colors, opacities, backgrounds, offsets, flatten_ids, tw, th);
    auto out_col = at::empty({in.I, height, width, in.D}, colors.options());
    auto out_alpha = at::empty({in.I, height, width, 1}, colors.options());
    auto last = at::empty({in.I, height, width}, offsets.options());
    const Geometry geo{in.I, in.N, width, height, tile_size, tw, th, in.n_isects, in.off, in.fid};
    dispatch_channels(static_cast<int>(in.D), [&](auto cd) {
        fwd_impl<decltype(cd)::value>(geo, in.xy, in.con, in.col, in.opa, in.bg,
                                      static_cast<int>(in.D), out_col.data_ptr<float>(),
                                      out_alpha.data_ptr<float>(), last.data_ptr<int32_t>());
    });
    return {out_col, out_alpha, last};
}

// Returns v_means2d [I,N,2], v_conics [I,N,3], v_colors [I,N,D], v_opacities [I,N] and, when
// absgrad, v_means2d_abs [I,N,2] (sum over pixels of |per-pixel dL/dmean2d|; else empty).
std::vector<at::Tensor> rasterize_bwd(
    const at::Tensor &means2d, const at::Tensor &conics, const at::Tensor &colors,
    const at::Tensor &opacities, const std::optional<at::Tensor> &backgrounds,
    int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor &offsets, const at::Tensor &flatten_ids,
    const at::Tensor &render_alphas, const at::Tensor &n_used,
    const at::Tensor &v_render_colors, const at::Tensor &v_render_alphas, bool absgrad) {
    const int64_t tw = offsets.size(-1), th = offsets.size(-2);
    Inputs in = check_inputs(means2d, conics, colors, opacities, backgrounds, offsets, flatten_ids, tw, th);
    check_f32(render_alphas, "render_alphas");
    check_i32(n_used, "n_used");
    check_f32(v_render_colors, "v_render_colors");
    check_f32(v_render_alphas, "v_render_alphas");
    const int K = 8 + static_cast<int>(in.D);
    std::vector<float> isect_grad(static_cast<size_t>(in.n_isects) * K);
    const Geometry geo{in.I, in.N, width, height, tile_size, tw, th, in.n_isects, in.off, in.fid};
    dispatch_channels(static_cast<int>(in.D), [&](auto cd) {
        bwd_impl<decltype(cd)::value>(geo, in.xy, in.con, in.col, in.opa, in.bg,
                                      static_cast<int>(in.D), render_alphas.data_ptr<float>(),
                                      n_used.data_ptr<int32_t>(), v_render_colors.data_ptr<float>(),
                                      v_render_alphas.data_ptr<float>(), absgrad,
                                      isect_grad.data(), K);
    });

    auto v_means2d = at::zeros({in.I, in.N, 2}, means2d.options());
    auto v_conics = at::zeros({in.I, in.N, 3}, means2d.options());
    auto v_colors = at::zeros({in.I, in.N, in.D}, means2d.options());
    auto v_opac = at::zeros({in.I, in.N}, means2d.options());
    at::Tensor v_abs = absgrad ? at::zeros({in.I, in.N, 2}, means2d.options()) : at::Tensor();
    float *vm = v_means2d.data_ptr<float>(), *vc = v_conics.data_ptr<float>(),
          *vcol = v_colors.data_ptr<float>(), *vo = v_opac.data_ptr<float>();
    float *va = absgrad ? v_abs.data_ptr<float>() : nullptr;
    const int64_t D = in.D;
    // Fixed-order reduction of the per-tile sums (tiles in order, so deterministic).
    for (int64_t k = 0; k < in.n_isects; ++k) {
        const int64_t g = in.fid[k];
        const float *r = &isect_grad[k * K];
        vm[g * 2] += r[0];
        vm[g * 2 + 1] += r[1];
        vc[g * 3] += r[2];
        vc[g * 3 + 1] += r[3];
        vc[g * 3 + 2] += r[4];
        vo[g] += r[5];
        if (va) {
            va[g * 2] += r[6];
            va[g * 2 + 1] += r[7];
        }
        for (int64_t d = 0; d < D; ++d) vcol[g * D + d] += r[8 + d];
    }
    return {v_means2d, v_conics, v_colors, v_opac, v_abs};
}

// Called by the Python side before each kernel with torch.get_num_threads(), for the calling
// thread (autograd may run backward on another one), so the kernels follow torch.set_num_threads
// even when this extension's OpenMP runtime is not the one torch uses.
void set_num_threads(int64_t n) {
#ifdef _OPENMP
    omp_set_num_threads(static_cast<int>(std::max<int64_t>(1, n)));
#endif
}

TORCH_LIBRARY(splatkit_cpu, m) {
    m.def("bin_tiles", &bin_tiles);
    m.def("rasterize_fwd", &rasterize_fwd);
    m.def("rasterize_bwd", &rasterize_bwd);
    m.def("set_num_threads", &set_num_threads);
}
