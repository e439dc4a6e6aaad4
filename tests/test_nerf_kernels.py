"""The NeRF's kernels: C++ hash encoding, occupancy-grid marching and packed volume rendering
against the PyTorch references (values and gradients), the references against nerfacc's
CPU-capable batched functions and finite differences, and the CUDA dispatch."""

from __future__ import annotations

import pytest
import torch

from splatkit.errors import SplatkitError
from splatkit.models.hashgrid import HashGrid, HashGridConfig
from splatkit.render import nerf_cpu_backend, volume

needs_kernels = pytest.mark.skipif(nerf_cpu_backend.unavailable_reason() is not None,
                                   reason=f"NeRF C++ kernels unavailable: {nerf_cpu_backend.unavailable_reason()}")


def _rays(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, -3.0])
    target = torch.rand(n, 3, generator=g) * 1.6 - 0.8
    d = torch.nn.functional.normalize(target - o, dim=-1)
    return o, d


def _grid(res: int = 16, levels: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    binaries = torch.rand(levels, res, res, res, generator=g) > 0.6
    aabbs = torch.stack([volume_box(2.0 ** lvl) for lvl in range(levels)])
    return binaries, aabbs


def volume_box(scale: float) -> torch.Tensor:
    return torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]) * scale


@needs_kernels
@pytest.mark.parametrize("log2_t", [10, 14])
def test_hash_encoding_kernel_matches_hashgrid_values_and_table_gradient(log2_t):
    grid = HashGrid(HashGridConfig(n_levels=6, log2_hashmap_size=log2_t, base_resolution=4, max_resolution=300,
                                   init_scale=0.5))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3000, 3, generator=g) * 1.2 - 0.1  # some outside the cube: clamped by both
    x[0] = float("nan")
    assert any(grid.dense_levels) and not all(grid.dense_levels)
    ref = grid(x)
    out = nerf_cpu_backend.hash_encode(grid, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    w = torch.randn(ref.shape, generator=g)
    (gr,) = torch.autograd.grad((ref * w).sum(), grid.table)
    (gk,) = torch.autograd.grad((nerf_cpu_backend.hash_encode(grid, x) * w).sum(), grid.table)
    torch.testing.assert_close(gk, gr, rtol=1e-4, atol=1e-5)
    # Deterministic: the same bits on 1 and 2 threads, and run to run.
    from splatkit.render.cpu_backend import set_kernel_threads

    grads = []
    for n in (1, 2, 2):
        set_kernel_threads(n)
        try:
            grads.append(torch.autograd.grad((nerf_cpu_backend.hash_encode(grid, x) * w).sum(), grid.table)[0])
        finally:
            set_kernel_threads(None)
    assert all(torch.equal(grads[0], gg) for gg in grads[1:])
    # The saliency mask: left-out samples get zero features and no gradient.
    keep = torch.arange(len(x)) % 3 != 0
    masked = nerf_cpu_backend.hash_encode(grid, x, keep)
    torch.testing.assert_close(masked[keep], ref[keep], rtol=1e-5, atol=1e-6)
    assert torch.equal(masked[~keep], torch.zeros_like(masked[~keep]))


@needs_kernels
@pytest.mark.parametrize("cone", [0.0, 0.02])
@pytest.mark.parametrize("max_samples", [0, 7])
def test_marching_kernel_matches_the_reference_exactly(cone, max_samples):
    o, d = _rays(500)
    binaries, aabbs = _grid()
    t0, t1 = volume.ray_segments(o, d, aabbs[-1], 0.01, 1e10)
    t0 = t0 + torch.rand(t0.shape, generator=torch.Generator().manual_seed(2)) * 0.03
    ref = volume.march_torch(o, d, t0, t1, binaries, aabbs, 0.03, cone, max_samples)
    got = volume.march(o, d, t0, t1, binaries, aabbs, 0.03, cone, max_samples, impl="cpu")
    assert ref.ray_indices.numel() > 1000
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_marching_reference_keeps_exactly_the_occupied_lattice_midpoints():
    o, d = _rays(200, seed=3)
    binaries, aabbs = _grid(res=8, levels=2, seed=3)
    t0, t1 = volume.ray_segments(o, d, aabbs[-1], 0.0, 1e10)
    step = 0.05
    ps = volume.march_torch(o, d, t0, t1, binaries, aabbs, step)
    # Brute force, one ray at a time, in float64, with nerfacc's own grid query (grid._query).
    from nerfacc.grid import _query

    n = 0
    for r in range(len(o)):
        k = torch.arange(int(((t1[r] - t0[r]) / step).clamp_min(0)) + 2, dtype=torch.float64)
        lo = t0[r].double() + k * step
        mid = lo + step / 2
        mid = mid[mid < t1[r]]
        pts = (o[r].double() + mid[:, None] * d[r].double()).float()
        occ = _query(pts, binaries.float(), aabbs[0])[0] > 0
        mine = ps.t_starts[ps.ray_indices == r]
        want = lo[:len(mid)][occ]
        # Float32 vs float64 lattices may disagree on a midpoint lying on a cell face.
        assert abs(len(mine) - len(want)) <= 1
        if len(mine) == len(want):
            torch.testing.assert_close(mine.double(), want, atol=1e-5, rtol=0)
        n += len(mine)
    assert n > 500
    assert torch.equal(ps.packed_info, volume.pack_info(ps.ray_indices, len(o)))
    assert bool((ps.ray_indices[1:] >= ps.ray_indices[:-1]).all())


def _packed_example(seed: int = 0, R: int = 40):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 12, (R,), generator=g)
    ri = torch.repeat_interleave(torch.arange(R), counts)
    S = ri.numel()
    dt = torch.rand(S, generator=g) * 0.1 + 0.01
    starts = torch.zeros(S)
    for r in range(R):  # consecutive intervals per ray (with gaps, as skipped cells leave)
        idx = (ri == r).nonzero()[:, 0]
        t = 1.0
        for i in idx:
            t += float(torch.rand(1, generator=g)) * 0.05
            starts[i] = t
            t += float(dt[i])
    sig = (torch.rand(S, generator=g) * 20).requires_grad_()
    vals = torch.rand(S, 3, generator=g).requires_grad_()
    return sig, vals, starts, starts + dt, ri, volume.pack_info(ri, R)


