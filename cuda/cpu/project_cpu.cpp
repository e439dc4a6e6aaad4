// CPU kernels of splatkit's Gaussian rasterizer, part 2: EWA projection and SH colours, each with
// a hand-derived backward (vector-Jacobian product). Same maths and culling rules as gsplat 1.5.3
// (ProjectionEWA3DGSFused.cu, Utils.cuh persp_proj, SphericalHarmonicsCUDA.cu) and as the PyTorch
// reference splatkit/render/torch_impl.py, which the tests compare these against.
//
// Per (camera c, Gaussian n), with R, t the world-to-camera rotation/translation:
//   p = R mean + t = (x, y, z);   T = R Rq(q / |q|) diag(s)   (camera-space sqrt of the covariance)
//   J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]] with (tx, ty) = z * clamp((x, y)/z, 1.3 fov)
//   rows r0 = J_0 T, r1 = J_1 T;  cov2d = [[a, b], [b, c]] = [[r0.r0, r0.r1], [r0.r1, r1.r1]]
//   a' = a + eps2d, c' = c + eps2d, det = a' c' - b^2, conic = (c', -b, a') / det
//   compensation = sqrt(max(0, (a c - b^2) / det)),  mean2d = (fx x/z + cx, fy y/z + cy), depth = z.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr float kAlphaThreshold = 1.f / 255.f;
constexpr float kMaxExtend = 3.33f;

// Team size of the parallel regions below (set by splatkit_cpu::set_num_threads). Loops use
// dynamic chunks so that a thread descheduled on a busy machine does not hold the others up.
int threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int thread_index() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void check(const at::Tensor &t, const char *name, at::ScalarType st = at::kFloat) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(t.scalar_type() == st, name, " has the wrong dtype");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Rotation matrix (row-major) of the normalised quaternion wxyz.
inline void quat_to_rot(const float *qn, float R[9]) {
    const float w = qn[0], x = qn[1], y = qn[2], z = qn[3];
    R[0] = 1 - 2 * (y * y + z * z); R[1] = 2 * (x * y - w * z); R[2] = 2 * (x * z + w * y);
    R[3] = 2 * (x * y + w * z); R[4] = 1 - 2 * (x * x + z * z); R[5] = 2 * (y * z - w * x);
    R[6] = 2 * (x * z - w * y); R[7] = 2 * (y * z + w * x); R[8] = 1 - 2 * (x * x + y * y);
}

// Unit quaternion and the norm it was divided by (clamped as the PyTorch reference does).
inline float normalise_quat(const float *q, float qn[4]) {
    const float nrm = std::max(std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), 1e-12f);
    for (int i = 0; i < 4; ++i) qn[i] = q[i] / nrm;
    return nrm;
}

struct Camera {
    float R[9], t[3], fx, fy, cx, cy, lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;
    Camera(const float *viewmat, const float *K, int64_t width, int64_t height) {
        for (int i = 0; i < 3; ++i) {
            for (int j = 0; j < 3; ++j) R[i * 3 + j] = viewmat[i * 4 + j];
            t[i] = viewmat[i * 4 + 3];
        }
        fx = K[0]; fy = K[4]; cx = K[2]; cy = K[5];
        // Jacobian evaluated no further than 1.3x the field of view (gsplat persp_proj).
        const float tan_fovx = 0.5f * width / fx, tan_fovy = 0.5f * height / fy;
        lim_x_pos = (width - cx) / fx + 0.3f * tan_fovx;
        lim_x_neg = cx / fx + 0.3f * tan_fovx;
        lim_y_pos = (height - cy) / fy + 0.3f * tan_fovy;
        lim_y_neg = cy / fy + 0.3f * tan_fovy;
    }
};

// Everything the forward computes for one (camera, Gaussian), kept for the backward.
struct Proj {
    float p[3], M[9], T[9], rz, tx, ty, ux, uy, r0[3], r1[3], a, b, c, det;
    bool clamp_x, clamp_y;
};

