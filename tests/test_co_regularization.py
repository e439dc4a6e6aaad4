"""CoR-GS' co-regularisation plugin (splatkit/priors/co_regularization.py): co-pruning by hand,
the pseudo camera between two training cameras, a zero pseudo-view loss for identical fields, a
short training run that resumes bit-identically (both fields), and dark_backdrop's photometric
weights (splatkit/priors/sparse_views.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from splatkit.priors.co_regularization import (CoRegularization, co_prune, has_counterpart,
                                               interpolated_pseudo_camera)
from splatkit.priors.sparse_views import DarkBackdrop


def _field(points, extra_state=None):
    """A stand-in 3DGS method: means and opacities with Adam state, and strategy state."""
    n = len(points)
    splats = torch.nn.ParameterDict({"means": torch.nn.Parameter(torch.tensor(points)),
                                     "opacities": torch.nn.Parameter(torch.arange(n, dtype=torch.float32))})
    optimizers = {k: torch.optim.Adam([p], lr=0.0) for k, p in splats.items()}
    loss = sum(p.sum() for p in splats.values())
    loss.backward()
    for opt in optimizers.values():
        opt.step()  # creates exp_avg / exp_avg_sq, one row per Gaussian
    state = {"grad2d": torch.arange(n, dtype=torch.float32) * 10, "count": None, "scene_scale": 1.5}
    state.update(extra_state or {})
    return SimpleNamespace(model=SimpleNamespace(splats=splats), optimizers=optimizers, strategy_state=state)


def test_co_pruning_removes_gaussians_without_a_counterpart_and_keeps_matched_ones():
    a = _field([[0.0, 0, 0], [1.0, 0, 0], [5.0, 5, 5], [2.0, 0, 0]])
    b = _field([[0.05, 0, 0], [1.0, 0.08, 0], [-3.0, 0, 0]], {"binoms": torch.ones(2, 2)})
    assert has_counterpart(a.model.splats["means"], b.model.splats["means"], 0.1).tolist() == [True, True, False, False]
    removed = co_prune(a, b, 0.1)
    assert removed == (2, 1)
    assert a.model.splats["means"].tolist() == [[0.0, 0, 0], [1.0, 0, 0]]
    torch.testing.assert_close(b.model.splats["means"].detach(), torch.tensor([[0.05, 0, 0], [1.0, 0.08, 0]]))
    # Everything per Gaussian follows: the other parameters, the optimiser state, the strategy state.
    assert a.model.splats["opacities"].tolist() == [0.0, 1.0]
    assert a.strategy_state["grad2d"].tolist() == [0.0, 10.0]
    assert a.strategy_state["scene_scale"] == 1.5 and a.strategy_state["count"] is None
    assert b.strategy_state["binoms"].shape == (2, 2)  # not per Gaussian: untouched
    for field in (a, b):
        for name, opt in field.optimizers.items():
            param = field.model.splats[name]
            assert opt.param_groups[0]["params"][0] is param
            assert opt.state[param]["exp_avg"].shape == param.shape
    # Matched fields keep everything; a field with no match at all is left alone.
    assert co_prune(a, b, 0.1) == (0, 0)
    far = _field([[100.0, 0, 0]])
    assert co_prune(a, far, 0.1) == (0, 0) and len(a.model.splats["means"]) == 2


def test_pseudo_camera_lies_between_two_training_cameras():
    def c2w(angle, x):
        m = torch.eye(4, dtype=torch.float64)
        c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
        m[:3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
        m[0, 3] = x
        return m

    cams = torch.stack([c2w(0.0, 0.0), c2w(0.6, 2.0)])
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        pose, i = interpolated_pseudo_camera(cams, gen, noise=0.0)
        R, t = pose[:3, :3], pose[:3, 3]
        assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-9)
        u = float(t[0]) / 2.0  # on the segment between the two centres ...
        assert 0.0 <= u <= 1.0 and float(t[1:].abs().max()) < 1e-12
        angle = float(torch.atan2(R[0, 2], R[0, 0]))  # ... and turned the same fraction of the way
        assert angle == pytest.approx(0.6 * u, abs=1e-6)
        assert i in (0, 1)
    pose, _ = interpolated_pseudo_camera(cams, gen, noise=0.1)  # noise moves it off the segment
    assert float(pose[1:3, 3].abs().max()) > 0


def _config(scene_dir, out, steps, **plugin):
    from splatkit.train.config import resolve_config

    return resolve_config({"data": str(scene_dir), "out": str(out), "steps": steps, "backend": "torch",
                           "init_num_points": 150, "sh_degree": 0, "background": "random", "seed": 5,
                           "train_views": [0, 2, 4], "checkpoint_every": 3, "log_every": 1, "preview_every": 0,
                           "refine_start_iter": 1, "refine_every": 2, "grow_grad2d": 1e-5,
                           "regularizers": ["co_reg"],
                           "plugins": {"co_reg": {"start": 0.0, "prune_every": 0.3, **plugin}}})


def _co_reg(trainer) -> CoRegularization:
    return next(p for p in trainer.plugins if p.name == "co_reg")


def test_pseudo_view_loss_is_zero_for_identical_fields(scene_dir, tmp_path):
    from splatkit.train.trainer import Trainer

    # The second field starts as a copy of the first (CoR-GS' code), so the first step's pseudo
    # renders agree.
    trainer = Trainer(_config(scene_dir, tmp_path / "r", 1, independent_init=False), quiet=True)
    trainer.train()
    (rec,) = [json.loads(line) for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert rec["co_reg/pseudo"] == 0.0


def test_training_with_co_reg_prunes_and_resumes_exactly(scene_dir, tmp_path):
    from splatkit.train.trainer import Trainer

    # Two independent random initialisations: most Gaussians have no counterpart this close.
    kw = {"prune_threshold": 0.02}
    full = Trainer(_config(scene_dir, tmp_path / "full", 6, **kw), quiet=True)
    full.train()
    plugin = _co_reg(full)
    assert sum(plugin.pruned) > 0
    log = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert min(full.method.num_primitives, plugin.field2.num_primitives) > 0
    assert max(rec["co_reg/pseudo"] for rec in log) > 0
    # Log-only values: the second field's size and what co-pruning removed, never in the loss.
    assert log[-1]["co_reg/field2_primitives"] == plugin.field2.num_primitives
    assert (log[-1]["co_reg/co_pruned_1"], log[-1]["co_reg/co_pruned_2"]) == tuple(plugin.pruned)
    # Only the first field is evaluated.
    summary = json.loads((tmp_path / "full" / "train_summary.json").read_text())
    assert summary["num_gaussians"] == full.method.num_primitives

    def stop_at_4(trainer, step):  # Ctrl-C after step 4: the loop saves a checkpoint there
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(scene_dir, tmp_path / "part", 6, **kw), quiet=True, callbacks=[stop_at_4]).train()
    resumed = Trainer(_config(scene_dir, tmp_path / "part", 6, **kw), resume=True, quiet=True)
    resumed.train()
    for a, b in ((full.method, resumed.method), (plugin.field2, _co_reg(resumed).field2)):
        assert a.model.splats.keys() == b.model.splats.keys()
        for k, v in a.model.splats.items():
            assert torch.equal(v, b.model.splats[k]), k


def test_dark_backdrop_weights_leave_the_backdrop_out_of_the_photometric_loss():
    images = torch.zeros(1, 2, 2, 3)
    images[0, 1, 1] = 0.9  # the one bright pixel
    batch = SimpleNamespace(images=images, pixels=None)
    kept = DarkBackdrop(SimpleNamespace(), DarkBackdrop.Config(run=1))
    assert kept.photometric_weights(0, batch) is None  # DNGaussian / Binocular3DGS: backdrop stays in
    plugin = DarkBackdrop(SimpleNamespace(), DarkBackdrop.Config(run=1, exclude_from_loss=True))
    weights = plugin.photometric_weights(0, batch)
    assert weights[0, ..., 0].tolist() == [[0.0, 0.0], [0.0, 1.0]]
    # The alpha penalty stays.
    alphas = torch.tensor([0.2, 0.4, 0.6, 0.8]).reshape(1, 2, 2, 1)
    assert float(plugin.loss(0, batch, SimpleNamespace(alphas=alphas))) == pytest.approx(1.2 / 4)
