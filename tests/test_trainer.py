"""The trainer on a tiny synthetic scene (48x36, 10 views): learning, exact resume, determinism,
divergence and Ctrl-C handling, configs and presets, run folders and the ``splatkit train`` CLI.

Runs use the pure-PyTorch rasteriser and a few hundred Gaussians so the whole file stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from splatkit.cli.main import main
from splatkit.errors import SplatkitError
from splatkit.train import Run, TrainConfig, resolve_config
from splatkit.train.config import (load_preset, parse_set_overrides, parse_view_ids, preset_path,
                                   read_overrides)
from splatkit.methods.losses import photometric_loss, ssim_map
from splatkit.methods.base import Batch, Plugin, RenderOutputs
from splatkit.methods.mask_loss import MaskLoss
from splatkit.methods.plugins import build_plugins
from splatkit.train.trainer import Trainer, choose_split

W, H = 48, 36  # the size of conftest.py's scene_dir


def tiny(data, out, **kw) -> TrainConfig:
    """A config whose densification runs every few steps so that strategy state matters."""
    base = dict(data=data, out=out, steps=30, seed=3, backend="torch", device="cpu", init_num_points=200,
                sh_degree=1, sh_degree_interval=10, background="random", refine_start_iter=3,
                refine_every=5, refine_stop_iter=27, reset_every=12, grow_grad2d=3e-4,
                checkpoint_every=10, keep_checkpoints=0, log_every=5, preview_every=15)
    base.update(kw)
    return TrainConfig(**base)


def params_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["splats"]


def assert_same_params(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


class Counter:
    """Callback recording the Gaussian count after every step (and optionally raising)."""

    def __init__(self, raise_at=None, exc=KeyboardInterrupt):
        self.counts, self.raise_at, self.exc = {}, raise_at, exc

    def __call__(self, trainer, step):
        self.counts[step] = trainer.model.num_gaussians
        if step == self.raise_at:
            raise self.exc()


# -- learning ---------------------------------------------------------------------------------------
def test_training_lowers_loss_and_raises_psnr(scene_dir, tmp_path):
    early = {}

    def record(trainer, step):
        if step == 1:
            early.update(trainer.evaluate()["mean"])

    cfg = tiny(scene_dir, tmp_path / "run", steps=60, sh_degree=0, init_num_points=300, background="black",
               use_masks=True, refine_start_iter=10, refine_every=10, refine_stop_iter=40, reset_every=1000,
               checkpoint_every=0, preview_every=0)
    trainer = Trainer(cfg, quiet=True, callbacks=[record])
    run_path = trainer.train()

    log = [json.loads(line) for line in (run_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(5, 61, 5))
    assert {"loss", "psnr", "num_gaussians", "elapsed_s", "l1", "dssim", "mask"} <= set(log[0])
    first = np.mean([r["loss"] for r in log[:3]])
    last = np.mean([r["loss"] for r in log[-3:]])
    assert last < 0.8 * first
    summary = json.loads((run_path / "train_summary.json").read_text())
    assert summary == json.loads(json.dumps(trainer.summary))
    assert summary["mean"]["psnr"] > early["psnr"] + 2.0
    assert len(summary["per_view"]) == len(summary["test_views"]) == 2
    assert {"masked_psnr", "masked_ssim"} <= set(summary["mean"])  # the scene has masks
    assert (run_path / "previews" / "step_000060.png").is_file()


# -- resume, determinism, Ctrl-C ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(scene_dir, tmp_path_factory):
    """An uninterrupted 30-step run and its per-step Gaussian counts."""
    out = tmp_path_factory.mktemp("ref") / "run"
    counter = Counter()
    Trainer(tiny(scene_dir, out), quiet=True, callbacks=[counter]).train()
    return out, counter.counts


def test_densification_happens_around_the_resume_points(reference):
    _, counts = reference
    # Grows before step 10 and between 10 and 30, so resuming needs the strategy state.
    assert counts[10] > counts[1]
    assert counts[30] != counts[10]


def test_same_seed_gives_identical_parameters(scene_dir, tmp_path, reference):
    ref, _ = reference
    Trainer(tiny(scene_dir, tmp_path / "again"), quiet=True).train()
    a, b = params_of(ref / "checkpoints/ckpt_000030.pt"), params_of(tmp_path / "again/checkpoints/ckpt_000030.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_from_last_checkpoint_matches_uninterrupted_run(scene_dir, tmp_path, reference):
    ref, _ = reference
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(tiny(scene_dir, out), quiet=True,
                callbacks=[Counter(raise_at=25, exc=lambda: RuntimeError("simulated crash"))]).train()
    run = Run.open(out)
    assert [p.name for p in run.checkpoints()] == ["ckpt_000010.pt", "ckpt_000020.pt"]

    Trainer(tiny(scene_dir, out), resume=True, quiet=True).train()
    assert_same_params(params_of(ref / "checkpoints/ckpt_000030.pt"), params_of(out / "checkpoints/ckpt_000030.pt"))
    # The log was cut back to the checkpoint, so no step appears twice.
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 31, 5))


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_exactly(scene_dir, tmp_path, reference):
    ref, _ = reference
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(scene_dir, out), quiet=True, callbacks=[Counter(raise_at=23)]).train()
    run = Run.open(out)
    assert run.latest_checkpoint().name == "ckpt_000023.pt"
    model, payload = run.load_model()
    assert payload["step"] == 23
    assert all(torch.isfinite(v).all() for v in model.splats.values())
    assert not (out / "train_summary.json").exists()

    Trainer(tiny(scene_dir, out), resume=True, quiet=True).train()
    assert_same_params(params_of(ref / "checkpoints/ckpt_000030.pt"), params_of(out / "checkpoints/ckpt_000030.pt"))


def test_resume_refuses_a_different_split(scene_dir, reference):
    ref, _ = reference
    with pytest.raises(SplatkitError, match="cannot change the train views"):
        Trainer(tiny(scene_dir, ref, train_views=[1, 2, 3]), resume=True, quiet=True).train()


def test_existing_run_folder_is_not_overwritten(scene_dir, reference):
    ref, _ = reference
    with pytest.raises(SplatkitError, match="already exists"):
        Trainer(tiny(scene_dir, ref), quiet=True).train()


# -- divergence ----------------------------------------------------------------------------------------
class NaNAt(Plugin):
    name = "nan_at"

    def __init__(self, at: int):
        self.at = at

    def loss(self, step, batch, outputs):
        value = torch.tensor(float("nan")) if step == self.at else torch.zeros(())
        return {"probe": value}


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(scene_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SplatkitError) as info:
        Trainer(tiny(scene_dir, out), quiet=True, regularizers=[NaNAt(at=12)]).train()  # 13th step
    msg = str(info.value)
    assert "step 13" in msg and "nan_at/probe" in msg and "ckpt_000010.pt" in msg
    assert "\n" not in msg
    ckpts = Run.open(out).checkpoints()
    assert [p.name for p in ckpts] == ["ckpt_000010.pt"]
    assert all(torch.isfinite(v).all() for v in params_of(ckpts[0]).values())


def test_nan_parameter_is_never_checkpointed(scene_dir, tmp_path):
    def poison(trainer, step):
        if step == 20:  # a checkpoint step: the check must come before the save
            with torch.no_grad():
                trainer.model.splats["means"][0, 0] = float("nan")

    out = tmp_path / "run"
    with pytest.raises(SplatkitError, match=r"'means' became non-finite at step 20.*ckpt_000010\.pt"):
        Trainer(tiny(scene_dir, out), quiet=True, callbacks=[poison]).train()
    assert [p.name for p in Run.open(out).checkpoints()] == ["ckpt_000010.pt"]


# -- run folder ----------------------------------------------------------------------------------------
def test_run_folder_contents_and_run_api(scene_dir, reference):
    ref, _ = reference
    run = Run.open(ref)
    cfg = json.loads((ref / "config.json").read_text())
    assert cfg["splatkit_version"] and cfg["steps"] == 30 and cfg["out"] == str(ref.resolve())
    assert run.config.steps == 30 and run.config.refine_every == 5
    train, test = run.split()
    assert (train, test) == ([1, 2, 3, 4, 5, 6, 7, 9], [0, 8])  # every 8th view held out
    assert [p.name for p in run.checkpoints()] == ["ckpt_000010.pt", "ckpt_000020.pt", "ckpt_000030.pt"]
    model, payload = run.load_model(20)
    assert payload["step"] == 20 and model.sh_degree == 1
    scene = run.load_scene()
    norm = run.normalization()
    np.testing.assert_allclose(norm.matrix, scene.normalization.matrix)
    assert sorted(p.name for p in run.preview_dir.iterdir()) == ["step_000015.png", "step_000030.png"]
    assert json.loads(run.summary_path.read_text())["step"] == 30


def test_unscored_training_leaves_the_scores_to_eval(scene_dir, tmp_path):
    """``train(score=False)`` (benchmarks, the demo) skips the final test pass, which ``splatkit
    eval`` then does with the same numbers the trainer would have written."""
    from splatkit.eval.evaluate import evaluate_run

    out = tmp_path / "run"
    trainer = Trainer(tiny(scene_dir, out, steps=8, checkpoint_every=0, preview_every=0, densify=False),
                      quiet=True)
    trainer.train(score=False)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["scored"] is False and summary["mean"] == {} and summary["per_view"] == []
    assert summary["step"] == 8 and summary["test_views"] == [0, 8]
    scored = trainer.evaluate()
    assert scored["scored"] is True and scored["mean"]["psnr"] > 0
    report = evaluate_run(out)
    assert report["mean"]["psnr"] == pytest.approx(scored["mean"]["psnr"], abs=1e-4)


def test_keep_checkpoints_rotates(scene_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny(scene_dir, out, steps=12, checkpoint_every=3, keep_checkpoints=2, preview_every=0,
                 densify=False), quiet=True).train()
    assert [p.name for p in Run.open(out).checkpoints()] == ["ckpt_000009.pt", "ckpt_000012.pt"]


def test_run_open_errors(tmp_path):
    with pytest.raises(SplatkitError, match="no such run folder"):
        Run.open(tmp_path / "missing")
    with pytest.raises(SplatkitError, match="not a run folder"):
        Run.open(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"splatkit_version": "99.0.0", "steps": 5}))
    with pytest.raises(SplatkitError, match="incompatible"):
        Run.open(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"splatkit_version": "0.1.0", "new_knob": 1}))
    with pytest.raises(SplatkitError, match="incompatible.*new_knob"):
        Run.open(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"splatkit_version": "0.1.0", "steps": 5}))
    with pytest.raises(SplatkitError, match="no checkpoints"):
        Run.open(tmp_path).latest_checkpoint()


# -- split -------------------------------------------------------------------------------------------
def test_split_choice(scene_dir):
    from splatkit.data import load_scene

    scene = load_scene(scene_dir)
    cfg = TrainConfig(data=scene_dir)
    assert choose_split(scene, cfg) == ([1, 2, 3, 4, 5, 6, 7, 9], [0, 8])
    # Chosen training views: every view not trained on is a test view (issue #4).
    assert choose_split(scene, TrainConfig(train_views=[2, 5, 7])) == ([2, 5, 7], [0, 1, 3, 4, 6, 8, 9])
    assert choose_split(scene, TrainConfig(test_views=[3])) == ([0, 1, 2, 4, 5, 6, 7, 8, 9], [3])
    with pytest.raises(SplatkitError, match="both"):
        choose_split(scene, TrainConfig(train_views=[1, 2], test_views=[2]))
    with pytest.raises(SplatkitError, match=r"\[42\]"):
        choose_split(scene, TrainConfig(train_views=[1, 42]))


# -- losses and regularisers ---------------------------------------------------------------------------
def test_training_ssim_matches_the_metric_away_from_the_border():
    from splatkit.metrics.image import ssim

    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 30, 40, 3, generator=g)
    b = (a + 0.1 * torch.randn(1, 30, 40, 3, generator=g)).clamp(0, 1)
    # "same" zero padding only changes windows that touch the border.
    interior = ssim_map(a, b)[:, 5:-5, 5:-5].mean()
    assert abs(float(interior) - ssim(a[0].numpy(), b[0].numpy())) < 1e-4
    assert torch.allclose(ssim_map(a, a), torch.ones(1, 30, 40, 3), atol=1e-5)
    pred = a.clone().requires_grad_(True)
    loss, terms = photometric_loss(pred, b, 0.2)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert torch.isclose(loss.detach(), 0.8 * terms["l1"] + 0.2 * terms["dssim"])


def _batch_and_outputs(alpha: torch.Tensor, mask: torch.Tensor):
    img = torch.zeros(1, *mask.shape[1:3], 3)
    batch = Batch(step=0, positions=[0], view_ids=[0], images=img, target=img, viewmats=torch.eye(4)[None],
                  Ks=torch.eye(3)[None], width=mask.shape[2], height=mask.shape[1],
                  backgrounds=torch.zeros(1, 3), masks=mask)
    return batch, RenderOutputs(colors=img, alphas=alpha, meta={}, sh_degree=0)


def test_mask_regularizer():
    mask = torch.zeros(1, 4, 5, 1)
    mask[:, 1:3, 1:4] = 1
    for kind in ("bce", "l1"):
        reg = MaskLoss(TrainConfig(), MaskLoss.Config(weight=0.5, kind=kind))
        good = reg.loss(0, *_batch_and_outputs(mask.clone(), mask))
        bad = reg.loss(0, *_batch_and_outputs(1 - mask, mask))
        assert float(good) < 1e-4 and float(bad) >= 0.5 - 1e-6  # fully wrong: weight x 1 (l1), more (bce)
    l1 = MaskLoss(TrainConfig(), MaskLoss.Config(weight=0.5, kind="l1"))
    assert float(l1.loss(0, *_batch_and_outputs(torch.full_like(mask, 0.5), mask))) == pytest.approx(0.25)


def test_plugins_by_name():
    assert [r.name for r in build_plugins(TrainConfig(use_masks=True))] == ["mask"]
    assert build_plugins(TrainConfig()) == []
    with pytest.raises(SplatkitError, match="unknown plugin 'nope'"):
        build_plugins(TrainConfig(regularizers=["nope"]))


def test_use_masks_without_masks_is_an_error(scene_dir, tmp_path):
    from splatkit.data import load_scene

    scene = load_scene(scene_dir)
    scene.masks = None
    with pytest.raises(SplatkitError, match="needs a dataset with masks"):
        Trainer(tiny(scene_dir, tmp_path / "run", use_masks=True), scene=scene, quiet=True).train()
    assert not (tmp_path / "run").exists()  # a failed start leaves no half-made run folder


# -- configs and presets -------------------------------------------------------------------------------
def test_presets_flags_and_saved_configs(tmp_path):
    fast = load_preset("fast")
    cfg = resolve_config({"data": tmp_path}, preset="fast")
    for key, value in fast.items():
        assert getattr(cfg, key) == value, key
    assert cfg.preset == "fast"
    # Without a preset the schedule suits the device: 3DGS's 7k steps on CUDA, minutes on a CPU.
    auto = resolve_config({"data": tmp_path})
    want = "default" if torch.cuda.is_available() else "cpu"
    assert auto.preset == want and auto.steps == load_preset(want)["steps"]
    on_gpu = resolve_config({"data": tmp_path, "device": "cuda"})
    assert on_gpu.preset == "default" and on_gpu.steps == load_preset("default")["steps"]
    assert resolve_config({"data": tmp_path, "device": "cpu"}).preset == "cpu"
    # Flags override the preset.
    cfg = resolve_config({"data": tmp_path, "steps": 123, "sh_degree": 0}, preset="fast")
    assert cfg.steps == 123 and cfg.sh_degree == 0 and cfg.refine_every == fast["refine_every"]
    # A saved config comes back exactly (its run folder aside), then flags override it.
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({**cfg.to_dict(), "out": "/somewhere/else", "splatkit_version": "0.1.0"}))
    again = resolve_config({}, load_config=saved)
    assert {**again.to_dict(), "out": None} == {**cfg.to_dict(), "out": None} and again.out is None
    assert resolve_config({"seed": 9}, load_config=saved).seed == 9


def test_preset_errors(tmp_path):
    bad = tmp_path / "mine.json"
    bad.write_text(json.dumps({"steps": 10, "learning_rate": 1.0}))
    with pytest.raises(SplatkitError, match=r"unknown config key 'learning_rate' in .*mine\.json"):
        resolve_config({"data": tmp_path}, preset=str(bad))
    bad.write_text(json.dumps({"steps": "many"}))
    with pytest.raises(SplatkitError, match="steps"):
        read_overrides(bad)
    with pytest.raises(SplatkitError, match="unknown preset 'nope'.*default.*fast"):
        preset_path("nope")
    with pytest.raises(SplatkitError, match="background must be one of"):
        resolve_config({"data": tmp_path, "background": "green"})


def test_presets_extend_other_presets(tmp_path):
    sparse = load_preset("sparse")
    repair = load_preset("sparse-repair")  # "extends": "sparse"
    assert repair["init"] == sparse["init"] and repair["steps"] == sparse["steps"]
    assert repair["regularizers"] == [*sparse["regularizers"], "diffusion_repair"]
    assert repair["run_name"] == "sparse-repair" and "extends" not in repair
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"steps": 50, "sh_degree": 1, "plugins": {"diffusion_repair": {"start": 0.4, "tune_steps": 10}}}))
    child = tmp_path / "child.json"
    child.write_text(json.dumps({"extends": str(base), "sh_degree": 0, "plugins": {"diffusion_repair": {"tune_steps": 20}}}))
    values = load_preset(str(child))
    # Own keys win, the rest comes from the base; plugin sections merge setting by setting.
    assert values == {"steps": 50, "sh_degree": 0, "plugins": {"diffusion_repair": {"start": 0.4, "tune_steps": 20}}}
    assert resolve_config({"data": tmp_path}, preset=str(child)).steps == 50
    base.write_text(json.dumps({"extends": str(child)}))
    with pytest.raises(SplatkitError, match="extends itself"):
        load_preset(str(child))
    child.write_text(json.dumps({"extends": 3}))
    with pytest.raises(SplatkitError, match="names a preset"):
        load_preset(str(child))


def test_derived_schedule_scales_with_steps():
    cfg = TrainConfig(steps=3000).resolved()
    assert (cfg.refine_start_iter, cfg.refine_stop_iter, cfg.reset_every) == (50, 1500, 300)
    cfg = TrainConfig(steps=30000).resolved()  # exactly 3DGS
    assert (cfg.refine_start_iter, cfg.refine_stop_iter, cfg.reset_every) == (500, 15000, 3000)


def test_cli_value_parsing():
    assert parse_view_ids("25,22, 28") == [25, 22, 28]
    assert parse_view_ids(None) is None
    with pytest.raises(SplatkitError, match="25,22,28"):
        parse_view_ids("a,b")
    assert parse_set_overrides(["init=random", "grow_grad2d=4e-4", "use_masks=false", "train_views=[1,2]"]) == {
        "init": "random", "grow_grad2d": 4e-4, "use_masks": False, "train_views": [1, 2]}
    with pytest.raises(SplatkitError, match="unknown config key 'bogus'"):
        parse_set_overrides(["bogus=1"])


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_train_resume_and_load_config(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--backend", "torch", "--init-num-points", "150", "--quiet", "--set", "sh_degree=0"]
    assert main(["train", "--data", str(scene_dir), "--steps", "6", "--out", str(out), "--train-views", "1,3,5,7",
                 *common]) == 0
    assert f"run folder: {out.resolve()}" in capsys.readouterr().out
    run = Run.open(out)
    assert run.split() == ([1, 3, 5, 7], [0, 2, 4, 6, 8, 9])
    assert run.latest_checkpoint().name == "ckpt_000006.pt"
    assert run.config.preset == ("default" if torch.cuda.is_available() else "cpu") and run.config.sh_degree == 0
    assert (out / "train_summary.json").is_file()

    assert main(["train", "--out", str(out), "--resume", "--steps", "9", "--quiet"]) == 0
    assert Run.open(out).latest_checkpoint().name == "ckpt_000009.pt"
    assert Run.open(out).config.steps == 9

    other = tmp_path / "other"
    assert main(["train", "--load-config", str(out / "config.json"), "--out", str(other), "--steps", "3",
                 "--quiet"]) == 0
    a, b = Run.open(out).config.to_dict(), Run.open(other).config.to_dict()
    assert {k for k in a if a[k] != b[k]} == {"steps", "out"}


def test_cli_bad_inputs(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--steps", "5"]) == 2
    assert "no dataset given" in capsys.readouterr().err
    assert main(["train", "--resume", "--steps", "5"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cli_cuda_without_cuda(scene_dir, tmp_path, capsys):
    assert main(["train", "--data", str(scene_dir), "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


# -- initialisation --------------------------------------------------------------------------------
def test_random_init_from_cameras_stays_inside_every_view(scene_dir):
    from splatkit.data import load_scene
    from splatkit.models.init import random_init_points

    scene = load_scene(scene_dir)
    scene.depths = None  # bounds from the cameras alone
    pts, cols, how = random_init_points(scene, 500, np.random.default_rng(0), carve=False)
    assert how == "sphere seen by every camera" and pts.shape == (500, 3) and cols.shape == (500, 3)
    uv, z = scene.cameras.project(pts)
    assert (z > 0).all()
    assert ((uv >= 0) & (uv <= np.array([W, H]))).all()
    assert 0 <= cols.min() and cols.max() <= 1
    # Carving with the masks keeps only points every mask calls object.
    carved, _, how = random_init_points(scene, 200, np.random.default_rng(0), carve=True)
    assert how.endswith("carved by the masks") and len(carved) == 200
    uv, _ = scene.cameras.project(carved)
    ix, iy = uv[..., 0].astype(int), uv[..., 1].astype(int)
    assert all((scene.masks[v][iy[v], ix[v]] >= 0.5).all() for v in range(len(scene)))


def test_sfm_init_uses_the_scene_points(scene_dir, tmp_path):
    from splatkit.data import load_scene

    scene = load_scene(scene_dir)
    rng = np.random.default_rng(1)
    scene.points = rng.uniform(-0.3, 0.3, (120, 3))
    scene.point_colors = rng.uniform(0, 1, (120, 3))
    trainer = Trainer(tiny(scene_dir, tmp_path / "run", steps=2, densify=False, preview_every=0), scene=scene,
                      quiet=True)
    trainer.train()
    model, _ = Run.open(tmp_path / "run").load_model()
    assert model.num_gaussians == 120
    # Two steps at the decayed LR move the means by far less than their spread.
    np.testing.assert_allclose(model.splats["means"].detach().numpy(), scene.points, atol=0.05)


def test_default_backend_is_deterministic_and_resumes_exactly(scene_dir, tmp_path):
    """The same guarantees with ``backend="auto"`` (the C++ CPU rasteriser when it builds)."""
    from splatkit.render import cpu_backend

    reason = cpu_backend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cfg = dict(steps=20, backend="auto", preview_every=0)
    Trainer(tiny(scene_dir, tmp_path / "a", **cfg), quiet=True).train()
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(scene_dir, tmp_path / "b", **cfg), quiet=True, callbacks=[Counter(raise_at=13)]).train()
    Trainer(tiny(scene_dir, tmp_path / "b", **cfg), resume=True, quiet=True).train()
    a, b = params_of(tmp_path / "a/checkpoints/ckpt_000020.pt"), params_of(tmp_path / "b/checkpoints/ckpt_000020.pt")
    assert a["means"].shape[0] != 200  # densified
    assert_same_params(a, b)
    summary = json.loads((tmp_path / "a/train_summary.json").read_text())
    assert summary["backend"] == "cpu"