inline void project_one(const Camera &cam, const float *mean, const float Rq[9], const float *s,
                        float eps2d, Proj &P) {
    for (int i = 0; i < 3; ++i)
        P.p[i] = cam.R[i * 3] * mean[0] + cam.R[i * 3 + 1] * mean[1] + cam.R[i * 3 + 2] * mean[2] + cam.t[i];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) P.M[i * 3 + j] = Rq[i * 3 + j] * s[j];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            P.T[i * 3 + j] = cam.R[i * 3] * P.M[j] + cam.R[i * 3 + 1] * P.M[3 + j] + cam.R[i * 3 + 2] * P.M[6 + j];
    const float x = P.p[0], y = P.p[1], z = P.p[2];
    P.rz = 1.f / z;
    const float xr = x * P.rz, yr = y * P.rz;
    P.ux = std::min(cam.lim_x_pos, std::max(-cam.lim_x_neg, xr));
    P.uy = std::min(cam.lim_y_pos, std::max(-cam.lim_y_neg, yr));
    P.clamp_x = xr > cam.lim_x_pos || xr < -cam.lim_x_neg;
    P.clamp_y = yr > cam.lim_y_pos || yr < -cam.lim_y_neg;
    P.tx = z * P.ux;
    P.ty = z * P.uy;
    const float rz2 = P.rz * P.rz;
    for (int j = 0; j < 3; ++j) {
        P.r0[j] = cam.fx * P.rz * P.T[j] - cam.fx * P.tx * rz2 * P.T[6 + j];
        P.r1[j] = cam.fy * P.rz * P.T[3 + j] - cam.fy * P.ty * rz2 * P.T[6 + j];
    }
    P.a = P.r0[0] * P.r0[0] + P.r0[1] * P.r0[1] + P.r0[2] * P.r0[2];
    P.b = P.r0[0] * P.r1[0] + P.r0[1] * P.r1[1] + P.r0[2] * P.r1[2];
    P.c = P.r1[0] * P.r1[0] + P.r1[1] * P.r1[1] + P.r1[2] * P.r1[2];
    P.det = (P.a + eps2d) * (P.c + eps2d) - P.b * P.b;
}

}  // namespace

// Returns radii [C,N,2] int32, means2d [C,N,2], depths [C,N], conics [C,N,3], compensations [C,N]
// (filled only when calc_compensations). Culled Gaussians get radii 0 (other outputs 0).
std::vector<at::Tensor> project_fwd(
    const at::Tensor &means, const at::Tensor &quats, const at::Tensor &scales,
    const std::optional<at::Tensor> &opacities, const at::Tensor &viewmats, const at::Tensor &Ks,
    int64_t width, int64_t height, double eps2d, double near_plane, double far_plane,
    double radius_clip, bool calc_compensations) {
    check(means, "means");
    check(quats, "quats");
    check(scales, "scales");
    check(viewmats, "viewmats");
    check(Ks, "Ks");
    const int64_t N = means.size(0), C = viewmats.size(0);
    const float *op = nullptr;
    if (opacities.has_value() && opacities->defined()) {
        check(*opacities, "opacities");
        op = opacities->data_ptr<float>();
    }
    auto fopt = means.options();
    auto radii = at::zeros({C, N, 2}, fopt.dtype(at::kInt));
    auto means2d = at::zeros({C, N, 2}, fopt);
    auto depths = at::zeros({C, N}, fopt);
    auto conics = at::zeros({C, N, 3}, fopt);
    auto comps = at::zeros({C, N}, fopt);
    const float *mp = means.data_ptr<float>(), *qp = quats.data_ptr<float>(), *sp = scales.data_ptr<float>();
    const float *vp = viewmats.data_ptr<float>(), *kp = Ks.data_ptr<float>();
    int32_t *rp = radii.data_ptr<int32_t>();
    float *m2 = means2d.data_ptr<float>(), *dp = depths.data_ptr<float>(), *cp = conics.data_ptr<float>(),
          *op_comp = comps.data_ptr<float>();
    std::vector<Camera> cams;
    for (int64_t c = 0; c < C; ++c) cams.emplace_back(vp + c * 16, kp + c * 9, width, height);
    const float eps = static_cast<float>(eps2d);

#pragma omp parallel for schedule(dynamic, 2048)
    for (int64_t n = 0; n < N; ++n) {
        float qn[4], Rq[9];
        normalise_quat(qp + n * 4, qn);
        quat_to_rot(qn, Rq);
        for (int64_t c = 0; c < C; ++c) {
            const Camera &cam = cams[c];
            const int64_t idx = c * N + n;
            // Depth test first: the rest is meaningless (and may divide by 0) behind the camera.
            const float z = cam.R[6] * mp[n * 3] + cam.R[7] * mp[n * 3 + 1] + cam.R[8] * mp[n * 3 + 2] + cam.t[2];
            if (!(z >= near_plane && z <= far_plane)) continue;
            Proj P;
            project_one(cam, mp + n * 3, Rq, sp + n * 3, eps, P);
            if (!(P.det > 0.f)) continue;
            const float a2 = P.a + eps, c2 = P.c + eps;
            const float det_orig = P.a * P.c - P.b * P.b;
            const float ratio = det_orig / P.det;
            const float comp = ratio > 0.f ? std::sqrt(ratio) : 0.f;
            float extend = kMaxExtend;
            if (op) {
                float o = op[n];
                if (calc_compensations) o *= comp;
                if (!(o >= kAlphaThreshold)) continue;
                // Opacity-aware bound (gsplat; arXiv:2402.00525 B.2): alpha < 1/255 beyond it.
                extend = std::min(extend, std::sqrt(2.f * std::log(o / kAlphaThreshold)));
            }
            const float rx = std::ceil(extend * std::sqrt(a2));
            const float ry = std::ceil(extend * std::sqrt(c2));
            if (rx <= radius_clip && ry <= radius_clip) continue;
            const float mx = cam.fx * P.p[0] * P.rz + cam.cx, my = cam.fy * P.p[1] * P.rz + cam.cy;
            if (mx + rx <= 0 || mx - rx >= width || my + ry <= 0 || my - ry >= height) continue;
            rp[idx * 2] = static_cast<int32_t>(rx);
            rp[idx * 2 + 1] = static_cast<int32_t>(ry);
            m2[idx * 2] = mx;
            m2[idx * 2 + 1] = my;
            dp[idx] = z;
            cp[idx * 3] = c2 / P.det;
            cp[idx * 3 + 1] = -P.b / P.det;
            cp[idx * 3 + 2] = a2 / P.det;
            if (calc_compensations) op_comp[idx] = comp;
        }
    }
    return {radii, means2d, depths, conics, comps};
}

