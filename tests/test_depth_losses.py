"""Depth-prior losses: sign, margin, gradient direction, invariances; DropGaussian's render hook."""

import math

import pytest
import torch

from splatkit.priors.depth_losses import (GaussianDropout, continuity_loss, continuity_neighbours,
                                          patch_normalized_loss, pearson_loss, ranking_loss)
from splatkit.train.config import TrainConfig


def _pair(d_a, d_b, p_a, p_b):
    rendered = torch.tensor([d_a, d_b], dtype=torch.float64, requires_grad=True)
    prior = torch.tensor([p_a, p_b], dtype=torch.float64)
    return rendered, prior, torch.tensor([0]), torch.tensor([1])


def test_ranking_penalises_only_the_wrong_order_with_margin():
    # Prior: pixel 0 nearer. Rendered in the right order by more than the margin: no loss.
    r, p, a, b = _pair(1.0, 2.0, 0.3, 0.7)
    assert ranking_loss(r, p, a, b, margin=1e-4).item() == 0.0
    # Wrong order: loss = d_near - d_far + margin.
    r, p, a, b = _pair(2.0, 1.0, 0.3, 0.7)
    assert ranking_loss(r, p, a, b, margin=1e-4).item() == pytest.approx(1.0 + 1e-4)
    # Equal rendered depths still pay the margin.
    r, p, a, b = _pair(1.5, 1.5, 0.3, 0.7)
    assert ranking_loss(r, p, a, b, margin=1e-4).item() == pytest.approx(1e-4)
    # The pair's roles swap when the prior says the other is nearer.
    r, p, a, b = _pair(2.0, 1.0, 0.7, 0.3)
    assert ranking_loss(r, p, a, b, margin=1e-4).item() == 0.0


def test_ranking_gradient_pushes_near_pixel_closer():
    r, p, a, b = _pair(2.0, 1.0, 0.3, 0.7)  # prior: 0 nearer, rendered: 0 farther
    ranking_loss(r, p, a, b).backward()
    # Gradient descent lowers pixel 0's depth and raises pixel 1's.
    assert r.grad[0] > 0 and r.grad[1] < 0


def test_ranking_skips_ties_and_unknown_prior():
    r, p, a, b = _pair(2.0, 1.0, 0.5, 0.5)
    assert ranking_loss(r, p, a, b).item() == 0.0
    r, p, a, b = _pair(2.0, 1.0, math.nan, 0.5)
    loss = ranking_loss(r, p, a, b)
    assert loss.item() == 0.0 and loss.requires_grad


def test_ranking_averages_over_valid_pairs():
    rendered = torch.tensor([3.0, 1.0, 1.0, 2.0])
    prior = torch.tensor([0.1, 0.9, 0.5, 0.5])
    # pair (0,1): wrong by 2 -> 2 + m; pair (2,3): tie in the prior -> skipped.
    loss = ranking_loss(rendered, prior, torch.tensor([0, 2]), torch.tensor([1, 3]), margin=0.0)
    assert loss.item() == pytest.approx(2.0)


def test_continuity_neighbours_stay_on_the_anchors_side_of_a_depth_edge():
    H, W = 20, 20
    prior = torch.ones(H, W)
    prior[:, 10:] = 5.0  # a depth edge between columns 9 and 10
    prior += torch.rand(H, W) * 1e-3
    anchors = torch.tensor([5 * W + 9, 12 * W + 10, 3 * W + 2])
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        nb = continuity_neighbours(prior, anchors, window=3, fraction=0.3, generator=g)
        ay, ax, ny, nx = anchors // W, anchors % W, nb // W, nb % W
        assert bool(((ny - ay).abs() <= 3).all() and ((nx - ax).abs() <= 3).all())
        assert bool((nb != anchors).all())
        # Same side of the edge as the anchor: the closest 30% of the window never crosses it.
        assert bool(((nx >= 10) == (ax >= 10)).all())


def test_continuity_loss_margin_and_gradient():
    rendered = torch.tensor([1.0, 1.5], requires_grad=True)
    a, n = torch.tensor([0]), torch.tensor([1])
    loss = continuity_loss(rendered, a, n, margin=0.1)
    assert loss.item() == pytest.approx(0.4)
    loss.backward()
    assert rendered.grad[0] < 0 and rendered.grad[1] > 0  # pulled together
    assert continuity_loss(torch.tensor([1.0, 1.05]), a, n, margin=0.1).item() == 0.0


def test_pearson_is_scale_shift_invariant_and_signed():
    torch.manual_seed(0)
    d = torch.rand(500) + 1.0
    assert pearson_loss(d, 3.0 * d - 7.0).item() == pytest.approx(0.0, abs=1e-6)
    assert pearson_loss(d, -d).item() == pytest.approx(2.0, abs=1e-6)
    prior = d.clone()
    prior[:100] = math.nan  # unknown pixels are ignored
    assert pearson_loss(d, 2 * prior + 1).item() == pytest.approx(0.0, abs=1e-6)


