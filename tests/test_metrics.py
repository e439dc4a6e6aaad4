"""Tests for splatkit.metrics: exact values on hand-made images, SSIM against scikit-image,
the DTU masked protocol, and both LPIPS paths (unavailable here; a stand-in lpips package for the
available path)."""

from __future__ import annotations

import importlib.util
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity  # dev extra, pinned in requirements.lock

from splatkit.errors import SplatkitError
from splatkit.metrics import (
    compute_metrics, lpips, lpips_available, masked_lpips, masked_psnr, masked_ssim, psnr, ssim,
)
from splatkit.metrics import image as metrics

def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    # Wang et al.'s setting in skimage (its docstring says so); float64 in, float64 maths.
    return float(structural_similarity(
        a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, channel_axis=-1))


def _structured(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A pair with edges, flat areas, gradients and texture, differing in structure and contrast."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    checker = ((x // 4 + y // 4) % 2)
    ramp = x / (w - 1)
    wave = 0.5 + 0.4 * np.sin(2 * np.pi * x / 7.0) * np.cos(2 * np.pi * y / 5.0)
    gt = np.stack([checker, ramp, wave], axis=-1)
    gt[: h // 3, : w // 3] = 0.25  # a flat patch: SSIM there is decided by C1, C2
    pred = np.stack([np.roll(checker, 1, axis=1), 0.8 * ramp + 0.1, wave ** 2], axis=-1)
    pred[: h // 3, : w // 3] = 0.3
    return pred, gt


# -- PSNR -------------------------------------------------------------------------------------
def test_psnr_known_mse():
    gt = np.zeros((8, 12, 3))
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    one_channel = gt.copy()
    one_channel[..., 1] = 1.0  # MSE 1/3 -> 10 log10(3) dB
    assert psnr(one_channel, gt) == pytest.approx(10 * math.log10(3), abs=1e-9)
    half = gt.copy()
    half[:4] = 0.2  # half the pixels off by 0.2: MSE 0.02
    assert psnr(half, gt) == pytest.approx(-10 * math.log10(0.02), abs=1e-9)


def test_psnr_identical_is_inf_and_types():
    rng = np.random.default_rng(0)
    a = rng.random((6, 7, 3)).astype(np.float32)
    assert psnr(a, a) == math.inf
    value = psnr(a, np.clip(a + 0.05, 0, 1))
    assert isinstance(value, float)
    assert psnr(torch.from_numpy(a), torch.from_numpy(np.clip(a + 0.05, 0, 1))) == pytest.approx(value)


def test_psnr_batch_is_per_image():
    gt = np.zeros((2, 8, 8, 3))
    pred = gt.copy()
    pred[0] += 0.1
    pred[1] += 0.01
    out = psnr(pred, gt)
    assert isinstance(out, torch.Tensor) and out.shape == (2,) and out.dtype == torch.float64
    assert out.tolist() == pytest.approx([20.0, 40.0], abs=1e-9)


def test_input_validation():
    a = np.zeros((16, 16, 3))
    with pytest.raises(SplatkitError, match="uint8"):
        psnr(a.astype(np.uint8), a.astype(np.uint8))
    with pytest.raises(SplatkitError, match="shape"):
        psnr(a, np.zeros((16, 15, 3)))
    with pytest.raises(SplatkitError, match=r"\[H, W, 3\]"):
        psnr(np.zeros((3, 16, 16)), np.zeros((3, 16, 16)))  # channels-first by mistake
    with pytest.raises(SplatkitError, match="11x11"):
        ssim(np.zeros((10, 40, 3)), np.zeros((10, 40, 3)))


# -- SSIM -------------------------------------------------------------------------------------
def test_ssim_matches_skimage_random():
    rng = np.random.default_rng(1)
    gt = rng.random((37, 53, 3))
    pred = np.clip(gt + 0.15 * rng.standard_normal(gt.shape), 0, 1)
    assert ssim(pred, gt) == pytest.approx(_skimage_ssim(pred, gt), abs=1e-4)
    # float32 torch input goes through the same float64 maths.
    t = ssim(torch.from_numpy(pred.astype(np.float32)), torch.from_numpy(gt.astype(np.float32)))
    assert t == pytest.approx(_skimage_ssim(pred.astype(np.float32), gt.astype(np.float32)), abs=1e-4)


def test_ssim_matches_skimage_structured():
    pred, gt = _structured(31, 44)
    ours, ref = ssim(pred, gt), _skimage_ssim(pred, gt)
    assert ours == pytest.approx(ref, abs=1e-4)
    assert ours < 0.9  # the pair really differs, so agreement is not the trivial SSIM = 1


def test_ssim_border_handling_is_valid_mode():
    """skimage filters with reflected borders, then drops (11-1)//2 = 5 pixels per side: the same
    windows as a valid convolution. Differences only in the outermost 5 pixels still count, because
    valid windows reach the border; a padded ("same") SSIM would weigh them differently."""
    rng = np.random.default_rng(2)
    gt = rng.random((24, 24, 3))
    pred = gt.copy()
    pred[:, :3] = rng.random((24, 3, 3))  # change only a 3-pixel strip at the left border
    ours, ref = ssim(pred, gt), _skimage_ssim(pred, gt)
    assert ours == pytest.approx(ref, abs=1e-4)
    assert ours < 1.0


def test_ssim_single_window_by_hand():
    """On an 11x11 image the valid SSIM map has exactly one value: Wang et al.'s formula with
    Gaussian-weighted global statistics, computed here directly."""
    rng = np.random.default_rng(3)
    a, b = rng.random((11, 11, 3)), rng.random((11, 11, 3))
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for c in range(3):
        x, y = a[..., c], b[..., c]
        mx, my = (w * x).sum(), (w * y).sum()
        vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
        cxy = (w * (x - mx) * (y - my)).sum()
        per_channel.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert ssim(a, b) == pytest.approx(np.mean(per_channel), abs=1e-10)


def test_ssim_constant_images_closed_form():
    # Zero variance everywhere: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) exactly.
    a, b = np.full((15, 15, 3), 0.2), np.full((15, 15, 3), 0.6)
    c1 = 0.01**2
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), abs=1e-12)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_batch_matches_single():
    pred, gt = _structured(20, 26)
    rng = np.random.default_rng(4)
    noisy = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1)
    out = ssim(np.stack([pred, noisy]), np.stack([gt, gt]))
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([ssim(pred, gt), ssim(noisy, gt)], abs=1e-12)


