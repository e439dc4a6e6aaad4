"""Tests of the Gaussian rasterizer (splatkit.render): the PyTorch reference against analytic cases,
finite differences and gsplat's own pure-PyTorch code; the C++ CPU backend against the reference;
the ``meta`` dict against gsplat's DefaultStrategy."""

from __future__ import annotations

import math

import pytest
import torch

from splatkit.errors import SplatkitError
from splatkit.render import rasterization, resolve_backend
from splatkit.render import cpu_backend, torch_impl
from splatkit.render.sh import SH_C0, eval_sh, rgb_to_sh


@pytest.fixture(scope="module")
def cpu_ext():
    """Builds (once per machine, cached) the C++ kernels the 'cpu' backend needs."""
    reason = cpu_backend.unavailable_reason()
    if reason is not None:
        pytest.skip(f"C++ CPU rasterizer unavailable: {reason}")


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """World-to-camera matrix (OpenCV axes: z towards the target, y down)."""
    eye, target, up = (torch.tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(up, z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c.float()


def intrinsics(W, H, f) -> torch.Tensor:
    return torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])


def random_scene(n, seed=0, sh_degree=None, n_cams=1, W=64, H=48, log_scale=-3.2):
    """Gaussians in a ball at the origin, seen by cameras ~3 units away: enough overlap that
    pixels saturate (early termination) and Gaussians cross tile borders."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.6
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.4 + log_scale)
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
        colors[:, 0] = rgb_to_sh(torch.rand(n, 3, generator=g))
    eyes = [(0.3 * c, -0.2, -3.0 + 0.2 * c) for c in range(n_cams)]
    viewmats = torch.stack([look_at(e) for e in eyes])
    Ks = torch.stack([intrinsics(W, H, 60.0)] * n_cams)
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors), viewmats, Ks


def render_with_grads(params, viewmats, Ks, W, H, backend, weights=None, **kw):
    """Render, then backprop a fixed random linear function of the image and alpha."""
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    vm = viewmats.clone().requires_grad_(True)
    img, alpha, meta = rasterization(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"],
                                     vm, Ks, W, H, backend=backend, **kw)
    meta["means2d"].retain_grad()
    if weights is None:
        g = torch.Generator().manual_seed(123)
        weights = (torch.rand(img.shape, generator=g), torch.rand(alpha.shape, generator=g))
    ((img * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
    grads = {k: v.grad for k, v in p.items()}
    grads["viewmats"] = vm.grad
    grads["means2d"] = meta["means2d"].grad
    return img.detach(), alpha.detach(), meta, grads


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


# -- the PyTorch reference ----------------------------------------------------------------------


def test_projection_matches_gsplat_pure_torch_code():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    params, viewmats, Ks = random_scene(400, seed=1, n_cams=2)
    covars, _ = _quat_scale_to_covar_preci(params["quats"], params["scales"], compute_preci=False)
    radii_g, means2d_g, depths_g, conics_g, _ = _fully_fused_projection(
        params["means"], covars, viewmats, Ks, 64, 48)
    ours = torch_impl.project_gaussians(params["means"], params["quats"], params["scales"], None,
                                        viewmats, Ks, 64, 48)
    ok = (radii_g > 0).all(-1)
    assert ok.sum() > 300
    assert torch.allclose(ours.means2d[ok], means2d_g[ok], atol=1e-4)
    assert torch.allclose(ours.depths[ok], depths_g[ok])
    assert rel_err(ours.conics[ok], conics_g[ok]) < 1e-5
    assert torch.equal(ours.radii, radii_g)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_sh_matches_gsplat_pure_torch_code(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(300, 3, generator=g)
    coeffs = torch.randn(300, (degree + 1) ** 2, 3, generator=g)
    assert torch.allclose(eval_sh(degree, dirs, coeffs), _spherical_harmonics(degree, dirs, coeffs), atol=1e-5)
    if degree == 0:
        assert torch.allclose(eval_sh(0, dirs, coeffs), SH_C0 * coeffs[:, 0])


def test_single_gaussian_alpha_and_expected_depth_are_analytic(cpu_ext):
    """An isotropic Gaussian on the optical axis: its footprint is exactly Gaussian with variance
    (f s / z)^2 + eps2d, centred on the principal point, which sits on a pixel centre."""
    W, H, f, z, s, o, eps2d = 33, 25, 40.0, 2.0, 0.05, 0.7, 0.3
    Ks = torch.tensor([[[f, 0.0, 16.5], [0.0, f, 12.5], [0.0, 0.0, 1.0]]])
    args = (torch.tensor([[0.0, 0.0, z]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.full((1, 3), s),
            torch.tensor([o]), torch.tensor([[0.2, 0.4, 0.6]]), torch.eye(4)[None], Ks, W, H)
    var = (f * s / z) ** 2 + eps2d
    jj, ii = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    expected = o * torch.exp(-0.5 * ((jj - 16.5) ** 2 + (ii - 12.5) ** 2) / var)
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    for backend in ("torch", "cpu"):
        img, alpha, meta = rasterization(*args, render_mode="RGB+ED", eps2d=eps2d, backend=backend)
        assert alpha[0, 12, 16, 0].item() == pytest.approx(o, abs=1e-6)
        assert torch.allclose(alpha[0, ..., 0], expected, atol=1e-6)
        lit = alpha[0, ..., 0] > 0
        assert torch.allclose(img[0, ..., 3][lit], torch.full_like(img[0, ..., 3][lit], z), atol=1e-5)
        assert torch.allclose(img[0, ..., :3][lit], alpha[0][lit] * torch.tensor([0.2, 0.4, 0.6]), atol=1e-6)
        # Radius: 3.33 sigma, tightened for this opacity to where alpha reaches 1/255.
        extend = min(3.33, math.sqrt(2 * math.log(o * 255)))
        assert meta["radii"][0, 0].tolist() == [math.ceil(extend * math.sqrt(var))] * 2
        assert meta["depths"][0, 0].item() == pytest.approx(z)
        d_img, _, _ = rasterization(*args, render_mode="D", eps2d=eps2d, backend=backend)
        assert torch.allclose(d_img[0, ..., 0], alpha[0, ..., 0] * z, atol=1e-6)


def test_torch_reference_gradients_match_finite_differences():
    """float64, a few moderately opaque Gaussians: the compositing is smooth in the parameters
    (no alpha crosses 1/255 or 0.999 under the finite-difference steps)."""
    W, H = 14, 11
    g = torch.Generator().manual_seed(3)
    x0 = dict(
        means=torch.tensor([[0.0, 0.0, 0.0], [0.15, 0.1, 0.3], [-0.2, -0.1, -0.2], [0.1, -0.2, 0.1]]),
        quats=torch.randn(4, 4, generator=g),
        scales=torch.tensor([[0.12, 0.08, 0.1], [0.1, 0.1, 0.05], [0.09, 0.14, 0.1], [0.07, 0.1, 0.12]]),
        opacities=torch.tensor([0.6, 0.5, 0.7, 0.55]),
        colors=torch.randn(4, 4, 3, generator=g) * 0.3,
    )
    x0 = {k: v.double() for k, v in x0.items()}
    viewmat = look_at((0.2, -0.1, -2.5)).double()[None]
    K = intrinsics(W, H, 12.0).double()[None]
    w_img = torch.rand(1, H, W, 4, generator=g, dtype=torch.float64)
    w_alpha = torch.rand(1, H, W, 1, generator=g, dtype=torch.float64)

    def loss(p):
        img, alpha, _ = rasterization(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"],
                                      viewmat, K, W, H, sh_degree=1, render_mode="RGB+ED", backend="torch")
        return (img * w_img).sum() + (alpha * w_alpha).sum()

    p = {k: v.clone().requires_grad_(True) for k, v in x0.items()}
    loss(p).backward()
    # Directional derivatives along random directions, central differences.
    eps = 1e-6
    for name, v in x0.items():
        assert p[name].grad.abs().max() > 0, name
        for _ in range(3):
            u = torch.randn(v.shape, generator=g, dtype=torch.float64)
            hi = dict(x0, **{name: v + eps * u})
            lo = dict(x0, **{name: v - eps * u})
            numeric = ((loss(hi) - loss(lo)) / (2 * eps)).item()
            analytic = (p[name].grad * u).sum().item()
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7), name


def test_compositing_matches_a_per_pixel_loop():
    """The batched tile compositing equals gsplat's rules applied pixel by pixel, literally."""
    W, H = 20, 18
    params, viewmats, Ks = random_scene(300, seed=4, W=W, H=H, log_scale=-2.3)
    img, alpha, meta = rasterization(*params.values(), viewmats, Ks, W, H, backend="torch")
    m2, con, r = meta["means2d"][0].tolist(), meta["conics"][0].tolist(), meta["radii"][0].tolist()
    op, col = meta["opacities"][0].tolist(), params["colors"].tolist()
    dep = meta["depths"][0]
    order = [i for i in torch.argsort(dep, stable=True).tolist() if min(r[i]) > 0]
    n_stopped = 0
    for py in range(H):
        for px in range(W):
            T, acc = 1.0, [0.0, 0.0, 0.0]
            for i in order:
                # only Gaussians binned into this pixel's 16x16 tile
                if not all(max(0, math.floor((m2[i][a] - r[i][a]) / 16)) <= p // 16 < math.ceil((m2[i][a] + r[i][a]) / 16)
                           for a, p in ((0, px), (1, py))):
                    continue
                dx, dy = m2[i][0] - (px + 0.5), m2[i][1] - (py + 0.5)
                sigma = 0.5 * (con[i][0] * dx * dx + con[i][2] * dy * dy) + con[i][1] * dx * dy
                a = min(0.999, op[i] * math.exp(-sigma))
                if sigma < 0 or a < 1 / 255:
                    continue
                if T * (1 - a) <= 1e-4:
                    n_stopped += 1
                    break
                acc = [acc[k] + col[i][k] * a * T for k in range(3)]
                T *= 1 - a
            assert img[0, py, px].tolist() == pytest.approx(acc, abs=1e-5)
            assert alpha[0, py, px, 0].item() == pytest.approx(1 - T, abs=1e-5)
    assert n_stopped > 0


