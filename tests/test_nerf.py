"""The hash-grid NeRF method (``--method nerf``) through the CLI on the tiny synthetic scene:
training, exact resume, eval, render (views, depth, orbit), the checkpoint (nerfacc's occupancy
state in it), bad input, and that nothing on the CPU path loads nerfacc's CUDA backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from splatkit.cli.main import main
from splatkit.data.cameras import Cameras
from splatkit.errors import SplatkitError
from splatkit.methods import load_checkpoint
from splatkit.models.nerf_field import NerfModel, camera_rays
from splatkit.render import volume
from splatkit.train import Run, resolve_config
from splatkit.train.trainer import Trainer

# A NeRF small enough to train a few steps in seconds on the 48x36 scene.
TINY_VALUES = {"nerf_rays": 256, "nerf_log2_hashmap_size": 12, "nerf_levels": 4, "nerf_max_resolution": 64,
               "nerf_occ_resolution": 16, "nerf_occ_every": 4, "nerf_march_steps": 128, "checkpoint_every": 8,
               "keep_checkpoints": 0, "log_every": 4, "preview_every": 0}
TINY = ["--set", *(f"{k}={v}" for k, v in TINY_VALUES.items())]


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state"]


def test_nerf_trains_resumes_exactly_evaluates_and_renders_through_the_cli(scene_dir, tmp_path, capsys):
    common = ["--data", str(scene_dir), "--method", "nerf", "--quiet", "--steps", "12", *TINY]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["train", *common, "--out", str(ref)]) == 0

    def crash(trainer, step):
        if step == 10:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):  # a run stopped after its step-8 checkpoint ...
        Trainer(resolve_config({"data": scene_dir, "method": "nerf", "steps": 12, "out": run, **TINY_VALUES}),
                quiet=True, callbacks=[crash]).train()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0  # ... resumed through the CLI
    a, b = _state(ref / "checkpoints/ckpt_000012.pt"), _state(run / "checkpoints/ckpt_000012.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resume is exact
    # nerfacc's occupancy state is part of the checkpoint.
    assert {"estimator.occs", "estimator.binaries", "estimator.aabbs"} <= set(a)

    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "nerf" and config["ssim_lambda"] == 0  # the method's auto preset
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["method"] == "nerf" and summary["mean"]["psnr"] > 8
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 8, 12] and all(r["samples"] > 0 for r in log)

    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 0
    report = json.loads((run / "metrics.json").read_text())
    assert report["mean"]["psnr"] == pytest.approx(summary["mean"]["psnr"], abs=1e-6)  # one scoring path
    assert main(["render", "--run", str(run), "--orbit", "--frames", "2", "--video", str(tmp_path / "o.gif")]) == 0
    assert len(list((run / "renders" / "test").glob("*.png"))) == report["num_views"]
    assert len(list((run / "renders" / "test" / "depth").glob("*.png"))) == report["num_views"]
    assert (tmp_path / "o.gif").is_file()

    model, payload = load_checkpoint(Run.open(run).latest_checkpoint())
    assert isinstance(model, NerfModel) and payload["splatkit"]["method"] == "nerf"
    rgbd, alpha, _ = model.render(torch.eye(4)[None] @ torch.linalg.inv(torch.eye(4)), torch.tensor(
        [[[40.0, 0, 24], [0, 40, 18], [0, 0, 1]]]), 48, 36, render_mode="RGB+ED")
    assert rgbd.shape == (1, 36, 48, 4) and alpha.shape == (1, 36, 48, 1) and torch.isfinite(rgbd).all()
    # A NeRF checkpoint given to a Gaussian-only command: one clear line. (export takes NeRF runs:
    # tests/test_nerf_export.py.)
    capsys.readouterr()
    assert main(["compress", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'nerf' run has no Gaussians" in err and len(err.splitlines()) == 1
    # nerfacc 0.5.3 JIT-compiles CUDA on first use of its kernels: a CPU run never gets there.
    assert "nerfacc" in sys.modules and "nerfacc.cuda._backend" not in sys.modules


def _dense_model(scene_dir) -> tuple[NerfModel, Cameras]:
    """An untrained NeRF with a density worth rendering (a random hash table) and every occupancy
    cell on, and two of the scene's cameras."""
    from splatkit.data import load_scene
    from splatkit.methods.nerf import nerf_config
    from splatkit.models.nerf_field import scene_box

    scene = load_scene(scene_dir)
    cfg = resolve_config({"method": "nerf", "nerf_log2_hashmap_size": 12, "nerf_levels": 4,
                          "nerf_max_resolution": 64, "nerf_occ_resolution": 16})
    torch.manual_seed(0)
    model = NerfModel(nerf_config(cfg, scene_box(scene, 1.0)[0]))
    with torch.no_grad():
        model.field.grid.table.normal_(0, 1.0)
        model.estimator.binaries.fill_(True)
    return model, scene.cameras[[0, 1]]


