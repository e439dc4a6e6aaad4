"""render / eval / export / demo on a real (tiny) training run, and the orbit camera path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from splatkit.cli.main import main
from splatkit.data.cameras import Cameras
from splatkit.errors import SplatkitError

W, H, VIEWS = 48, 36, 9
TEST_IDS = [0, 4, 8]
STEPS = 10


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    from splatkit.data.synthetic import write_synthetic_scene

    return write_synthetic_scene(tmp_path_factory.mktemp("scene") / "syn", seed=0, width=W, height=H,
                                 n_views=VIEWS)


@pytest.fixture(scope="module")
def run_dir(scene_dir, tmp_path_factory) -> Path:
    """A real run: the trainer, a few steps, few Gaussians (only the files matter here)."""
    from splatkit.train import Trainer, resolve_config

    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = resolve_config({"data": scene_dir, "out": out, "steps": STEPS, "sh_degree": 1,
                          "init_num_points": 1500, "test_views": TEST_IDS, "background": "white",
                          "checkpoint_every": 0, "preview_every": 0})
    return Trainer(cfg, quiet=True).train()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -- render ---------------------------------------------------------------------------------------
def test_render_writes_one_png_per_test_view(run_dir, scene_dir, capsys):
    import imageio.v3 as iio

    assert main(["render", "--run", str(run_dir)]) == 0
    folder = run_dir / "renders" / "test"
    pngs = sorted(folder.glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:06d}" for i in TEST_IDS]
    assert sorted(p.name for p in (folder / "depth").glob("*.png")) == [p.name for p in pngs]
    for p in pngs + sorted((folder / "depth").glob("*.png")):
        img = iio.imread(p)
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert f"rendered {len(TEST_IDS)} test views" in capsys.readouterr().out


def test_render_matches_the_trainers_own_render(run_dir):
    """Same camera, background and model as the trainer's final preview (GT | render)."""
    import imageio.v3 as iio

    from splatkit.app import render_split

    res = render_split(run_dir, "test", out_dir=run_dir / "renders" / "check")
    preview = iio.imread(run_dir / "previews" / f"step_{STEPS:06d}.png")
    ours = iio.imread(res.images[0])  # the first test view, as the preview shows
    diff = np.abs(preview[:, W:].astype(int) - ours.astype(int))
    assert diff.max() <= 1  # 8-bit rounding of the same float image


def test_render_train_split(run_dir):
    from splatkit.app import render_split

    res = render_split(run_dir, "train", out_dir=run_dir / "renders" / "train_check")
    assert len(res.images) == VIEWS - len(TEST_IDS)
    assert res.step == STEPS
    near, far = res.depth_range
    assert 0 < near < far


def test_orbit_video_has_the_requested_frames(run_dir, tmp_path):
    from splatkit.render.video import count_video_frames

    video = tmp_path / "orbit.mp4"
    assert main(["render", "--run", str(run_dir), "--orbit", "--frames", "6", "--video", str(video)]) == 0
    assert count_video_frames(video) == 6
    import imageio.v2 as imageio_v2

    reader = imageio_v2.get_reader(video, format="FFMPEG")
    try:
        assert reader.get_next_data().shape == (H, W, 3)
    finally:
        reader.close()
    assert [p.name for p in tmp_path.iterdir()] == ["orbit.mp4"]  # no temporary file left


def test_without_ffmpeg_a_gif_is_written(run_dir, tmp_path, monkeypatch):
    from splatkit.app import render_orbit
    from splatkit.render import video as video_mod

    monkeypatch.setattr(video_mod, "ffmpeg_available", lambda: (False, "no ffmpeg in this test"))
    res = render_orbit(run_dir, video=tmp_path / "orbit.mp4", n_frames=4)
    assert res.path == tmp_path / "orbit.gif" and res.path.is_file()
    assert "no ffmpeg in this test" in res.fallback_reason and "GIF" in res.fallback_reason
    assert video_mod.count_video_frames(res.path) == 4