# -- masked metrics (DTU protocol) ------------------------------------------------------------
def _half_mask(h=12, w=16):
    m = np.zeros((h, w))
    m[:, : w // 2] = 1.0
    return m


def test_masked_psnr_only_mask_differs():
    gt = np.full((12, 16, 3), 0.5)
    m = _half_mask()
    pred = gt + 0.25 * m[..., None]  # error 0.25 on every channel of the masked pixels
    assert masked_psnr(pred, gt, m) == pytest.approx(-10 * math.log10(0.0625), abs=1e-9)
    # the plain PSNR averages the same error over twice as many pixels
    assert psnr(pred, gt) == pytest.approx(-10 * math.log10(0.03125), abs=1e-9)


def test_masked_psnr_only_outside_differs_is_inf():
    gt = np.full((12, 16, 3), 0.5)
    m = _half_mask()
    pred = gt + 0.4 * (1 - m)[..., None]
    # Zero error inside the mask: inf, the same convention as psnr() of identical images.
    assert masked_psnr(pred, gt, m) == math.inf
    assert math.isfinite(psnr(pred, gt))


def test_masked_psnr_counts_only_mask_equal_one():
    """RegNeRF's mask_bin = (mask == 1.): soft values below 1 are left out of the MSE."""
    gt = np.full((12, 16, 3), 0.5)
    m = _half_mask()
    soft = m.copy()
    soft[:, 8:12] = 0.5
    pred = gt.copy()
    pred[:, :8] += 0.1
    pred[:, 8:12] -= 0.5  # large error on the soft pixels, which must not count
    assert masked_psnr(pred, gt, soft) == pytest.approx(20.0, abs=1e-9)


def test_masked_psnr_mask_shapes_and_batches():
    rng = np.random.default_rng(5)
    gt = rng.random((12, 16, 3))
    pred = rng.random((12, 16, 3))
    m = _half_mask()
    ref = masked_psnr(pred, gt, m)
    # All channels of the mask pixels: the MSE over exactly those elements.
    sel = m.astype(bool)
    assert ref == pytest.approx(-10 * math.log10(((pred - gt)[sel] ** 2).mean()), abs=1e-9)
    assert masked_psnr(pred, gt, m[..., None]) == pytest.approx(ref, abs=1e-12)
    assert masked_psnr(pred, gt, np.repeat(m[..., None], 3, axis=-1)) == pytest.approx(ref, abs=1e-12)
    assert masked_psnr(pred, gt, m.astype(bool)) == pytest.approx(ref, abs=1e-12)
    batch = masked_psnr(np.stack([pred, gt]), np.stack([gt, gt]), np.stack([m, m]))
    assert batch[0].item() == pytest.approx(ref, abs=1e-12) and batch[1].item() == math.inf


def test_masked_empty_or_bad_mask_is_an_error():
    gt = np.full((12, 16, 3), 0.5)
    empty = np.zeros((12, 16))
    for fn in (masked_psnr, masked_ssim):
        with pytest.raises(SplatkitError, match="mask"):
            fn(gt, gt, empty)
    with pytest.raises(SplatkitError, match=r"\[0, 1\]"):
        masked_psnr(gt, gt, _half_mask() * 255)
    with pytest.raises(SplatkitError, match="mask shape"):
        masked_psnr(gt, gt, np.ones((16, 12)))
    with pytest.raises(SplatkitError, match="batch image 1"):
        masked_psnr(np.stack([gt, gt]), np.stack([gt, gt]), np.stack([_half_mask(), empty]))


def test_masked_ssim_is_ssim_of_white_composites():
    pred, gt = _structured(24, 30)
    m = np.zeros((24, 30))
    m[4:20, 6:25] = 1.0
    m[10:14, 10:14] = 0.5  # soft values composite proportionally
    comp = lambda x: x * m[..., None] + (1 - m[..., None])  # noqa: E731
    assert masked_ssim(pred, gt, m) == pytest.approx(ssim(comp(pred), comp(gt)), abs=1e-12)
    # Anything outside the mask is invisible to the masked metric.
    changed = pred.copy()
    changed[m == 0] = 0.0
    assert masked_ssim(changed, gt, m) == pytest.approx(masked_ssim(pred, gt, m), abs=1e-12)


# -- LPIPS ------------------------------------------------------------------------------------
@pytest.fixture
def fresh_lpips_cache(monkeypatch):
    """Empty LPIPS caches and no imported lpips module, restored afterwards."""
    monkeypatch.setattr(metrics, "_lpips_models", {})
    monkeypatch.setattr(metrics, "_lpips_failures", {})
    monkeypatch.delitem(sys.modules, "lpips", raising=False)


def _fake_lpips_package(tmp_path, monkeypatch, body: str) -> None:
    pkg = tmp_path / "fake_site" / "lpips"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(pkg.parent))