# -- the C++ CPU backend against the reference -----------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(sh_degree=3, render_mode="RGB"),
        dict(sh_degree=None, render_mode="RGB+D", rasterize_mode="antialiased"),
        dict(sh_degree=1, render_mode="RGB+ED", absgrad=True),
    ],
    ids=["sh3", "rgbd-antialiased", "sh1-ed-absgrad"],
)
def test_cpu_backend_matches_torch_reference(cpu_ext, kw):
    params, viewmats, Ks = random_scene(1500, seed=5, sh_degree=kw["sh_degree"], n_cams=1, log_scale=-2.6)
    bg = torch.tensor([[0.1, 0.5, 0.9]])
    ref = render_with_grads(params, viewmats, Ks, 64, 48, "torch", backgrounds=bg, **kw)
    out = render_with_grads(params, viewmats, Ks, 64, 48, "cpu", backgrounds=bg, **kw)
    assert out[2]["backend"] == "cpu"
    # Same culling and tile lists.
    assert torch.equal(out[2]["radii"], ref[2]["radii"])
    assert torch.equal(out[2]["flatten_ids"], ref[2]["flatten_ids"])
    # isect_ids are (tile << 32 | depth key): the tiles must match exactly; the depth keys may differ
    # by an ulp, because torch's matmul rounds the camera-space z differently on some CPUs (FMA)
    # than the kernel's scalar code. flatten_ids above already pins the resulting order.
    ids, ref_ids = out[2]["isect_ids"], ref[2]["isect_ids"]
    assert torch.equal(ids >> 32, ref_ids >> 32)
    assert ((ids & 0xFFFFFFFF) - (ref_ids & 0xFFFFFFFF)).abs().max() <= 2
    assert torch.equal(out[2]["tiles_per_gauss"], ref[2]["tiles_per_gauss"])
    assert torch.equal(out[2]["isect_offsets"], ref[2]["isect_offsets"])
    assert (out[1] > 0.999).float().mean() > 0.1  # deep enough to exercise early termination
    if kw["render_mode"] == "RGB+ED":
        assert torch.allclose(out[0][..., :3], ref[0][..., :3], atol=1e-5)
        assert torch.allclose(out[0][..., 3], ref[0][..., 3], rtol=1e-5, atol=1e-5)
    else:
        assert torch.allclose(out[0], ref[0], atol=1e-5)
    assert torch.allclose(out[1], ref[1], atol=1e-5)
    for name in ("means", "quats", "scales", "opacities", "colors", "viewmats", "means2d"):
        assert out[3][name] is not None, name
        assert rel_err(out[3][name], ref[3][name]) < 1e-4, name
    if kw.get("absgrad"):
        assert rel_err(out[2]["means2d"].absgrad, ref[2]["means2d"].absgrad) < 1e-4


