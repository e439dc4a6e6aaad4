"""Depth files (npy / 16-bit png / pfm), depth prior sources and the simulated monocular estimate."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from splatkit.data.cameras import Cameras
from splatkit.data.depth_io import (DEPTH_SUFFIXES, find_depth_file, read_depth_file, read_pfm,
                                    write_depth_png16, write_pfm)
from splatkit.data.readers._common import read_depth
from splatkit.data.scene import Scene
from splatkit.errors import DataError, SplatkitError
from splatkit.priors.depth_sources import (MonocularDepth, degrade_depth, depth_priors_for_scene,
                                           load_prior_files, resize_prior, to_prior)


def make_scene(root, n=3, w=20, h=15, names=None):
    K = np.array([[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]])
    cams = Cameras(Ks=np.tile(K, (n, 1, 1)), camtoworlds=np.tile(np.eye(4), (n, 1, 1)), widths=w, heights=h)
    rng = np.random.default_rng(0)
    images = [rng.random((h, w, 3), dtype=np.float32) for _ in range(n)]
    return Scene(cameras=cams, images=images, names=names or [f"v{i:03d}" for i in range(n)],
                 ids=list(range(n)), root=root)


def smooth_depth(h=48, w=64):
    """Analytic z-depth in [~1, ~4.5] with a near disc (a depth edge) and some unknown pixels."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    d = 1.0 + 3.0 * xx + 0.5 * np.sin(6 * yy) + 0.3 * np.cos(5 * xx * yy)
    d[(xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.04] = 1.2
    d[:3, :5] = 0.0
    d[10, 10] = np.nan
    return d


# -- file formats -------------------------------------------------------------------------------
def test_npy_round_trip_marks_zero_and_nonfinite_unknown(tmp_path):
    d = np.array([[1.0, 2.5, 0.0], [np.inf, np.nan, 7.0]], np.float64)
    np.save(tmp_path / "a.npy", d)
    np.save(tmp_path / "b.npy", d[..., None])  # HxWx1
    np.save(tmp_path / "c.npy", np.array([[3, 0], [5, 9]], np.uint16))
    for name in ("a.npy", "b.npy"):
        out = read_depth_file(tmp_path / name)
        assert out.dtype == np.float32 and out.shape == (2, 3)
        np.testing.assert_array_equal(np.isnan(out), [[False, False, True], [True, True, False]])
        np.testing.assert_array_equal(out[~np.isnan(out)], [1.0, 2.5, 7.0])
    np.testing.assert_array_equal(read_depth_file(tmp_path / "c.npy"), [[3, np.nan], [5, 9]])
    # The readers' loader keeps the Scene convention (0 = unknown) on top of the same reader.
    np.testing.assert_array_equal(read_depth(tmp_path / "a.npy"), [[1.0, 2.5, 0.0], [0.0, 0.0, 7.0]])


def test_png16_round_trip_keeps_ratios_and_unknowns(tmp_path):
    d = np.array([[0.5, 1.0, np.nan], [2.0, 0.0, 4.0]], np.float32)
    write_depth_png16(tmp_path / "d.png", d)
    from PIL import Image

    with Image.open(tmp_path / "d.png") as im:
        assert im.mode == "I;16"
        raw = np.asarray(im)
    assert raw.max() == 65535 and raw[0, 2] == 0 and raw[1, 1] == 0
    out = read_depth_file(tmp_path / "d.png")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(d) | (d == 0))
    known = ~np.isnan(out)
    # A pure scale to the full range: values as stored are d * 65535 / max(d).
    np.testing.assert_allclose(out[known], d[known] * 65535 / 4.0, atol=0.5)
    # 8-bit PNGs are accepted as stored, also when saved as grey RGB.
    g8 = np.array([[0, 10], [200, 255]], np.uint8)
    Image.fromarray(np.stack([g8] * 3, -1)).save(tmp_path / "e.png")
    np.testing.assert_array_equal(read_depth_file(tmp_path / "e.png"), [[np.nan, 10], [200, 255]])