def test_lpips_unavailable_when_import_breaks(tmp_path, monkeypatch, fresh_lpips_cache):
    # A torchvision built for another torch fails at import with RuntimeError, not ImportError.
    _fake_lpips_package(tmp_path, monkeypatch,
                        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    ok, reason = lpips_available()
    assert not ok
    assert "lpips" in reason and "torchvision" in reason and "RuntimeError" in reason
    with pytest.raises(SplatkitError, match="torchvision"):
        lpips(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)))
    gt = np.full((16, 16, 3), 0.5)
    out = compute_metrics(gt + 0.1, gt, mask=np.ones((16, 16)))
    assert out["lpips"] is None and out["masked_lpips"] is None
    assert out["lpips_unavailable"] == reason


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="this machine has torchvision; the test covers splatkit's CPU install")
def test_lpips_unavailable_in_this_install(fresh_lpips_cache):
    ok, reason = lpips_available("alex")
    assert not ok and "lpips" in reason and "torchvision" in reason


def test_lpips_weights_missing_is_reported(tmp_path, monkeypatch, fresh_lpips_cache):
    _fake_lpips_package(tmp_path, monkeypatch, """
        class LPIPS:
            def __init__(self, net="alex", verbose=True):
                raise OSError("could not download alexnet-owt-7be5be79.pth")
    """)
    ok, reason = lpips_available("vgg")
    assert not ok and "'vgg'" in reason and "alexnet-owt" in reason and "OSError" in reason