def test_cpu_results_do_not_depend_on_thread_count(cpu_ext):
    params, viewmats, Ks = random_scene(1000, seed=14, sh_degree=2, n_cams=2, log_scale=-2.6)
    before = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(render_with_grads(params, viewmats, Ks, 48, 40, "cpu", sh_degree=2))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    for name in ("means", "quats", "scales", "opacities", "colors", "means2d"):
        assert torch.equal(runs[0][3][name], runs[1][3][name]), name


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_cpu_sh_colours_and_grads_match_reference(cpu_ext, degree):
    params, viewmats, Ks = random_scene(300, seed=6 + degree, sh_degree=degree, n_cams=2)
    ref = render_with_grads(params, viewmats, Ks, 48, 40, "torch", sh_degree=degree)
    out = render_with_grads(params, viewmats, Ks, 48, 40, "cpu", sh_degree=degree)
    assert torch.allclose(out[0], ref[0], atol=1e-5)
    assert rel_err(out[3]["colors"], ref[3]["colors"]) < 1e-4
    assert rel_err(out[3]["means"], ref[3]["means"]) < 1e-4


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_culled_gaussians_have_zero_radii_and_gradients(cpu_ext, backend):
    means = torch.tensor([
        [0.0, 0.0, 2.0],    # visible
        [0.0, 0.0, -1.0],   # behind the camera
        [0.0, 0.0, 0.0],    # at the camera centre (z = 0)
        [0.0, 0.0, 0.005],  # in front of the near plane
        [50.0, 0.0, 2.0],   # far off-screen
        [0.1, 0.1, 2.0],    # transparent (opacity < 1/255)
        [0.0, 0.0, 2e10],   # beyond the far plane
    ])
    n = len(means)
    params = dict(means=means, quats=torch.tensor([[1.0, 0.2, 0.0, 0.1]]).repeat(n, 1),
                  scales=torch.full((n, 3), 0.1),
                  opacities=torch.tensor([0.8, 0.8, 0.8, 0.8, 0.8, 0.002, 0.8]),
                  colors=torch.rand(n, 1, 3))
    img, alpha, meta, grads = render_with_grads(params, torch.eye(4)[None], intrinsics(32, 24, 30.0)[None],
                                                32, 24, backend, sh_degree=0)
    assert (meta["radii"][0, 0] > 0).all()
    assert (meta["radii"][0, 1:] == 0).all()
    assert meta["radii"].dtype == torch.int32 and meta["radii"].shape == (1, n, 2)
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        if name not in ("viewmats",):
            per_gauss = g.reshape(g.shape[0], -1) if name != "means2d" else g[0]
            assert (per_gauss[1:] == 0).all(), name
            assert per_gauss[0].abs().sum() > 0, name
    assert torch.isfinite(img).all() and alpha.max() > 0.5


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_empty_scene_gives_background(cpu_ext, backend):
    bg = torch.tensor([[0.2, 0.3, 0.4]])
    means = torch.zeros(0, 3, requires_grad=True)
    colors = torch.zeros(0, 3, requires_grad=True)
    img, alpha, meta = rasterization(means, torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), colors,
                                     torch.eye(4)[None], intrinsics(20, 10, 20.0)[None], 20, 10,
                                     backgrounds=bg, backend=backend)
    assert img.shape == (1, 10, 20, 3) and alpha.shape == (1, 10, 20, 1)
    assert torch.equal(img, bg.expand(1, 10, 20, 3).reshape(img.shape))
    assert (alpha == 0).all()
    img.sum().backward()  # no error, and nothing to differentiate
    assert means.grad is not None and means.grad.shape == (0, 3)
    assert meta["radii"].shape == (1, 0, 2)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_several_cameras_equal_separate_renders(cpu_ext, backend):
    params, viewmats, Ks = random_scene(500, seed=8, sh_degree=2, n_cams=3)
    img, alpha, meta = rasterization(*params.values(), viewmats, Ks, 40, 30, sh_degree=2, backend=backend)
    assert img.shape == (3, 30, 40, 3) and meta["n_cameras"] == 3 and meta["radii"].shape == (3, 500, 2)
    for c in range(3):
        one, a1, m1 = rasterization(*params.values(), viewmats[c:c + 1], Ks[c:c + 1], 40, 30, sh_degree=2,
                                    backend=backend)
        assert torch.allclose(img[c], one[0], atol=1e-6)
        assert torch.allclose(alpha[c], a1[0], atol=1e-6)
        assert torch.equal(meta["radii"][c], m1["radii"][0])
    assert not torch.allclose(img[0], img[1])