@pytest.mark.parametrize("little", [True, False])
def test_pfm_round_trip_both_byte_orders(tmp_path, little):
    d = np.arange(1, 13, dtype=np.float32).reshape(3, 4) * 0.5
    d[0, 0] = np.inf
    write_pfm(tmp_path / "d.pfm", d, little_endian=little)
    raw = (tmp_path / "d.pfm").read_bytes()
    assert raw.startswith(b"Pf\n4 3\n" + (b"-1.0\n" if little else b"1.0\n"))
    out = read_depth_file(tmp_path / "d.pfm")
    assert np.isnan(out[0, 0])
    np.testing.assert_array_equal(out.ravel()[1:], d.ravel()[1:])


def test_pfm_rows_are_bottom_to_top_and_colour_uses_channel_0(tmp_path):
    # Hand-made big-endian colour PFM, 1 wide and 2 tall: the first stored row is the image's BOTTOM.
    body = struct.pack(">6f", 2.0, 20.0, 200.0, 1.0, 10.0, 100.0)
    (tmp_path / "c.pfm").write_bytes(b"PF\n1 2\n1.0\n" + body)
    np.testing.assert_array_equal(read_pfm(tmp_path / "c.pfm"), [[[1.0, 10.0, 100.0]], [[2.0, 20.0, 200.0]]])
    np.testing.assert_array_equal(read_depth_file(tmp_path / "c.pfm"), [[1.0], [2.0]])
    rgb = np.random.default_rng(1).random((3, 2, 3)).astype(np.float32) + 0.1
    write_pfm(tmp_path / "rgb.pfm", rgb, little_endian=False)
    np.testing.assert_array_equal(read_pfm(tmp_path / "rgb.pfm"), rgb)
    np.testing.assert_array_equal(read_depth_file(tmp_path / "rgb.pfm"), rgb[..., 0])