// Backward of project_fwd for the Gaussians with radii > 0 (the others have no gradient, as in
// gsplat). v_compensations may be undefined. Returns v_means [N,3], v_quats [N,4], v_scales [N,3],
// v_viewmats [C,4,4].
std::vector<at::Tensor> project_bwd(
    const at::Tensor &means, const at::Tensor &quats, const at::Tensor &scales,
    const at::Tensor &viewmats, const at::Tensor &Ks, int64_t width, int64_t height, double eps2d,
    const at::Tensor &radii, const at::Tensor &v_means2d, const at::Tensor &v_depths,
    const at::Tensor &v_conics, const std::optional<at::Tensor> &v_compensations) {
    check(means, "means");
    check(quats, "quats");
    check(scales, "scales");
    check(viewmats, "viewmats");
    check(Ks, "Ks");
    check(radii, "radii", at::kInt);
    check(v_means2d, "v_means2d");
    check(v_depths, "v_depths");
    check(v_conics, "v_conics");
    const float *vcomp = nullptr;
    if (v_compensations.has_value() && v_compensations->defined()) {
        check(*v_compensations, "v_compensations");
        vcomp = v_compensations->data_ptr<float>();
    }
    const int64_t N = means.size(0), C = viewmats.size(0);
    auto fopt = means.options();
    auto v_means = at::zeros({N, 3}, fopt);
    auto v_quats = at::zeros({N, 4}, fopt);
    auto v_scales = at::zeros({N, 3}, fopt);
    const float *mp = means.data_ptr<float>(), *qp = quats.data_ptr<float>(), *sp = scales.data_ptr<float>();
    const float *vp = viewmats.data_ptr<float>(), *kp = Ks.data_ptr<float>();
    const int32_t *rp = radii.data_ptr<int32_t>();
    const float *vm2 = v_means2d.data_ptr<float>(), *vd = v_depths.data_ptr<float>(),
                *vc = v_conics.data_ptr<float>();
    float *gm = v_means.data_ptr<float>(), *gq = v_quats.data_ptr<float>(), *gs = v_scales.data_ptr<float>();
    std::vector<Camera> cams;
    for (int64_t c = 0; c < C; ++c) cams.emplace_back(vp + c * 16, kp + c * 9, width, height);
    const float eps = static_cast<float>(eps2d);
    // Viewmat gradients sum over all Gaussians: one accumulator per thread, reduced below.
    const int nt = threads();
    std::vector<double> vview(static_cast<size_t>(nt) * C * 12, 0.0);

#pragma omp parallel for schedule(dynamic, 2048)
    for (int64_t n = 0; n < N; ++n) {
        double *vv = vview.data() + static_cast<size_t>(thread_index()) * C * 12;
        float qn[4], Rq[9];
        const float qnorm = normalise_quat(qp + n * 4, qn);
        quat_to_rot(qn, Rq);
        const float *s = sp + n * 3;
        float v_M[9] = {0}, v_mean[3] = {0};
        bool any = false;
        for (int64_t c = 0; c < C; ++c) {
            const int64_t idx = c * N + n;
            if (rp[idx * 2] <= 0 || rp[idx * 2 + 1] <= 0) continue;
            any = true;
            const Camera &cam = cams[c];
            Proj P;
            project_one(cam, mp + n * 3, Rq, s, eps, P);
            const float a2 = P.a + eps, c2 = P.c + eps, det = P.det, b = P.b;
            const float id2 = 1.f / (det * det);
            // conic = (c', -b, a') / det
            const float g0 = vc[idx * 3], g1 = vc[idx * 3 + 1], g2 = vc[idx * 3 + 2];
            float v_a = -g0 * c2 * c2 * id2 + g1 * b * c2 * id2 + g2 * (1.f / det - a2 * c2 * id2);
            float v_c = g0 * (1.f / det - c2 * a2 * id2) + g1 * b * a2 * id2 - g2 * a2 * a2 * id2;
            float v_b = 2.f * b * (g0 * c2 + g2 * a2) * id2 + g1 * (-1.f / det - 2.f * b * b * id2);
            if (vcomp) {
                // comp = sqrt(r), r = (a c - b^2) / det
                const float det_orig = P.a * P.c - b * b;
                const float r = det_orig / det;
                if (r > 0.f) {
                    const float v_r = vcomp[idx] * 0.5f / std::sqrt(r);
                    v_a += v_r * (P.c / det - det_orig * c2 * id2);
                    v_c += v_r * (P.a / det - det_orig * a2 * id2);
                    v_b += v_r * (-2.f * b / det + det_orig * 2.f * b * id2);
                }
            }
            // a = r0.r0, b = r0.r1, c = r1.r1
            float v_r0[3], v_r1[3];
            for (int j = 0; j < 3; ++j) {
                v_r0[j] = 2.f * v_a * P.r0[j] + v_b * P.r1[j];
                v_r1[j] = 2.f * v_c * P.r1[j] + v_b * P.r0[j];
            }
            // r0 = fx rz T0 - fx tx rz^2 T2, r1 = fy rz T1 - fy ty rz^2 T2
            const float rz = P.rz, rz2 = rz * rz;
            float v_T[9];
            float T2v0 = 0.f, T2v1 = 0.f, T0v0 = 0.f, T1v1 = 0.f;
            for (int j = 0; j < 3; ++j) {
                v_T[j] = cam.fx * rz * v_r0[j];
                v_T[3 + j] = cam.fy * rz * v_r1[j];
                v_T[6 + j] = -cam.fx * P.tx * rz2 * v_r0[j] - cam.fy * P.ty * rz2 * v_r1[j];
                T0v0 += P.T[j] * v_r0[j];
                T1v1 += P.T[3 + j] * v_r1[j];
                T2v0 += P.T[6 + j] * v_r0[j];
                T2v1 += P.T[6 + j] * v_r1[j];
            }
            float v_rz = cam.fx * T0v0 + cam.fy * T1v1 - 2.f * rz * (cam.fx * P.tx * T2v0 + cam.fy * P.ty * T2v1);
            const float v_tx = -cam.fx * rz2 * T2v0, v_ty = -cam.fy * rz2 * T2v1;
            float v_p[3] = {0.f, 0.f, 0.f};
            // tx = z clamp(x/z): d/dx = 1 inside the limits; clamped, tx = z * limit.
            if (P.clamp_x) v_p[2] += v_tx * P.ux; else v_p[0] += v_tx;
            if (P.clamp_y) v_p[2] += v_ty * P.uy; else v_p[1] += v_ty;
            // mean2d = (fx x rz + cx, fy y rz + cy), depth = z
            const float gmx = vm2[idx * 2], gmy = vm2[idx * 2 + 1];
            v_p[0] += gmx * cam.fx * rz;
            v_p[1] += gmy * cam.fy * rz;
            v_rz += gmx * cam.fx * P.p[0] + gmy * cam.fy * P.p[1];
            v_p[2] += vd[idx] - v_rz * rz2;  // rz = 1/z
            // p = R mean + t;  T = R M
            double *vr = vv + c * 12;
            for (int i = 0; i < 3; ++i) {
                for (int j = 0; j < 3; ++j) {
                    v_mean[j] += cam.R[i * 3 + j] * v_p[i];
                    vr[i * 4 + j] += static_cast<double>(v_p[i]) * mp[n * 3 + j];
                    float acc = 0.f;
                    for (int k = 0; k < 3; ++k) {
                        v_M[j * 3 + k] += cam.R[i * 3 + j] * v_T[i * 3 + k];
                        acc += v_T[i * 3 + k] * P.M[j * 3 + k];
                    }
                    vr[i * 4 + j] += acc;
                }
                vr[i * 4 + 3] += v_p[i];
            }
        }
        if (!any) continue;
        for (int j = 0; j < 3; ++j) gm[n * 3 + j] = v_mean[j];
        // M = Rq diag(s)
        float V[9];
        for (int j = 0; j < 3; ++j) {
            gs[n * 3 + j] = v_M[j] * Rq[j] + v_M[3 + j] * Rq[3 + j] + v_M[6 + j] * Rq[6 + j];
            for (int i = 0; i < 3; ++i) V[i * 3 + j] = v_M[i * 3 + j] * s[j];
        }
        // Rq(w, x, y, z) of the unit quaternion, then through the normalisation.
        const float w = qn[0], x = qn[1], y = qn[2], z = qn[3];
        float vq[4];
        vq[0] = 2.f * (-z * V[1] + y * V[2] + z * V[3] - x * V[5] - y * V[6] + x * V[7]);
        vq[1] = 2.f * (y * V[1] + z * V[2] + y * V[3] - 2.f * x * V[4] - w * V[5] + z * V[6] + w * V[7] - 2.f * x * V[8]);
        vq[2] = 2.f * (-2.f * y * V[0] + x * V[1] + w * V[2] + x * V[3] + z * V[5] - w * V[6] + z * V[7] - 2.f * y * V[8]);
        vq[3] = 2.f * (-2.f * z * V[0] - w * V[1] + x * V[2] + w * V[3] - 2.f * z * V[4] + y * V[5] + x * V[6] + y * V[7]);
        const float dot = vq[0] * qn[0] + vq[1] * qn[1] + vq[2] * qn[2] + vq[3] * qn[3];
        for (int i = 0; i < 4; ++i) gq[n * 4 + i] = (vq[i] - qn[i] * dot) / qnorm;
    }

    auto v_viewmats = at::zeros({C, 4, 4}, fopt);
    float *gv = v_viewmats.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c)
        for (int e = 0; e < 12; ++e) {
            double sum = 0.0;
            for (int th = 0; th < nt; ++th) sum += vview[(static_cast<size_t>(th) * C + c) * 12 + e];
            gv[c * 16 + e] = static_cast<float>(sum);
        }
    return {v_means, v_quats, v_scales, v_viewmats};
}

