"""3DGS PLY export: Inria layout, channel-major f_rest, original world frame, round trips, CLI errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import splatkit
from splatkit.cli.main import main
from splatkit.data.scene import Normalization
from splatkit.errors import SplatkitError
from splatkit.export import check_format, read_ply, splats_to_original_frame, write_ply
from splatkit.models.gaussians import GaussianModel
from splatkit.render.sh import eval_sh
from splatkit.train.config import TrainConfig

N = 40
DEGREE = 3
K = (DEGREE + 1) ** 2
NORM = Normalization(center=np.array([1.5, -2.0, 3.25]), scale=0.25)  # identity rotation


def random_splats(n: int = N, degree: int = DEGREE, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3.0,
        "quats": torch.randn(n, 4, generator=g) * 2.0,  # deliberately not unit length
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k - 1, 3, generator=g) * 0.1,
    }


def make_run(root: Path, splats: dict, degree: int = DEGREE, norm: Normalization = NORM,
             version: int | None = None) -> Path:
    """A run folder by the trainer's contract: config.json, split.json, one checkpoint."""
    run = root / "run"
    run.mkdir(parents=True)
    cfg = TrainConfig(data=root / "scene", sh_degree=degree).to_dict()
    cfg["splatkit_version"] = splatkit.__version__
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "split.json").write_text(json.dumps({"train": [1, 2, 3], "test": [0]}))
    ckpt = GaussianModel(splats, degree).save_checkpoint(run / "checkpoints" / "ckpt_000010.pt", 10,
                                                         normalization=norm.to_dict())
    if version is not None:
        payload = torch.load(ckpt, weights_only=False)
        payload["splatkit"]["version"] = version
        torch.save(payload, ckpt)
    return run


def expected_original(splats: dict, norm: Normalization) -> dict[str, np.ndarray]:
    """The export's parameters computed by hand for an identity-rotation normalisation."""
    q = splats["quats"].double().numpy()
    return {
        "means": splats["means"].double().numpy() / norm.scale + norm.center,
        "scales": splats["scales"].double().numpy() - math.log(norm.scale),
        "quats": q / np.linalg.norm(q, axis=1, keepdims=True),
        "opacities": splats["opacities"].double().numpy(),
        "sh0": splats["sh0"].double().numpy(),
        "shN": splats["shN"].double().numpy(),
    }


def test_cli_export_round_trip_in_original_frame(tmp_path):
    splats = random_splats()
    run = make_run(tmp_path, splats)
    out = tmp_path / "out" / "model.ply"
    assert main(["export", "--run", str(run), "--format", "ply", "--out", str(out)]) == 0
    back, degree = read_ply(out)
    assert degree == DEGREE
    want = expected_original(splats, NORM)
    for key, value in want.items():
        assert back[key].shape == value.shape, key
        np.testing.assert_allclose(back[key].numpy(), value, rtol=1e-6, atol=1e-5, err_msg=key)
    # The normalised frame's origin is the user's centre: a Gaussian moved there lands on it.
    assert NORM.to_original(np.zeros((1, 3)))[0] == pytest.approx(NORM.center)
    # What read_ply returns loads straight into the model class.
    assert GaussianModel(back, degree).num_gaussians == N


def test_default_output_path_and_no_temp_files(tmp_path):
    run = make_run(tmp_path, random_splats())
    assert main(["export", "--run", str(run)]) == 0
    out = run / "export" / "splats.ply"
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["splats.ply"]  # atomic write left nothing else


def test_ply_header_is_the_inria_layout(tmp_path):
    from plyfile import PlyData

    path = tmp_path / "a.ply"
    write_ply(path, random_splats(), DEGREE)
    ply = PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    assert [el.name for el in ply.elements] == ["vertex"]
    names = [p.name for p in ply["vertex"].properties]
    want = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * (K - 1))]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == want
    assert len(names) == 62  # what every degree-3 3DGS file has
    assert all(p.val_dtype == "f4" for p in ply["vertex"].properties)
    assert np.all(ply["vertex"]["nx"] == 0) and np.all(ply["vertex"]["nz"] == 0)
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")


def test_f_rest_is_channel_major(tmp_path):
    from plyfile import PlyData

    splats = random_splats(n=3)
    n_rest = K - 1
    # shN[n, k, c] = 1000 n + 100 c + k: every (splat, coefficient, channel) distinct.
    n_idx, k_idx, c_idx = torch.meshgrid(torch.arange(3.0), torch.arange(float(n_rest)), torch.arange(3.0),
                                         indexing="ij")
    splats["shN"] = 1000 * n_idx + 100 * c_idx + k_idx
    path = tmp_path / "sh.ply"
    write_ply(path, splats, DEGREE)
    v = PlyData.read(str(path))["vertex"]
    for n in range(3):
        for c in range(3):
            for k in range(n_rest):
                assert v[f"f_rest_{c * n_rest + k}"][n] == 1000 * n + 100 * c + k
    back, _ = read_ply(path)
    assert torch.equal(back["shN"], splats["shN"])