def test_bad_depth_files_raise_data_error_naming_the_file(tmp_path):
    from PIL import Image

    bad = {}
    bad["trunc.pfm"] = b"Pf\n4 3\n-1.0\n" + b"\0" * 20
    bad["nohdr.pfm"] = b"P6\n4 3\n255\n" + b"\0" * 48
    bad["junk.npy"] = b"not a numpy file at all"
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    np.save(tmp_path / "neg.npy", np.array([[1.0, -2.0]], np.float32))
    np.save(tmp_path / "rgb.npy", np.ones((2, 2, 3), np.float32))
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    write_pfm(tmp_path / "neg.pfm", np.array([[1.0, -1.0]], np.float32))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(tmp_path / "cmap.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "d.exr").write_bytes(b"x")
    cases = {"trunc.pfm": "truncated", "nohdr.pfm": "not a PFM", "junk.npy": "cannot read",
             "neg.npy": "negative", "rgb.npy": "2D numeric", "text.npy": "2D numeric", "neg.pfm": "negative",
             "cmap.png": "colour", "broken.png": "cannot decode", "d.exr": "unsupported",
             "missing.npy": "missing"}
    for name, words in cases.items():
        with pytest.raises(DataError, match=words) as info:
            read_depth_file(tmp_path / name)
        assert info.value.path == tmp_path / name
        assert "\n" not in str(info.value)


def test_find_depth_file_order_and_image_name_style(tmp_path):
    assert DEPTH_SUFFIXES == (".npy", ".png", ".pfm")
    d = np.ones((2, 2), np.float32)
    write_pfm(tmp_path / "a.pfm", d)
    assert find_depth_file(tmp_path, "a") == tmp_path / "a.pfm"
    np.save(tmp_path / "a.npy", d)
    assert find_depth_file(tmp_path, "a") == tmp_path / "a.npy"  # .npy first
    np.save(tmp_path / "IMG_1.JPG.npy", d)
    assert find_depth_file(tmp_path, "IMG_1") == tmp_path / "IMG_1.JPG.npy"
    assert find_depth_file(tmp_path, "b") is None
    assert find_depth_file(tmp_path / "nope", "a") is None


# -- priors from files ----------------------------------------------------------------------------
def test_inverse_priors_are_negated_so_order_follows_depth():
    z = np.array([[1.0, 2.0, 4.0, 0.0]], np.float32)
    disp = np.where(z > 0, 1.0 / np.where(z > 0, z, 1), 0.0)
    p = to_prior(disp, "inverse")
    assert np.isnan(p[0, 3])  # 0 disparity = unknown
    assert p[0, 0] < p[0, 1] < p[0, 2]  # larger = farther, like z
    np.testing.assert_array_equal(to_prior(z, "depth")[0, :3], z[0, :3])
    with pytest.raises(SplatkitError, match="kind"):
        to_prior(z, "disparity")


def test_nan_aware_resize_does_not_bleed_unknowns():
    h, w = 8, 10
    ramp = np.tile(np.arange(w, dtype=np.float32), (h, 1)) + 1.0
    ramp[:, :4] = np.nan  # unknown left part
    up = resize_prior(ramp, 2 * w, 2 * h)
    assert up.shape == (2 * h, 2 * w)
    # Output column j samples input x = (j + 0.5) / 2 - 0.5: column 7 (x = 3.25) is 3/4 unknown,
    # column 8 (x = 3.75) 3/4 known, so the known part ends exactly there.
    assert np.isnan(up[:, :8]).all() and np.isfinite(up[:, 8:]).all()
    # Its edge keeps the known value (5 at input column 4) instead of being pulled towards 0.
    np.testing.assert_allclose(up[:, 8], 5.0, atol=1e-5)
    # Inside, bilinear reproduces the linear ramp.
    xs = (np.arange(12, 19) + 0.5) / 2 - 0.5 + 1.0
    np.testing.assert_allclose(up[3, 12:19], xs, atol=1e-5)
    down = resize_prior(ramp, w // 2, h // 2)
    assert np.isnan(down[:, 0]).all() and np.isfinite(down[:, 3:]).all()
    assert np.all(np.diff(down[0, 3:]) > 0)


def test_load_prior_files_resizes_and_converts(tmp_path):
    sc = make_scene(tmp_path, n=2, w=20, h=15)
    (tmp_path / "depth").mkdir()
    z = np.linspace(1.0, 3.0, 10 * 8, dtype=np.float32).reshape(8, 10)  # half size
    np.save(tmp_path / "depth" / "v000.npy", z)
    write_depth_png16(tmp_path / "depth" / "v001.png", z)
    priors = load_prior_files(sc)
    assert [p.shape for p in priors] == [(15, 20), (15, 20)]
    assert all(np.isfinite(p).all() for p in priors)
    assert priors[0][14, 19] > priors[0][0, 0]  # row-major ramp: far at the bottom right
    inv_dir = tmp_path / "inv"
    inv_dir.mkdir()
    for name in sc.names:
        write_pfm(inv_dir / f"{name}.pfm", 1.0 / z)
    inv = load_prior_files(sc, inv_dir, kind="inverse")
    assert inv[0][14, 19] > inv[0][0, 0]  # negated disparity grows with depth too
    # The single entry point dispatches the same way.
    assert depth_priors_for_scene(sc, "none") is None
    again = depth_priors_for_scene(sc, "files", kind="inverse", folder=inv_dir)
    np.testing.assert_array_equal(again[1], inv[1])


def test_missing_prior_files_listed_in_one_error(tmp_path):
    sc = make_scene(tmp_path, n=8)
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "v003.npy", np.ones((15, 20), np.float32))
    with pytest.raises(DataError) as info:
        load_prior_files(sc)
    msg = str(info.value)
    assert "7 of 8 views" in msg and "v000, v001, v002, v004, v005 and 2 more" in msg
    assert info.value.path == tmp_path / "depth"
    with pytest.raises(DataError, match="does not exist"):
        load_prior_files(sc, tmp_path / "elsewhere")


# -- simulated monocular estimate -----------------------------------------------------------------
def _pair_agreement(depth, est, n=20000):
    valid = np.isfinite(est)
    d, o = depth[valid], est[valid]
    r = np.random.default_rng(99)
    i, j = r.integers(0, d.size, n), r.integers(0, d.size, n)
    clear = np.abs(d[i] - d[j]) / np.minimum(d[i], d[j]) > 0.1
    # est is an inverse depth: it must DEcrease where depth increases.
    return np.mean(np.sign(o[i] - o[j])[clear] == -np.sign(d[i] - d[j])[clear])


def _affine_residual(depth, est):
    valid = np.isfinite(est)
    inv, o = 1.0 / depth[valid], est[valid].astype(np.float64)
    A = np.stack([inv, np.ones_like(inv)], 1)
    coef, *_ = np.linalg.lstsq(A, o, rcond=None)
    return np.sqrt(np.mean((A @ coef - o) ** 2)) / o.std()


@pytest.mark.parametrize("seed", [0, 7, 11])
def test_degrade_depth_keeps_order_but_is_not_affine(seed):
    depth = smooth_depth()
    est = degrade_depth(depth, np.random.default_rng(seed))
    assert est.shape == depth.shape and est.dtype == np.float32
    np.testing.assert_array_equal(np.isfinite(est), np.isfinite(depth) & (depth > 0))
    assert _pair_agreement(depth, est) > 0.9
    # Without noise and blur the warp alone is order-exact and still clearly non-affine.
    clean = degrade_depth(depth, np.random.default_rng(seed), noise=0.0, blur_sigma=0.0)
    assert _pair_agreement(depth, clean) == 1.0
    assert _affine_residual(depth, clean) > 0.02
    assert _affine_residual(depth, est) > 0.02


def test_degrade_depth_is_deterministic_per_seed():
    depth = smooth_depth()
    a = degrade_depth(depth, np.random.default_rng(3))
    b = degrade_depth(depth, np.random.default_rng(3))
    c = degrade_depth(depth, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c, equal_nan=True)


# -- monocular models -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised Depth Anything (Dinov2 backbone, hidden size 32) saved like a hub model."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    bb = tf.Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=4,
                         num_attention_heads=2, intermediate_size=64, out_indices=[1, 2, 3, 4],
                         reshape_hidden_states=False)
    cfg = tf.DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=32, neck_hidden_sizes=[8, 8, 16, 16],
                                 fusion_hidden_size=8, head_hidden_size=8, patch_size=14)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-da"
    tf.DepthAnythingForDepthEstimation(cfg).save_pretrained(str(path))
    # The fields of Depth Anything V2's published preprocessor_config.json, at a tiny size.
    (path / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "ensure_multiple_of": 14,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "image_processor_type": "DPTImageProcessor", "keep_aspect_ratio": True, "resample": 3,
        "rescale_factor": 1 / 255, "size": {"height": 42, "width": 42}}))
    return path


