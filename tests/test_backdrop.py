"""Bright backdrops (issue #18, part 2): the white-backdrop synthetic variant, the backdrop
estimate behind ``background="auto"``, per-Gaussian blending-weight sums and the
``backdrop_prune`` plugin."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from splatkit.data import load_scene
from splatkit.data.backdrop import estimate_backdrop
from splatkit.data.synthetic import render_synthetic_scene, write_synthetic_scene
from splatkit.errors import DataError, SplatkitError
from splatkit.models.gaussians import GaussianModel
from splatkit.render import rasterization
from splatkit.render.contribution import blend_weight_sums
from splatkit.app.train import train_command
from splatkit.train import TrainConfig, Trainer

W, H, N = 48, 36, 8


@pytest.fixture(scope="module")
def dark_and_white():
    return (render_synthetic_scene(seed=2, width=W, height=H, n_views=N),
            render_synthetic_scene(seed=2, width=W, height=H, n_views=N, backdrop="white"))


@pytest.fixture(scope="module")
def white_dir(tmp_path_factory) -> Path:
    return write_synthetic_scene(tmp_path_factory.mktemp("white") / "syn", seed=0, width=W, height=H,
                                 n_views=10, backdrop="white")


def _eroded(mask: np.ndarray) -> np.ndarray:
    m = mask.copy()
    m[1:] &= mask[:-1]
    m[:-1] &= mask[1:]
    m[:, 1:] &= mask[:, :-1]
    m[:, :-1] &= mask[:, 1:]
    return m


def _dilated(mask: np.ndarray) -> np.ndarray:
    return ~_eroded(~mask)


def test_white_backdrop_variant_is_the_same_object_on_pure_white(dark_and_white):
    dark, white = dark_and_white
    assert np.array_equal(dark.masks, white.masks)
    assert white.meta()["backdrop"] == "white" and dark.meta()["backdrop"] == "dark"
    for i in range(N):
        outside = ~_dilated(white.masks[i])
        inside = _eroded(white.masks[i])
        # Pure white away from the object (a sliver that only sub-pixel rays hit may tint a pixel).
        assert (white.images[i][outside] == 255).all(axis=1).mean() > 0.999
        # Object pixels are shaded as in the dark scene (a few where the object meets the table
        # have a sub-sample on the table, white here).
        same = (white.images[i][inside] == dark.images[i][inside]).all(axis=1)
        assert same.mean() > 0.98
        assert (white.depths[i][~white.masks[i]] == 0).all()  # no table: nothing there
    with pytest.raises(DataError, match="backdrop must be one of"):
        render_synthetic_scene(seed=0, width=16, height=12, n_views=1, backdrop="green")


def test_backdrop_estimate(dark_and_white):
    dark, white = dark_and_white
    ws, ds = white.to_scene(), dark.to_scene()
    for masks in (None, ws.masks):
        est = estimate_backdrop(ws.images, masks)
        assert est.color is not None and np.array_equal(est.color, np.ones(3, np.float32))
        assert est.coverage > 0.999 and "white backdrop" in est.describe()
    # DTU-like dark room with a lit table: not uniform, so no estimate (auto then trains on black).
    est = estimate_backdrop(ds.images)
    assert est.color is None and "no uniform backdrop" in est.describe()
    # A uniform grey sweep with some noise: its colour, not snapped to black or white.
    rng = np.random.default_rng(0)
    grey = [np.clip(np.full((H, W, 3), [0.55, 0.6, 0.5]) + rng.normal(0, 0.01, (H, W, 3)), 0, 1) for _ in range(3)]
    est = estimate_backdrop(grey)
    assert est.color is not None and np.allclose(est.color, [0.55, 0.6, 0.5], atol=0.01)
    # A near-black backdrop snaps to exactly black.
    est = estimate_backdrop([np.full((H, W, 3), 0.02)])
    assert np.array_equal(est.color, np.zeros(3, np.float32))


def _two_gaussians():
    means = torch.tensor([[-0.3, 0.0, 3.0], [0.25, 0.05, 4.0]])
    quats = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0.2, 0.0]])
    quats = quats / quats.norm(dim=1, keepdim=True)
    scales = torch.tensor([[0.3, 0.2, 0.25], [0.4, 0.3, 0.2]])
    opacities = torch.tensor([0.7, 0.8])
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[40.0, 0, 24], [0, 40.0, 18], [0, 0, 1]]])
    return means, quats, scales, opacities, viewmats, Ks


def _weights_by_hand(means, quats, scales, opacities, viewmats, Ks):
    """Per Gaussian, its blending weight w_i = alpha_i T_i at every pixel: the render with colour
    one for Gaussian i only (background zero) is exactly w_i."""
    out = []
    for i in range(len(means)):
        colors = torch.zeros(len(means), 1)
        colors[i] = 1.0
        r, _, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, sh_degree=None,
                                backend="torch")
        out.append(r[0, ..., 0])
    return torch.stack(out)  # [N, H, W]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_blend_weight_sums_match_per_gaussian_renders(backend):
    g = _two_gaussians()
    w = _weights_by_hand(*g)
    assert w.sum() > 1.0 and (w[0] * w[1]).sum() > 0  # they overlap: occlusion matters
    rng = torch.Generator().manual_seed(0)
    pixel_weights = torch.rand(1, H, W, 2, generator=rng)
    sums = blend_weight_sums(*g, W, H, pixel_weights, backend=backend)
    expected = torch.einsum("nhw,hwd->nd", w, pixel_weights[0])
    torch.testing.assert_close(sums, expected, rtol=1e-4, atol=1e-5)
    # Over all pixels, the weights of all Gaussians add up to the rendered alpha.
    _, alphas, _ = rasterization(*g[:4], torch.ones(2, 3), g[4], g[5], W, H, sh_degree=None, backend=backend)
    ones = blend_weight_sums(*g, W, H, torch.ones(1, H, W, 1), backend=backend)
    assert float(ones.sum()) == pytest.approx(float(alphas.sum()), rel=1e-4)
    with pytest.raises(SplatkitError, match="pixel_weights must be"):
        blend_weight_sums(*g, W, H, torch.ones(1, H, W), backend=backend)


def _surface_and_floaters(scene, n_floaters=40, seed=0):
    """Gaussians on the object's surface (back-projected mask pixels of view 0) and floaters on
    rays of view 0 that miss the object, half-way to where the object is."""
    cams = scene.cameras
    K, c2w = cams.Ks[0], cams.camtoworlds[0]
    depth = scene.depths[0]
    ys, xs = np.nonzero(scene.masks[0] > 0.5)
    z = depth[ys, xs]
    pts_cam = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * z, (ys + 0.5 - K[1, 2]) / K[1, 1] * z, z], axis=1)
    surface = pts_cam @ c2w[:3, :3].T + c2w[:3, 3]
    rng = np.random.default_rng(seed)
    backdrop = scene.masks[0] < 0.5
    for _ in range(4):  # at least 4 px from the object
        backdrop = _eroded(backdrop)
    bys, bxs = np.nonzero(backdrop)
    pick = rng.choice(len(bys), n_floaters, replace=False)
    zf = np.full(n_floaters, float(np.median(z)) * 0.6)
    fl_cam = np.stack([(bxs[pick] + 0.5 - K[0, 2]) / K[0, 0] * zf, (bys[pick] + 0.5 - K[1, 2]) / K[1, 1] * zf, zf], 1)
    floaters = fl_cam @ c2w[:3, :3].T + c2w[:3, 3]
    points = np.concatenate([surface, floaters]).astype(np.float32)
    model = GaussianModel.from_points(torch.from_numpy(points), torch.full((len(points), 3), 0.5), sh_degree=0,
                                      init_opacity=0.8, init_scale=0.5)
    scales = model.splats["scales"].data
    scales[len(surface):] = scales[:len(surface)].median()  # floaters as small as surface Gaussians
    return model, len(surface)


def test_backdrop_prune_finds_the_gaussians_that_only_cover_backdrop(white_dir):
    from splatkit.methods.backdrop_prune import BackdropPrune

    scene = load_scene(white_dir)
    model, n_surface = _surface_and_floaters(scene)
    config = TrainConfig(background="white", backend="torch").resolved()
    for masks in (scene.masks, None):  # masks when the scene has them, else the colour test
        view = scene.subset([0])
        view.masks = masks if masks is None else [masks[0]]
        plugin = BackdropPrune(config)
        plugin.setup(SimpleNamespace(scene=view, device=torch.device("cpu"), method=SimpleNamespace(model=model)))
        share, total = plugin.backdrop_share()
        floaters = slice(n_surface, None)
        assert (total[floaters] > 1e-3).all()
        assert (share[floaters] >= 0.95).float().mean() >= 0.9
        on_object = share[:n_surface][total[:n_surface] > 1e-3]
        assert (on_object < 0.95).float().mean() >= 0.9


def test_backdrop_prune_needs_a_fixed_colour_or_masks(white_dir):
    from splatkit.methods.backdrop_prune import BackdropPrune

    scene = load_scene(white_dir)
    scene.masks = None
    plugin = BackdropPrune(TrainConfig(background="random").resolved())
    with pytest.raises(SplatkitError, match="backdrop_prune needs object masks or a fixed background"):
        plugin.setup(SimpleNamespace(scene=scene, device=torch.device("cpu"), method=None))


def _tiny(data, out, **kw):
    base = dict(data=data, out=out, steps=20, init_num_points=300, sh_degree=0, test_views=[0, 5],
                refine_start_iter=4, refine_every=5, refine_stop_iter=15, log_every=10, preview_every=0,
                checkpoint_every=10, backend="torch", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_auto_background_is_estimated_saved_and_reused(white_dir, scene_dir, tmp_path, capsys):
    trainer = Trainer(_tiny(white_dir, tmp_path / "white"))
    run = trainer.train()
    saved = json.loads((run / "config.json").read_text())
    assert saved["background"] == "auto" and saved["background_color"] == [1.0, 1.0, 1.0]
    # A uniform backdrop switches on the pruning of Gaussians that only explain it.
    assert saved["prune_backdrop"] is True and "backdrop_prune" in [p.name for p in trainer.plugins]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["eval_background"] == [1.0, 1.0, 1.0]
    assert "background white: white backdrop" in capsys.readouterr().out
    # Resume keeps the colour the run started with instead of estimating it again.
    train_command({"out": str(run), "steps": 25}, resume=True, quiet=True)
    assert json.loads((run / "config.json").read_text())["background_color"] == [1.0, 1.0, 1.0]
    assert "background white" not in capsys.readouterr().out
    # DTU's dark room (the tiny dark synthetic scene): no uniform backdrop, black as before.
    dark = Trainer(_tiny(scene_dir, tmp_path / "dark", steps=5)).train()
    saved = json.loads((dark / "config.json").read_text())
    assert saved["background_color"] == [0.0, 0.0, 0.0] and saved["prune_backdrop"] is False
    with pytest.raises(SplatkitError, match="background_color must be three numbers"):
        TrainConfig(background_color=[1.0, 2.0, 0.0]).resolved()
    with pytest.raises(SplatkitError, match="cannot go with background 'random'"):
        TrainConfig(background="random", background_color=[1.0, 1.0, 1.0]).resolved()


SCAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "dtu_scan65"


@pytest.mark.realdata
@pytest.mark.skipif(not (SCAN / "cameras_sphere.npz").is_file(),
                    reason=f"real DTU scan not available at {SCAN} (it lives in ../shared/data beside the repo)")
def test_real_scan_dark_room_has_no_backdrop_but_masked_to_white_has():
    scene = load_scene(SCAN).subset([25, 22, 28])
    for masks in (None, scene.masks):  # DTU's room and table: trained on black as before
        assert estimate_backdrop(scene.images, masks).color is None
    white = [np.where(m[..., None] > 0.5, img, 1.0) for img, m in zip(scene.images, scene.masks)]
    for masks in (None, scene.masks):
        est = estimate_backdrop(white, masks)
        assert est.color is not None and np.array_equal(est.color, np.ones(3, np.float32))


# -- two-part backdrops (DTU: a dark void beyond a white table) -----------------------------------
def _dark_band(images: list[np.ndarray], rows: int) -> list[np.ndarray]:
    out = []
    for img in images:
        img = np.array(img, np.float32, copy=True)
        img[:rows] = 0.0
        out.append(img)
    return out


def test_backdrop_estimate_leaves_excluded_pixels_aside(dark_and_white):
    _, white = dark_and_white
    ws = white.to_scene()
    banded = _dark_band(ws.images, rows=H // 3)
    band = [np.arange(H)[:, None].repeat(W, 1) < H // 3 for _ in banded]
    for masks in (None, ws.masks):
        assert estimate_backdrop(banded, masks).color is None  # black band + white table: not uniform
        est = estimate_backdrop(banded, masks, exclude=band)
        assert est.color is not None and np.array_equal(est.color, np.ones(3, np.float32))


@pytest.fixture(scope="module")
def two_part_dir(tmp_path_factory) -> Path:
    """The white synthetic scene with a black band across the top of every image (outside the
    object): DTU's dark void above its white table."""
    import imageio.v3 as iio

    out = write_synthetic_scene(tmp_path_factory.mktemp("twopart") / "syn", seed=0, width=W, height=H,
                                n_views=10, backdrop="white")
    for path in sorted((out / "image").glob("*.png")):
        img = iio.imread(path)
        mask = iio.imread(out / "mask" / f"{int(path.stem):03d}.png")
        band = (np.arange(H)[:, None] < H // 4) & ((mask[..., 0] if mask.ndim == 3 else mask) < 128)
        img[band] = 0
        iio.imwrite(path, img)
    return out


def _two_part_config(data: Path, out: Path, **plugin) -> TrainConfig:
    from splatkit.train.config import resolve_config

    return resolve_config({"data": str(data), "out": str(out), "steps": 2, "backend": "torch", "init_num_points": 50,
                           "regularizers": ["dark_backdrop"], "log_every": 1,
                           "plugins": {"dark_backdrop": {"run": 3, **plugin}}})


def test_auto_background_on_a_two_part_backdrop_is_the_table_with_the_dark_part_out_of_the_loss(two_part_dir, tmp_path):
    trainer = Trainer(_two_part_config(two_part_dir, tmp_path / "r"), quiet=True)
    trainer.train()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["background_color"] == [1.0, 1.0, 1.0]
    assert saved["plugins"]["dark_backdrop"]["exclude_from_loss"] is True  # resume trains the same
    # The table joins the alpha penalty and the rest is pushed opaque.
    assert saved["plugins"]["dark_backdrop"]["table"] is True
    assert saved["plugins"]["dark_backdrop"]["solid_weight"] > 0
    assert saved["prune_backdrop"] is False  # pruning by the table alone would lean on the masks
    assert "dark_backdrop's pixels are left aside" in trainer._background_note
    logged = [json.loads(line) for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert logged and all("dark_backdrop/alpha" in rec and "dark_backdrop/solid" in rec for rec in logged)
    # Settings given by hand win over the two-part defaults.
    Trainer(_two_part_config(two_part_dir, tmp_path / "t", table=False, solid_weight=0.0), quiet=True).train()
    given = json.loads((tmp_path / "t" / "config.json").read_text())["plugins"]["dark_backdrop"]
    assert given["table"] is False and given["solid_weight"] == 0.0 and given["exclude_from_loss"] is True
    # Kept in the loss on purpose: the backdrop stays what it was (no uniform one: black).
    Trainer(_two_part_config(two_part_dir, tmp_path / "k", exclude_from_loss=False), quiet=True).train()
    kept = json.loads((tmp_path / "k" / "config.json").read_text())
    assert kept["background_color"] == [0.0, 0.0, 0.0]


SCAN37 = SCAN.parent / "dtu_scan37"


@pytest.mark.realdata
@pytest.mark.skipif(not (SCAN37 / "cameras_sphere.npz").is_file() or not (SCAN / "cameras_sphere.npz").is_file(),
                    reason=f"real DTU scans not available under {SCAN.parent} (../shared/data beside the repo)")
def test_real_scans_two_part_backdrop_white_table_on_37_none_on_65():
    from splatkit.priors.sparse_views import DarkBackdrop

    for scan, white in ((SCAN37, True), (SCAN, False)):
        scene = load_scene(scan).subset([25, 22, 28])
        est = estimate_backdrop(scene.images, scene.masks, exclude=DarkBackdrop.backdrop_pixels(scene.images, {}))
        assert (est.color is not None and np.array_equal(est.color, np.ones(3, np.float32))) == white, scan.name


@pytest.mark.realdata
@pytest.mark.skipif(not (SCAN37 / "cameras_sphere.npz").is_file(),
                    reason=f"real DTU scan 37 not available under {SCAN.parent} (../shared/data beside the repo)")
def test_real_scan37_table_mask_stays_off_the_object():
    """The table found from colours alone (no masks) against DTU's object masks of the three
    training views: a quarter or more of each view, and almost none of it on the object."""
    from splatkit.priors.sparse_views import table_backdrop_mask

    scene = load_scene(SCAN37).subset([25, 22, 28])
    for image, mask in zip(scene.images, scene.masks):
        table = table_backdrop_mask(image, [1.0, 1.0, 1.0])
        obj = np.asarray(mask) > 0.5
        assert table.mean() > 0.25
        assert (table & obj).sum() < 0.01 * obj.sum()