@pytest.mark.parametrize("sh_degree", [None, 2])
def test_per_camera_colours(cpu_ext, sh_degree):
    """colors [C, N, D] / SH [C, N, K, 3]: camera c uses its own slice."""
    params, viewmats, Ks = random_scene(300, seed=13, sh_degree=sh_degree, n_cams=2)
    g = torch.Generator().manual_seed(0)
    per_cam = torch.stack([params["colors"], params["colors"] + 0.2 * torch.rand(params["colors"].shape, generator=g)])
    args = [params[k] for k in ("means", "quats", "scales", "opacities")]
    for backend in ("torch", "cpu"):
        both, _, _ = rasterization(*args, per_cam, viewmats, Ks, 32, 24, sh_degree=sh_degree, backend=backend)
        for c in range(2):
            one, _, _ = rasterization(*args, per_cam[c], viewmats[c:c + 1], Ks[c:c + 1], 32, 24,
                                      sh_degree=sh_degree, backend=backend)
            assert torch.allclose(both[c], one[0], atol=1e-6)
    w = torch.rand(2, 24, 32, 3, generator=g)
    grads = {}
    for backend in ("torch", "cpu"):
        p = per_cam.clone().requires_grad_(True)
        img, _, _ = rasterization(*args, p, viewmats, Ks, 32, 24, sh_degree=sh_degree, backend=backend)
        (img * w).sum().backward()
        grads[backend] = p.grad
    assert rel_err(grads["cpu"], grads["torch"]) < 1e-4


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_backgrounds_fill_the_transmittance(cpu_ext, backend):
    params, viewmats, Ks = random_scene(300, seed=9, n_cams=2)
    bg = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.7, 0.1]], requires_grad=True)
    plain, alpha, _ = rasterization(*params.values(), viewmats, Ks, 32, 24, backend=backend)
    with_bg, alpha2, _ = rasterization(*params.values(), viewmats, Ks, 32, 24, backgrounds=bg, backend=backend)
    assert torch.allclose(alpha, alpha2)
    expected = plain + (1 - alpha) * bg[:, None, None, :]
    assert torch.allclose(with_bg, expected, atol=1e-6)
    with_bg.sum().backward()
    assert torch.allclose(bg.grad, (1 - alpha).sum(dim=(1, 2)).expand(2, 3), rtol=1e-5)
    # Depth channels composite over 0, not over the background colour.
    d, _, _ = rasterization(*params.values(), viewmats, Ks, 32, 24, backgrounds=bg.detach(),
                            render_mode="RGB+D", backend=backend)
    assert torch.allclose(d[..., :3], with_bg.detach(), atol=1e-6)