// ---- spherical harmonics (degrees 0-3; constants of Sloan, JCGT 2013, as 3DGS/gsplat) -------
namespace {

constexpr float kC0 = 0.28209479177387814f, kC1 = 0.48860251190292f;
constexpr float kC2a = 0.5462742152960395f, kC2b = -1.092548430592079f, kC2c = 0.9461746957575601f,
                kC2d = 0.3153915652525201f;
constexpr float kC3a = -0.5900435899266435f, kC3b = 1.445305721320277f, kC3c = -2.285228997322329f,
                kC3d = 0.4570457994644658f, kC3e = 1.865881662950577f, kC3f = 1.119528997770346f;

// Basis values at the unit direction (x, y, z), and, when grad != nullptr, their derivatives
// w.r.t. x, y, z treated as independent (grad[k*3 + axis]).
inline int sh_basis(int degree, float x, float y, float z, float *B, float *grad) {
    B[0] = kC0;
    if (grad) grad[0] = grad[1] = grad[2] = 0.f;
    if (degree < 1) return 1;
    B[1] = -kC1 * y; B[2] = kC1 * z; B[3] = -kC1 * x;
    if (grad) {
        const float g[9] = {0, -kC1, 0, 0, 0, kC1, -kC1, 0, 0};
        std::copy(g, g + 9, grad + 3);
    }
    if (degree < 2) return 4;
    const float c1 = x * x - y * y, s1 = 2.f * x * y, z2 = z * z;
    B[4] = kC2a * s1; B[5] = kC2b * z * y; B[6] = kC2c * z2 - kC2d; B[7] = kC2b * z * x; B[8] = kC2a * c1;
    if (grad) {
        const float g[15] = {kC2a * 2 * y, kC2a * 2 * x, 0,
                             0, kC2b * z, kC2b * y,
                             0, 0, 2 * kC2c * z,
                             kC2b * z, 0, kC2b * x,
                             kC2a * 2 * x, -kC2a * 2 * y, 0};
        std::copy(g, g + 15, grad + 12);
    }
    if (degree < 3) return 9;
    const float c2 = x * c1 - y * s1, s2 = x * s1 + y * c1;
    const float tc = kC3c * z2 + kC3d;
    B[9] = kC3a * s2; B[10] = kC3b * z * s1; B[11] = tc * y; B[12] = z * (kC3e * z2 - kC3f);
    B[13] = tc * x; B[14] = kC3b * z * c1; B[15] = kC3a * c2;
    if (grad) {
        const float g[21] = {kC3a * 6 * x * y, kC3a * 3 * c1, 0,
                             kC3b * 2 * y * z, kC3b * 2 * x * z, kC3b * s1,
                             0, tc, 2 * kC3c * z * y,
                             0, 0, 3 * kC3e * z2 - kC3f,
                             tc, 0, 2 * kC3c * z * x,
                             kC3b * 2 * x * z, -kC3b * 2 * y * z, kC3b * c1,
                             kC3a * 3 * c1, -kC3a * 6 * x * y, 0};
        std::copy(g, g + 21, grad + 27);
    }
    return 16;
}

inline float unit_dir(const float *mean, const float *campos, float d[3]) {
    float v[3] = {mean[0] - campos[0], mean[1] - campos[1], mean[2] - campos[2]};
    const float nrm = std::max(std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]), 1e-12f);
    for (int i = 0; i < 3; ++i) d[i] = v[i] / nrm;
    return nrm;
}

}  // namespace