def test_odd_frame_sizes_are_padded_for_h264(tmp_path):
    from splatkit.render.video import count_video_frames, write_video

    frames = [np.full((15, 21, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    res = write_video(tmp_path / "odd.mp4", iter(frames), fps=10)
    assert res.num_frames == 3 and count_video_frames(res.path) == 3
    with pytest.raises(SplatkitError, match="must end in .mp4 or .gif"):
        write_video(tmp_path / "x.avi", iter(frames))


# -- eval -----------------------------------------------------------------------------------------
def test_eval_writes_metrics_json(run_dir, capsys):
    from splatkit.metrics.image import lpips_available

    assert main(["eval", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "metrics.json" in out
    report = json.loads((run_dir / "metrics.json").read_text())
    assert report["step"] == STEPS and report["split"] == "test"
    assert [v["id"] for v in report["views"]] == TEST_IDS
    assert report["masked_metrics"] is True  # the synthetic scene has masks
    assert report["background"] == [1.0, 1.0, 1.0]
    for v in report["views"]:
        assert np.isfinite(v["psnr"]) and 0 < v["ssim"] <= 1
        assert np.isfinite(v["masked_psnr"]) and 0 < v["masked_ssim"] <= 1
    assert report["mean"]["psnr"] == pytest.approx(np.mean([v["psnr"] for v in report["views"]]))
    ok, _ = lpips_available()
    if not ok:
        assert report["lpips_available"] is False and report["lpips_unavailable"]
        assert report["mean"]["lpips"] is None and all(v["lpips"] is None for v in report["views"])
    # The trainer scored the same views the same way at the end of training.
    summary = json.loads((run_dir / "train_summary.json").read_text())
    for key in ("psnr", "ssim", "masked_psnr", "masked_ssim"):
        assert report["mean"][key] == pytest.approx(summary["mean"][key], abs=1e-4), key


def test_eval_json_option_and_train_split(run_dir, tmp_path):
    target = tmp_path / "sub" / "m.json"
    assert main(["eval", "--run", str(run_dir), "--split", "train", "--json", str(target)]) == 0
    report = json.loads(target.read_text())
    assert report["split"] == "train" and report["num_views"] == VIEWS - len(TEST_IDS)


# -- export of a trained run ------------------------------------------------------------------------
def test_export_trained_run_in_original_frame(run_dir, scene_dir, tmp_path):
    from splatkit.data import load_scene
    from splatkit.export import read_ply
    from splatkit.models.gaussians import GaussianModel

    out = tmp_path / "model.ply"
    assert main(["export", "--run", str(run_dir), "--format", "ply", "--out", str(out)]) == 0
    splats, degree = read_ply(out)
    model, _ = GaussianModel.load_checkpoint(sorted((run_dir / "checkpoints").glob("*.pt"))[-1])
    norm = load_scene(scene_dir).normalization
    assert norm.scale != 1.0 and np.any(norm.center != 0)  # the synthetic world is not normalised
    assert degree == model.sh_degree
    np.testing.assert_allclose(splats["means"].numpy(),
                               norm.to_original(model.splats["means"].detach().double().numpy()),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt,name,tol", [("ply", "m.ply", 1e-3), ("spz", "m.spz", 1.5),
                                           ("ply-compressed", "m.compressed.ply", 1.5), ("splat", "m.splat", 3.0)])
def test_eval_splats_scores_the_exported_file(run_dir, tmp_path, capsys, fmt, name, tol):
    """The file is decoded back into the run's frame: a lossless PLY scores what the checkpoint
    scores, the quantised formats close to it."""
    out = tmp_path / name
    assert main(["export", "--run", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    assert f"{fmt}: " in capsys.readouterr().out  # what the format drops is printed
    assert main(["eval", "--run", str(run_dir), "--splats", str(out)]) == 0
    report = json.loads((run_dir / f"metrics_{name.replace('.', '_')}.json").read_text())
    assert report["splats_file"] == str(out.resolve())
    ref = json.loads((run_dir / "train_summary.json").read_text())["mean"]
    assert report["mean"]["psnr"] == pytest.approx(ref["psnr"], abs=tol)
    assert report["mean"]["masked_psnr"] == pytest.approx(ref["masked_psnr"], abs=tol)


def test_normalization_inverse_round_trip():
    from splatkit.data.scene import Normalization

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    norm = Normalization(center=rng.normal(size=3), scale=2.5, rotation=q)
    pts = rng.normal(size=(10, 3))
    inv = norm.inverse()
    np.testing.assert_allclose(inv.from_original(norm.from_original(pts)), pts, atol=1e-12)
    np.testing.assert_allclose(inv.matrix, norm.inverse_matrix, atol=1e-12)


# -- bad inputs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["render", "eval", "export"])
def test_missing_run_folder_exits_2(cmd, tmp_path, capsys):
    assert main([cmd, "--run", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in one_line_error(capsys)


@pytest.mark.parametrize("cmd", ["render", "eval"])
def test_checkpoint_of_another_version_exits_2(cmd, run_dir, tmp_path, capsys):
    ckpt = sorted((run_dir / "checkpoints").glob("*.pt"))[-1]
    payload = torch.load(ckpt, weights_only=False)
    payload["splatkit"]["version"] = 999
    bad = tmp_path / "ckpt_999999.pt"
    torch.save(payload, bad)
    assert main([cmd, "--run", str(run_dir), "--checkpoint", str(bad)]) == 2
    assert "version 999 is not supported" in one_line_error(capsys)


# -- orbit path geometry -----------------------------------------------------------------------------------
def ring_cameras(n: int, radius: float, height: float, focus=np.zeros(3)) -> Cameras:
    from splatkit.render.cameras_path import look_at

    angles = 2 * np.pi * np.arange(n) / n
    eyes = np.stack([radius * np.cos(angles), radius * np.sin(angles), np.full(n, height)], axis=1)
    c2w = np.stack([look_at(e, focus, np.array([0.0, 0.0, 1.0])) for e in eyes])
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    return Cameras(Ks=np.repeat(K[None], n, 0), camtoworlds=c2w, widths=64, heights=48)


def test_orbit_of_cameras_on_a_circle_is_that_circle():
    from splatkit.render.cameras_path import orbit_path

    cams = ring_cameras(8, radius=3.0, height=1.5)
    path = orbit_path(cams, 16)
    assert len(path) == 16
    np.testing.assert_allclose(path.camtoworlds[0], cams.camtoworlds[0], atol=1e-9)  # starts at view 0
    np.testing.assert_allclose(path.camtoworlds[2], cams.camtoworlds[1], atol=1e-9)  # 16 frames, 8 views
    centres = path.centers
    np.testing.assert_allclose(np.linalg.norm(centres[:, :2], axis=1), 3.0, atol=1e-9)
    np.testing.assert_allclose(centres[:, 2], 1.5, atol=1e-9)
    # Every frame looks at the focus point (the origin) and keeps the training intrinsics.
    to_focus = -centres / np.linalg.norm(centres, axis=1, keepdims=True)
    np.testing.assert_allclose(path.forward, to_focus, atol=1e-9)
    assert np.all(path.Ks == cams.Ks[0]) and np.all(path.widths == 64) and np.all(path.heights == 48)


def test_orbit_keeps_the_horizon_level_for_a_cap_of_cameras():
    """Cameras on a DTU-like cap: their mean image-up leans towards the object, the orbit must not."""
    from splatkit.render.cameras_path import look_at, orbit_path, world_up

    eyes = []
    for elev in np.radians([20.0, 40.0, 60.0]):
        for az in np.radians([-50.0, -25.0, 0.0, 25.0, 50.0]):
            eyes.append(3.0 * np.array([np.cos(elev) * np.sin(az), -np.cos(elev) * np.cos(az), np.sin(elev)]))
    up = np.array([0.0, 0.0, 1.0])
    c2w = np.stack([look_at(e, np.zeros(3), up) for e in eyes])
    K = np.array([[40.0, 0, 20], [0, 40.0, 15], [0, 0, 1]])
    cams = Cameras(Ks=np.repeat(K[None], len(eyes), 0), camtoworlds=c2w, widths=40, heights=30)
    mean_up = -cams.camtoworlds[:, :3, 1].mean(axis=0)
    assert np.degrees(np.arccos(mean_up[2] / np.linalg.norm(mean_up))) > 10  # naive estimate tilts
    np.testing.assert_allclose(world_up(cams), up, atol=1e-9)
    path = orbit_path(cams, 12)
    # Level horizon: every orbit camera's right axis is horizontal.
    np.testing.assert_allclose(path.camtoworlds[:, 2, 0], 0.0, atol=1e-9)


def test_orbit_needs_distinct_camera_positions():
    from splatkit.render.cameras_path import orbit_path

    cams = ring_cameras(1, radius=3.0, height=1.0)
    with pytest.raises(SplatkitError, match="at least 2"):
        orbit_path(cams, 5)
    same = Cameras.concatenate([cams, cams])
    with pytest.raises(SplatkitError, match="same position"):
        orbit_path(same, 5, focus=np.zeros(3))


# -- colour maps -------------------------------------------------------------------------------------
def test_viridis_fit_matches_matplotlib_endpoints():
    from splatkit.render.video import apply_colormap

    # matplotlib's _viridis_data first and last entries.
    np.testing.assert_allclose(apply_colormap(np.array([0.0, 1.0]), "viridis"),
                               [[0.267004, 0.004874, 0.329415], [0.993248, 0.906157, 0.143936]], atol=0.02)


def test_depth_colorisation():
    from splatkit.render.video import apply_colormap, colorize_depth

    x = np.linspace(-0.5, 1.5, 41)
    rgb = apply_colormap(x)
    assert rgb.shape == (41, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert np.all(rgb[x <= 0] == rgb[0]) and np.all(rgb[x >= 1] == rgb[-1])  # clipped outside [0, 1]
    near, far = apply_colormap(np.array([0.1, 0.9]))
    assert near.argmax() == 2 and far.argmax() == 0  # turbo: near blue, far red
    depth = np.array([[1.0, 2.0], [np.nan, 3.0]])
    alpha = np.array([[1.0, 1.0], [1.0, 0.0]])
    out = colorize_depth(depth, alpha, near=1.0, far=2.0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[1, 1], 1.0)  # transparent -> white
    with pytest.raises(SplatkitError, match="unknown colormap"):
        apply_colormap(x, "jet")


# -- demo -----------------------------------------------------------------------------------------
def test_demo_pieces(run_dir, scene_dir, tmp_path, capsys):
    from splatkit.cli import demo

    # The scene is reused when present; a folder that is not a dataset is refused.
    stamp = (scene_dir / "cameras_sphere.npz").stat().st_mtime_ns
    assert demo.prepare_scene(scene_dir) == scene_dir
    assert (scene_dir / "cameras_sphere.npz").stat().st_mtime_ns == stamp
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(SplatkitError, match="not a dataset"):
        demo.prepare_scene(junk)

    train, test = demo.demo_split(scene_dir)
    assert test == [0, 8] and train == [1, 2, 3, 4, 5, 6, 7]

    res = demo.finish_run(run_dir, orbit_frames=4)
    assert res.metrics_path == run_dir / "metrics.json" and res.metrics_path.is_file()
    assert len(list(res.renders.glob("*.png"))) == len(TEST_IDS)
    assert res.video.is_file() and res.ply.is_file() and res.num_gaussians > 0
    demo.print_summary(res)
    out = capsys.readouterr().out
    assert f"test PSNR {res.mean['psnr']:.2f} dB" in out and str(res.ply) in out


def test_demo_end_to_end_on_a_tiny_scene(tmp_path, monkeypatch, capsys):
    """`splatkit demo`, with the scene shrunk so the whole pipeline runs in seconds."""
    from splatkit.cli import demo
    from splatkit.train.config import available_presets

    if demo.PRESET not in available_presets():
        pytest.skip(f"the {demo.PRESET!r} training preset is not in configs/")
    monkeypatch.setattr(demo, "SCENE_WIDTH", W)
    monkeypatch.setattr(demo, "SCENE_HEIGHT", H)
    monkeypatch.setattr(demo, "SCENE_VIEWS", VIEWS)
    monkeypatch.setattr(demo, "ORBIT_FRAMES", 3)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    run = out / "run"
    assert json.loads((run / "split.json").read_text()) == {"train": [1, 2, 3, 4, 5, 6, 7], "test": [0, 8]}
    assert json.loads((run / "config.json").read_text())["preset"] == demo.PRESET
    report = json.loads((run / "metrics.json").read_text())
    assert report["step"] == 3 and np.isfinite(report["mean"]["psnr"])
    assert len(list((run / "renders" / "test").glob("*.png"))) == 2
    assert (run / "renders" / "orbit.mp4").is_file() and (run / "export" / "splats.ply").is_file()
    for needle in ("test PSNR", "training", "metrics.json", "orbit.mp4", "splats.ply"):
        assert needle in printed
    # A second demo reuses the scene and replaces the run.
    stamp = (out / "scene" / "cameras_sphere.npz").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--steps", "1"]) == 0
    assert (out / "scene" / "cameras_sphere.npz").stat().st_mtime_ns == stamp
    assert json.loads((run / "metrics.json").read_text())["step"] == 1