@pytest.mark.parametrize("tile_size", [8, 12])
def test_other_tile_sizes_and_huge_gaussians(cpu_ext, tile_size):
    """Tiles that are not multiples of the C++ kernels' 4x4 pixel blocks, an image that is not a
    multiple of the tiles, and Gaussians far bigger than the image."""
    params, viewmats, Ks = random_scene(300, seed=12, W=37, H=29, log_scale=-2.8)
    params["means"][:2] = torch.tensor([[0.0, 0.0, -1.5], [0.3, 0.2, -1.0]])  # 1.5 and 2 from the camera
    params["scales"][:2] = torch.tensor([[2.0, 1.5, 1.0], [0.5, 3.0, 0.2]])
    params["opacities"][:2] = 0.3
    ref = render_with_grads(params, viewmats, Ks, 37, 29, "torch", tile_size=tile_size)
    out = render_with_grads(params, viewmats, Ks, 37, 29, "cpu", tile_size=tile_size)
    assert out[2]["tile_width"] == math.ceil(37 / tile_size) and out[2]["tile_size"] == tile_size
    assert (out[2]["radii"][0, :2] > 37).all()
    assert torch.allclose(out[0], ref[0], atol=1e-5) and torch.allclose(out[1], ref[1], atol=1e-5)
    for name in ("means", "quats", "scales", "opacities", "colors", "means2d"):
        assert rel_err(out[3][name], ref[3][name]) < 1e-4, name


def test_float64_inputs_and_feature_channels(cpu_ext):
    params, viewmats, Ks = random_scene(300, seed=10)
    feats = torch.rand(300, 40)  # more channels than one kernel call handles
    p64 = {k: v.double() for k, v in params.items()}
    ref, ref_a, _ = rasterization(*list(p64.values())[:4], feats.double(), viewmats, Ks, 32, 24, backend="torch")
    out, out_a, _ = rasterization(*list(p64.values())[:4], feats.double(), viewmats, Ks, 32, 24, backend="cpu")
    assert out.dtype == torch.float64 and out.shape == (1, 24, 32, 40)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(out_a, ref_a, atol=1e-5)