// colors [C,N,3] = max(0, sum_k basis_k(dir) coeffs_k + 0.5), dir = mean - campos.
// coeffs: [N,K,3] (shared by the cameras) or [C,N,K,3].
at::Tensor sh_fwd(int64_t degree, const at::Tensor &means, const at::Tensor &campos, const at::Tensor &coeffs) {
    check(means, "means");
    check(campos, "campos");
    check(coeffs, "coeffs");
    TORCH_CHECK(degree >= 0 && degree <= 3, "C++ SH supports degrees 0-3");
    const int64_t N = means.size(0), C = campos.size(0), K = coeffs.size(-2);
    const bool per_cam = coeffs.dim() == 4;
    auto out = at::empty({C, N, 3}, means.options());
    const float *mp = means.data_ptr<float>(), *cp = campos.data_ptr<float>(), *sh = coeffs.data_ptr<float>();
    float *op = out.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 2048)
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) {
            float d[3], B[16];
            unit_dir(mp + n * 3, cp + c * 3, d);
            const int nb = sh_basis(static_cast<int>(degree), d[0], d[1], d[2], B, nullptr);
            const float *co = sh + ((per_cam ? c * N : 0) + n) * K * 3;
            for (int ch = 0; ch < 3; ++ch) {
                float v = 0.f;
                for (int k = 0; k < nb; ++k) v += B[k] * co[k * 3 + ch];
                op[(c * N + n) * 3 + ch] = std::max(v + 0.5f, 0.f);
            }
        }
    }
    return out;
}

