"""Compact-3DGS (Lee et al., CVPR 2024): learnable masks, R-VQ of scales / rotations, the hash-grid
colour field in training, and a tiny compact run (48x36 synthetic scene) that checkpoints, resumes
exactly, exports to every format and scores its ``.skz`` like the run itself.

Runs use the pure-PyTorch rasteriser, a few hundred Gaussians and a small colour field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from splatkit.cli.main import main
from splatkit.compress import compact
from splatkit.models import color_field
from splatkit.compress.skz import RVQ, read_skz
from splatkit.errors import SplatkitError
from splatkit.eval.evaluate import evaluate_run
from splatkit.app import bake_report, export_run
from splatkit.export import (SKZ_TABLE_BITS, SUPPORTED_FORMATS, read_splats_file,
                             with_baked_sh)
from splatkit.models.gaussians import GaussianModel
from splatkit.train import Run, TrainConfig, resolve_config
from splatkit.train.trainer import Trainer



def tiny_compact(data, out, **kw) -> TrainConfig:
    """Densify to step 20, prune masks every 4 steps after it, R-VQ from step 22 on; a mask LR
    and weight large enough that masks switch off within the run."""
    base = dict(data=data, out=out, steps=30, seed=3, backend="torch", device="cpu", init_num_points=300,
                sh_degree=1, sh_degree_interval=10, background="black", refine_start_iter=3, refine_every=5,
                refine_stop_iter=20, reset_every=1000, grow_grad2d=3e-4, checkpoint_every=10, keep_checkpoints=0,
                log_every=5, preview_every=0, gaussian_masks=True, mask_lr=0.4, mask_lambda=0.05,
                mask_prune_every=4, mask_min_gaussians=20, color_field=True, color_field_log2_hashmap_size=10,
                color_field_levels=6, rvq=True, rvq_start=22, rvq_stages=3, rvq_codebook_size=16)
    base.update(kw)
    return TrainConfig(**base)


def raw_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# -- masks ------------------------------------------------------------------------------------------
def test_straight_through_mask_is_hard_forward_with_the_sigmoid_gradient():
    logits = torch.tensor([-6.0, -4.6, -4.5, 0.0, 3.0], requires_grad=True)
    m = compact.straight_through_mask(logits, 0.01)
    assert m.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]  # sigmoid(-4.6) = 0.0099 <= 0.01 < sigmoid(-4.5)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (m * weights).sum().backward()
    s = torch.sigmoid(logits.detach())
    torch.testing.assert_close(logits.grad, weights * s * (1 - s))


def test_mask_loss_is_lambda_times_the_mean_sigmoid():
    logits = torch.tensor([0.0, 2.0, -1.0])
    expected = 5e-4 * torch.sigmoid(logits).mean()
    torch.testing.assert_close(compact.mask_loss(logits), expected)
    torch.testing.assert_close(compact.mask_loss(logits, 0.1), 0.1 * torch.sigmoid(logits).mean())


def test_pruning_removes_masked_gaussians_and_keeps_a_floor():
    logits = torch.tensor([3.0, -9.0, 0.5, -5.0, -6.0, -7.0])
    drop, floored = compact.prune_selection(logits, 0.01, floor=2)
    assert drop.tolist() == [False, True, False, True, True, True] and not floored
    drop, floored = compact.prune_selection(logits, 0.01, floor=4)  # 2 on: keep the 4 largest masks
    assert drop.tolist() == [False, True, False, False, False, True] and floored
    drop, floored = compact.prune_selection(torch.full((3,), -9.0), 0.01, floor=10)
    assert not drop.any() and floored  # fewer Gaussians than the floor: nothing goes


def test_densification_carries_the_mask():
    from gsplat.strategy.ops import duplicate, remove, split

    torch.manual_seed(0)
    n = 6
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.randn(n, 3)), "scales": torch.nn.Parameter(torch.full((n, 3), -2.0)),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
        "opacities": torch.nn.Parameter(torch.zeros(n)),
        "mask": torch.nn.Parameter(torch.arange(n, dtype=torch.float32))})
    opts = {k: torch.optim.Adam([p]) for k, p in params.items()}
    state: dict = {}
    duplicate(params, opts, state, torch.tensor([True, False, False, True, False, False]))
    assert params["mask"].tolist() == [0, 1, 2, 3, 4, 5, 0, 3]
    split(params, opts, state, torch.tensor([False, True] + [False] * 6))
    assert params["mask"].tolist() == [0, 2, 3, 4, 5, 0, 3, 1, 1]
    remove(params, opts, state, params["mask"].detach() >= 4)
    assert params["mask"].tolist() == [0, 2, 3, 0, 3, 1, 1]
    assert all(opts[k].param_groups[0]["params"][0] is params[k] for k in params)


# -- R-VQ ---------------------------------------------------------------------------------------------
def test_quantizer_trains_codebooks_straight_through_and_codes_match_the_library():
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.randn(500, 3) * 0.5 - 4.0)
    q = compact.AttributeQuantizer(3, stages=4, codebook_size=16)
    assert not q.initialized
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(3):
        out = q(x)
        up = torch.randn_like(out)
        x.grad = None
        (out * up).sum().backward()
        # Straight-through: the input gets exactly the upstream gradient (not once per stage).
        torch.testing.assert_close(x.grad, up)
        assert q.codebooks.shape == (4, 16, 3) and q.rvq.layers[0]._codebook.embed.grad.abs().sum() > 0
        opt.step()
        opt.zero_grad()
    assert q.initialized
    codes = compact.rvq_encode(x.detach(), q.codebooks.detach())
    q.eval()
    with torch.no_grad():
        lib_out, lib_idx, _ = q.rvq(x.detach()[None])
    assert torch.equal(codes, lib_idx[0])  # our assignment is the library's eval-mode one
    decoded = compact.rvq_decode(q.codebooks.detach(), codes)
    torch.testing.assert_close(decoded, lib_out[0])
    assert (decoded - x.detach()).norm(dim=1).mean() < 0.1  # 16^4 codes for a 0.5-wide blob


def test_compacted_model_drops_masked_gaussians_and_holds_codes(tmp_path):
    torch.manual_seed(1)
    model = GaussianModel.from_points(torch.randn(40, 3), torch.rand(40, 3), sh_degree=1)
    model.splats["mask"] = torch.nn.Parameter(torch.where(torch.arange(40) % 4 == 0, -8.0, 2.0))
    cb = torch.randn(2, 8, 3) * 0.1 + torch.tensor([[[-3.0, -3.0, -3.0]], [[0.0, 0.0, 0.0]]])
    model.codebooks = {"scales": cb}
    out = model.compacted()
    assert out.num_gaussians == 30 and "mask" not in out.splats
    rvq = out.rvq["scales"]
    assert isinstance(rvq, RVQ) and rvq.indices.shape == (30, 2)
    np.testing.assert_allclose(rvq.decode(), out.splats["scales"].detach().numpy(), atol=1e-6)
    # Checkpoints keep the raw parameters; loading returns the compacted model unless raw.
    path = model.save_checkpoint(tmp_path / "ckpt_000001.pt", 1)
    raw, payload = GaussianModel.load_checkpoint(path, raw=True)
    assert raw.num_gaussians == 40 and torch.equal(payload["codebooks"]["scales"], cb)
    loaded, _ = GaussianModel.load_checkpoint(path)
    torch.testing.assert_close(loaded.splats["scales"], out.splats["scales"])


def test_compact_config_defaults_follow_the_paper_and_bad_values_fail():
    c = TrainConfig(steps=3000).resolved()
    assert (c.mask_lr, c.mask_lambda, c.mask_threshold, c.color_field_lr, c.rvq_stages, c.rvq_codebook_size) == \
        (0.01, 5e-4, 0.01, 1e-2, 6, 64)
    # Compact-3DGS' 30k-step schedule scaled to 3000 steps.
    assert (c.mask_prune_every, c.rvq_start, c.color_field_warmup, c.color_field_lr_milestones) == \
        (100, 2900, 10, [500, 1500, 2500])
    assert color_field.color_field_lr_factor(0, 10, [500]) == pytest.approx(0.01)
    assert color_field.color_field_lr_factor(10, 10, [500]) == 1.0
    assert color_field.color_field_lr_factor(2600, 10, [500, 1500, 2500]) == pytest.approx(0.33 ** 3)
    for bad, message in [({"rvq_attributes": ["means"]}, "cannot code means"),
                         ({"rvq": True, "color_field": True, "rvq_attributes": ["shN"]}, "shN needs"),
                         ({"mask_threshold": 1.5}, "mask_threshold"),
                         ({"color_field_output": "relu"}, "color_field_output"),
                         ({"rvq_codebook_size": 0}, "rvq_codebook_size"),
                         ({"rvq": True, "rvq_start": 100}, "rvq_start")]:
        with pytest.raises(SplatkitError, match=message):
            TrainConfig(steps=100, **bad).resolved()
    preset = resolve_config({}, preset="compact")
    assert preset.gaussian_masks and preset.color_field and preset.rvq


# -- a tiny compact training run ------------------------------------------------------------------------
class Recorder:
    """Callback: Gaussian count per step and whether the mask entry followed every change."""

    def __init__(self, raise_at=None):
        self.counts, self.raise_at = {}, raise_at

    def __call__(self, trainer, step):
        s = trainer.model.splats
        assert s["mask"].shape[0] == s["means"].shape[0]
        self.counts[step] = trainer.model.num_gaussians
        if step == self.raise_at:
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def compact_run(scene_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compact") / "run"
    rec = Recorder()
    trainer = Trainer(tiny_compact(scene_dir, out), quiet=True, callbacks=[rec])
    trainer.train()
    return out, rec.counts, trainer


def test_compact_training_prunes_masked_gaussians_and_ends_with_codes(compact_run):
    run, counts, trainer = compact_run
    assert counts[20] > counts[1]  # densification grew the model, mask included (Recorder checks)
    assert min(counts[s] for s in range(21, 31)) < counts[20]  # masks pruned after densification
    payload = raw_checkpoint(run / "checkpoints/ckpt_000030.pt")
    assert {"mask", "means"} <= set(payload["splats"]) and payload["color_field"]["config"]["grid"]["n_levels"] == 6
    assert set(payload["codebooks"]) == {"scales", "quats"} and payload["codebooks"]["quats"].shape == (3, 16, 4)
    assert not payload["splats"]["sh0"].requires_grad or "sh0" not in payload["trainer"]["optimizers"]
    model, _ = Run.open(run).load_model()
    assert model.color_field is not None and "mask" not in model.splats
    mask = payload["splats"]["mask"]
    assert model.num_gaussians == int((torch.sigmoid(mask) > 0.01).sum())
    for name in ("scales", "quats"):
        np.testing.assert_allclose(model.rvq[name].decode(), model.splats[name].detach().numpy(), atol=1e-6)
    # The decoded attributes stay close to the trained ones (unit rotations).
    kept = torch.sigmoid(mask) > 0.01
    trained = torch.nn.functional.normalize(payload["splats"]["quats"][kept], dim=-1)
    assert (model.splats["quats"].detach() - trained).norm(dim=1).median() < 0.1
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert "gaussian_mask" in log[0] and trainer.summary["num_gaussians"] == model.num_gaussians


def test_compact_resume_matches_the_uninterrupted_run(scene_dir, compact_run, tmp_path):
    ref, _, _ = compact_run
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(tiny_compact(scene_dir, out), quiet=True, callbacks=[Recorder(raise_at=25)]).train()
    Trainer(tiny_compact(scene_dir, out), resume=True, quiet=True).train()
    a, b = raw_checkpoint(ref / "checkpoints/ckpt_000030.pt"), raw_checkpoint(out / "checkpoints/ckpt_000030.pt")
    for group in ("splats", "codebooks"):
        assert a[group].keys() == b[group].keys()
        for k in a[group]:
            torch.testing.assert_close(a[group][k], b[group][k], atol=1e-6, rtol=0, msg=f"{group}/{k}")
    for k, v in a["color_field"]["state"].items():
        torch.testing.assert_close(v, b["color_field"]["state"][k], atol=1e-6, rtol=0, msg=k)


def test_compact_run_exports_every_format_and_its_skz_scores_like_the_run(compact_run, tmp_path, capsys):
    run, _, _ = compact_run
    own = evaluate_run(run, json_path=tmp_path / "own.json")["mean"]["psnr"]
    sizes = {}
    for fmt in SUPPORTED_FORMATS:
        res = export_run(run, fmt)
        sizes[fmt] = res.path.stat().st_size
        if fmt != "skz":  # baked straight to the SH the format keeps
            assert f"baked to SH degree {0 if fmt == 'splat' else 1}" in res.notes
        splats, degree = read_splats_file(res.path)  # every file reads back (skz: baked, user frame)
        assert splats["means"].shape[0] == res.num_written
    skz = read_skz(run / "export" / "splats.skz")
    assert isinstance(skz.scales, RVQ) and isinstance(skz.quats, RVQ) and skz.sh0 is None
    assert skz.color_field["config"]["quantize_8bit"] == ["grid.table"] and skz.normalization is not None
    assert sizes["skz"] < sizes["ply"]
    assert main(["eval", "--run", str(run), "--splats", str(run / "export" / "splats.skz"),
                 "--json", str(tmp_path / "skz.json")]) == 0
    capsys.readouterr()
    scored = json.loads((tmp_path / "skz.json").read_text())
    assert abs(scored["mean"]["psnr"] - own) < 0.1, (scored["mean"]["psnr"], own)
    assert scored["num_gaussians"] == skz.n


def test_skz_export_hash_table_bits(compact_run, tmp_path, capsys):
    run = compact_run[0]
    default = read_skz(export_run(run, "skz", out=tmp_path / "default.skz").path)
    assert default.color_field["config"]["quantize_bits"] == SKZ_TABLE_BITS
    assert main(["export", "--run", str(run), "--format", "skz", "--table-bits", "8",
                 "--out", str(tmp_path / "eight.skz")]) == 0
    assert "hash table at 8 bits" in capsys.readouterr().out
    eight = read_skz(tmp_path / "eight.skz")
    assert eight.color_field["config"]["quantize_bits"] == 8
    assert (tmp_path / "default.skz").stat().st_size < (tmp_path / "eight.skz").stat().st_size
    table6, table8 = (c.color_field["tensors"]["grid.table"] for c in (default, eight))
    assert len(np.unique(table6)) <= 2 ** SKZ_TABLE_BITS < len(np.unique(table8))
    assert main(["export", "--run", str(run), "--format", "skz", "--table-bits", "9",
                 "--out", str(tmp_path / "nine.skz")]) == 2
    assert "table_bits" in capsys.readouterr().err and not (tmp_path / "nine.skz").exists()


def test_skz_colour_field_config_is_checked_against_its_tensors(compact_run):
    from splatkit.export import model_from_compact

    skz = read_skz(export_run(compact_run[0], "skz").path)
    grid = skz.color_field["config"]["grid"]
    grid["log2_hashmap_size"], kept = 30, grid["log2_hashmap_size"]  # would allocate GBs if trusted
    with pytest.raises(SplatkitError, match="do not match"):
        model_from_compact(skz)
    grid["log2_hashmap_size"] = kept
    assert model_from_compact(skz).color_field is not None
    skz.meta["bake_sh_degree"] = "3"
    with pytest.raises(SplatkitError, match="bake_sh_degree"):
        model_from_compact(skz)


def test_view_hemisphere_axis():
    cap = np.array([[0.0, 0.0, 3.0], [1.0, 0.0, 3.0], [0.0, 1.0, 3.0]])
    axis = color_field.view_hemisphere_axis(cap)
    assert axis is not None and axis[2] < -0.9  # cameras above, looking down
    ring = np.array([[3.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])  # seen from all around
    assert color_field.view_hemisphere_axis(ring) is None


def test_baked_sh_export_is_close_to_the_field_render(compact_run):
    run, _, _ = compact_run
    model, _ = Run.open(run).load_model()
    assert model.bake_axis is not None  # the synthetic cameras sit on a sphere cap
    assert read_skz(export_run(run, "skz").path).color_field["config"]["bake_axis"] == pytest.approx(model.bake_axis)
    baked, rms = with_baked_sh(model)
    assert baked.color_field is None and baked.sh_degree == 1 and rms > 0
    report = bake_report(run)
    assert report["sh_degree"] == 1 and report["rms"] == pytest.approx(rms)
    assert abs(report["loss_db"]) < 1.5 and math.isfinite(report["psnr_baked"])
    # The export's own report comes from the same model and bake as the standalone one.
    exported = export_run(run, "ply", out=run / "export" / "reported.ply", report_bake=True)
    assert exported.bake == pytest.approx(report)
    assert export_run(run, "ply", out=run / "export" / "plain.ply").bake is None


def test_old_checkpoints_without_masks_resume_with_masks(scene_dir, tmp_path):
    out = tmp_path / "run"
    plain = dict(gaussian_masks=False, color_field=False, rvq=False, steps=10, checkpoint_every=5)
    Trainer(tiny_compact(scene_dir, out, **plain), quiet=True).train()
    assert "mask" not in raw_checkpoint(out / "checkpoints/ckpt_000010.pt")["splats"]
    trainer = Trainer(tiny_compact(scene_dir, out, **{**plain, "gaussian_masks": True, "steps": 14}),
                      resume=True, quiet=True)
    trainer.train()
    splats = raw_checkpoint(out / "checkpoints/ckpt_000014.pt")["splats"]
    assert splats["mask"].shape[0] == splats["means"].shape[0]
    with pytest.raises(SplatkitError, match="colour field"):
        Trainer(tiny_compact(scene_dir, out, **{**plain, "gaussian_masks": True, "color_field": True,
                                                "steps": 16}), resume=True, quiet=True).train()


def test_rvq_of_sh_rest_bands_without_a_colour_field(scene_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_compact(scene_dir, out, steps=10, gaussian_masks=False, color_field=False, rvq_start=6,
                         rvq_attributes=["scales", "quats", "shN"]), quiet=True).train()
    model, _ = Run.open(out).load_model()
    assert model.rvq["shN"].codebooks.shape == (3, 16, 9)  # SH degree 1: 3 bands x 3 channels
    np.testing.assert_allclose(model.rvq["shN"].decode().reshape(-1, 3, 3), model.splats["shN"].detach().numpy(),
                               atol=1e-6)
    skz = read_skz(export_run(out, "skz").path)
    assert isinstance(skz.shN, RVQ) and skz.sh0 is not None and skz.color_field is None


def test_cli_trains_with_the_compact_preset(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(scene_dir), "--preset", "compact", "--out", str(out), "--steps", "6",
                 "--init-num-points", "200", "--backend", "torch", "--device", "cpu", "--quiet",
                 "--set", "color_field_log2_hashmap_size=10", "color_field_levels=4", "rvq_start=4"]) == 0
    capsys.readouterr()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "compact" and cfg["gaussian_masks"] and cfg["color_field"] and cfg["rvq"]
    payload = raw_checkpoint(out / "checkpoints/ckpt_000006.pt")
    assert "mask" in payload["splats"] and set(payload["codebooks"]) == {"scales", "quats"}


def test_mask_loss_stops_at_mask_loss_stop_iter(scene_dir, tmp_path):
    cfg = tiny_compact(scene_dir, tmp_path / "run", steps=12, log_every=1, checkpoint_every=0, color_field=False,
                       rvq=False, densify=False, mask_loss_stop_iter=6)
    Trainer(cfg, quiet=True).train()
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    with_term = [r["step"] for r in log if "gaussian_mask" in r]
    assert with_term == list(range(1, 7))  # logged steps are 1-based: 0-based steps 0..5
    with pytest.raises(SplatkitError, match="mask_loss_stop_iter"):
        TrainConfig(steps=100, mask_loss_stop_iter=-1).resolved()
