"""Hash-grid encoding (Instant-NGP) and the Compact-3DGS colour field, with its SH bake."""

from __future__ import annotations

import math

import pytest
import torch

from splatkit.errors import SplatkitError
from splatkit.models.color_field import (
    ColorField,
    ColorFieldConfig,
    bake_to_sh,
    fibonacci_sphere,
    sh_colors,
)
from splatkit.models.hashgrid import HashGrid, HashGridConfig, contract_to_unit_ball
from splatkit.render.sh import SH_C0, eval_sh

PRIMES = (1, 2654435761, 805459861)


@pytest.fixture(autouse=True)
def _one_thread():
    # These tensors are tiny; on a shared 2-core machine a second intra-op thread mostly waits
    # at barriers (x100 slower steps), so run single-threaded and restore afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _vertex_row(grid: HashGrid, level: int, v: tuple[int, int, int]) -> int:
    """Row of vertex ``v`` at ``level``, from the paper's definitions with exact Python ints."""
    r, T = grid.resolutions[level], grid.table_size
    if (r + 1) ** 3 <= T:
        local = v[0] + v[1] * (r + 1) + v[2] * (r + 1) ** 2
    else:
        local = ((v[0] * PRIMES[0]) ^ (v[1] * PRIMES[1]) ^ (v[2] * PRIMES[2])) % T
    return grid.level_slice(level).start + local