// Returns v_coeffs (shape of coeffs), v_means [N,3], v_campos [C,3].
std::vector<at::Tensor> sh_bwd(int64_t degree, const at::Tensor &means, const at::Tensor &campos,
                               const at::Tensor &coeffs, const at::Tensor &colors, const at::Tensor &v_colors) {
    check(means, "means");
    check(campos, "campos");
    check(coeffs, "coeffs");
    check(colors, "colors");
    check(v_colors, "v_colors");
    const int64_t N = means.size(0), C = campos.size(0), K = coeffs.size(-2);
    const bool per_cam = coeffs.dim() == 4;
    // Not zero-filled here: each Gaussian's rows are cleared in the parallel loop below (a
    // serial fill of [N, 16, 3] cost as much as the loop itself).
    auto v_coeffs = at::empty(coeffs.sizes(), coeffs.options());
    auto v_means = at::zeros({N, 3}, means.options());
    const float *mp = means.data_ptr<float>(), *cp = campos.data_ptr<float>(), *sh = coeffs.data_ptr<float>(),
                *col = colors.data_ptr<float>(), *vcol = v_colors.data_ptr<float>();
    float *gc = v_coeffs.data_ptr<float>(), *gm = v_means.data_ptr<float>();
    const int nt = threads();
    std::vector<double> vcam(static_cast<size_t>(nt) * C * 3, 0.0);
#pragma omp parallel for schedule(dynamic, 2048)
    for (int64_t n = 0; n < N; ++n) {
        double *vc = vcam.data() + static_cast<size_t>(thread_index()) * C * 3;
        for (int64_t c = 0; c < (per_cam ? C : 1); ++c)
            std::fill_n(gc + ((per_cam ? c * N : 0) + n) * K * 3, K * 3, 0.f);
        for (int64_t c = 0; c < C; ++c) {
            const int64_t idx = c * N + n;
            float g[3];
            bool live = false;
            for (int ch = 0; ch < 3; ++ch) {
                // colour = max(0, x + 0.5): no gradient where clamped (x + 0.5 < 0).
                g[ch] = col[idx * 3 + ch] > 0.f ? vcol[idx * 3 + ch] : 0.f;
                live |= g[ch] != 0.f;
            }
            if (!live) continue;
            float d[3], B[16], dB[48];
            const float nrm = unit_dir(mp + n * 3, cp + c * 3, d);
            const int nb = sh_basis(static_cast<int>(degree), d[0], d[1], d[2], B, degree > 0 ? dB : nullptr);
            const int64_t base = ((per_cam ? c * N : 0) + n) * K * 3;
            const float *co = sh + base;
            float v_d[3] = {0.f, 0.f, 0.f};
            for (int k = 0; k < nb; ++k) {
                float w = 0.f;
                for (int ch = 0; ch < 3; ++ch) {
                    gc[base + k * 3 + ch] += B[k] * g[ch];
                    w += co[k * 3 + ch] * g[ch];
                }
                if (degree > 0)
                    for (int ax = 0; ax < 3; ++ax) v_d[ax] += dB[k * 3 + ax] * w;
            }
            if (degree == 0) continue;
            // Through d = v / |v|: v_v = (v_d - d (d . v_d)) / |v|.
            const float dot = d[0] * v_d[0] + d[1] * v_d[1] + d[2] * v_d[2];
            for (int ax = 0; ax < 3; ++ax) {
                const float vv = (v_d[ax] - d[ax] * dot) / nrm;
                gm[n * 3 + ax] += vv;
                vc[c * 3 + ax] -= vv;
            }
        }
    }
    auto v_campos = at::zeros({C, 3}, means.options());
    float *gp = v_campos.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c)
        for (int ax = 0; ax < 3; ++ax) {
            double sum = 0.0;
            for (int th = 0; th < nt; ++th) sum += vcam[(static_cast<size_t>(th) * C + c) * 3 + ax];
            gp[c * 3 + ax] = static_cast<float>(sum);
        }
    return {v_coeffs, v_means, v_campos};
}

TORCH_LIBRARY_FRAGMENT(splatkit_cpu, m) {
    m.def("project_fwd", &project_fwd);
    m.def("project_bwd", &project_bwd);
    m.def("sh_fwd", &sh_fwd);
    m.def("sh_bwd", &sh_bwd);
}
