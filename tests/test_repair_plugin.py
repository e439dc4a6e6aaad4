"""Diffusion repair's shared parts (splatkit/priors/repair): pseudo-view sampling and its distance
weights, the pairs a scene generates (leave-one-out renders, statistics noise, identity), the
``diffusion_repair`` schedule, and a short training run with the plugin that resumes exactly.
The repair models themselves are tested in test_repair_unet.py and test_repair_diffusion.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from splatkit.data.synthetic import dtu_like_cameras
from splatkit.errors import SplatkitError
from splatkit.priors.repair.base import RepairModel, RepairPairs
from splatkit.priors.repair.pairs import average_stats, noisy_params, parameter_shift_stats
from splatkit.priors.repair.views import (distance_weights, max_camera_distance, sample_pseudo_views,
                                          scene_center)


def _ring(n=4, radius=2.0):
    """``n`` cameras on a horizontal ring around the origin, looking at it."""
    from splatkit.data.cameras import Cameras
    from splatkit.priors.repair.views import _look_at

    c2w = [_look_at(np.array([radius * np.cos(a), radius * np.sin(a), 0.3]), np.zeros(3), np.array([0, 0, 1.0]))
           for a in np.linspace(0, 2 * np.pi, n, endpoint=False)]
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    return Cameras(Ks=np.stack([K] * n), camtoworlds=np.stack(c2w), widths=np.full(n, 64), heights=np.full(n, 48))


def test_pseudo_views_lie_between_neighbouring_cameras_and_look_at_the_centre():
    cams = _ring(4)
    views = sample_pseudo_views(cams, 40, np.random.default_rng(0))
    center = scene_center(cams)
    assert np.allclose(center, 0.0, atol=1e-6)  # the point every camera looks at
    rel = views.cameras.centers - center
    # Distance kept (all cameras at the same one), angle within the spread around a midpoint.
    assert np.allclose(np.linalg.norm(rel, axis=1), np.hypot(2.0, 0.3), atol=1e-6)
    ang = np.arctan2(rel[:, 1], rel[:, 0])
    for a, (i, j) in zip(ang, views.anchors):
        assert abs(i - j) % 2 == 1  # a neighbour on the ring, never the opposite camera
        mid = (np.pi / 2) * (i + 0.5 * (1 if (j - i) % 4 == 1 else -1))
        gap = np.angle(np.exp(1j * (a - mid)))
        assert abs(gap) <= 0.4 * (np.pi / 2) / 2 * 2 + 1e-6  # within 0.8 x half the 90-degree gap
    fwd = views.cameras.forward
    to_center = -(rel / np.linalg.norm(rel, axis=1, keepdims=True))
    assert np.allclose(np.einsum("ni,ni->n", fwd, to_center), 1.0, atol=1e-6)
    # "up" stays up: the image's +y (down) points to -z.
    assert np.all(views.cameras.camtoworlds[:, 2, 1] < 0)


def test_distance_weights_follow_gaussian_object():
    cams = _ring(4)
    c = cams.centers
    # Sorted distances from each camera: 0, side, side, diagonal -> index 2 is the side length.
    side = np.linalg.norm(c[0] - c[1])
    assert max_camera_distance(cams) == pytest.approx(1.2 * side)
    assert distance_weights(c, cams) == pytest.approx(np.zeros(4))  # a training camera: 0
    far = np.array([[10.0, 0.0, 0.0]])
    assert distance_weights(far, cams)[0] == pytest.approx(1.0)  # capped at 1
    mid = 0.5 * (c[0] + c[1])[None]
    d = np.linalg.norm(mid[0] - c[0])
    assert distance_weights(mid, cams)[0] == pytest.approx(min(1.0, 2 * d / (1.2 * side)))


def test_pseudo_views_on_an_arc_stay_on_it():
    cams = dtu_like_cameras(3, 64, 48)[[0, 1, 2]]
    views = sample_pseudo_views(cams, 30, np.random.default_rng(1))
    center = scene_center(cams)
    unit = (cams.centers - center) / np.linalg.norm(cams.centers - center, axis=1, keepdims=True)
    u = (views.cameras.centers - center) / np.linalg.norm(views.cameras.centers - center, axis=1, keepdims=True)
    # Every pseudo view is closer in angle to some training camera than the cameras' largest gap.
    gap = np.arccos(np.clip(unit @ unit.T, -1, 1)).max()
    assert np.arccos(np.clip(u @ unit.T, -1, 1)).min(axis=1).max() <= gap / 2 + 1e-6
    assert np.all((views.weights > 0) & (views.weights <= 1))


def test_pseudo_views_need_two_cameras():
    with pytest.raises(SplatkitError, match="two training cameras"):
        sample_pseudo_views(_ring(4)[[0]], 3, np.random.default_rng(0))


def test_parameter_statistics_and_noise():
    g = torch.Generator().manual_seed(0)
    before = {"means": torch.randn(2000, 3, generator=g), "opacities": torch.randn(2000, generator=g)}
    shift = torch.tensor([0.1, -0.2, 0.3])
    after = {"means": before["means"] - shift - 0.05 * torch.randn(2000, 3, generator=g),
             "opacities": before["opacities"].clone()}
    stats = parameter_shift_stats(before, after)
    assert stats["means"][0] == pytest.approx(shift.tolist(), abs=0.01)
    assert stats["means"][1] == pytest.approx([0.05] * 3, abs=0.01)
    assert float(stats["opacities"][1]) == 0.0
    avg = average_stats([stats, stats])
    assert torch.equal(avg["means"][0], stats["means"][0])
    with pytest.raises(SplatkitError, match="changed shape"):
        parameter_shift_stats(before, {"means": before["means"][:5], "opacities": after["opacities"]})
    # Noise: dropout 1 changes nothing; dropout 0 adds mean + std noise; clamped keys stay in range.
    params = {"means": torch.zeros(5000, 3), "opacities": torch.zeros(5000), "sh0": torch.zeros(5000, 1, 3)}
    same = noisy_params(params, stats, torch.Generator().manual_seed(1), dropout=1.0, std_scale=0.7)
    assert all(torch.equal(same[k], params[k]) for k in params)
    stats["opacities"] = (torch.tensor(0.0), torch.tensor(1.0))
    noisy = noisy_params(params, stats, torch.Generator().manual_seed(1), dropout=0.0, std_scale=0.7)
    assert noisy["means"].mean(0) == pytest.approx(shift.tolist(), abs=0.01)
    assert float(noisy["opacities"].abs().max()) <= 0.7 + 1e-6  # clamped to mean +- 0.7 std
    assert float(noisy["opacities"].std()) > 0.3
    assert torch.equal(noisy["sh0"], params["sh0"])  # no statistics: untouched


def test_repair_pairs_check_their_shapes():
    x = torch.rand(2, 4, 5, 3)
    p = RepairPairs(x, x.clone(), ["loo", "noise"], [3, 4])
    assert len(p) == 2 and p.subset([1]).kinds == ["noise"] and p.counts() == {"loo": 1, "noise": 1}
    assert len(RepairPairs.cat([p, p])) == 4
    with pytest.raises(SplatkitError, match="must both be"):
        RepairPairs(x, x[:, :3])
    with pytest.raises(SplatkitError, match="unknown kind"):
        RepairPairs(x, x, ["loo", "bogus"], [0, 1])


class BlurRepair(RepairModel):
    """A stand-in repair model for the plugin's tests: a 3x3 box blur mixed by ``strength``, with
    one trainable scalar so fine-tuning and its state round trip are visible."""

    name = "blur"

    def __init__(self):
        self.mix = torch.tensor(0.5)
        self.tuned_on = None

    def fine_tune(self, pairs, *, steps, seed, progress=None):
        self.tuned_on = pairs.counts()
        self.mix = torch.tensor(0.25)
        return {"loss_first": 1.0, "loss_last": 0.5, "seconds": 0.0}

    def repair(self, images, *, strength, generator):
        x = images.permute(0, 3, 1, 2)
        blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        out = x + strength * self.mix * (blurred - x)
        return out.permute(0, 2, 3, 1)

    def state_dict(self):
        return {"mix": self.mix.clone()}

    def load_state_dict(self, state):
        self.mix = state["mix"].clone()


@pytest.fixture
def blur_model(monkeypatch):
    import splatkit.priors.repair.plugin as plugin_mod

    made = []

    def fake_load(spec, *, device="cpu", **options):
        made.append(BlurRepair())
        return made[-1]

    monkeypatch.setattr(plugin_mod, "load_repair_model", fake_load)
    return made


def test_ratio_schedule_is_gaussian_object_s(blur_model):
    from splatkit.priors.repair.plugin import DiffusionRepair

    plugin = DiffusionRepair(SimpleNamespace(), DiffusionRepair.Config(start=0.5, ctrl_fraction=0.7))
    state = SimpleNamespace(config=SimpleNamespace(steps=1000, seed=0), scene=[0, 1, 2])
    plugin.setup(state)
    assert plugin.start_step == 500 and plugin.ctrl_end == 850
    assert plugin.ratio(499) == 0.0 and plugin.ratio(500) == 1.0
    assert plugin.ratio(675) == pytest.approx(0.75)
    assert plugin.ratio(849) == pytest.approx(0.5 + 0.5 / 350)
    assert plugin.ratio(850) == 0.0  # the final stretch trains the real views only
    assert plugin.photometric_weights(600, None) == pytest.approx(1 - plugin.ratio(600))
    assert plugin.photometric_weights(900, None) is None

    # additive: the real views keep their full weight; the pseudo-view term's ratio is the same
    additive = DiffusionRepair(SimpleNamespace(), DiffusionRepair.Config(start=0.5, ctrl_fraction=0.7, mix="additive"))
    additive.setup(state)
    assert additive.photometric_weights(600, None) is None and additive.ratio(600) == plugin.ratio(600)
    with pytest.raises(SplatkitError, match="mix must be one of"):
        DiffusionRepair(SimpleNamespace(), DiffusionRepair.Config(mix="sum")).setup(state)


def _config(scene_dir, out, steps, **plugin):
    from splatkit.train.config import resolve_config

    settings = {"start": 0.5, "loo_steps": 4, "noise_draws": 1, "tune_steps": 2, "refresh_every": 2,
                "refresh_size": 3, **plugin}
    return resolve_config({"data": str(scene_dir), "out": str(out), "steps": steps, "backend": "torch",
                           "init_num_points": 200, "sh_degree": 0, "background": "black",
                           "train_views": [0, 3, 6], "checkpoint_every": 2, "log_every": 1, "preview_every": 0,
                           "refine_start_iter": 1, "refine_every": 2, "regularizers": ["diffusion_repair"],
                           "plugins": {"diffusion_repair": settings}})


def test_generate_pairs_gives_every_kind_for_every_view(scene_dir):
    from splatkit.data.loader import load_scene
    from splatkit.methods.gaussian_splatting import GaussianSplatting
    from splatkit.priors.repair.pairs import generate_pairs
    from splatkit.train.config import resolve_config

    cfg = resolve_config({"data": str(scene_dir), "steps": 20, "backend": "torch", "init_num_points": 150,
                          "sh_degree": 0, "background": "black", "refine_start_iter": 2, "refine_every": 3})
    scene = load_scene(scene_dir).subset([0, 3, 6])
    method = GaussianSplatting(cfg, torch.device("cpu"))
    method.initialize(scene, scene_scale=1.0)
    method.build_optimizers()
    rng_before = torch.get_rng_state()
    pairs, report = generate_pairs(method, scene, cfg, background=torch.zeros(3), scene_scale=1.0, loo_steps=8,
                                   noise_draws=2, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the fits ran in a forked RNG
    H, W = scene.images[0].shape[:2]
    assert pairs.inputs.shape[1:] == (H, W, 3)
    # 3 snapshots of each held-out view (at 4, 6, 8 of 8 steps), 2 noise draws x 3 views, 3 identity.
    assert pairs.counts() == {"loo": 9, "noise": 6, "identity": 3}
    assert sorted(set(pairs.view_ids)) == sorted(scene.ids)
    for i, v in enumerate(pairs.view_ids):  # every target is its view's photo
        assert torch.allclose(pairs.targets[i], torch.from_numpy(scene.images[scene.ids.index(v)]))
    assert float(pairs.inputs.min()) >= 0 and float(pairs.inputs.max()) <= 1
    assert set(report["stats"]) >= {"means", "scales", "quats", "opacities", "sh0"}
    assert report["seconds"]["leave_one_out"] > 0
    # The noisy renders differ from the clean ones.
    ident = pairs.inputs[[i for i, k in enumerate(pairs.kinds) if k == "identity"]]
    noise = pairs.inputs[[i for i, k in enumerate(pairs.kinds) if k == "noise"]][:3]
    assert not torch.allclose(ident, noise)


def test_training_with_repair_writes_pictures_and_resumes_exactly(scene_dir, tmp_path, blur_model):
    from splatkit.train.trainer import Trainer

    full = Trainer(_config(scene_dir, tmp_path / "full", 8), quiet=True)
    full.train()
    log = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert "diffusion_repair" in log[5] and log[5]["diffusion_repair"] > 0  # step 6: pseudo views on
    assert "diffusion_repair" not in log[2]  # before start (step 4 of 8)
    assert blur_model[0].tuned_on == {"loo": 9, "noise": 3, "identity": 3}
    written = sorted(p.name for p in (tmp_path / "full" / "repair").iterdir())
    assert written == ["report.json", "step_000004.png", "step_000006.png"]
    report = json.loads((tmp_path / "full" / "repair" / "report.json").read_text())
    assert report["model"] == "blur" and report["pairs"] == {"loo": 9, "noise": 3, "identity": 3}
    assert len(report["repair_seconds_per_view"]) == 2  # one entry per refresh

    def stop_at_6(trainer, step):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(scene_dir, tmp_path / "part", 8), quiet=True, callbacks=[stop_at_6]).train()
    resumed = Trainer(_config(scene_dir, tmp_path / "part", 8), resume=True, quiet=True)
    resumed.train()
    # The resumed run did not fine-tune again: it restored the tuned model from the checkpoint.
    assert blur_model[-1].tuned_on is None and float(blur_model[-1].mix) == 0.25
    for k, v in full.method.model.splats.items():
        assert torch.equal(v, resumed.method.model.splats[k]), k


def test_repair_settings_are_checked(scene_dir, tmp_path, blur_model):
    from splatkit.train.trainer import Trainer

    with pytest.raises(SplatkitError, match="min_strength"):
        Trainer(_config(scene_dir, tmp_path / "r", 4, min_strength=0.9, max_strength=0.5), quiet=True).train()


def test_tune_steps_zero_uses_the_model_as_loaded_without_pairs(scene_dir, tmp_path, blur_model):
    from splatkit.train.trainer import Trainer

    Trainer(_config(scene_dir, tmp_path / "t0", 6, tune_steps=0), quiet=True).train()
    assert blur_model[0].tuned_on is None  # never fine-tuned, no pairs generated
    report = json.loads((tmp_path / "t0" / "repair" / "report.json").read_text())
    assert report["pairs"] == {} and report["pair_seconds"] == 0.0