def test_nerf_torch_and_kernel_paths_render_the_same(scene_dir):
    """The C++ kernels and the PyTorch references give the same images from one model."""
    from splatkit.render import nerf_cpu_backend

    if nerf_cpu_backend.unavailable_reason() is not None:
        pytest.skip(f"NeRF C++ kernels unavailable: {nerf_cpu_backend.unavailable_reason()}")
    model, cams = _dense_model(scene_dir)
    out = {}
    for impl in ("cpu", "torch"):
        model.impl = impl
        out[impl] = model.render(cams.viewmats(), cams.intrinsics(), 48, 36, render_mode="RGB+ED")
    torch.testing.assert_close(out["cpu"][0], out["torch"][0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out["cpu"][1], out["torch"][1], rtol=1e-3, atol=1e-3)
    assert float(out["cpu"][1].mean()) > 0.05  # not an empty picture
    # Inference marches in growing chunks and stops rays early: the same picture as marching every
    # ray's samples in one go, up to the light left behind the early stop (transmittance 1e-4).
    model.impl = "cpu"
    rays_o, rays_d, _ = camera_rays(cams.viewmats(), cams.intrinsics(), 48, 36)
    rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    with torch.no_grad():
        whole = model.render_rays(rays_o, rays_d, 0.01, chunk_samples=4096, max_chunk_samples=4096)
        growing = model.render_rays(rays_o, rays_d, 0.01, chunk_samples=2, max_chunk_samples=16)
    for a, b in zip(whole[:2], growing[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-4)


def test_training_rays_stop_at_the_chunk_they_turn_opaque_in_whatever_the_chunk_growth(scene_dir):
    """The density-only pass of a training step (``opaque_from``) marches fixed chunks on a CPU
    and doubling ones on a GPU: a ray stops at the end of the chunk it turns opaque in, so a bigger
    chunk can only stop it later, and the rendered rays agree up to the light left behind the stop."""
    model, cams = _dense_model(scene_dir)
    model.impl = "torch"
    with torch.no_grad():  # denser, in a central block of cells: rays through it turn opaque, others do not
        model.field.density_mlp[-1].bias[0] += 3.5
        occ = model.estimator.binaries
        r = occ.shape[1]
        occ.fill_(False)
        occ[:, r // 4:3 * r // 4, r // 4:3 * r // 4, r // 4:3 * r // 4] = True
    rays_o, rays_d, _ = camera_rays(cams.viewmats(), cams.intrinsics(), 48, 36)
    rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    t_start, t_end = model.segments(rays_o, rays_d)
    t_start = t_start + torch.rand(t_start.shape, generator=torch.Generator().manual_seed(1)) * model.step_size
    with torch.no_grad():
        fixed = model.opaque_from(rays_o, rays_d, t_start, t_end, chunk_samples=16, max_chunk_samples=16)
        growing = model.opaque_from(rays_o, rays_d, t_start, t_end, chunk_samples=16, max_chunk_samples=256)
        stopped = fixed < t_end
        assert 0.2 < float(stopped.float().mean()) < 1.0  # some rays turn opaque, some pass through
        assert bool((growing >= fixed).all()) and bool((growing <= t_end).all())
        assert bool((growing[~stopped] == t_end[~stopped]).all())
        assert float((growing[stopped] > fixed[stopped]).float().mean()) > 0.1  # the growth did change stops
        colours = []
        for stop in (fixed, growing):
            ps = model.march(rays_o, rays_d, t_start, stop)
            x, d = model.sample_points(rays_o, rays_d, ps)
            rgb, sigma = model.field(x, d)
            out = volume.render(sigma, rgb, ps.t_starts, ps.t_ends, ps.ray_indices, ps.packed_info, impl="torch")
            colours.append(torch.cat([out.colors, out.opacities[:, None]], dim=1))
    torch.testing.assert_close(colours[0], colours[1], rtol=0, atol=2e-4)
    # The device's default: fixed chunks on a CPU.
    assert NerfModel.OPAQUE_MAX_CHUNK["cpu"] == 16
    with torch.no_grad():
        assert torch.equal(model.opaque_from(rays_o, rays_d, t_start, t_end), fixed)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (scripts/gpu_nerf.sh runs these where one is lent)")


@needs_cuda
@pytest.mark.parametrize("impl", ["auto", "torch"])
@pytest.mark.parametrize("hollow", [False, True])
def test_nerf_trains_on_cuda_and_its_checkpoint_renders_the_same_on_cpu(scene_dir, tmp_path, impl, hollow):
    """On a GPU the NeRF (and HollowNeRF) trains with nerfacc's kernels (``auto``) or the PyTorch
    references; its checkpoint, nerfacc's occupancy state in it, loads on a CPU and renders there
    what the GPU renders from it."""
    values = {**TINY_VALUES, "hollow": hollow, "hollow_resolution": 12, "hollow_budget": 0.3, "nerf_impl": impl}
    out = tmp_path / "run"
    trainer = Trainer(resolve_config({"data": scene_dir, "method": "nerf", "steps": 40, "out": out,
                                      "device": "cuda", **values}), quiet=True)
    trainer.train()
    assert trainer.device.type == "cuda" and trainer.method.model.device.type == "cuda"
    assert trainer.summary["mean"]["psnr"] > 10
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["samples"] > 0 for r in log)
    ckpt = Run.open(out).latest_checkpoint()
    cams = trainer.test_scene.cameras[[0]]
    pictures = {}
    for device in ("cuda", "cpu"):
        model, _ = load_checkpoint(ckpt, map_location=device)
        model.impl = "torch" if device == "cpu" else impl
        with torch.no_grad():
            rgbd, alpha, _ = model.render(cams.viewmats(device), cams.intrinsics(device), 48, 36, render_mode="RGB+ED")
        pictures[device] = torch.cat([rgbd, alpha], -1).cpu()
    # The same marching rule in float32 on both devices: a sample may cross a cell wall on a few rays.
    diff = (pictures["cuda"] - pictures["cpu"]).abs()
    assert float(diff.mean()) < 2e-3 and float((diff > 1e-2).float().mean()) < 0.02


def test_nerf_config_errors():
    with pytest.raises(SplatkitError, match="ssim_lambda=0"):
        resolve_config({"method": "nerf", "ssim_lambda": 0.2})
    with pytest.raises(SplatkitError, match="nerf_rays must be positive"):
        resolve_config({"method": "nerf", "nerf_rays": 0})
    with pytest.raises(SplatkitError, match="scene box"):
        resolve_config({"method": "nerf", "nerf_aabb": [0, 0, 0, 1, -1, 1]})
    with pytest.raises(SplatkitError, match="log2_hashmap_size"):
        resolve_config({"method": "nerf", "nerf_log2_hashmap_size": 40})
    with pytest.raises(SplatkitError, match="nerf_impl must be one of"):
        resolve_config({"method": "nerf", "nerf_impl": "tcnn"})
    assert resolve_config({"method": "nerf"}).preset == "nerf"
    assert resolve_config({"method": "3dgs", "device": "cpu"}).preset == "cpu"
    assert resolve_config(preset="nerf-sparse").method == "nerf"
