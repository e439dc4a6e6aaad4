"""`splatkit compress`: the maths (importance against the rendered alpha, weighted k-means, the
quantisation grid the fine-tune renders on against the one .skz stores) and the whole chain on a
tiny run (the output run evaluates, its checkpoint is exactly its .skz, a re-export quantises nothing
twice, CLI errors)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from splatkit.app.compress import QuantizeAwarePlugin, compress_run
from splatkit.compress import posttrain
from splatkit.compress.skz import dequantize_columns, quantize_columns, read_skz
from splatkit.errors import SplatkitError
from splatkit.models.gaussians import GaussianModel
from splatkit.render import rasterization
from splatkit.train import TrainConfig
from splatkit.train.trainer import Trainer


def random_model(n: int = 60, degree: int = 1, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return GaussianModel({"means": torch.randn(n, 3, generator=g) * 0.3,
                          "scales": torch.randn(n, 3, generator=g) * 0.2 - 2.5,
                          "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g),
                          "sh0": torch.randn(n, 1, 3, generator=g) * 0.5,
                          "shN": torch.randn(n, k - 1, 3, generator=g) * 0.1}, degree)


def cameras(v: int = 3):
    viewmats = torch.eye(4).repeat(v, 1, 1)
    viewmats[:, 2, 3] = 3.0
    viewmats[:, 0, 3] = torch.linspace(-0.3, 0.3, v)
    Ks = torch.tensor([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]]).repeat(v, 1, 1)
    return viewmats, Ks, [32] * v, [24] * v


# -- maths ------------------------------------------------------------------------------------------
def test_importance_is_the_blending_weight_sum():
    """Per pixel the blending weights sum to the rendered alpha: over all Gaussians the importance
    sums to the alpha of every pixel of every view; sensitivity is importance x |Y_k(d)|."""
    model = random_model()
    act = model.activated()
    viewmats, Ks, ws, hs = cameras()
    imp, sens = posttrain.importance_and_sensitivity(act["means"], act["quats"], act["scales"], act["opacities"], 1,
                                                     viewmats, Ks, ws, hs, backend="torch")
    alpha_total = 0.0
    for v in range(3):
        _, alpha, _ = rasterization(act["means"], act["quats"], act["scales"], act["opacities"],
                                    torch.zeros(60, 3), viewmats[v:v + 1], Ks[v:v + 1], 32, 24, backend="torch")
        alpha_total += float(alpha.detach().sum())
    assert alpha_total > 1.0
    assert float(imp.sum()) == pytest.approx(alpha_total, rel=1e-4)
    assert (imp >= 0).all() and sens.shape == (60, 3)
    # Band 1: |Y_1m| <= sqrt(3 / (4 pi)) |d| per view, so the sensitivity is bounded by the importance.
    assert (sens <= imp[:, None] * 0.4886026 + 1e-9).all() and float(sens.sum()) > 0


def test_keep_mask_keeps_the_most_important():
    imp = torch.tensor([0.1, 5.0, 0.0, 3.0, 2.0])
    assert posttrain.keep_mask(imp, 0.4).tolist() == [False, True, False, True, False]
    assert posttrain.keep_mask(imp, 0.01).sum() == 1
    with pytest.raises(SplatkitError, match="keep"):
        posttrain.keep_mask(imp, 0.0)


def test_weighted_kmeans_recovers_clusters_and_follows_weights():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centers])
    cb, labels = posttrain.weighted_kmeans(x, torch.ones(600), 3, seed=1)
    assert sorted(torch.bincount(labels, minlength=3).tolist()) == [200, 200, 200]
    assert torch.cdist(cb, centers).min(dim=0).values.max() < 0.05
    # One cluster, two points: the centroid is their weighted mean.
    cb1, _ = posttrain.weighted_kmeans(torch.tensor([[0.0], [1.0]]), torch.tensor([3.0, 1.0]), 1)
    assert float(cb1[0, 0]) == pytest.approx(0.25, abs=1e-6)
    # More entries than vectors: one per vector, exact.
    cb2, lab2 = posttrain.weighted_kmeans(x[:5], torch.ones(5), 256)
    torch.testing.assert_close(cb2[lab2], x[:5])


@pytest.mark.parametrize("bits", [4, 8, 14])
def test_fake_quantize_is_the_skz_grid_with_a_straight_through_gradient(bits):
    x = (torch.randn(500, 3, dtype=torch.float64) * torch.tensor([1.0, 0.01, 100.0], dtype=torch.float64)
         ).requires_grad_(True)
    fq = posttrain.fake_quantize(x, bits)
    q, params = quantize_columns(x.detach().numpy(), bits)
    np.testing.assert_allclose(fq.detach().numpy(), dequantize_columns(q, params), rtol=0, atol=1e-9 * 100)
    (fq * torch.arange(3.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(3.0, dtype=torch.float64).expand(500, 3))


def test_canonical_quats_keep_rotations():
    q = torch.randn(100, 4)
    c = posttrain.canonical_quats(q)
    assert (c[:, 0] >= 0).all()
    n = torch.nn.functional.normalize(q, dim=1)
    torch.testing.assert_close((c * n).sum(1).abs(), torch.ones(100))


def test_parse_bits_and_codebook_size():
    assert posttrain.parse_bits(None) == posttrain.DEFAULT_BITS
    assert posttrain.parse_bits("means=12, scales=6")["means"] == 12
    for bad in ("opacities=8", "means", "means=0", "means=x", "means=17"):
        with pytest.raises(SplatkitError, match="--bits"):
            posttrain.parse_bits(bad)
    assert posttrain.codebook_size_for(1000) == 256
    assert posttrain.codebook_size_for(200_000) == 1024
    assert posttrain.codebook_size_for(10 ** 8) == 4096


def test_quantize_aware_plugin_renders_the_stored_grid_and_trains_the_codebook():
    model = random_model(n=50)
    labels = torch.arange(50) % 4
    codebook = torch.randn(4, 9)
    bits = posttrain.DEFAULT_BITS
    plugin = QuantizeAwarePlugin(TrainConfig(batch_size=1), codebook, labels, bits)
    method = SimpleNamespace(model=model, aux_optimizers={}, base_lrs={"shN": 1e-3})
    plugin.setup(SimpleNamespace(method=method, device=torch.device("cpu")))
    assert not model.splats["shN"].requires_grad and "sh_codebook" in method.aux_optimizers
    p = plugin.render_params(0, model.activated())
    for name, value in (("means", p["means"]), ("scales", torch.log(p["scales"]))):
        q, params = quantize_columns(model.splats[name].detach().numpy(), bits[name])
        np.testing.assert_allclose(value.detach().numpy(), dequantize_columns(q, params), atol=1e-5)
    op255 = (p["opacities"] * 255).detach().numpy()
    np.testing.assert_allclose(np.round(op255), op255, atol=1e-3)
    q, params = quantize_columns(codebook.numpy(), bits["shN"])
    np.testing.assert_allclose(p["colors"][:, 1:].reshape(50, 9).detach().numpy(),
                               dequantize_columns(q, params)[labels.numpy()], atol=1e-6)
    p["colors"].sum().backward()
    assert plugin.codebook.grad is not None and (plugin.codebook.grad != 0).all()
    torch.testing.assert_close(model.splats["sh0"].grad, torch.ones(50, 1, 3))  # straight through
    plugin.on_save(SimpleNamespace(method=method))
    torch.testing.assert_close(model.splats["shN"].reshape(50, 9), plugin.codebook.detach()[labels])
    assert model.compacted().rvq["shN"].indices[:, 0].tolist() == labels.tolist()


# -- the chain on a tiny run ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(scene_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "run"
    cfg = TrainConfig(data=scene_dir, out=out, steps=40, seed=0, backend="torch", device="cpu", init_num_points=400,
                      sh_degree=1, sh_degree_interval=10, refine_start_iter=5, refine_every=10, refine_stop_iter=30,
                      checkpoint_every=0, log_every=10, preview_every=0)
    Trainer(cfg, quiet=True).train()
    return out


def test_compress_a_tiny_run(tiny_run, tmp_path):
    from splatkit.app import export_run
    from splatkit.eval.evaluate import evaluate_run
    from splatkit.train.run import Run

    out = tmp_path / "c"
    rep = compress_run(tiny_run, keep=0.5, prune_steps=8, qat_steps=8, out=out, quiet=True, stages=True)
    src_n = rep["gaussians_before"]
    assert rep["gaussians_after"] == round(0.5 * src_n)
    assert rep["ratio"] == pytest.approx(rep["plain_ply_bytes"] / (out / "export" / "splats.skz").stat().st_size)
    assert [s["stage"] for s in rep["stages"]][0] == "pruned" and len(rep["stages"]) == 5
    assert np.isfinite(rep["psnr_after"]) and np.isfinite(rep["psnr_before"])
    # The output is a run: eval scores what the .skz holds.
    run = Run.open(out)
    assert len(run.checkpoints()) == 1
    assert evaluate_run(out)["mean"]["psnr"] == pytest.approx(rep["psnr_after"], abs=1e-6)
    model, payload = run.load_model()
    skz = read_skz(out / "export" / "splats.skz")
    assert payload["compression"]["bits"] == posttrain.DEFAULT_BITS and skz.bits == posttrain.DEFAULT_BITS
    decoded = skz.decode()
    for name in ("means", "scales", "quats", "opacities", "sh0", "shN"):
        torch.testing.assert_close(model.splats[name].detach(), decoded[name], rtol=0, atol=0, msg=name)
    np.testing.assert_array_equal(model.rvq["shN"].indices, skz.shN.indices)
    # Exported again from the run: the same values, nothing quantised twice.
    again = read_skz(export_run(out, "skz", out=tmp_path / "again.skz").path)
    for name in ("means", "scales", "quats", "opacities", "sh0"):
        np.testing.assert_array_equal(getattr(again, name), getattr(skz, name), err_msg=name)
    np.testing.assert_array_equal(again.shN.codebooks, skz.shN.codebooks)
    # SOG takes the run's SH codebook as its palette: the same entries, no second clustering.
    from splatkit.export import read_sog

    sog = export_run(out, "sog")
    assert "the model's own SH codebook" in sog.notes
    sog_splats, _ = read_sog(sog.path)
    assert len(np.unique(sog_splats["shN"].reshape(len(sog_splats["shN"]), -1).numpy(), axis=0)) <= \
        skz.shN.codebooks.shape[1]


def test_compress_errors(tiny_run, tmp_path):
    with pytest.raises(SplatkitError, match="not both"):
        compress_run(tiny_run, keep=0.5, target_ratio=10, out=tmp_path / "a", quiet=True)
    with pytest.raises(SplatkitError, match="keep"):
        compress_run(tiny_run, keep=1.5, out=tmp_path / "b", quiet=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(SplatkitError, match="not empty"):
        compress_run(tiny_run, out=tmp_path / "full", quiet=True)
    with pytest.raises(SplatkitError, match="no such run"):
        compress_run(tmp_path / "missing", quiet=True)


def test_compress_cli_target_ratio(tiny_run, tmp_path, capsys):
    from splatkit.cli.main import main

    out = tmp_path / "cli"
    assert main(["compress", "--run", str(tiny_run), "--target-ratio", "8", "--prune-steps", "4", "--qat-steps", "4",
                 "--out", str(out), "--quiet"]) == 0
    rep = __import__("json").loads((out / "compress_report.json").read_text())
    assert 0 < rep["keep"] <= 1
    assert main(["compress", "--run", str(tiny_run), "--bits", "opacities=3", "--out", str(tmp_path / "x")]) == 2
    assert "--bits" in capsys.readouterr().err
