"""FreeNeRF's regularisers on the hash-grid NeRF: the level mask and the occlusion loss against
hand-computed cases, the mask reaching the field's density, and a short training run that logs
both and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from splatkit.priors.free_nerf import OCC_SAMPLES, OCC_SIGMA_CAP, level_mask, occlusion_loss
from splatkit.train import resolve_config
from splatkit.train.trainer import Trainer
from test_nerf import TINY_VALUES


def test_level_mask_opens_levels_linearly_coarsest_first():
    assert level_mask(0.0, 4, 2).tolist() == [1, 1, 0, 0, 0, 0, 0, 0]  # the coarsest level always
    assert level_mask(0.5, 4, 1).tolist() == [1, 1, 0, 0]
    assert level_mask(0.6, 4, 1).tolist() == pytest.approx([1, 1, 0.4, 0])  # FreeNeRF's partial band
    assert level_mask(1.0, 4, 2).tolist() == [1] * 8
    assert level_mask(3.0, 4, 1).tolist() == [1] * 4 and level_mask(-1.0, 4, 1).tolist() == [1, 0, 0, 0]


def test_occlusion_loss_by_hand():
    # Two rays over [1, 3) and [2, 4); range 0.25: ray 0 penalises t < 1.5, ray 1 t < 2.5.
    t_near, t_far = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    ray = torch.tensor([0, 0, 0, 1, 1])
    t_mid = torch.tensor([1.1, 1.4, 2.0, 2.2, 3.9])
    sigma = torch.tensor([2.0, 3.0, 5.0, 7.0, 11.0], requires_grad=True)
    rgb = torch.tensor([[0.5] * 3, [0.5] * 3, [0.5] * 3, [0.5] * 3, [1.0] * 3])
    loss = occlusion_loss(sigma, rgb, t_mid, ray, t_near, t_far, 2, 0.25)
    assert float(loss.detach()) == pytest.approx((2 + 3 + 7) / (2 * OCC_SAMPLES))
    loss.backward()
    assert sigma.grad.tolist() == pytest.approx([1 / 256, 1 / 256, 0, 1 / 256, 0])
    # The black/white prior adds the white sample only when it is within wb_range.
    with_wb = occlusion_loss(sigma, rgb, t_mid, ray, t_near, t_far, 2, 0.25, wb_prior=True, wb_range=1.0)
    assert float(with_wb.detach()) == pytest.approx((2 + 3 + 7 + 11) / 256)
    near_wb = occlusion_loss(sigma, rgb, t_mid, ray, t_near, t_far, 2, 0.25, wb_prior=True, wb_range=0.5)
    assert float(near_wb.detach()) == pytest.approx(float(loss.detach()))


def test_occlusion_loss_stays_finite_with_infinite_densities():
    # trunc_exp overflows to inf in float32; inside the penalised range the sample counts as the
    # cap (no gradient), outside it must not turn the term into inf x 0 = NaN.
    t_near, t_far = torch.tensor([0.0]), torch.tensor([1.0])
    ray, t_mid = torch.tensor([0, 0, 0]), torch.tensor([0.01, 0.02, 0.9])
    sigma = torch.tensor([2.0, float("inf"), float("inf")], requires_grad=True)
    loss = occlusion_loss(sigma, torch.full((3, 3), 0.5), t_mid, ray, t_near, t_far, 1, 0.1)
    assert float(loss.detach()) == pytest.approx((2 + OCC_SIGMA_CAP) / OCC_SAMPLES)
    loss.backward()
    assert sigma.grad.tolist() == pytest.approx([1 / OCC_SAMPLES, 0, 0])


def test_level_mask_reaches_the_density():
    from splatkit.models.nerf_field import NerfConfig, NerfField
    from splatkit.models.hashgrid import HashGridConfig

    torch.manual_seed(0)
    field = NerfField(NerfConfig(grid=HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10,
                                                     base_resolution=4, max_resolution=32),
                                 aabb=[-1, -1, -1, 1, 1, 1]))
    field.impl = "torch"
    with torch.no_grad():
        field.grid.table.uniform_(-1, 1)  # features large enough to matter
    x = torch.rand(64, 3) * 2 - 1
    open_all = field.density(x)
    field.level_mask = torch.ones(8)
    assert torch.equal(field.density(x), open_all)
    field.level_mask = level_mask(0.0, 4, 2)
    coarse = field.density(x)
    assert not torch.allclose(coarse, open_all)
    # Only the coarsest level is read: its features alone give the same density.
    with torch.no_grad():
        f = field.grid(field.normalize(x)[0]).clone()
        f[:, 2:] = 0
        h = field.density_mlp(f)
    assert torch.allclose(coarse, torch.exp(h[:, 0] - 1.0), rtol=1e-5)


def test_training_with_freenerf_logs_both_and_resumes_exactly(scene_dir, tmp_path):
    values = {**TINY_VALUES, "data": scene_dir, "method": "nerf", "steps": 12, "log_every": 4,
              "regularizers": ["frequency_reg", "occlusion_reg"],
              "plugins": {"occlusion_reg": {"wb_prior": True}}}
    Trainer(resolve_config({**values, "out": tmp_path / "ref"}), quiet=True).train()
    log = [json.loads(line) for line in (tmp_path / "ref" / "train_log.jsonl").read_text().splitlines()]
    opened = [r["frequency_reg/open_levels"] for r in log]
    assert opened[0] < opened[1] and opened[-1] == 4  # 4 levels, all open from 90% of the run
    assert all(r["occlusion_reg"] >= 0 for r in log) and any(r["occlusion_reg"] > 0 for r in log)

    def crash(trainer, step):
        if step == 10:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        Trainer(resolve_config({**values, "out": tmp_path / "run"}), quiet=True, callbacks=[crash]).train()
    Trainer(resolve_config({**values, "out": tmp_path / "run"}), resume=True, quiet=True).train()
    a = torch.load(tmp_path / "ref/checkpoints/ckpt_000012.pt", map_location="cpu", weights_only=False)["state"]
    b = torch.load(tmp_path / "run/checkpoints/ckpt_000012.pt", map_location="cpu", weights_only=False)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_freenerf_plugins_refuse_3dgs(scene_dir, tmp_path):
    from splatkit.errors import SplatkitError

    with pytest.raises(SplatkitError, match="occlusion_reg"):
        Trainer(resolve_config({"data": scene_dir, "out": tmp_path / "r", "steps": 1, "init_num_points": 50,
                                "regularizers": ["occlusion_reg"]}), quiet=True).train()


def test_nerf_trains_with_the_depth_ranking_and_pearson_priors(scene_dir, tmp_path):
    """SparseNeRF's ranking and FSGS' Pearson on the NeRF's scattered rays, from depth files."""
    values = {**TINY_VALUES, "data": scene_dir, "method": "nerf", "steps": 4, "log_every": 2,
              "regularizers": ["depth_ranking", "depth_pearson"], "depth_prior": "files"}
    Trainer(resolve_config({**values, "out": tmp_path / "r"}), quiet=True).train()
    log = [json.loads(line) for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["depth_ranking"] >= 0 and 0 <= r["depth_pearson"] <= 0.1 for r in log)
    assert any(r["depth_pearson"] > 0 for r in log)
