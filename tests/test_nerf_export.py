"""Exports of a NeRF run (issue #13): the coloured marching-cubes mesh (PLY / OBJ through open3d)
and Gaussians made from the NeRF's surface, on an analytic field (a sphere of known radius with a
known colour) and through the CLI on a tiny trained run; bad input gives one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from splatkit.cli.main import main
from splatkit.data.scene import Normalization
from splatkit.export import read_splats_file, splats_to_original_frame, write_splats
from splatkit.export.nerf_mesh import (DEFAULT_RESOLUTION, FALLBACK_THRESHOLD, auto_threshold, density_grid,
                                       extract_mesh, read_mesh, write_mesh)
import splatkit.export.nerf_to_gaussians as ng
from splatkit.export.nerf_to_gaussians import fit_sh, gaussians_from_nerf
from splatkit.models.hashgrid import HashGridConfig
from splatkit.models.nerf_field import NerfConfig, NerfModel
from splatkit.render.sh import SH_C0
from splatkit.errors import SplatkitError

RADIUS, SOFT, PEAK = 0.6, 0.01, 50.0
# Where PEAK / (1 + exp((r - RADIUS) / SOFT)) equals the threshold (the fallback: an empty occupancy grid).
ISO_RADIUS = RADIUS + SOFT * math.log(PEAK / FALLBACK_THRESHOLD - 1.0)


def _color(x: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.4 * x / RADIUS


def sphere_nerf(extra_sphere: bool = False) -> NerfModel:
    """A NerfModel whose density is a (soft) ball of RADIUS at the origin and whose colour is
    ``0.5 + 0.4 x / RADIUS`` at point x, whatever the direction (plus, with ``extra_sphere``, a
    small ball at (0.75, 0.75, 0.75))."""
    cfg = NerfConfig(aabb=[-1, -1, -1, 1, 1, 1], grid=HashGridConfig(
        n_levels=2, n_features_per_level=2, log2_hashmap_size=8, base_resolution=4, max_resolution=8),
        occ_resolution=16, march_steps=128)
    model = NerfModel(cfg)
    model.estimator.binaries.fill_(True)

    def base(x):
        sigma = PEAK / (1 + torch.exp((x.norm(dim=-1) - RADIUS) / SOFT))
        if extra_sphere:
            sigma = sigma + PEAK / (1 + torch.exp(((x - 0.75).norm(dim=-1) - 0.15) / SOFT))
        geo = torch.zeros(x.shape[0], 15)
        geo[:, :3] = x
        return sigma, geo

    class Colour(torch.nn.Module):
        def forward(self, inp):
            return torch.logit(_color(inp[:, :3]).clamp(1e-5, 1 - 1e-5))

    model.field.density_and_features = base  # density() and the colour queries go through it
    model.field.color_mlp = Colour()
    return model


def test_sphere_mesh_lies_on_the_sphere_with_outward_faces_and_right_colours(tmp_path):
    model = sphere_nerf()
    assert auto_threshold(model) == FALLBACK_THRESHOLD  # no occupancy values yet
    mesh = extract_mesh(model, resolution=40)
    assert mesh.num_faces > 1000 and mesh.threshold == FALLBACK_THRESHOLD
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(r - ISO_RADIUS).max() < mesh.cell  # within a lattice cell of the true iso-surface
    a, b, c = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    face_n = np.cross(b - a, c - a)
    assert ((face_n * (a + b + c)).sum(1) > 0).all()  # every triangle counter-clockwise seen from outside
    assert ((mesh.normals * mesh.vertices).sum(1) / r > 0.95).all()  # normals point out
    expected = _color(torch.as_tensor(mesh.vertices)).numpy()
    np.testing.assert_allclose(mesh.colors, expected, atol=1e-5)
    # Every edge shared by exactly two triangles: closed and manifold.
    edges = np.sort(np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()

    # In the user's frame, written as PLY and OBJ and read back by open3d.
    norm = Normalization(center=np.array([1.0, -2.0, 0.5]), scale=2.0,
                         rotation=np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    user = mesh.to_original_frame(norm)
    np.testing.assert_allclose(norm.from_original(user.vertices), mesh.vertices, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(user.vertices - norm.center, axis=1), r / 2.0, atol=1e-9)
    for name, col_tol in (("m.ply", 1 / 255), ("m.obj", 1e-5)):
        write_mesh(tmp_path / name, user)
        back = read_mesh(tmp_path / name)
        assert back.num_vertices == user.num_vertices and np.array_equal(back.faces, user.faces)
        np.testing.assert_allclose(back.vertices, user.vertices, atol=1e-5)
        np.testing.assert_allclose(back.colors, user.colors, atol=col_tol)
        np.testing.assert_allclose(back.normals, user.normals, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.obj", "m.ply"]  # no temporary left over

    with pytest.raises(SplatkitError, match="no surface at density threshold 1000"):
        extract_mesh(model, resolution=16, threshold=1000.0)
    with pytest.raises(SplatkitError, match=r"\.ply or \.obj"):
        write_mesh(tmp_path / "m.stl", mesh)


def test_keep_largest_component_and_occupancy_skipping():
    model = sphere_nerf(extra_sphere=True)
    both = extract_mesh(model, resolution=40)
    big = extract_mesh(model, resolution=40, keep_largest=1)
    assert big.num_faces < both.num_faces
    assert np.linalg.norm(big.vertices, axis=1).max() < ISO_RADIUS + big.cell  # the small ball is gone
    # Points far from occupied cells are not queried, and the surface is the same.
    full, _, _, n_all = density_grid(model, 24)
    model.estimator.binaries.zero_()
    model.estimator.binaries[0, 3:13, 3:13, 3:13] = True  # the cells around the big ball
    part, _, _, n_part = density_grid(model, 24)
    assert n_part < n_all / 2
    inner = np.abs(np.stack(np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij"))).max(0) < 0.7
    np.testing.assert_allclose(part[inner], full[inner])


def test_fit_sh_recovers_a_linear_view_dependence():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(32, 5, 3))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    # colour = 0.5 + c0 Y0 + c Y1(d) with Y1 = C1 (-y, z, -x): any degree-1 colour is fitted exactly.
    colors = 0.6 + 0.1 * d[..., :1] - 0.05 * d[..., 1:2] + np.zeros(3)
    coeffs, rms = fit_sh(colors, d, 1)
    assert coeffs.shape == (5, 4, 3) and rms < 0.01
    np.testing.assert_allclose(coeffs[:, 0] * SH_C0 + 0.5, 0.6, atol=0.01)


def test_nerf_gaussians_round_trip_through_ply_and_skz(tmp_path):
    model = sphere_nerf()
    mesh = extract_mesh(model, resolution=32)
    conv = gaussians_from_nerf(model, mesh)
    g = conv.model
    n = mesh.num_vertices
    assert g.num_gaussians == n and g.sh_degree == 0 and conv.rms < 1e-4
    colours = g.splats["sh0"][:, 0].detach() * SH_C0 + 0.5
    torch.testing.assert_close(colours, _color(g.splats["means"].detach()), atol=1e-4, rtol=0)
    alpha = torch.sigmoid(g.splats["opacities"].detach())
    assert float(alpha.min()) > 0.9  # an opaque ball
    # The discs: thin along the normal (the quaternion's z axis), as wide as the vertex spacing.
    s = torch.exp(g.splats["scales"].detach())
    assert (s[:, 2] < s[:, 0]).all() and float((s[:, 2] / s[:, 0]).median()) < 0.2
    assert float(s[:, 0].median()) == pytest.approx(ng.DISC_SCALE * mesh.cell, rel=0.5)
    q = torch.nn.functional.normalize(g.splats["quats"].detach(), dim=-1)
    w, x, y, z = q.unbind(-1)
    z_axis = torch.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], -1)
    torch.testing.assert_close(z_axis, torch.as_tensor(mesh.normals, dtype=torch.float32), atol=1e-5, rtol=0)

    norm = Normalization(center=np.array([0.5, 0.0, -1.0]), scale=1.5)
    original = splats_to_original_frame(dict(g.splats), norm, 0)
    for name in ("g.ply", "g.skz"):
        write_splats(tmp_path / name, name.split(".")[1], original, 0)
        back, degree = read_splats_file(tmp_path / name)
        assert degree == 0 and back["means"].shape == (n, 3)
        # .skz stores Morton order: match each Gaussian read back to the nearest written one.
        dist, ref = cKDTree(original["means"].numpy()).query(back["means"].numpy())
        assert dist.max() < 2e-3 and len(set(ref.tolist())) == n
        np.testing.assert_allclose(back["sh0"].numpy(), original["sh0"].numpy()[ref], atol=2e-3)
        np.testing.assert_allclose(torch.sigmoid(back["opacities"]).numpy(),
                                   torch.sigmoid(original["opacities"]).numpy()[ref], atol=0.01)


# A NeRF small enough to train a few steps in seconds on the 48x36 scene (tests/test_nerf.py).
TINY_VALUES = {"nerf_rays": 256, "nerf_log2_hashmap_size": 12, "nerf_levels": 4, "nerf_max_resolution": 64,
               "nerf_occ_resolution": 16, "nerf_occ_every": 4, "nerf_march_steps": 128, "checkpoint_every": 0,
               "keep_checkpoints": 0, "log_every": 4, "preview_every": 0}


def test_nerf_run_exports_mesh_and_gaussians_through_the_cli(scene_dir, tmp_path, capsys):
    from splatkit.train import Run

    run = tmp_path / "run"
    assert main(["train", "--data", str(scene_dir), "--method", "nerf", "--quiet", "--steps", "8", "--out", str(run),
                 "--set", *(f"{k}={v}" for k, v in TINY_VALUES.items())]) == 0
    model, _ = Run.open(run).load_model()
    vol, _, _, _ = density_grid(model, 20, threshold=0.0)  # every point queried
    thr = float(np.quantile(vol, 0.9))  # a barely trained field: some level it crosses
    mesh_args = ["--mesh-resolution", "20", "--mesh-threshold", f"{thr:.6g}"]
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--format", "mesh", *mesh_args, "--out", str(tmp_path / "m.obj")]) == 0
    out = capsys.readouterr().out
    assert "wrote a mesh of" in out and "density lattice: 20/20 slabs" in out and "ETA" in out
    assert read_mesh(tmp_path / "m.obj").num_faces > 0
    assert main(["export", "--run", str(run), "--format", "mesh", *mesh_args, "--quiet",
                 "--mesh-keep-largest", "1"]) == 0
    assert read_mesh(run / "export" / "mesh.ply").num_faces > 0

    capsys.readouterr()
    assert main(["export", "--run", str(run), "--format", "ply", *mesh_args, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Gaussians from the NeRF's surface" in out and "approximation" in out
    assert "with the NeRF" in out and "as Gaussians" in out  # the PSNR it costs
    assert main(["export", "--run", str(run), "--format", "skz", *mesh_args, "--quiet", "--no-bake-report",
                 "--nerf-sh-degree", "1"]) == 0
    splats, degree = read_splats_file(run / "export" / "splats.skz")
    n = int(capsys.readouterr().out.split("wrote ")[1].split()[0])
    assert degree == 1 and splats["means"].shape == (n, 3)
    assert main(["eval", "--run", str(run), "--splats", str(run / "export" / "splats.ply")]) == 0
    report = json.loads((run / "metrics_splats_ply.json").read_text())
    assert math.isfinite(report["mean"]["psnr"])

    # --finetune-steps: the converted Gaussians train as a 3DGS run inside the NeRF run, and the
    # file holds the trained ones (the training views' loss went down; the same count, no densification).
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--format", "ply", *mesh_args, "--quiet", "--no-bake-report",
                 "--finetune-steps", "20", "--out", str(tmp_path / "tuned.ply")]) == 0
    assert "then 20 3DGS steps" in capsys.readouterr().out
    tuned, _ = read_splats_file(tmp_path / "tuned.ply")
    plain, _ = read_splats_file(run / "export" / "splats.ply")
    assert tuned["means"].shape == plain["means"].shape and not np.allclose(tuned["opacities"], plain["opacities"])
    ft = run / "gaussians"
    assert json.loads((ft / "config.json").read_text())["method"] == "3dgs"
    log = [json.loads(line) for line in (ft / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 20
    from splatkit.methods.scoring import score_views, settings_for

    fine, _ = Run.open(ft).load_model()
    source = Run.open(run)
    scene, _, positions = source.views("train")
    settings = settings_for(source.config, device="cpu")
    from splatkit.app.export import _nerf_gaussians, NerfSurface

    converted, _, _ = _nerf_gaussians(model, NerfSurface(20, thr), 3)
    psnr = {label: np.mean([r["psnr"] for r in score_views(m, scene, positions, settings, composite_gt=False)[0]])
            for label, m in (("converted", converted), ("tuned", fine))}
    assert psnr["tuned"] > psnr["converted"] + 0.5  # fitted to the photos it trained on

    # Bad input: one line each.
    for args, message in ((["--format", "mesh", "--mesh-resolution", "12", "--mesh-threshold", "1e9"],
                           "no surface at density threshold"),
                          (["--format", "mesh", "--out", str(tmp_path / "m.stl")], ".ply or .obj"),
                          (["--format", "ply", "--mesh-threshold", "-1"], "positive density"),
                          (["--format", "ply", *mesh_args, "--finetune-steps", "-3"], "finetune-steps")):
        capsys.readouterr()
        assert main(["export", "--run", str(run), "--quiet", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_cli_defaults_match_the_module_and_the_threshold_follows_the_occupancy_grid():
    from splatkit.cli.main import Export

    e = Export(run_dir=None)
    assert (e.mesh_resolution, e.mesh_threshold) == (DEFAULT_RESOLUTION, None)
    model = sphere_nerf()
    est = model.estimator
    est.occs.copy_(torch.linspace(0.0, 1.0, est.occs.numel()))
    est.binaries.copy_((est.occs > 0.5).reshape(est.binaries.shape))
    assert auto_threshold(model) == pytest.approx(0.75 / model.step_size, rel=1e-3)