def test_monocular_model_predicts_and_caches(tiny_model_dir, tmp_path, monkeypatch):
    md = MonocularDepth.load(str(tiny_model_dir), cache_dir=tmp_path / "cache")
    assert md.kind == "inverse"  # a relative model predicts disparity-like values
    img = np.random.default_rng(0).random((30, 45, 3)).astype(np.float32)
    # Scale as little as possible: the width (45 -> 42) is fit, the height follows, both x14.
    assert md.input_size(30, 45) == (28, 42)
    pred = md.predict(img)
    assert pred.shape == (30, 45) and pred.dtype == np.float32 and np.isfinite(pred).all()
    cached = list((tmp_path / "cache").glob("*/*.npy"))
    assert len(cached) == 1 and cached[0].parent.name.startswith("tiny-da-")

    def boom(*a, **k):
        raise AssertionError("the model ran although the prediction is cached")

    monkeypatch.setattr(md.model, "forward", boom)
    np.testing.assert_array_equal(md.predict(img), pred)
    # The scene entry point reuses the cache and returns negated disparity.
    sc = make_scene(tmp_path, n=1, w=45, h=30)
    sc.images[0] = img
    monkeypatch.setattr("transformers.DepthAnythingForDepthEstimation.forward", boom)  # a fresh load too
    priors = depth_priors_for_scene(sc, str(tiny_model_dir), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(priors[0], to_prior(pred, "inverse"))


def test_tiny_dpt_without_preprocessor_config(tmp_path):
    """DPT with its built-in ViT only takes square inputs; defaults come from the model config."""
    tf = pytest.importorskip("transformers")
    import torch

    cfg = tf.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8)
    torch.manual_seed(0)
    tf.DPTForDepthEstimation(cfg).save_pretrained(str(tmp_path / "dpt"))
    md = MonocularDepth.load(str(tmp_path / "dpt"), cache_dir=tmp_path / "cache")
    assert md.kind == "inverse" and md.input_size(30, 45) == (32, 32)
    assert md.mean == pytest.approx((0.485, 0.456, 0.406))  # ImageNet defaults without a config file
    pred = md.predict(np.random.default_rng(2).random((30, 45, 3)).astype(np.float32))
    assert pred.shape == (30, 45) and np.isfinite(pred).all()