def test_packed_rendering_reference_matches_nerfacc_batched_functions():
    from nerfacc.volrend import render_weight_from_density

    sig, vals, ts, te, ri, info = _packed_example()
    out = volume.render_torch(sig, vals, ts, te, ri, info, want_weights=True)
    R, K = info.shape[0], int(info[:, 1].max())
    pad = torch.zeros(R, K)
    rank = torch.arange(ri.numel()) - info[ri, 0]
    ts_b, te_b, sg_b = pad.clone(), pad.clone(), pad.clone()
    ts_b[ri, rank], te_b[ri, rank], sg_b[ri, rank] = ts, te, sig.detach()
    w_b, _, _ = render_weight_from_density(ts_b, te_b, sg_b)  # nerfacc's batched layout: CPU-capable
    torch.testing.assert_close(out.weights.detach(), w_b[ri, rank], rtol=1e-5, atol=1e-6)


def test_packed_rendering_reference_gradients_match_finite_differences():
    sig, vals, ts, te, ri, info = _packed_example(seed=1, R=6)
    args = (sig.detach().double().requires_grad_(), vals.detach().double().requires_grad_())

    def f(s, v):
        o = volume.render_torch(s, v, ts.double(), te.double(), ri, info)
        return o.colors.sum() + 2 * o.opacities.sum() + 0.5 * o.depths.sum()

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5)


