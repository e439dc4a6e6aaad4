""".splat, compressed PLY and .spz: round trips within each format's precision, the bytes as
independent readers (numpy, plyfile, gsply) see them, bad files, export_run and read_splats_file."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from splatkit.data.scene import Normalization
from splatkit.errors import SplatkitError
from splatkit.app import export_run
from splatkit.render.sh import SH_C0
from splatkit.export import (DEFAULT_NAMES, check_format, read_ply_compressed, read_splat,
                             read_splats_file, read_spz, write_ply, write_ply_compressed, write_splat, write_splats,
                             write_spz)
from splatkit.export.spz import rdf_rub_sh_signs

N = 600  # three chunks of the compressed PLY, the last one partial (88)
DEGREE = 3
RDF_TO_RUB = np.array([1.0, -1.0, -1.0])


def random_splats(n: int = N, degree: int = DEGREE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Values inside every format's representable range (so only quantisation error remains)."""
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2

    def uniform(*shape, lo, hi):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)

    return {
        "means": torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.0,
        "scales": uniform(n, 3, lo=-6.0, hi=1.0),
        "quats": torch.randn(n, 4, generator=g, dtype=torch.float64) * 3.0,  # not unit length
        "opacities": uniform(n, lo=-4.0, hi=4.0),
        "sh0": uniform(n, 1, 3, lo=-1.6, hi=1.6),  # colour 0.05..0.95: not clipped by .splat
        "shN": uniform(n, k - 1, 3, lo=-0.9, hi=0.9),  # inside spz's [-1, 1)
    }


def np_(splats: dict) -> dict[str, np.ndarray]:
    out = {k: v.detach().double().numpy() for k, v in splats.items()}
    out["quats"] = out["quats"] / np.linalg.norm(out["quats"], axis=1, keepdims=True)
    return out