def test_input_size_matches_transformers_dpt_rule(tiny_model_dir, tmp_path):
    from transformers.models.dpt.image_processing_pil_dpt import get_resize_output_image_size

    md = MonocularDepth.load(str(tiny_model_dir), cache_dir=tmp_path)
    md.size = (518, 518)
    for h, w in [(1200, 1600), (480, 360), (300, 301), (37, 1000)]:
        ref = get_resize_output_image_size(np.zeros((3, h, w)), (518, 518), True, 14)
        assert md.input_size(h, w) == (ref.height, ref.width)


def test_metric_models_and_hub_cache_layout(tiny_model_dir, tmp_path, monkeypatch):
    # A repo id resolves through the Hugging Face cache layout, offline.
    hub = tmp_path / "hub"
    snap = hub / "models--tiny-org--tiny-metric" / "snapshots" / "abc123"
    shutil.copytree(tiny_model_dir, snap)
    (hub / "models--tiny-org--tiny-metric" / "refs").mkdir()
    (hub / "models--tiny-org--tiny-metric" / "refs" / "main").write_text("abc123")
    cfg = json.loads((snap / "config.json").read_text())
    cfg["depth_estimation_type"] = "metric"
    (snap / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    md = MonocularDepth.load("tiny-org/tiny-metric", cache_dir=tmp_path / "cache")
    assert md.kind == "depth"
    assert md.key.startswith("tiny-org--tiny-metric-")


def test_unavailable_models_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(SplatkitError) as info:
        MonocularDepth.load("depth-anything-v2-small")
    msg = str(info.value)
    assert "depth-anything/Depth-Anything-V2-Small-hf" in msg and "no weights can be downloaded" in msg
    assert "download depth-anything/Depth-Anything-V2-Small-hf" in msg and "\n" not in msg
    with pytest.raises(SplatkitError, match="'no-such-model'.*not a known model alias"):
        MonocularDepth.load("no-such-model")
    with pytest.raises(SplatkitError, match="not in the local Hugging Face cache"):
        depth_priors_for_scene(make_scene(tmp_path), "some-org/some-model")
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(SplatkitError, match="no config.json"):
        MonocularDepth.load(str(tmp_path / "empty-model"))