# -- gsplat's strategies on our meta -----------------------------------------------------------------


@pytest.mark.parametrize("absgrad", [False, True])
def test_default_strategy_duplicates_splits_and_prunes(cpu_ext, absgrad):
    from gsplat.strategy import DefaultStrategy

    params_, viewmats, Ks = random_scene(200, seed=11, sh_degree=1)
    n = 200
    scales = params_["scales"].clone()
    scales[: n // 2] = 0.005  # small: duplicated (<= grow_scale3d * scene_scale = 0.01)
    scales[n // 2:] = 0.04  # large: split
    logit_opac = torch.logit(params_["opacities"])
    logit_opac[:10] = -8.0  # sigmoid < prune_opa = 0.005: pruned
    params = torch.nn.ParameterDict({
        "means": params_["means"], "scales": torch.log(scales), "quats": params_["quats"],
        "opacities": logit_opac, "sh0": params_["colors"][:, :1], "shN": params_["colors"][:, 1:],
    })
    optimizers = {k: torch.optim.Adam([v], lr=1e-3) for k, v in params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=2, grow_grad2d=1e-12, reset_every=10_000,
                               absgrad=absgrad)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(1, 48, 64, 3)
    for step in range(3):
        n_before = len(params["means"])
        colors = torch.cat([params["sh0"], params["shN"]], 1)
        img, alpha, info = rasterization(params["means"], params["quats"], torch.exp(params["scales"]),
                                         torch.sigmoid(params["opacities"]), colors, viewmats, Ks, 64, 48,
                                         sh_degree=1, absgrad=absgrad, backend="cpu")
        strategy.step_pre_backward(params, optimizers, state, step, info)
        ((img - target) ** 2).mean().backward()
        grads = info["means2d"].absgrad if absgrad else info["means2d"].grad
        assert grads.shape == (1, n_before, 2)
        seen = (info["radii"] > 0).all(-1)[0] & (grads[0].norm(dim=-1) > 0)
        small = torch.exp(params["scales"]).max(-1).values <= 0.01
        low = torch.sigmoid(params["opacities"]) < 0.005
        strategy.step_post_backward(params, optimizers, state, step, info)
        if step == 2:  # refine step: every seen Gaussian grows, the transparent ones go
            assert seen.sum() > 100 and (seen & small).sum() > 0 and (seen & ~small).sum() > 0
            assert not (seen & low).any()
            expected = n_before + int((seen & small).sum()) + int((seen & ~small).sum()) - int(low.sum())
            assert len(params["means"]) == expected
            assert all(len(v) == expected for v in params.values())
            assert state["grad2d"].shape == (expected,)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad()
        assert len(params["means"]) >= n_before - 10


# -- backend selection and errors ----------------------------------------------------------------------


def test_backend_selection_and_errors(cpu_ext, monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "cpu"
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(SplatkitError, match="CUDA"):
        resolve_backend("gsplat", cpu)
    with pytest.raises(SplatkitError, match="unknown rasterizer backend"):
        resolve_backend("vulkan", cpu)
    # No compiler: a clear reason, and auto falls back to the PyTorch path with a warning.
    monkeypatch.setattr(cpu_backend._EXTENSION, "ops", None)
    monkeypatch.setattr(cpu_backend._EXTENSION, "error", None)
    monkeypatch.setattr(cpu_backend, "_compiler", lambda: None)
    with pytest.raises(SplatkitError, match="no C\\+\\+ compiler"):
        resolve_backend("cpu", cpu)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert resolve_backend("auto", cpu) == "torch"


def test_invalid_inputs_raise_one_line_errors():
    params, viewmats, Ks = random_scene(10)
    args = list(params.values())
    with pytest.raises(SplatkitError, match="quats must be"):
        rasterization(args[0], args[1][:5], *args[2:], viewmats, Ks, 32, 24, backend="torch")
    with pytest.raises(SplatkitError, match="render_mode"):
        rasterization(*args, viewmats, Ks, 32, 24, render_mode="RGBA", backend="torch")
    with pytest.raises(SplatkitError, match="SH coefficients"):
        rasterization(*args[:4], torch.rand(10, 4, 3), viewmats, Ks, 32, 24, sh_degree=3, backend="torch")
    with pytest.raises(SplatkitError, match="backgrounds have 2 channels"):
        rasterization(*args, viewmats, Ks, 32, 24, backgrounds=torch.zeros(1, 2), backend="torch")