def match_rows(decoded_means: np.ndarray, means: np.ndarray) -> np.ndarray:
    """For each decoded Gaussian the index of the original nearest to it (asserted one-to-one)."""
    d2 = ((decoded_means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    idx = d2.argmin(axis=1)
    assert len(np.unique(idx)) == len(means), "decoded Gaussians are not a permutation of the originals"
    return idx


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def quat_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest component difference between unit quaternions, up to the sign (q and -q are one rotation)."""
    return np.minimum(np.abs(a - b).max(axis=1), np.abs(a + b).max(axis=1))


# -- .splat -------------------------------------------------------------------------------------
def test_splat_round_trip_within_8_bit_precision(tmp_path):
    splats = random_splats()
    res = write_splat(tmp_path / "a.splat", splats, DEGREE)
    assert (res.num_written, res.num_dropped, res.sh_degree, res.format) == (N, 0, 0, "splat")
    assert "SH" in res.notes
    back, degree = read_splat(tmp_path / "a.splat")
    assert degree == 0 and back["shN"].shape == (N, 0, 3) and back["sh0"].shape == (N, 1, 3)
    b, want = np_(back), np_(splats)
    idx = match_rows(b["means"], want["means"])
    np.testing.assert_allclose(b["means"], want["means"][idx], rtol=1e-6, atol=1e-6)  # float32
    np.testing.assert_allclose(b["scales"], want["scales"][idx], atol=1e-5)  # float32 exp/log
    colour_err = np.abs((0.5 + SH_C0 * b["sh0"]) - (0.5 + SH_C0 * want["sh0"][idx]))
    assert colour_err.max() <= 0.5 / 255 + 1e-9
    assert np.abs(sigmoid(b["opacities"]) - sigmoid(want["opacities"][idx])).max() <= 0.5 / 255 + 1e-9
    # 8 bits per component, renormalised: within about one step of 1/128.
    assert quat_error(b["quats"], want["quats"][idx]).max() < 1.5 / 128


def test_splat_bytes_read_with_a_numpy_structured_dtype(tmp_path):
    splats = random_splats(n=200)
    write_splat(tmp_path / "a.splat", splats, DEGREE)
    raw = (tmp_path / "a.splat").read_bytes()
    rec_t = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("sx", "<f4"), ("sy", "<f4"), ("sz", "<f4"),
                      ("r", "u1"), ("g", "u1"), ("b", "u1"), ("a", "u1"),
                      ("rw", "u1"), ("rx", "u1"), ("ry", "u1"), ("rz", "u1")])
    assert rec_t.itemsize == 32 and len(raw) == 32 * 200
    rec = np.frombuffer(raw, dtype=rec_t)
    want = np_(splats)
    pos = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float64)
    idx = match_rows(pos, want["means"])
    assert np.array_equal(pos, want["means"][idx].astype(np.float32))
    scale = np.stack([rec["sx"], rec["sy"], rec["sz"]], axis=1)
    np.testing.assert_allclose(scale, np.exp(want["scales"][idx]), rtol=1e-6)
    rgb = np.stack([rec["r"], rec["g"], rec["b"]], axis=1).astype(np.float64)
    np.testing.assert_array_equal(rgb, np.round((0.5 + SH_C0 * want["sh0"][idx, 0]) * 255))
    np.testing.assert_array_equal(rec["a"], np.round(sigmoid(want["opacities"][idx]) * 255))
    rot = (np.stack([rec["rw"], rec["rx"], rec["ry"], rec["rz"]], axis=1).astype(np.float64) - 128) / 128
    assert np.abs(rot - want["quats"][idx]).max() <= 1 / 128  # w x y z, not renormalised
    # convert.py's order: by -exp(s0 + s1 + s2) / (1 + exp(-opacity)), most important first.
    key = -np.exp(want["scales"].sum(axis=1)) * sigmoid(want["opacities"])
    assert np.all(np.diff(key[idx]) >= 0)


def test_splat_drops_non_finite_rows_and_refuses_empty_sets(tmp_path):
    splats = random_splats(n=10)
    splats["means"][3, 1] = float("nan")
    splats["scales"][5, 0] = 200.0  # exp() overflows float32
    res = write_splat(tmp_path / "a.splat", splats, DEGREE)
    assert (res.num_written, res.num_dropped) == (8, 2)
    assert (tmp_path / "a.splat").stat().st_size == 8 * 32
    empty = {k: v[:0] for k, v in splats.items()}
    for writer, name in [(write_splat, "e.splat"), (write_ply_compressed, "e.ply"), (write_spz, "e.spz")]:
        with pytest.raises(SplatkitError, match="nothing to write"):
            writer(tmp_path / name, empty, DEGREE)
        assert not (tmp_path / name).exists()


# -- compressed PLY -----------------------------------------------------------------------------
def morton_code(cell: np.ndarray) -> np.ndarray:
    """Bit-by-bit 3-D Morton interleave (x lowest), written independently of the exporter."""
    code = np.zeros(len(cell), dtype=np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((cell[:, axis].astype(np.int64) >> bit) & 1) << (3 * bit + axis)
    return code


def test_compressed_ply_layout_read_with_plyfile(tmp_path):
    from plyfile import PlyData

    splats = random_splats()
    path = tmp_path / "a.compressed.ply"
    res = write_ply_compressed(path, splats, DEGREE)
    assert (res.num_written, res.sh_degree, res.format) == (N, DEGREE, "ply-compressed")
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    ply = PlyData.read(str(path))
    assert [el.name for el in ply.elements] == ["chunk", "vertex", "sh"]
    chunk, vertex, sh = ply["chunk"], ply["vertex"], ply["sh"]
    assert [p.name for p in chunk.properties] == [
        "min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
        "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
        "min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
    assert [p.name for p in vertex.properties] == ["packed_position", "packed_rotation", "packed_scale",
                                                   "packed_color"]
    assert [p.name for p in sh.properties] == [f"f_rest_{i}" for i in range(45)]
    assert {p.val_dtype for p in chunk.properties} == {"f4"}
    assert {p.val_dtype for p in vertex.properties} == {"u4"}
    assert {p.val_dtype for p in sh.properties} == {"u1"}
    assert (len(chunk.data), len(vertex.data), len(sh.data)) == (3, N, N)

    # Decode positions and colours by hand from the chunk bounds.
    want = np_(splats)
    ci = np.arange(N) // 256
    pp = vertex["packed_position"].astype(np.int64)
    frac = np.stack([(pp >> 21) & 2047, (pp >> 11) & 1023, pp & 2047], axis=1) / np.array([2047, 1023, 2047])
    lo = np.stack([chunk["min_x"], chunk["min_y"], chunk["min_z"]], axis=1).astype(np.float64)[ci]
    hi = np.stack([chunk["max_x"], chunk["max_y"], chunk["max_z"]], axis=1).astype(np.float64)[ci]
    pos = lo + frac * (hi - lo)
    idx = match_rows(pos, want["means"])
    assert np.all(np.abs(pos - want["means"][idx]) <= (hi - lo) / np.array([2047, 1023, 2047]) / 2 + 1e-6)
    # Each chunk's bounds are exactly its members' extremes.
    for c in range(3):
        members = want["means"][idx[ci == c]].astype(np.float32)
        np.testing.assert_array_equal(lo[ci == c][0], members.min(axis=0))
        np.testing.assert_array_equal(hi[ci == c][0], members.max(axis=0))
    pc = vertex["packed_color"].astype(np.int64)
    alpha = (pc & 255) / 255.0
    assert np.abs(alpha - sigmoid(want["opacities"][idx])).max() <= 0.5 / 255 + 1e-7
    red = chunk["min_r"][ci] + ((pc >> 24) & 255) / 255.0 * (chunk["max_r"][ci] - chunk["min_r"][ci])
    assert np.abs(red - (0.5 + SH_C0 * want["sh0"][idx, 0, 0])).max() <= 0.5 / 255 + 1e-6
    # f_rest is channel-major like the plain PLY: f_rest_{c*15+k} holds shN[:, k, c].
    f_rest_16 = ((sh["f_rest_16"].astype(np.float64) + 0.5) / 256 - 0.5) * 8
    assert np.abs(f_rest_16 - want["shN"][idx, 1, 1]).max() <= 8 / 256 / 2 + 1e-9
    # Morton order over the scene's float32 bounding box, 10 bits per axis.
    p32 = want["means"].astype(np.float32).astype(np.float64)
    cell = np.minimum(1023, (p32 - p32.min(0)) * (1024 / (p32.max(0) - p32.min(0)))).astype(np.int64)
    codes = morton_code(cell)[idx]
    assert np.all(np.diff(codes) >= 0) and len(np.unique(codes)) > 500


def test_compressed_ply_round_trip_within_chunk_precision(tmp_path):
    from plyfile import PlyData

    splats = random_splats()
    path = tmp_path / "a.compressed.ply"
    write_ply_compressed(path, splats, DEGREE)
    back, degree = read_ply_compressed(path)
    assert degree == DEGREE and back["shN"].shape == (N, 15, 3)
    b, want = np_(back), np_(splats)
    idx = match_rows(b["means"], want["means"])
    chunk = PlyData.read(str(path))["chunk"]
    ci = np.arange(N) // 256
    steps = np.array([2047, 1023, 2047])

    def span(prefix):
        names = [f"{prefix}{a}" for a in "xyz"]
        lo = np.stack([chunk[f"min_{n}"] for n in names], axis=1)
        hi = np.stack([chunk[f"max_{n}"] for n in names], axis=1)
        return (hi - lo).astype(np.float64)[ci]

    assert np.all(np.abs(b["means"] - want["means"][idx]) <= span("") / steps / 2 + 1e-5)
    assert np.all(np.abs(b["scales"] - want["scales"][idx]) <= span("scale_") / steps / 2 + 1e-5)
    assert np.abs(sigmoid(b["opacities"]) - sigmoid(want["opacities"][idx])).max() <= 0.5 / 255 + 1e-6
    assert np.abs(SH_C0 * (b["sh0"] - want["sh0"][idx])).max() <= 1.0 / 255 / 2 + 1e-6
    # 10 bits over [-1/sqrt2, 1/sqrt2] for the smallest three, the largest recomputed.
    assert quat_error(b["quats"], want["quats"][idx]).max() < 3e-3
    assert np.abs(b["shN"] - want["shN"][idx]).max() <= 8 / 256 / 2 + 1e-9


def test_compressed_ply_without_sh_has_two_elements_and_degenerate_chunks_stay_finite(tmp_path):
    from plyfile import PlyData

    splats = random_splats(n=300, degree=0)
    splats["means"][:, 2] = 1.25  # a flat scene: zero z range in every chunk
    splats["scales"][:, 1] = -2.0
    path = tmp_path / "flat.compressed.ply"
    write_ply_compressed(path, splats, 0)
    assert [el.name for el in PlyData.read(str(path)).elements] == ["chunk", "vertex"]
    back, degree = read_ply_compressed(path)
    assert degree == 0 and back["shN"].shape == (300, 0, 3)
    assert torch.isfinite(back["means"]).all() and torch.all(back["means"][:, 2] == 1.25)
    assert torch.all(back["scales"][:, 1] == -2.0)


def test_compressed_ply_refuses_sh_degree_4(tmp_path):
    with pytest.raises(SplatkitError, match="SH degree 0 to 3"):
        write_ply_compressed(tmp_path / "a.ply", random_splats(n=5, degree=4), 4)


# -- spz ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [2, 3])
def test_spz_round_trip_within_spec_precision(tmp_path, version):
    splats = random_splats()
    res = write_spz(tmp_path / "a.spz", splats, DEGREE, version=version)
    assert (res.num_written, res.sh_degree, res.format) == (N, DEGREE, "spz") and "RUB" in res.notes
    back, degree = read_spz(tmp_path / "a.spz")
    assert degree == DEGREE
    b, want = np_(back), np_(splats)  # spz keeps the order
    assert np.abs(b["means"] - want["means"]).max() <= 0.5 / 4096 + 1e-6
    assert np.abs(b["scales"] - want["scales"]).max() <= 0.5 / 16 + 1e-9
    assert np.abs(sigmoid(b["opacities"]) - sigmoid(want["opacities"])).max() <= 0.5 / 255 + 1e-9
    assert np.abs(b["sh0"] - want["sh0"]).max() <= 0.5 / (0.15 * 255) + 1e-9
    # v3: 9 bits + sign over [0, 1/sqrt2]; v2: x y z in steps of 1/127.5 and w recomputed.
    # (v2's w = sqrt(1 - |xyz|^2) is ill-conditioned near w = 0: up to ~0.12 there, why v3 exists.)
    assert quat_error(b["quats"], want["quats"]).max() < (3e-3 if version == 3 else 0.125)
    sh_err = np.abs(b["shN"] - want["shN"])
    assert sh_err[:, :3].max() <= 4.5 / 128 + 1e-9  # band 1: buckets of 8 steps of 1/128
    assert sh_err[:, 3:].max() <= 8.5 / 128 + 1e-9  # bands 2, 3: buckets of 16


def test_spz_bytes_follow_the_spec(tmp_path):
    splats = random_splats(n=50)
    write_spz(tmp_path / "a.spz", splats, DEGREE)
    raw = gzip.decompress((tmp_path / "a.spz").read_bytes())
    magic, version, n, degree, bits, flags, reserved = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, degree, bits, flags, reserved) == (0x5053474E, 3, 50, 3, 12, 0, 0)
    assert raw[:4] == b"NGSP"
    assert len(raw) == 16 + 50 * (9 + 1 + 3 + 3 + 4 + 45)
    want = np_(splats)
    body = np.frombuffer(raw, dtype=np.uint8, offset=16)
    pos = body[:450].reshape(50, 3, 3).astype(np.int64)
    fixed = pos[..., 0] + (pos[..., 1] << 8) + (pos[..., 2] << 16)
    fixed -= (fixed >= 1 << 23) * (1 << 24)
    # The file holds RUB axes: y and z negated from our (PLY, RDF) frame.
    np.testing.assert_array_equal(fixed, np.round(want["means"] * RDF_TO_RUB * 4096))
    alphas = body[450:500]
    np.testing.assert_array_equal(alphas, np.round(sigmoid(want["opacities"]) * 255))
    colours = body[500:650].reshape(50, 3)
    np.testing.assert_array_equal(colours, np.round(want["sh0"][:, 0] * 0.15 * 255 + 127.5))
    scales = body[650:800].reshape(50, 3)
    np.testing.assert_array_equal(scales, np.round((want["scales"] + 10) * 16))
    rot = body[800:1000].reshape(50, 4).copy().view("<u4")[:, 0]
    largest = rot >> 30
    q_xyzw_rub = (want["quats"] * np.array([1, 1, -1, -1]))[:, [1, 2, 3, 0]]
    np.testing.assert_array_equal(largest, np.abs(q_xyzw_rub).argmax(axis=1))
    sh = body[1000:].reshape(50, 15, 3)
    assert np.all((sh[:, :3] % 8 == 0) | (sh[:, :3] == 255)) and np.all((sh[:, 3:] % 16 == 0) | (sh[:, 3:] == 255))


def test_spz_sh_flip_matches_the_spz_library_table():
    # spz's coordinateConverter flipSh for RDF -> RUB (x = 1, y = z = -1), degrees 1-3.
    library = [-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1]
    assert rdf_rub_sh_signs(3).tolist() == library
    # Degree 4 from the basis parity; Y_4^4 ~ x^4 - 6x^2y^2 + y^4 is even (the library lists 'y').
    assert rdf_rub_sh_signs(4).tolist() == library + [-1, 1, -1, 1, 1, -1, 1, -1, 1]


def test_spz_rub_coordinates_and_fractional_bits_for_large_scenes(tmp_path):
    splats = random_splats(n=20)
    write_spz(tmp_path / "a.spz", splats, DEGREE)
    raw_frame, _ = read_spz(tmp_path / "a.spz", coordinates="rub")
    ours, _ = read_spz(tmp_path / "a.spz")
    np.testing.assert_allclose(raw_frame["means"].numpy(), ours["means"].numpy() * RDF_TO_RUB)
    big = random_splats(n=20)
    big["means"][0] = torch.tensor([5000.0, -3.0, 2.0])  # 5000 * 4096 overflows 24 bits
    write_spz(tmp_path / "big.spz", big, DEGREE)
    bits = gzip.decompress((tmp_path / "big.spz").read_bytes())[13]
    assert bits == 10  # 5000 * 2^10 < 2^23 <= 5000 * 2^11
    back, _ = read_spz(tmp_path / "big.spz")
    assert np.abs(back["means"].numpy() - big["means"].numpy()).max() <= 0.5 / 1024 + 1e-3


# -- gsply as an independent reader (and writer) ------------------------------------------------
GSPLY_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, gsply
    d = sys.argv[1]
    def dump(name, g):
        np.savez(f"{d}/{name}.npz", means=g.means, scales=g.scales, quats=g.quats,
                 opacities=g.opacities, sh0=g.sh0, shN=g.shN)
    dump("g_plain", gsply.plyread(f"{d}/a.ply"))
    dump("g_compressed", gsply.plyread(f"{d}/a.compressed.ply"))
    dump("g_spz", gsply.read_spz(f"{d}/a.spz"))
    src = np.load(f"{d}/src.npz")
    data = gsply.GSData.from_arrays(src["means"], src["scales"], src["quats"], src["opacities"], src["sh0"],
                                    src["shN"], format="ply")
    gsply.write_spz(f"{d}/g3.spz", data, version=3)
    gsply.write_spz(f"{d}/g4.spz", data, version=4)
    gsply.plywrite(f"{d}/g.compressed.ply", data, compressed=True)
    dump("g3_spz", gsply.read_spz(f"{d}/g3.spz"))
    dump("g4_spz", gsply.read_spz(f"{d}/g4.spz"))
    dump("g_own_compressed", gsply.plyread(f"{d}/g.compressed.ply"))
""")


@pytest.fixture(scope="module")
def gsply_run(tmp_path_factory):
    pytest.importorskip("gsply", reason="gsply is not installed (pip install gsply)")
    d = tmp_path_factory.mktemp("gsply")
    splats = random_splats(n=300)
    write_ply(d / "a.ply", splats, DEGREE)
    write_ply_compressed(d / "a.compressed.ply", splats, DEGREE)
    write_spz(d / "a.spz", splats, DEGREE)
    src = {k: v.numpy().astype(np.float32) for k, v in splats.items()}
    src["sh0"] = src["sh0"][:, 0]
    np.savez(d / "src.npz", **src)
    # Numba's JIT takes longer to compile than these small files take to decode uncompiled.
    env = {**__import__("os").environ, "NUMBA_DISABLE_JIT": "1"}
    proc = subprocess.run([sys.executable, "-c", GSPLY_SCRIPT, str(d)], env=env, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode:
        pytest.fail(f"gsply failed:\n{proc.stderr[-2000:]}")

    def load(name):
        return dict(np.load(d / f"{name}.npz"))

    return d, splats, load


def test_gsply_reads_our_plain_ply_exactly(gsply_run):
    _, splats, load = gsply_run
    g = load("g_plain")
    want = {k: v.numpy() for k, v in splats.items()}
    for key in ("means", "scales", "quats", "opacities"):
        np.testing.assert_allclose(g[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(g["sh0"], want["sh0"][:, 0], atol=1e-6)
    np.testing.assert_allclose(g["shN"], want["shN"], atol=1e-6)


def test_gsply_decodes_our_compressed_ply_like_our_reader(gsply_run):
    d, splats, load = gsply_run
    g = load("g_compressed")
    ours, _ = read_ply_compressed(d / "a.compressed.ply")
    o = {k: v.numpy().astype(np.float64) for k, v in ours.items()}
    for key in ("means", "scales"):
        np.testing.assert_allclose(g[key], o[key], atol=1e-5, err_msg=key)
    np.testing.assert_allclose(g["sh0"], o["sh0"][:, 0], atol=1e-4)
    np.testing.assert_allclose(sigmoid(g["opacities"]), sigmoid(o["opacities"]), atol=1e-3)
    assert quat_error(g["quats"] / np.linalg.norm(g["quats"], axis=1, keepdims=True), o["quats"]).max() < 1e-5
    # gsply reads every byte as (b - 127.5) / 32; splat-transform reads 0 and 255 as -4 and 4.
    np.testing.assert_allclose(g["shN"], o["shN"], atol=1e-6)
    # and both within the chunk precision of the originals
    idx = match_rows(o["means"], np_(splats)["means"])
    assert np.abs(g["shN"] - splats["shN"].numpy()[idx]).max() <= 8 / 256 / 2 + 1e-6


def test_gsply_reads_our_spz_in_the_files_rub_axes(gsply_run):
    d, splats, load = gsply_run
    g = load("g_spz")
    want = np_(splats)
    # gsply applies no axis conversion: it sees the RUB values the file holds.
    assert np.abs(g["means"] - want["means"] * RDF_TO_RUB).max() <= 0.5 / 4096 + 1e-6
    assert quat_error(g["quats"], want["quats"] * np.array([1, 1, -1, -1])).max() < 3e-3
    signs = rdf_rub_sh_signs(DEGREE)[None, :, None]
    assert np.abs(g["shN"] - want["shN"] * signs).max() <= 8.5 / 128 + 1e-6
    assert np.abs(g["scales"] - want["scales"]).max() <= 1 / 32 + 1e-6
    assert np.abs(g["sh0"] - want["sh0"][:, 0]).max() <= 0.5 / (0.15 * 255) + 1e-6
    raw, _ = read_spz(d / "a.spz", coordinates="rub")
    np.testing.assert_allclose(raw["means"].numpy(), g["means"], atol=1e-6)


@pytest.mark.parametrize("name", ["g3_spz", "g4_spz"])
def test_we_read_gsply_spz_v3_and_v4(gsply_run, name):
    d, _, load = gsply_run
    g = load(name)
    ours, degree = read_spz(d / f"{name[:2]}.spz", coordinates="rub")  # gsply writes the PLY frame as is
    assert degree == DEGREE
    o = {k: v.numpy() for k, v in ours.items()}
    np.testing.assert_allclose(o["means"], g["means"], atol=1e-6)
    np.testing.assert_allclose(o["scales"], g["scales"], atol=1e-6)
    np.testing.assert_allclose(o["sh0"][:, 0], g["sh0"], atol=1e-5)
    np.testing.assert_allclose(o["shN"], g["shN"], atol=1e-6)
    np.testing.assert_allclose(sigmoid(o["opacities"]), sigmoid(g["opacities"]), atol=1e-5)
    assert quat_error(o["quats"], g["quats"]).max() < 1e-5


def test_we_read_gsply_compressed_ply(gsply_run):
    d, _, load = gsply_run
    g = load("g_own_compressed")
    ours, degree = read_splats_file(d / "g.compressed.ply")
    assert degree == DEGREE
    o = {k: v.numpy() for k, v in ours.items()}
    for key in ("means", "scales"):
        np.testing.assert_allclose(o[key], g[key], atol=1e-5, err_msg=key)
    np.testing.assert_allclose(o["sh0"][:, 0], g["sh0"], atol=1e-4)
    assert quat_error(o["quats"], g["quats"] / np.linalg.norm(g["quats"], axis=1, keepdims=True)).max() < 1e-5


# -- bad files ----------------------------------------------------------------------------------
def test_bad_files_give_one_line_errors(tmp_path):
    splats = random_splats(n=40)
    write_splat(tmp_path / "a.splat", splats, DEGREE)
    write_ply_compressed(tmp_path / "a.compressed.ply", splats, DEGREE)
    write_spz(tmp_path / "a.spz", splats, DEGREE)

    cases = {}
    good = (tmp_path / "a.splat").read_bytes()
    cases["cut.splat"] = (good[:-5], "not a whole number of 32-byte")
    cases["empty.splat"] = (b"", "no Gaussians")
    good = (tmp_path / "a.compressed.ply").read_bytes()
    cases["cut.compressed.ply"] = (good[:-100], "not a readable PLY")
    header_end = good.index(b"end_header")
    cases["count.compressed.ply"] = (good[:header_end].replace(b"element chunk 1", b"element chunk 2")
                                     + good[header_end:] + b"\0" * 72, "count mismatch")
    spz_raw = gzip.decompress((tmp_path / "a.spz").read_bytes())
    cases["magic.spz"] = (gzip.compress(b"XXXX" + spz_raw[4:]), "magic")
    cases["cut.spz"] = ((tmp_path / "a.spz").read_bytes()[:-20], "gzip stream is damaged or truncated")
    cases["short.spz"] = (gzip.compress(spz_raw[:-7]), "truncated or count mismatch")
    more = spz_raw[:8] + struct.pack("<I", 39) + spz_raw[12:]
    cases["count.spz"] = (gzip.compress(more), "count mismatch")
    zero = spz_raw[:8] + struct.pack("<I", 0) + spz_raw[12:16]
    cases["zero.spz"] = (gzip.compress(zero), "no Gaussians")
    cases["version.spz"] = (gzip.compress(spz_raw[:4] + struct.pack("<I", 9) + spz_raw[8:]), "version 9")
    cases["text.spz"] = (b"hello", "not an SPZ file")
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(SplatkitError, match=message) as info:
            read_splats_file(path)
        assert "\n" not in str(info.value) and info.value.path == path, name

    # Flag 0x2: the spz library appends extension records after the arrays; they are skipped.
    extended = spz_raw[:14] + bytes([spz_raw[14] | 0x2]) + spz_raw[15:] + struct.pack("<II", 0xADBE0002, 12) + bytes(12)
    (tmp_path / "ext.spz").write_bytes(gzip.compress(extended))
    back, _ = read_splats_file(tmp_path / "ext.spz")
    assert torch.equal(back["means"], read_spz(tmp_path / "a.spz")[0]["means"])

    with pytest.raises(SplatkitError, match="not found"):
        read_splats_file(tmp_path / "missing.spz")
    (tmp_path / "a.obj").write_text("v 0 0 0\n")
    with pytest.raises(SplatkitError, match="unknown splat file type '.obj'"):
        read_splats_file(tmp_path / "a.obj")


# -- export_run and read_splats_file ------------------------------------------------------------
NORM = Normalization(center=np.array([1.5, -2.0, 3.25]), scale=0.25)  # identity rotation


def make_run(root: Path, splats: dict, degree: int = DEGREE) -> Path:
    """A run folder by the trainer's contract (the PLY tests' helper, with this file's frame)."""
    from test_export_ply import make_run as make_ply_run  # pytest puts tests/ on sys.path

    return make_ply_run(root, {k: v.float() for k, v in splats.items()}, degree, norm=NORM)


def test_export_run_every_format_to_its_default_name_in_the_user_frame(tmp_path):
    splats = random_splats(n=300)
    splats["means"] *= 0.1  # inside the normalised unit-ish box, as a trained model is
    run = make_run(tmp_path, splats)
    want_means = splats["means"].float().double().numpy() / NORM.scale + NORM.center
    # skz: fp16 of the normalised positions over their half-extent (~2.4e-4 of it), then / NORM.scale.
    # sog: 16 bits of sign(x) log(1 + |x|) per axis, a step of (log range / 65535) (1 + |x|).
    tolerance = {"ply": 1e-5, "splat": 1e-5, "ply-compressed": 1e-2, "spz": 0.5 / 4096 + 1e-5, "sog": 1e-3,
                 "skz": 2e-3}
    for fmt in ("ply", "splat", "ply-compressed", "spz", "sog", "skz"):
        res = export_run(run, fmt)
        assert res.path == run / "export" / DEFAULT_NAMES[fmt] and res.path.is_file()
        assert res.num_written == 300 and res.notes
        back, degree = read_splats_file(res.path)
        assert degree == (0 if fmt == "splat" else DEGREE)
        got = back["means"].double().numpy()
        idx = match_rows(got, want_means)
        assert np.abs(got - want_means[idx]).max() <= tolerance[fmt], fmt
    assert sorted(p.name for p in (run / "export").iterdir()) == sorted(DEFAULT_NAMES.values())


def test_export_run_checks_the_extension_and_planned_formats(tmp_path):
    run = make_run(tmp_path, random_splats(n=10))
    for fmt, name, message in [("splat", "a.ply", "must end in .splat"), ("spz", "a.splat", "must end in .spz"),
                               ("ply-compressed", "a.spz", "must end in .ply"), ("ply", "a.spz", "must end in .ply"),
                               ("ply", "a.compressed.ply", "use --format ply-compressed")]:
        with pytest.raises(SplatkitError, match=message):
            export_run(run, fmt, out=tmp_path / name)
        assert not (tmp_path / name).exists()
    res = export_run(run, "ply-compressed", out=tmp_path / "plain-name.ply")
    assert read_splats_file(res.path)[1] == DEGREE  # found compressed by content, not by name
    assert check_format("SKZ") == "skz"
    with pytest.raises(SplatkitError, match="must end in .skz"):
        export_run(run, "skz", out=tmp_path / "a.ply")
    assert write_splats(tmp_path / "w.spz", "SPZ", random_splats(n=4), DEGREE).format == "spz"