def test_patch_normalized_invariant_per_patch_and_detects_shape():
    torch.manual_seed(0)
    d = torch.rand(16, 16) + 1.0
    # A different affine map in every 8x8 patch is still a perfect match.
    scale = torch.rand(2, 2).repeat_interleave(8, 0).repeat_interleave(8, 1) + 0.5
    shift = torch.rand(2, 2).repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert patch_normalized_loss(d, d * scale + shift, 8).item() == pytest.approx(0.0, abs=1e-4)
    assert patch_normalized_loss(d, torch.rand(16, 16), 8).item() > 0.3
    # Offsets shift the patch grid; patches with unknown pixels are skipped.
    prior = d.clone()
    prior[0, 0] = math.nan
    assert patch_normalized_loss(d, prior, 8, (0, 0)).item() == pytest.approx(0.0, abs=1e-4)
    assert patch_normalized_loss(d, prior, 8, (3, 5)).item() == pytest.approx(0.0, abs=1e-4)


def test_dropout_rate_schedule_and_opacity_compensation():
    cfg = TrainConfig(steps=1000, plugins={"dropout": {"gamma": 0.2}}).resolved()
    drop = GaussianDropout(cfg, GaussianDropout.Config(**cfg.plugins["dropout"]))
    drop.setup(type("Ctx", (), {"config": cfg})())
    assert drop.rate(0) == 0.0 and drop.rate(500) == pytest.approx(0.1) and drop.rate(1000) == pytest.approx(0.2)
    n = 200_000
    params = {"opacities": torch.full((n,), 0.5), "means": torch.zeros(n, 3)}
    assert drop.render_params(0, params) is params
    out = drop.render_params(1000, params)
    kept = out["opacities"] > 0
    assert abs(1 - kept.float().mean().item() - 0.2) < 0.01  # about 20% dropped
    assert torch.allclose(out["opacities"][kept], torch.tensor(0.5 / 0.8))  # compensated
    assert out["opacities"].mean().item() == pytest.approx(0.5, rel=0.02)  # expected opacity kept
    assert out["means"] is params["means"] and params["opacities"].eq(0.5).all()  # inputs untouched


def _ray_batch(priors, n=400, seed=0):
    """A NeRF-style batch: ``n`` scattered pixel rays over two views, whose rendered depth is
    given per test."""
    from splatkit.methods.base import Batch

    g = torch.Generator().manual_seed(seed)
    H, W = priors[0].shape
    pix = torch.stack([torch.randint(2, (n,), generator=g), torch.randint(H, (n,), generator=g),
                       torch.randint(W, (n,), generator=g)], -1)
    img = torch.zeros(1, 1, n, 3)
    batch = Batch(step=0, positions=[1, 0], view_ids=[1, 0], images=img, target=img,
                  viewmats=torch.eye(4).expand(2, 4, 4), Ks=torch.eye(3).expand(2, 3, 3), width=W, height=H,
                  backgrounds=torch.zeros(n, 3), pixels=pix)
    # The prior depth each ray's pixel has (batch view b is training view positions[b]).
    truth = torch.stack([priors[[1, 0][b]][y, x] for b, y, x in pix.tolist()])
    return batch, truth


def _plugin(cls, priors):
    cfg = TrainConfig(steps=10).resolved()
    plugin = cls(cfg, cls.Config())
    plugin.priors, plugin.device = priors, torch.device("cpu")
    plugin.generator = torch.Generator().manual_seed(0)
    return plugin


def test_ranking_and_pearson_take_a_nerf_batch_of_scattered_rays():
    from splatkit.methods.base import RenderOutputs
    from splatkit.priors.depth_losses import DepthPearson, DepthRanking

    torch.manual_seed(0)
    priors = [torch.rand(12, 16) + 1.0, torch.rand(12, 16) + 1.0]
    batch, truth = _ray_batch(priors)

    def outputs(depth):
        return RenderOutputs(colors=torch.zeros(1, 1, len(depth), 3), alphas=torch.ones(1, 1, len(depth), 1), meta={},
                             depths=depth.reshape(1, 1, -1, 1))

    rank, pearson = _plugin(DepthRanking, priors), _plugin(DepthPearson, priors)
    # Depth in the prior's own order (an affine map of it): nothing to correct.
    assert float(rank.loss(0, batch, outputs(2 * truth + 1))) == pytest.approx(0.0, abs=1e-8)  # within the margin
    assert float(pearson.loss(0, batch, outputs(2 * truth + 1))) == pytest.approx(0.0, abs=1e-6)
    # Reversed order: both penalise, and the ranking's gradient pushes each ray the right way.
    depth = (-truth).clone().requires_grad_(True)
    loss = rank.loss(0, batch, outputs(depth))
    assert float(loss.detach()) > 0.01 and float(pearson.loss(0, batch, outputs(-truth))) == pytest.approx(2 * 0.05, rel=1e-4)
    loss.backward()
    moved = depth.grad != 0
    # Rays the prior calls far are pulled back (gradient < 0 raises them), near ones pushed forward.
    far = truth > truth.median()
    assert (depth.grad[moved & far] <= 0).float().mean() > 0.9


def test_continuity_and_patch_refuse_the_nerf():
    from splatkit.errors import SplatkitError
    from splatkit.methods.plugins import build_plugins

    for name in ("depth_continuity", "depth_patch"):
        cfg = TrainConfig(method="nerf", regularizers=[name], depth_prior="files")
        with pytest.raises(SplatkitError, match="works with method"):
            build_plugins(cfg, "nerf")
    assert [p.name for p in build_plugins(TrainConfig(method="nerf", regularizers=["depth_ranking", "depth_pearson"],
                                                      depth_prior="files"), "nerf")] == ["depth_ranking", "depth_pearson"]