def test_lpips_available_path_with_stand_in_package(tmp_path, monkeypatch, fresh_lpips_cache):
    """The wrapper's side of the contract: NCHW float32 inputs, normalize=True for [0, 1] images,
    one model per backbone built once, per-image outputs. The stand-in scores the mean absolute
    difference of the [-1, 1]-scaled images, so expected values follow from the inputs."""
    _fake_lpips_package(tmp_path, monkeypatch, """
        import torch
        __version__ = "stand-in"
        built = []
        class LPIPS(torch.nn.Module):
            def __init__(self, net="alex", verbose=True):
                super().__init__()
                built.append(net)
                self.scale = torch.nn.Parameter(torch.ones(()))
            def forward(self, a, b, normalize=False):
                assert a.dtype == torch.float32 and a.ndim == 4 and a.shape[1] == 3
                if normalize:
                    a, b = 2 * a - 1, 2 * b - 1
                return (self.scale * (a - b).abs().mean(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    """)
    ok, reason = lpips_available()
    assert ok and "stand-in" in reason
    fake = sys.modules["lpips"]
    gt = np.full((16, 20, 3), 0.5)
    pred = gt.copy()
    pred[:, :10, 0] = 0.8  # |diff| 0.3 on a sixth of the elements, doubled by the [-1, 1] scaling
    assert lpips(pred, gt) == pytest.approx(2 * 0.3 / 6, abs=1e-6)
    batch = lpips(np.stack([pred, gt]), np.stack([gt, gt]))
    assert batch.shape == (2,) and batch.tolist() == pytest.approx([0.1, 0.0], abs=1e-6)
    m = np.zeros((16, 20))
    m[:, :5] = 1.0  # composites keep only half of the differing columns
    assert masked_lpips(pred, gt, m) == pytest.approx(2 * 0.3 / 12, abs=1e-6)
    out = compute_metrics(pred, gt, mask=m)
    assert "lpips_unavailable" not in out
    assert out["lpips"] == pytest.approx(0.1, abs=1e-6)
    assert out["masked_lpips"] == pytest.approx(0.05, abs=1e-6)
    assert fake.built == ["alex"]  # built once, then cached
    with pytest.raises(SplatkitError, match="unknown LPIPS network"):
        lpips(pred, gt, net="resnet")


# -- bundle -----------------------------------------------------------------------------------
def test_compute_metrics_keys_and_values(fresh_lpips_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import fails: the unavailable path
    pred, gt = _structured(16, 18)
    m = np.zeros((16, 18))
    m[3:13, 4:15] = 1
    plain = compute_metrics(pred, gt)
    assert set(plain) == {"psnr", "ssim", "lpips", "lpips_unavailable"}
    assert plain["psnr"] == psnr(pred, gt) and plain["ssim"] == ssim(pred, gt)
    assert plain["lpips"] is None and "lpips" in plain["lpips_unavailable"]
    full = compute_metrics(pred, gt, mask=m)
    assert set(full) == set(plain) | {"masked_psnr", "masked_ssim", "masked_lpips"}
    assert full["masked_psnr"] == masked_psnr(pred, gt, m)
    assert full["masked_ssim"] == masked_ssim(pred, gt, m)
    assert full["masked_lpips"] is None
    with pytest.raises(SplatkitError, match="one view"):
        compute_metrics(pred[None], gt[None])