def test_gsplat_exporter_writes_the_same_sh_order(tmp_path):
    """gsplat's own exporter agrees with us on every shared property (it omits nx ny nz)."""
    from gsplat import export_splats
    from plyfile import PlyData

    splats = random_splats(n=5)
    ours = tmp_path / "ours.ply"
    theirs = tmp_path / "gsplat.ply"
    write_ply(ours, splats, DEGREE)
    export_splats(splats["means"], splats["scales"], splats["quats"], splats["opacities"],
                  splats["sh0"], splats["shN"], format="ply", save_to=str(theirs))
    a = PlyData.read(str(ours))["vertex"]
    b = PlyData.read(str(theirs))["vertex"]
    shared = [p.name for p in b.properties]
    assert set(shared) == {p.name for p in a.properties} - {"nx", "ny", "nz"}
    for name in shared:
        if name.startswith("rot_"):
            continue  # gsplat writes the raw quaternion, we write it normalised
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_rotated_normalisation_rotates_orientations_and_sh():
    R = Rotation.from_euler("xyz", [0.4, -1.2, 2.1]).as_matrix()
    norm = Normalization(center=np.array([0.5, 1.0, -2.0]), scale=2.0, rotation=R)
    splats = random_splats(n=8, degree=DEGREE)
    out = splats_to_original_frame(splats, norm, DEGREE)

    np.testing.assert_allclose(norm.from_original(out["means"].numpy()), splats["means"].double().numpy(),
                               atol=1e-6)

    def covariance(quats, log_scales):
        q = (quats / quats.norm(dim=-1, keepdim=True)).numpy()
        Rq = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy is scalar-last
        S2 = np.exp(2 * log_scales.numpy())
        return np.einsum("nij,nj,nkj->nik", Rq, S2, Rq)

    cov_ours = covariance(splats["quats"].double(), splats["scales"].double())
    cov_user = covariance(out["quats"], out["scales"])
    # x_user = R^T x_ours / s, so covariances map with R^T (.) R / s^2.
    np.testing.assert_allclose(cov_user, np.einsum("ji,njk,kl->nil", R, cov_ours, R) / 4.0, atol=1e-10)

    # The colour seen along a user-frame direction d is what the model showed along R d.
    d_user = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sh_ours = torch.cat([splats["sh0"], splats["shN"]], dim=1).double()
    sh_user = torch.cat([out["sh0"], out["shN"]], dim=1)
    torch.testing.assert_close(eval_sh(DEGREE, d_user, sh_user),
                               eval_sh(DEGREE, d_user @ torch.from_numpy(R).T, sh_ours), atol=1e-10, rtol=0)


def test_identity_rotation_leaves_sh_untouched():
    splats = random_splats(n=4)
    out = splats_to_original_frame(splats, NORM, DEGREE)
    assert torch.equal(out["shN"], splats["shN"].double())
    assert torch.equal(out["sh0"], splats["sh0"].double())


def test_improper_rotation_is_refused():
    norm = Normalization(rotation=np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(SplatkitError, match="proper rotation"):
        splats_to_original_frame(random_splats(n=2), norm, DEGREE)


def test_non_finite_gaussians_are_dropped_and_counted(tmp_path):
    splats = random_splats(n=6, degree=1)
    splats["means"][2, 0] = float("nan")
    splats["shN"][4, 1, 2] = float("inf")
    res = write_ply(tmp_path / "x.ply", splats, 1)
    assert (res.num_written, res.num_dropped) == (4, 2)
    back, degree = read_ply(tmp_path / "x.ply")
    assert degree == 1
    keep = [0, 1, 3, 5]
    np.testing.assert_array_equal(back["means"].numpy(), splats["means"][keep].numpy())


def test_degree_zero_round_trip(tmp_path):
    splats = random_splats(n=5, degree=0)
    write_ply(tmp_path / "d0.ply", splats, 0)
    back, degree = read_ply(tmp_path / "d0.ply")
    assert degree == 0 and back["shN"].shape == (5, 0, 3)
    assert torch.equal(back["sh0"], splats["sh0"])


def test_read_ply_rejects_other_plys(tmp_path):
    from plyfile import PlyData, PlyElement

    pts = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(SplatkitError, match="not a 3DGS PLY"):
        read_ply(tmp_path / "points.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(SplatkitError, match="not a readable PLY"):
        read_ply(tmp_path / "junk.ply")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_run_folder_exits_2(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "a.ply")]) == 2
    assert "no such run folder" in _one_line_error(capsys)


def test_checkpoint_from_another_version_exits_2(tmp_path, capsys):
    run = make_run(tmp_path, random_splats(), version=999)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "a.ply")]) == 2
    assert "version 999 is not supported" in _one_line_error(capsys)
    assert not (tmp_path / "a.ply").exists()


def test_unknown_format_exits_2_naming_the_available_ones(tmp_path, capsys):
    run = make_run(tmp_path, random_splats())
    assert main(["export", "--run", str(run), "--format", "obj", "--out", str(tmp_path / "a.x")]) == 2
    err = _one_line_error(capsys)
    assert "unknown export format 'obj'" in err and "skz" in err
    assert not (tmp_path / "a.x").exists()


def test_unknown_format_and_wrong_suffix(tmp_path):
    with pytest.raises(SplatkitError, match="unknown export format 'obj'"):
        check_format("obj")
    run = make_run(tmp_path, random_splats())
    from splatkit.app import export_run

    with pytest.raises(SplatkitError, match="must end in .ply"):
        export_run(run, "ply", out=tmp_path / "model.txt")