def _reference(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Slow per-point, per-level, per-corner encoding."""
    table = grid.table.detach()
    out = torch.zeros(x.shape[0], grid.output_dim, dtype=table.dtype)
    F = table.shape[1]
    for p in range(x.shape[0]):
        for lvl, r in enumerate(grid.resolutions):
            pos = [float(x[p, d]) * r for d in range(3)]
            cell = [min(math.floor(q), r - 1) for q in pos]
            frac = [pos[d] - cell[d] for d in range(3)]
            acc = torch.zeros(F, dtype=table.dtype)
            for i in (0, 1):
                for j in (0, 1):
                    for k in (0, 1):
                        w = ((frac[0] if i else 1 - frac[0]) * (frac[1] if j else 1 - frac[1])
                             * (frac[2] if k else 1 - frac[2]))
                        acc += w * table[_vertex_row(grid, lvl, (cell[0] + i, cell[1] + j, cell[2] + k))]
            out[p, lvl * F:(lvl + 1) * F] = acc
    return out


def _random_table(grid: HashGrid, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        grid.table.copy_(torch.rand(grid.table.shape, generator=g, dtype=grid.table.dtype) * 2 - 1)


def _small_grid(**kw) -> HashGrid:
    cfg = dict(n_levels=5, n_features_per_level=2, log2_hashmap_size=10, base_resolution=3,
               per_level_scale=2.0, chunk_size=7)
    cfg.update(kw)
    grid = HashGrid(HashGridConfig(**cfg)).double()
    _random_table(grid)
    return grid


# ---------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("features", [2, 3])
def test_matches_slow_reference_on_dense_and_hashed_levels(features):
    grid = _small_grid(n_features_per_level=features)
    assert grid.dense_levels == [True, True, False, False, False]  # res 3, 6 dense; 12, 24, 48 hashed
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 3, generator=g, dtype=torch.float64)
    x[0] = 0.0
    x[1] = 1.0  # upper faces: last cell with frac 1
    x[2] = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(grid(x), _reference(grid, x), rtol=0, atol=1e-12)


def test_chunking_does_not_change_the_result():
    grid = _small_grid(chunk_size=1)
    x = torch.rand(23, 3, dtype=torch.float64)
    a = grid(x)
    grid.config.chunk_size = 1000
    torch.testing.assert_close(grid(x), a, rtol=0, atol=0)


def test_values_at_vertices_are_table_entries_and_interpolation_is_continuous():
    grid = _small_grid()
    F = 2
    for lvl in (1, 4):  # one dense, one hashed level
        r = grid.resolutions[lvl]
        verts = [(0, 0, 0), (r, r, r), (1, 2, 3), (r - 1, 0, r), (5, 1, 2)]
        x = torch.tensor(verts, dtype=torch.float64) / r
        got = grid(x)[:, lvl * F:(lvl + 1) * F]
        want = torch.stack([grid.table.detach()[_vertex_row(grid, lvl, v)] for v in verts])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # Crossing a cell face at every level at once: both sides agree to O(eps).
    x0 = torch.tensor([[2 / 3, 0.3, 0.71]], dtype=torch.float64)  # 2/3 is a vertex plane of res 3..48
    eps = torch.tensor([[1e-9, 0.0, 0.0]], dtype=torch.float64)
    jump = (grid(x0 + eps) - grid(x0 - eps)).abs().max()
    assert jump < 1e-6


def test_gradients_match_finite_differences():
    grid = _small_grid(n_levels=3, log2_hashmap_size=6, base_resolution=2, chunk_size=4)
    assert grid.dense_levels == [True, False, False]
    g = torch.Generator().manual_seed(3)
    x = (0.05 + 0.9 * torch.rand(9, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    # Keep finite differences inside one cell per level (the encoding has kinks at faces).
    for r in grid.resolutions:
        dist = (x.detach() * r - (x.detach() * r).round()).abs()
        assert dist.min() > 1e-4

    def fn(points, table):
        assert table is grid.table
        return grid(points)

    assert torch.autograd.gradcheck(fn, (x, grid.table), eps=1e-6, atol=1e-7)


def test_input_gradient_is_zero_outside_the_cube():
    grid = _small_grid()
    x = torch.tensor([[1.5, 0.5, -0.2], [0.3, 0.4, 0.5]], dtype=torch.float64, requires_grad=True)
    grid(x).sum().backward()
    assert x.grad[0, 0] == 0 and x.grad[0, 2] == 0
    assert x.grad[1].abs().sum() > 0


def test_hash_is_exact_for_large_coordinates():
    # Coordinates ~1e6 make c * 2654435761 exceed 2**32 and 2**63 / 2**32: int64 must not wrap.
    grid = HashGrid(HashGridConfig(n_levels=1, log2_hashmap_size=13, base_resolution=1_000_003)).double()
    _random_table(grid)
    x = torch.tensor([[0.999999, 0.5, 0.25], [0.123456, 0.987654, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(grid(x), _reference(grid, x), rtol=0, atol=1e-12)


def test_config_resolutions_and_init():
    grid = HashGrid(HashGridConfig())  # Compact-3DGS defaults
    assert grid.resolutions[0] == 16 and grid.resolutions[-1] == math.floor(16 * 1.447**15)
    assert grid.output_dim == 32
    assert grid.table.abs().max() <= 1e-4 and grid.table.std() > 1e-5
    T = 2**19
    assert grid.table.shape[0] == sum(min((r + 1) ** 3, T) for r in grid.resolutions)
    # max_resolution fixes b = (N_max / N_min)^(1/(L-1)) (Instant-NGP eq. 3).
    g2 = HashGrid(HashGridConfig(n_levels=8, base_resolution=16, max_resolution=2048, log2_hashmap_size=12))
    assert g2.resolutions == [16, 32, 64, 128, 256, 512, 1024, 2048]
    same = HashGrid(HashGridConfig(n_levels=2, log2_hashmap_size=8, seed=5))
    again = HashGrid(HashGridConfig(n_levels=2, log2_hashmap_size=8, seed=5))
    assert torch.equal(same.table, again.table)


def test_bad_input_raises():
    grid = _small_grid()
    with pytest.raises(SplatkitError):
        grid(torch.rand(4, 2, dtype=torch.float64))
    with pytest.raises(SplatkitError):
        grid(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(SplatkitError):
        HashGrid(HashGridConfig(per_level_scale=1.5, max_resolution=512))
    with pytest.raises(SplatkitError):
        HashGrid(HashGridConfig(per_level_scale=0.5))
    with pytest.raises(SplatkitError):
        HashGrid(HashGridConfig(n_levels=0))
    with pytest.raises(SplatkitError):
        contract_to_unit_ball(torch.zeros(3, 2))
    # Empty input and NaN coordinates (read as 0) do not crash.
    assert grid(torch.zeros(0, 3, dtype=torch.float64)).shape == (0, grid.output_dim)
    nan = torch.tensor([[float("nan"), 0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(grid(nan), grid(torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64)))


# ------------------------------------------------------------------------------- contraction


def test_contraction():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(500, 3, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    r = torch.rand(500, 1, generator=g, dtype=torch.float64)
    inside = d * r
    torch.testing.assert_close(contract_to_unit_ball(inside), inside / 4 + 0.5)
    far = d * (1 + 100 * r)
    y = contract_to_unit_ball(far) - 0.5
    # Outside the ball: radius 2 - 1/|x|, same direction, all of space within the unit cube.
    torch.testing.assert_close(y.norm(dim=1) * 4, 2 - 1 / far.norm(dim=1))
    torch.testing.assert_close(y / y.norm(dim=1, keepdim=True), d)
    assert (contract_to_unit_ball(d * 1e9) >= 0).all() and (contract_to_unit_ball(d * 1e9) <= 1).all()
    # Continuous at |x| = 1 and radius scaling.
    torch.testing.assert_close(contract_to_unit_ball(d * (1 + 1e-9)), contract_to_unit_ball(d), atol=1e-8, rtol=0)
    torch.testing.assert_close(contract_to_unit_ball(far * 3, radius=3.0), contract_to_unit_ball(far))
    # Finite gradients, including at the origin.
    x = torch.cat([torch.zeros(1, 3, dtype=torch.float64), far[:5], inside[:5]]).requires_grad_(True)
    contract_to_unit_ball(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(SplatkitError):
        contract_to_unit_ball(x, radius=0.0)


# ------------------------------------------------------------------------------- colour field


def _small_field(**kw) -> ColorField:
    grid = HashGridConfig(n_levels=6, log2_hashmap_size=12, base_resolution=4, per_level_scale=1.6)
    return ColorField(ColorFieldConfig(grid=grid, **kw))


def test_color_field_shapes_range_and_cameras():
    torch.manual_seed(0)
    field = _small_field()
    means = torch.randn(50, 3)
    dirs = torch.randn(50, 3)
    out = field(means, dirs)
    assert out.shape == (50, 3) and (out > 0).all() and (out < 1).all()
    assert field(means, dirs[None].repeat(4, 1, 1)).shape == (4, 50, 3)
    cams = torch.eye(4).repeat(2, 1, 1)
    cams[0, :3, 3] = torch.tensor([0.0, 0.0, -3.0])
    cams[1, :3, 3] = torch.tensor([2.0, 1.0, 0.5])
    got = field.colors_for_cameras(means, cams)
    want = torch.stack([field(means, means - cams[c, :3, 3]) for c in range(2)])
    torch.testing.assert_close(got, want)
    # Directions need not be unit length.
    torch.testing.assert_close(field(means, 7.0 * dirs), out)
    with pytest.raises(SplatkitError):
        field(means, torch.randn(49, 3))
    with pytest.raises(SplatkitError):
        field.colors_for_cameras(means, torch.eye(4))
    with pytest.raises(SplatkitError):
        ColorField(ColorFieldConfig(scene_bound=0.0))


def test_color_field_sh0_output_is_the_rasterisers_dc_colour():
    torch.manual_seed(0)
    sig, dc = _small_field(), _small_field(output="sh0")
    dc.load_state_dict(sig.state_dict())
    means, dirs = torch.randn(40, 3), torch.randn(40, 3)
    raw = torch.logit(sig(means, dirs).double()).float()  # the MLP's raw output, through the sigmoid's inverse
    torch.testing.assert_close(dc(means, dirs), (raw * SH_C0 + 0.5).clamp_min(0), rtol=1e-4, atol=1e-5)
    # Unbounded above, clamped at 0 below (with no gradient there), as per-Gaussian SH renders.
    with torch.no_grad():
        dc.head[-1].bias.copy_(torch.tensor([-50.0, 0.0, 50.0]))
    out = dc(means, dirs)
    assert (out[:, 0] == 0).all() and (out[:, 2] > 1).all()
    # The choice travels with the config (checkpoints and .skz rebuild the field from it).
    from splatkit.models.color_field import color_field_from_dict, color_field_to_dict

    assert color_field_from_dict(color_field_to_dict(dc)).config.output == "sh0"
    with pytest.raises(SplatkitError, match="output"):
        _small_field(output="tanh")


def test_color_field_default_hyperparameters():
    field = ColorField()
    assert field.grid.output_dim == 32 and field.grid.table_size == 2**19
    assert field.dir_in.in_features == 16 and field.pos_in.out_features == 64
    linears = [m for m in field.head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [64, 3]


def test_color_field_trains_and_detaches_means():
    torch.manual_seed(0)
    field = _small_field()
    means = torch.rand(256, 3) * 1.6 - 0.8
    dirs = torch.nn.functional.normalize(torch.randn(256, 3), dim=1)

    def target(m, d):  # smooth in position, view-dependent
        return torch.sigmoid(torch.stack([2 * m[:, 0] + d[:, 2], m[:, 1] - m[:, 2], 3 * m[:, 2] * d[:, 0]], 1))

    opt = torch.optim.Adam(field.parameters(), lr=1e-2, eps=1e-15)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (field(means, dirs) - target(means, dirs)).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0]
    # Detached centres (Compact-3DGS): the field never moves the Gaussians ...
    m = means.clone().requires_grad_(True)
    field(m, dirs).sum().backward()
    assert m.grad is None
    # ... unless asked: then the gradient reaches them through the encoding and the direction.
    f2 = _small_field(detach_means=False)
    m = means.clone().requires_grad_(True)
    f2.colors_for_cameras(m, torch.eye(4)[None]).sum().backward()
    assert m.grad is not None and torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------- bake


def _sh_field(coeffs: torch.Tensor):
    """A mock field that is exactly a degree-3 SH function per Gaussian (no clamp active)."""

    def field(means, dirs):
        return eval_sh(3, dirs, coeffs[means[:, 0].round().long()]) + 0.5

    return field


def test_bake_recovers_a_degree3_sh_field_exactly():
    g = torch.Generator().manual_seed(0)
    n = 37
    coeffs = torch.randn(n, 16, 3, generator=g, dtype=torch.float64) * 0.05
    coeffs[:, 0] = 0.5  # colour ~0.64 +- small: stays above the renderer's clamp at 0
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, 0] = torch.arange(n, dtype=torch.float64)  # the mock looks its coefficients up by x
    field = _sh_field(coeffs)
    for dirs in (None, fibonacci_sphere(60, hemisphere_axis=torch.tensor([0.3, -1.0, 0.2]),
                                        dtype=torch.float64)):
        baked = bake_to_sh(field, means, degree=3, num_dirs=100, dirs=dirs, chunk_size=10)
        assert baked.sh0.shape == (n, 1, 3) and baked.shN.shape == (n, 15, 3)
        torch.testing.assert_close(torch.cat([baked.sh0, baked.shN], 1), coeffs, rtol=0, atol=1e-9)
        assert baked.rms < 1e-10
    # A lower-degree bake cannot represent it: the reported RMS says so and matches sh_colors.
    low = bake_to_sh(field, means, degree=1, num_dirs=100)
    assert low.shN.shape == (n, 3, 3)
    d = fibonacci_sphere(100, dtype=torch.float64)
    rendered = sh_colors(low.sh0, low.shN, d[:, None, :])
    rms = (rendered - field(means, d[:, None, :].expand(-1, n, 3))).square().mean().sqrt()
    assert low.rms > 1e-3
    assert abs(float(rms) - low.rms) < 1e-9


def test_bake_a_color_field_and_bad_input():
    torch.manual_seed(0)
    field = _small_field()
    means = torch.randn(20, 3)
    baked = bake_to_sh(field, means, degree=3, num_dirs=64)
    assert torch.isfinite(baked.sh0).all() and torch.isfinite(baked.shN).all()
    # The reported RMS is the rendered-vs-field error over the bake directions.
    d = fibonacci_sphere(64)[:, None, :]
    with torch.no_grad():
        err = sh_colors(baked.sh0, baked.shN, d) - field(means, d.expand(-1, 20, 3))
    assert abs(float(err.square().mean().sqrt()) - baked.rms) < 1e-6
    print(f"bake RMS of an untrained colour field (degree 3, 64 directions): {baked.rms:.2e}")
    assert baked.rms < 0.02  # a smooth function of direction: degree 3 captures most of it
    with pytest.raises(SplatkitError):
        bake_to_sh(field, means, degree=3, num_dirs=8)  # fewer directions than coefficients
    with pytest.raises(SplatkitError):
        bake_to_sh(field, means[:, :2])
    with pytest.raises(SplatkitError):
        sh_colors(baked.sh0, baked.shN[:, :5], d)


def test_fibonacci_sphere():
    d = fibonacci_sphere(200, dtype=torch.float64)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(200, dtype=torch.float64))
    assert d.mean(0).norm() < 1e-2  # near-uniform
    axis = torch.tensor([0.0, 0.0, -2.0])
    h = fibonacci_sphere(100, hemisphere_axis=axis, dtype=torch.float64)
    assert (h[:, 2] <= 1e-12).all()
    torch.testing.assert_close(h.norm(dim=1), torch.ones(100, dtype=torch.float64))