@needs_kernels
def test_packed_rendering_kernel_matches_the_reference_values_and_gradients():
    sig, vals, ts, te, ri, info = _packed_example(seed=2, R=300)
    ref = volume.render_torch(sig, vals, ts, te, ri, info)
    got = volume.render(sig, vals, ts, te, ri, info, impl="cpu")
    for a, b in zip(got[:3], ref[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    g = torch.Generator().manual_seed(5)
    wc, wo, wd = torch.randn(ref.colors.shape, generator=g), torch.randn(len(info), generator=g), \
        torch.randn(len(info), generator=g)

    def loss(o):
        return (o.colors * wc).sum() + (o.opacities * wo).sum() + (o.depths * wd).sum()

    gr = torch.autograd.grad(loss(ref), (sig, vals))
    gk = torch.autograd.grad(loss(got), (sig, vals))
    for a, b in zip(gk, gr):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cuda_dispatch_names_nerfacc_and_cpu_never_loads_its_cuda_backend():
    """On CUDA tensors ``auto`` means nerfacc's kernels; on CPU tensors asking for them is a
    clear error, and nothing on the CPU path imports nerfacc's CUDA loader."""
    import sys

    loaded_before = "nerfacc.cuda._backend" in sys.modules  # by an earlier CUDA test on a GPU machine
    assert volume._resolve("auto", torch.device("cuda")) == "nerfacc"
    assert volume._resolve("torch", torch.device("cuda")) == "torch"
    with pytest.raises(SplatkitError, match="CUDA-only"):
        volume._resolve("nerfacc", torch.device("cpu"))
    with pytest.raises(SplatkitError, match="one of"):
        volume._resolve("fast", torch.device("cpu"))
    o, d = _rays(50)
    binaries, aabbs = _grid()
    t0, t1 = volume.ray_segments(o, d, aabbs[-1], 0.0, 1e10)
    for impl in ("auto", "torch"):
        ps = volume.march(o, d, t0, t1, binaries, aabbs, 0.05, impl=impl)
        s = torch.ones(ps.ray_indices.numel())
        volume.render(s, torch.ones(len(s), 3), ps.t_starts, ps.t_ends, ps.ray_indices, ps.packed_info, impl=impl)
    assert loaded_before or "nerfacc.cuda._backend" not in sys.modules


@pytest.mark.parametrize("max_samples", [0, 1, 3, 8])
def test_nerfacc_marching_wrapper_caps_rays_as_the_reference(monkeypatch, max_samples):
    """Our wrapper around nerfacc's ``traverse_grids``, on CPU through a stand-in that returns what
    nerfacc returns (each ray's first ``traverse_steps_limit`` samples as intervals, and termination
    planes left unwritten): the same samples and ``t_next`` as the reference, for rays cut by the
    cap, rays that end at exactly the cap and rays without samples. (nerfacc 0.5.3 leaves a ray's
    termination plane unwritten when it has no samples; reading it made inference re-march rays
    from garbage, seen on an H200.)"""
    import types

    import nerfacc.grid

    o, d = _rays(400)
    g = torch.Generator().manual_seed(1)
    binaries = torch.rand(1, 16, 16, 16, generator=g) > 0.9  # sparse: some rays pass few cells or none
    aabbs = volume_box(1.0)[None]
    t0, t1 = volume.ray_segments(o, d, aabbs[-1], 0.0, 1e10)

    def traverse_grids(rays_o, rays_d, binaries, aabbs, near_planes, far_planes, step_size, cone_angle,
                       traverse_steps_limit=None):
        ps = volume.march_torch(rays_o, rays_d, near_planes, far_planes, binaries, aabbs, step_size, cone_angle,
                                traverse_steps_limit or 0)
        S = ps.ray_indices.numel()
        vals = torch.stack([ps.t_starts, ps.t_ends], 1).reshape(-1)  # one interval per sample
        is_left = torch.arange(2 * S) % 2 == 0
        intervals = types.SimpleNamespace(vals=vals, is_left=is_left, is_right=~is_left)
        samples = types.SimpleNamespace(ray_indices=ps.ray_indices.int(), packed_info=ps.packed_info.int())
        return intervals, samples, torch.full_like(near_planes, float("nan"))

    monkeypatch.setattr(nerfacc.grid, "traverse_grids", traverse_grids)
    ref = volume.march_torch(o, d, t0, t1, binaries, aabbs, 0.05, 0.0, max_samples)
    got = volume._march_nerfacc(o, d, t0, t1, binaries, aabbs, 0.05, 0.0, max_samples)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    counts = volume.march_torch(o, d, t0, t1, binaries, aabbs, 0.05).packed_info[:, 1]
    if max_samples:  # the cases the cap has to tell apart are all there
        assert (counts > max_samples).any() and (counts == 0).any()
        assert bool((counts == max_samples).any())  # done, not cut


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nerfacc's kernels; scripts/gpu_nerf.sh)")
def test_nerfacc_on_cuda_agrees_with_the_reference():
    """On a GPU, nerfacc's marching gives the reference's samples (the same rule; float rounding may
    move a sample across a cell wall on a few rays) and its packed rendering the reference's
    values and gradients on the same samples."""
    dev = torch.device("cuda")
    o, d = _rays(400)
    binaries, aabbs = _grid()
    t0, t1 = volume.ray_segments(o, d, aabbs[-1], 0.0, 1e10)
    ref = volume.march(o, d, t0, t1, binaries, aabbs, 0.02, impl="torch")
    got = volume.march(*(x.to(dev) for x in (o, d, t0, t1, binaries, aabbs)), 0.02, impl="nerfacc")
    n_ref, n_got = ref.packed_info[:, 1], got.packed_info[:, 1].cpu()
    assert (n_ref == n_got).float().mean() >= 0.98
    for cap in (1, 4):  # chunked marching, as inference does: where each ray stops, and which are done
        ref_cap = volume.march(o, d, t0, t1, binaries, aabbs, 0.02, max_samples=cap, impl="torch")
        got_cap = volume.march(*(x.to(dev) for x in (o, d, t0, t1, binaries, aabbs)), 0.02, max_samples=cap,
                               impl="nerfacc")
        same_rays = (ref_cap.packed_info[:, 1] == got_cap.packed_info[:, 1].cpu()) & (n_ref == n_got)
        assert same_rays.float().mean() >= 0.98
        torch.testing.assert_close(got_cap.t_next.cpu()[same_rays], ref_cap.t_next[same_rays], atol=1e-4, rtol=0)
    same = n_ref == n_got
    rows = same[ref.ray_indices]
    torch.testing.assert_close(got.t_starts.cpu()[same[got.ray_indices.cpu()]], ref.t_starts[rows], atol=1e-4, rtol=0)
    # Rendering on the reference's samples, on the GPU, both ways.
    g = torch.Generator().manual_seed(2)
    S = ref.ray_indices.numel()
    sig = (torch.rand(S, generator=g) * 20).to(dev).requires_grad_()
    val = torch.rand(S, 3, generator=g).to(dev).requires_grad_()
    args = [x.to(dev) for x in (ref.t_starts, ref.t_ends, ref.ray_indices, ref.packed_info)]
    outs = [volume.render(sig, val, *args, impl=impl) for impl in ("torch", "nerfacc")]
    for a, b in zip(outs[0][:3], outs[1][:3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    w = torch.rand(len(ref.packed_info), 3, generator=g).to(dev)
    grads = [torch.autograd.grad((out.colors * w).sum() + out.depths.sum(), (sig, val)) for out in outs]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
