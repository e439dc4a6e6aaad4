"""The network-free sparse-view plugins (splatkit/priors/sparse_views.py): each loss against a
hand-computed case, the warp against an analytic plane (and the real rasteriser on a plane of
Gaussians), opacity decay's arithmetic, and a short training run with all of them that resumes
bit-identically."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from splatkit.priors.sparse_views import (DARK_THRESHOLD, DarkBackdrop, OpacityDecay, dark_backdrop_mask,
                                          edge_aware_smoothness, shifted_viewmats, table_backdrop_mask,
                                          warp_consistency_loss, warp_from_shifted)


def test_dark_backdrop_mask_needs_the_pixels_above_dark_too():
    # One column, top to bottom: dark, dark, bright, dark, dark, dark; run 3 = the pixel and 2 above.
    col = torch.tensor([0.0, 0.05, 0.5, 0.0, 0.1, 0.02])
    img = col[None, :, None, None].expand(1, 6, 1, 3).clone()
    img[0, 4, 0, 0] = DARK_THRESHOLD + 0.01  # one bright channel makes the pixel bright
    got = dark_backdrop_mask(img, DARK_THRESHOLD, run=3)[0, :, 0, 0].tolist()
    # rows 0, 1: dark with only dark pixels above; 2 bright; 3 has 2 above; 4 bright; 5 has 4 above.
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    img[0, 4, 0, 0] = 0.0
    got = dark_backdrop_mask(img, DARK_THRESHOLD, run=3)[0, :, 0, 0].tolist()
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_dark_backdrop_loss_is_the_mean_alpha_on_the_backdrop():
    images = torch.zeros(1, 2, 2, 3)
    images[0, 1, 1] = 0.9  # one bright pixel
    alphas = torch.tensor([0.2, 0.4, 0.6, 0.8]).reshape(1, 2, 2, 1)
    plugin = DarkBackdrop(SimpleNamespace(), DarkBackdrop.Config(weight=2.0, run=1))
    batch = SimpleNamespace(images=images, pixels=None)
    out = SimpleNamespace(alphas=alphas)
    # backdrop = the three dark pixels: 2 x (0.2 + 0.4 + 0.6) / 4
    assert float(plugin.loss(0, batch, out)) == pytest.approx(2.0 * 1.2 / 4)


def test_bright_backdrop_runs_join_the_mask_and_leave_the_loss():
    # 2 columns x 4 rows: column 0 white all the way down (a table), column 1 white only in the
    # bottom 2 rows (a highlight shorter than the run), a dark pixel top right.
    images = torch.full((1, 4, 2, 3), 0.5)
    images[0, :, 0] = 1.0
    images[0, 2:, 1] = 0.99
    images[0, 0, 1] = 0.0
    alphas = torch.full((1, 4, 2, 1), 0.5)
    batch = SimpleNamespace(images=images, pixels=None)
    plugin = DarkBackdrop(SimpleNamespace(), DarkBackdrop.Config(run=1, bright=True, bright_run=3))
    weights = plugin.photometric_weights(0, batch)[0, ..., 0]
    # Column 0 is a white run of 3 or more everywhere (the top rows count the rows they have, as
    # DNGaussian's shifted products do): out of the loss; the dark pixel stays in
    # (exclude_from_loss is off), and so does the highlight, shorter than the run.
    assert weights.tolist() == [[0, 1], [0, 1], [0, 1], [0, 1]]
    # The alpha penalty covers the white column and the dark pixel: 5 of 8 pixels x 0.5.
    assert float(plugin.loss(0, batch, SimpleNamespace(alphas=alphas))) == pytest.approx(5 * 0.5 / 8)
    off = DarkBackdrop(SimpleNamespace(), DarkBackdrop.Config(run=1))
    assert off.photometric_weights(0, batch) is None
    assert float(off.loss(0, batch, SimpleNamespace(alphas=alphas))) == pytest.approx(0.5 / 8)


def _table_scene():
    """A 40 x 40 grey object on a white table: the table fills the left 12 columns (touching the
    border), a 3 x 3 white speck and a 2-pixel-wide white highlight line from the border lie on the
    object."""
    import numpy as np

    img = np.full((40, 40, 3), 0.4, np.float32)
    img[:, :12] = 0.98
    img[20:23, 25:28] = 1.0  # a speck inside the object: does not reach the border
    img[30:32, 12:] = 0.99  # a highlight thinner than the opening, touching the table and the border
    return img


def test_table_mask_takes_the_border_region_of_the_table_colour_only():
    import numpy as np

    img = _table_scene()
    mask = table_backdrop_mask(img, [1.0, 1.0, 1.0], opening=5, min_area=0.01)
    expected = np.zeros((40, 40), bool)
    expected[:, :12] = True
    assert (mask == expected).all()
    # Without the opening the highlight joins the table; with a large min_area nothing is left.
    assert table_backdrop_mask(img, [1.0, 1.0, 1.0], opening=1)[30, 20]
    assert not table_backdrop_mask(img, [1.0, 1.0, 1.0], min_area=0.5).any()
    # Another colour: the grey of the object is a border region too.
    assert table_backdrop_mask(img, [0.4, 0.4, 0.4])[5, 30]


def test_table_and_solid_terms_by_hand():
    """The table joins the alpha penalty (and stays in the photometric loss); ``solid_weight``
    penalises 1 - alpha on every other pixel."""
    img = torch.as_tensor(_table_scene())[None]
    alphas = torch.full((1, 40, 40, 1), 0.25)
    plugin = DarkBackdrop(SimpleNamespace(), DarkBackdrop.Config(table=True, solid_weight=3.0))
    plugin._table_color = [1.0, 1.0, 1.0]  # what setup takes from the run's (table-coloured) background
    batch = SimpleNamespace(images=img, pixels=None, positions=[0], height=40, width=40)
    terms = plugin.loss(0, batch, SimpleNamespace(alphas=alphas))
    table = 12 / 40  # share of the pixels; no dark backdrop in the picture
    assert float(terms["alpha"]) == pytest.approx(0.25 * table)
    assert float(terms["solid"]) == pytest.approx(3.0 * 0.75 * (1 - table))
    assert plugin.photometric_weights(0, batch) is None
    assert list(plugin._tables) == [(0, 40, 40)]  # computed once per view


def test_table_needs_a_fixed_background(scene_dir, tmp_path):
    from splatkit.errors import SplatkitError
    from splatkit.train.config import resolve_config
    from splatkit.train.trainer import Trainer

    cfg = resolve_config({"data": str(scene_dir), "out": str(tmp_path / "r"), "steps": 1, "backend": "torch",
                          "init_num_points": 50, "background": "random", "regularizers": ["dark_backdrop"],
                          "plugins": {"dark_backdrop": {"exclude_from_loss": True, "table": True}}})
    with pytest.raises(SplatkitError, match="fixed background"):
        Trainer(cfg, quiet=True).train()


def test_anisotropy_penalises_the_ratio_beyond_the_cap_by_hand():
    from splatkit.priors.sparse_views import Anisotropy

    # Axis ratios 2 and 8 (under the cap) and 40: only the needle pays, 40 - 10.
    scales = torch.log(torch.tensor([[1.0, 2.0, 1.5], [0.1, 4.0, 1.0], [0.5, 4.0, 4.0]])).requires_grad_()
    plugin = Anisotropy(SimpleNamespace(), Anisotropy.Config(weight=0.5, max_ratio=10.0))
    plugin.setup(SimpleNamespace(method=SimpleNamespace(model=SimpleNamespace(splats={"scales": scales}))))
    term = plugin.loss(0, None, None)
    assert float(term) == pytest.approx(0.5 * 30.0 / 3, rel=1e-5)
    term.backward()
    # d/d log s of exp(log s_max - log s_min) is +ratio on the largest axis, -ratio on the smallest.
    assert scales.grad[1].tolist() == pytest.approx([-0.5 * 40 / 3, 0.5 * 40 / 3, 0.0], rel=1e-5)
    assert scales.grad[0].abs().sum() == 0 and scales.grad[2].abs().sum() == 0
    assert plugin.log_values(0)["median_ratio"] == pytest.approx(8.0, rel=1e-5)


def test_depth_smoothness_by_hand():
    from splatkit.priors.sparse_views import depth_smoothness_loss

    depth = torch.tensor([[1.0, 2.0], [1.0, 4.0]])[None, ..., None]
    alpha = torch.ones_like(depth)
    # Right: (2-1)^2, (4-1)^2; below: (1-1)^2, (4-2)^2; a mean over 4 pairs, depths in units of 2.
    assert float(depth_smoothness_loss(depth, alpha, torch.tensor([1.0]))) == pytest.approx(14 / 4)
    assert float(depth_smoothness_loss(depth, alpha, torch.tensor([2.0]))) == pytest.approx(14 / 16)
    alpha[0, 1, 1, 0] = 0.3  # a transparent pixel drops both of its pairs
    assert float(depth_smoothness_loss(depth, alpha, torch.tensor([1.0]))) == pytest.approx(1 / 2)
    alpha[:] = 0.0
    zero = depth_smoothness_loss(depth.requires_grad_(), alpha, torch.tensor([1.0]))
    assert float(zero) == 0.0 and zero.requires_grad


def test_swung_camera_stays_on_its_sphere_and_looks_at_the_centre():
    import numpy as np

    from splatkit.priors.sparse_views import swung_camera
    from splatkit.render.cameras_path import look_at

    center = np.array([0.1, 0.2, -0.3])
    c2w = look_at(center + np.array([0.0, -2.0, 1.0]), center, np.array([0.0, 0.0, 1.0]))
    assert np.allclose(swung_camera(c2w, center, 0.0, 0.0), c2w)
    for yaw, pitch, angle in ((math.radians(30), 0.0, 30.0), (0.0, math.radians(-20), 20.0)):
        moved = swung_camera(c2w, center, yaw, pitch)
        a, b = c2w[:3, 3] - center, moved[:3, 3] - center
        assert np.linalg.norm(b) == pytest.approx(np.linalg.norm(a))
        assert math.degrees(math.acos(a @ b / (a @ a))) == pytest.approx(angle)
        assert np.allclose(moved[:3, 2], -b / np.linalg.norm(b))  # forward: towards the centre
    # A pitch moves the eye in the camera's own up-down plane: its right axis is unchanged.
    assert np.allclose(swung_camera(c2w, center, 0.0, 0.3)[:3, 0], c2w[:3, 0])


def test_opacity_decay_multiplies_opacities_from_the_densification_start():
    logits = torch.logit(torch.tensor([0.5, 0.9]))
    state = SimpleNamespace(method=SimpleNamespace(model=SimpleNamespace(splats={"opacities": logits})))
    plugin = OpacityDecay(SimpleNamespace(refine_start_iter=10), OpacityDecay.Config())
    plugin.on_step_end(9, state)
    assert torch.sigmoid(logits).tolist() == pytest.approx([0.5, 0.9])
    plugin.on_step_end(10, state)
    plugin.on_step_end(11, state)
    assert torch.sigmoid(logits).tolist() == pytest.approx([0.5 * 0.995**2, 0.9 * 0.995**2], rel=1e-5)


def test_edge_aware_smoothness_by_hand():
    # Disparity ramp k per column on a flat image: every interior x-difference is k, y-difference 0.
    H, W, k = 4, 5, 0.3
    disp = (k * torch.arange(W, dtype=torch.float32))[None, None].expand(1, H, W)
    flat = torch.full((1, H, W, 3), 0.5)
    assert float(edge_aware_smoothness(disp, flat)) == pytest.approx(k)
    # An image ramp of 0.1 per column in each channel: |d_x I| = 3 x 0.1, weight exp(-0.33 x 0.3).
    ramp = (0.1 * torch.arange(W, dtype=torch.float32))[None, None, :, None].expand(1, H, W, 3)
    assert float(edge_aware_smoothness(disp, ramp)) == pytest.approx(k * math.exp(-0.33 * 0.3), rel=1e-5)


def test_warp_by_an_integer_disparity_and_the_invalid_edge():
    shifted = torch.arange(6, dtype=torch.float32).reshape(1, 1, 6, 1)
    warped, valid = warp_from_shifted(shifted, torch.full((1, 1, 6), 2.0))
    # Column 3 would read 5 exactly, but its right neighbour (6) is outside: invalid, as in monodepth.
    assert warped[0, 0, :, 0].tolist() == [2, 3, 4, 0, 0, 0] and valid[0, 0, :, 0].tolist() == [1, 1, 1, 0, 0, 0]
    warped, valid = warp_from_shifted(shifted, torch.full((1, 1, 6), -0.5))
    assert warped[0, 0, :, 0].tolist() == [0, 0.5, 1.5, 2.5, 3.5, 4.5] and valid[0, 0, 0, 0] == 0


def _plane_images(fx, cx, W, H, Z, shift, texture):
    """A fronto-parallel plane at depth Z with colour texture(X) seen by the camera and by the same
    camera moved by ``shift`` along its x axis (pixel centres at u + 0.5)."""
    u = torch.arange(W, dtype=torch.float64) + 0.5
    X = (u - cx) * Z / fx  # world x of what the original camera sees
    Xs = X + shift  # the moved camera sees x = (u - cx) Z / fx + shift
    orig = texture(X)[None, None, :, None].expand(1, H, W, 3)
    moved = texture(Xs)[None, None, :, None].expand(1, H, W, 3)
    return orig, moved


def test_warp_consistency_on_an_analytic_plane():
    fx, cx, W, H, Z = 100.0, 32.0, 64, 4, 2.0
    shift = 0.1  # disparity -fx s / Z = -5 px: the plane moves left when the camera moves right
    linear = lambda x: 0.3 + 0.2 * x  # exact under linear interpolation  # noqa: E731
    orig, moved = _plane_images(fx, cx, W, H, Z, shift, linear)
    depth = torch.full((1, H, W, 1), Z, dtype=torch.float64)
    shifts, fxs = torch.tensor([shift], dtype=torch.float64), torch.tensor([fx], dtype=torch.float64)
    disparity = -fx * shift / (Z + 1e-5)
    warped, valid = warp_from_shifted(moved, torch.full((1, H, W), disparity, dtype=torch.float64))
    ok = valid[..., 0] > 0
    assert int(ok.sum()) == H * (W - 5)  # the 5 columns at the left edge look outside the image
    assert torch.allclose(warped[ok], orig[ok], atol=1e-4)
    assert float(warp_consistency_loss(moved, depth, orig, fxs, shifts, smooth_weight=0.0)) < 1e-6
    # The smoothness term sees only the step of the (masked) disparity at the invalid edge: in each
    # of the H - 2 interior rows, two central differences of 5 / 2, each weighted by exp(-0.33 |d_x I|)
    # with |d_x I| = 3 channels x 0.2 Z / fx; mean over the (H - 2) (W - 2) interior pixels.
    smooth = 2 * (H - 2) * 2.5 * math.exp(-0.33 * 3 * 0.2 * Z / fx) / ((H - 2) * (W - 2))
    assert float(warp_consistency_loss(moved, depth, orig, fxs, shifts)) == pytest.approx(0.05 * smooth, rel=1e-4)
    # The wrong sign of the disparity does not line up.
    assert float(warp_consistency_loss(moved, depth, orig, fxs, -shifts, smooth_weight=0.0)) > 0.01
    # A smooth texture, a fractional disparity (0.65 px): linear interpolation leaves a residual far
    # below the images' own difference.
    orig, moved = _plane_images(fx, cx, W, H, Z, 0.013, lambda x: 0.5 + 0.4 * torch.sin(3 * x))
    residual = warp_consistency_loss(moved, depth, orig, fxs, torch.tensor([0.013], dtype=torch.float64),
                                     smooth_weight=0.0)
    assert float(residual) < 0.05 * float((moved - orig).abs().mean())


def test_shifted_camera_and_warp_through_the_rasteriser():
    """A plane of small Gaussians rendered by the real rasteriser from a camera and from the camera
    moved sideways: the warp through the rendered depth lines the renders up."""
    from splatkit.render import rasterization

    W, H, fx, Z = 64, 48, 60.0, 3.0
    g = torch.linspace(-3.0, 3.0, 121)
    yy, xx = torch.meshgrid(torch.linspace(-2.5, 2.5, 101), g, indexing="ij")
    means = torch.stack([xx.reshape(-1), yy.reshape(-1), torch.full((xx.numel(),), Z)], dim=1)
    n = len(means)
    colors = torch.stack([0.5 + 0.4 * torch.sin(2 * means[:, 0]), 0.5 + 0.4 * torch.cos(3 * means[:, 1]),
                          torch.full((n,), 0.5)], dim=1)
    quats = torch.tensor([1.0, 0, 0, 0]).expand(n, 4)
    scales = torch.full((n, 3), 0.05)
    opac = torch.full((n,), 0.99)
    K = torch.tensor([[fx, 0, W / 2], [0, fx, H / 2], [0, 0, 1]])[None]
    view = torch.eye(4)[None]
    shift = torch.tensor([0.12])  # ~2.4 px disparity

    def render(vm, mode="RGB"):
        out, _, _ = rasterization(means, quats, scales, opac, colors, vm, K, W, H, sh_degree=None,
                                  render_mode=mode, backgrounds=torch.zeros(1, 3), backend="torch")
        return out

    ref = render(view, "RGB+ED")
    target, depth = ref[..., :3], ref[..., 3:4]
    assert float((depth - Z).abs().max()) < 1e-3
    moved = render(shifted_viewmats(view, shift))
    right = warp_consistency_loss(moved, depth, target, K[:, 0, 0], shift, smooth_weight=0.0)
    wrong = warp_consistency_loss(moved, depth, target, K[:, 0, 0], -shift, smooth_weight=0.0)
    unwarped = (moved - target).abs().mean()
    assert float(right) < 0.15 * float(unwarped) and float(wrong) > 2 * float(right)


def test_training_with_the_sparse_plugins_logs_them_and_resumes_exactly(scene_dir, tmp_path):
    from splatkit.train.config import resolve_config
    from splatkit.train.trainer import Trainer

    def config(out, steps):
        return resolve_config({"data": str(scene_dir), "out": str(out), "steps": steps, "backend": "torch",
                               "init_num_points": 200, "sh_degree": 0, "background": "black",
                               "train_views": [0, 2, 4], "checkpoint_every": 3, "log_every": 1, "preview_every": 0,
                               "refine_start_iter": 1, "refine_every": 2,
                               "regularizers": ["opacity_decay", "warp_consistency", "dark_backdrop",
                                                "depth_smoothness"],
                               "plugins": {"warp_consistency": {"start": 0.0}}})

    full = Trainer(config(tmp_path / "full", 6), quiet=True)
    full.train()
    log = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert all(k in log[-1] for k in ("warp_consistency", "dark_backdrop", "depth_smoothness"))
    assert any(entry["depth_smoothness"] > 0 for entry in log)
    assert log[-1]["warp_consistency"] > 0
    # opacity_decay logs the mean opacity it is pulling down (a log-only value, not a loss term).
    assert 0 < log[-1]["opacity_decay/mean_opacity"] < log[0]["opacity_decay/mean_opacity"] < 1
    def stop_at_4(trainer, step):  # Ctrl-C after step 4: the loop saves a checkpoint there
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(tmp_path / "part", 6), quiet=True, callbacks=[stop_at_4]).train()
    resumed = Trainer(config(tmp_path / "part", 6), resume=True, quiet=True)
    resumed.train()
    for k, v in full.method.model.splats.items():
        assert torch.equal(v, resumed.method.model.splats[k]), k


def test_dark_backdrop_refuses_a_white_background(scene_dir, tmp_path):
    from splatkit.errors import SplatkitError
    from splatkit.train.config import resolve_config
    from splatkit.train.trainer import Trainer

    cfg = resolve_config({"data": str(scene_dir), "out": str(tmp_path / "r"), "steps": 1, "backend": "torch",
                          "init_num_points": 50, "background": "white", "regularizers": ["dark_backdrop"]})
    with pytest.raises(SplatkitError, match="black background"):
        Trainer(cfg, quiet=True).train()


def test_dark_backdrop_left_out_of_the_loss_trains_on_a_white_background(scene_dir, tmp_path):
    """Out of the photometric loss, the backdrop never meets the background colour: a white one
    (DTU's white table) is allowed, and the alpha penalty is logged."""
    import json

    from splatkit.train.config import resolve_config
    from splatkit.train.trainer import Trainer

    cfg = resolve_config({"data": str(scene_dir), "out": str(tmp_path / "r"), "steps": 2, "backend": "torch",
                          "init_num_points": 50, "background": "white", "regularizers": ["dark_backdrop"],
                          "plugins": {"dark_backdrop": {"exclude_from_loss": True}}, "log_every": 1})
    Trainer(cfg, quiet=True).train()
    logged = [json.loads(line) for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert logged and all("dark_backdrop" in rec for rec in logged)


def test_dark_backdrop_stands_down_where_auto_finds_a_bright_backdrop(tmp_path):
    """A preset listing dark_backdrop still trains on a white capture: background auto resolves to
    white, the plugin warns and adds nothing."""
    from splatkit.data.synthetic import write_synthetic_scene
    from splatkit.train.config import resolve_config
    from splatkit.train.trainer import Trainer

    data = write_synthetic_scene(tmp_path / "white", seed=0, width=48, height=36, n_views=6, backdrop="white")
    cfg = resolve_config({"data": str(data), "out": str(tmp_path / "r"), "steps": 2, "backend": "torch",
                          "init_num_points": 50, "regularizers": ["dark_backdrop"], "log_every": 1})
    with pytest.warns(UserWarning, match="plugin is off"):
        Trainer(cfg, quiet=True).train()
    import json

    logged = [json.loads(line) for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert logged and all("dark_backdrop" not in rec for rec in logged)


def test_plugin_settings_are_range_checked():
    from splatkit.errors import SplatkitError
    from splatkit.train.config import resolve_config

    with pytest.raises(SplatkitError, match="factor"):
        resolve_config({"plugins": {"opacity_decay": {"factor": 1.5}}})
    with pytest.raises(SplatkitError, match="max_shift"):
        resolve_config({"plugins": {"warp_consistency": {"max_shift": 0.0}}})
