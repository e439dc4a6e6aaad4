"""The .skz format: Morton order, round trips within the stated precision, size, and fuzzing of
the untrusted reader (truncation, flips, insertions, hostile headers with valid CRCs)."""

from __future__ import annotations

import copy
import json
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
import zstandard

from splatkit.compress import skz
from splatkit.compress.morton import morton_codes, morton_order
from splatkit.compress.skz import (FORMAT_VERSION, MAGIC, RVQ, CompactSplats, read_skz, skz_from_bytes,
                                   skz_to_bytes, write_skz)
from splatkit.data.scene import Normalization
from splatkit.errors import SplatkitError
from splatkit.models.gaussians import GaussianModel

NORM = Normalization(center=np.array([1.5, -2.0, 3.25]), scale=0.25)
MEM_LIMIT = 16 << 20  # bytes of Python/numpy allocation any hostile small file may cause


# -- helpers ------------------------------------------------------------------------------------
def random_splats(n: int, degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {
        "means": torch.randn(n, 3, generator=g) * torch.tensor([2.0, 0.5, 1.0]) + torch.tensor([40.0, -3.0, 0.5]),
        "scales": torch.randn(n, 3, generator=g) - 3.0,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g) * 4.0,
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k - 1, 3, generator=g) * 0.1,
    }


def random_rvq(n: int, dim: int, stages: int, k: int, rng) -> RVQ:
    return RVQ(rng.normal(size=(stages, k, dim)).astype(np.float32) / (1 + np.arange(stages))[:, None, None],
               rng.integers(0, k, size=(n, stages)))


def random_color_field(rng) -> dict:
    return {"config": {"levels": 4, "features": 2, "mlp": [8, 3], "quantize_8bit": ["grid.hash_table"]},
            "tensors": {"grid.hash_table": rng.uniform(-1e-2, 1e-2, size=(256, 2)).astype(np.float32),
                        "mlp.0.weight": rng.normal(size=(8, 11)).astype(np.float32),
                        "mlp.0.bias": rng.normal(size=(8,)).astype(np.float32),
                        "scalar": np.array(0.75, dtype=np.float32)}}


def make_compact(n: int, degree: int, rvq: bool, color: bool, seed: int = 0) -> CompactSplats:
    rng = np.random.default_rng(seed)
    splats: dict = dict(random_splats(n, degree, seed))
    k_rest = (degree + 1) ** 2 - 1
    if rvq:
        splats["scales"] = random_rvq(n, 3, 3, 64, rng)
        splats["quats"] = random_rvq(n, 4, 2, 300, rng)  # K > 256: uint16 indices
        if k_rest:
            splats["shN"] = random_rvq(n, 3 * k_rest, 2, 16, rng)
    cf = None
    if color:
        cf = random_color_field(rng)
        del splats["sh0"]
    return CompactSplats.from_splats(splats, degree, color_field=cf, normalization=NORM,
                                     meta={"step": 30000, "scene": "dtu_scan24", "psnr": 27.5})


def split_file(data: bytes) -> tuple[dict, bytes]:
    _, _, mlen = struct.unpack("<4sHI", data[:10])
    return json.loads(data[10:10 + mlen]), data[10 + mlen:-4]


def build_file(manifest, sections: bytes, version: int = FORMAT_VERSION, manifest_len=None) -> bytes:
    """A file with a correct CRC: the checksum is never what rejects it."""
    m = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    body = struct.pack("<4sHI", MAGIC, version, len(m) if manifest_len is None else manifest_len) + m + sections
    return body + struct.pack("<I", zlib.crc32(body))


def with_crc(data: bytes) -> bytes:
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def f16(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# -- Morton order -------------------------------------------------------------------------------
def test_morton_codes_interleave_bits():
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0.5, 0, 0]], dtype=np.float64)
    codes = morton_codes(pts)
    x_full = 0x1249249249249249  # 21 ones spread to every third bit
    assert codes.dtype == np.uint64
    assert codes[:5].tolist() == [0, x_full, x_full << 1, x_full << 2, (1 << 63) - 1]
    # 0.5 of the cube quantises to round(0.5 * (2^21 - 1)) = 2^20: only bit 20 of x, at bit 60
    assert int(codes[5]) == 1 << 60


def test_morton_order_groups_nearby_points():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 10]], dtype=np.float64)
    label = np.repeat(np.arange(4), 250)
    pts = centres[label] + rng.uniform(-1, 1, size=(1000, 3))
    shuffle = rng.permutation(1000)
    pts, label = pts[shuffle], label[shuffle]
    perm = morton_order(pts)
    assert perm.dtype == np.int64 and sorted(perm.tolist()) == list(range(1000))
    # each cluster sits in its own octant of the bounding cube, so it is one contiguous run
    assert int((np.diff(label[perm]) != 0).sum()) == 3
    # consecutive points are far closer than in the input order
    step_sorted = np.linalg.norm(np.diff(pts[perm], axis=0), axis=1).mean()
    step_input = np.linalg.norm(np.diff(pts, axis=0), axis=1).mean()
    assert step_sorted < step_input / 5
    # torch input, empty input, degenerate (coincident) input
    assert np.array_equal(morton_order(torch.from_numpy(pts)), perm)
    assert morton_order(np.zeros((0, 3))).shape == (0,)
    assert morton_order(np.ones((5, 3))).tolist() == [0, 1, 2, 3, 4]


def test_morton_order_rejects_bad_points():
    with pytest.raises(SplatkitError, match=r"\[N, 3\]"):
        morton_order(np.zeros((4, 2)))
    with pytest.raises(SplatkitError, match="finite"):
        morton_order(np.array([[0.0, np.nan, 0.0]]))


# -- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("rvq", [False, True])
@pytest.mark.parametrize("color", [False, True])
def test_round_trip_within_stated_precision(tmp_path, degree, rvq, color):
    n = 200
    c = make_compact(n, degree, rvq, color, seed=degree)
    path = tmp_path / "model.skz"
    report = write_skz(path, c)
    assert path.stat().st_size == report["file_bytes"]
    assert sum(s["compressed"] for s in report["sections"].values()) + report["manifest_bytes"] + 14 \
        == report["file_bytes"]
    r = read_skz(path)
    perm = morton_order(c.means)  # the file stores Gaussians in Morton order

    assert r.n == n and r.sh_degree == degree
    assert r.meta == c.meta
    np.testing.assert_array_equal(r.normalization, NORM.matrix)
    # positions: fp16 on the bbox mapped to [-1, 1]: error <= half-extent * 2^-12 per axis
    half = (c.means.max(0).astype(np.float64) - c.means.min(0)) / 2
    err = np.abs(r.means.astype(np.float64) - c.means[perm])
    assert (err <= half * 2.0 ** -12 + 1e-5 * np.abs(c.means[perm])).all()  # + float32 rounding at |x| ~ 40
    assert err.max() > 0  # really lossy, so the test above is not vacuous
    # opacity: within half a step of 1/255 in sigmoid space
    dp = np.abs(sigmoid(r.opacities) - sigmoid(c.opacities[perm]))
    assert dp.max() <= 0.5 / 255 + 1e-6
    for name in ("scales", "quats", "shN"):
        orig, got = getattr(c, name), getattr(r, name)
        if isinstance(orig, RVQ):
            assert isinstance(got, RVQ)
            np.testing.assert_array_equal(got.codebooks, f16(orig.codebooks))  # exact up to fp16
            np.testing.assert_array_equal(got.indices, orig.indices[perm])
        else:
            np.testing.assert_array_equal(got, f16(orig[perm]))
    if color:
        assert r.sh0 is None
        assert r.color_field["config"] == c.color_field["config"]
        assert set(r.color_field["tensors"]) == set(c.color_field["tensors"])
        for name, t in c.color_field["tensors"].items():
            got = r.color_field["tensors"][name]
            assert got.shape == t.shape and got.dtype == np.float32
            if name == "grid.hash_table":
                step = (t.max() - t.min()) / 255
                assert np.abs(got - t).max() <= step / 2 + 1e-9
                assert np.abs(got - t).max() > 1e-7  # really 8-bit, not fp16
                assert report["sections"]["color_field/" + name]["raw"] == t.size  # one byte each
            else:
                np.testing.assert_array_equal(got, f16(t))
    else:
        np.testing.assert_array_equal(r.sh0, f16(c.sh0[perm]))

    # decode(): torch tensors in gsplat names with the R-VQ sums evaluated
    d = r.decode()
    k_rest = (degree + 1) ** 2 - 1
    assert d["means"].dtype == torch.float32 and d["shN"].shape == (n, k_rest, 3)
    assert ("sh0" in d) == (not color)
    if rvq:
        cb, idx = f16(c.scales.codebooks), c.scales.indices[perm]
        expect = cb[0][idx[:, 0]] + cb[1][idx[:, 1]] + cb[2][idx[:, 2]]
        np.testing.assert_allclose(d["scales"].numpy(), expect, rtol=0, atol=1e-6)
        assert report["sections"]["quats/indices"]["raw"] == n * 2 * 2  # uint16 for K = 300
        assert report["sections"]["scales/indices"]["raw"] == n * 3  # uint8 for K = 64
    else:
        np.testing.assert_array_equal(d["quats"].numpy(), f16(c.quats[perm]))
    if not color:
        model = GaussianModel(d, degree)  # loads straight into the model
        assert model.num_gaussians == n


def test_empty_model_round_trips():
    c = CompactSplats.from_splats(random_splats(0, 2), 2)
    data, report = skz_to_bytes(c)
    assert report["n"] == 0 and report["bytes_per_gaussian"] is None
    r = skz_from_bytes(data)
    assert r.n == 0 and r.means.shape == (0, 3) and r.shN.shape == (0, 8, 3) and r.normalization is None
    assert r.decode()["opacities"].shape == (0,)


def test_flat_and_far_positions_keep_precision():
    # a planar scene far from the origin: the per-file offset keeps fp16 precise, the flat axis exact
    n = 500
    rng = np.random.default_rng(3)
    means = np.c_[rng.uniform(1000, 1001, n), np.full(n, -250.0), rng.uniform(5, 6, n)].astype(np.float32)
    splats = random_splats(n, 0)
    splats["means"] = torch.from_numpy(means)
    r = skz_from_bytes(skz_to_bytes(CompactSplats.from_splats(splats, 0))[0])
    got, want = r.means, means[morton_order(means)]
    assert np.all(got[:, 1] == -250.0)
    assert np.abs(got[:, 0] - want[:, 0]).max() <= 0.5 * 2.0 ** -12 + 1e-4  # float32 spacing at 1000 is 6e-5
    assert np.abs(got[:, 2] - want[:, 2]).max() <= 0.5 * 2.0 ** -12 + 1e-6


def test_opacity_extremes_decode_to_finite_logits():
    splats = random_splats(4, 0)
    splats["opacities"] = torch.tensor([-1e4, -20.0, 20.0, 1e4])
    r = skz_from_bytes(skz_to_bytes(CompactSplats.from_splats(splats, 0))[0])
    p = np.sort(sigmoid(r.opacities))
    np.testing.assert_allclose(p, [0.5 / 255, 0.5 / 255, 1 - 0.5 / 255, 1 - 0.5 / 255], rtol=1e-5)


def test_structured_model_is_much_smaller_than_float32():
    # surfaces (sphere + ground plane), bimodal opacity, R-VQ scales/quats/shN like Compact-3DGS
    n = 20000
    rng = np.random.default_rng(7)
    u = rng.normal(size=(n // 2, 3))
    sphere = 0.5 * u / np.linalg.norm(u, axis=1, keepdims=True) + rng.normal(scale=3e-3, size=(n // 2, 3))
    plane = np.c_[rng.uniform(-1, 1, n // 2), -0.5 + rng.normal(scale=2e-3, size=n // 2),
                  rng.uniform(-1, 1, n // 2)]
    means = np.r_[sphere, plane].astype(np.float32)
    degree = 3
    splats = {
        "means": means,
        "opacities": np.where(rng.random(n) < 0.7, 6.0, -4.0) + rng.normal(scale=0.3, size=n),
        "sh0": (0.5 * np.sin(3 * means[:, None, :]) + rng.normal(scale=0.02, size=(n, 1, 3))).astype(np.float32),
        "scales": random_rvq(n, 3, 6, 64, rng),
        "quats": random_rvq(n, 4, 6, 64, rng),
        "shN": random_rvq(n, 45, 4, 256, rng),
    }
    c = CompactSplats.from_splats(splats, degree)
    data, report = skz_to_bytes(c)
    assert report["float32_bytes"] == n * 59 * 4
    # random R-VQ indices are incompressible (6 bits per stage at K = 64): ~25 bytes per Gaussian
    assert len(data) < report["float32_bytes"] / 8, report
    assert report["bytes_per_gaussian"] < 30
    # Morton order is what makes the positions compress
    assert report["sections"]["means"]["compressed"] < 0.7 * report["sections"]["means"]["raw"]


# -- writer refusals ----------------------------------------------------------------------------
def test_writer_refuses_bad_models(tmp_path):
    good = random_splats(10, 1)
    cases = [
        (dict(good, means=good["means"].clone().index_fill_(0, torch.tensor([3]), float("nan"))), "means.*NaN"),
        (dict(good, scales=good["scales"] + 1e5), "float16 range"),
        (dict(good, shN=torch.zeros(10, 8, 3)), r"shN has shape \[10, 8, 3\], expected \[10, 3, 3\]"),
        (dict(good, scales=RVQ(np.zeros((2, 4, 3), np.float32), np.full((10, 2), 4))), "outside 0..3"),
        (dict(good, quats=RVQ(np.zeros((2, 4, 3), np.float32), np.zeros((10, 2), int))), "codebooks"),
        ({k: v for k, v in good.items() if k != "sh0"}, "sh0 may be None only"),
    ]
    for splats, msg in cases:
        with pytest.raises(SplatkitError, match=msg):
            write_skz(tmp_path / "x.skz", CompactSplats.from_splats(splats, 1))
    with pytest.raises(SplatkitError, match="sh_degree"):
        CompactSplats.from_splats(good, 7)
    c = CompactSplats.from_splats(good, 1, meta={"bad": object()})
    with pytest.raises(SplatkitError, match="plain JSON"):
        write_skz(tmp_path / "x.skz", c)
    with pytest.raises(SplatkitError, match="plain JSON"):
        write_skz(tmp_path / "x.skz", CompactSplats.from_splats(good, 1, meta={"psnr": float("nan")}))
    with pytest.raises(SplatkitError, match="zstd level"):
        write_skz(tmp_path / "x.skz", CompactSplats.from_splats(good, 1), level=40)
    cf = {"config": {"quantize_8bit": ["missing"]}, "tensors": {"a": np.zeros(3, np.float32)}}
    with pytest.raises(SplatkitError, match="unknown tensors"):
        CompactSplats.from_splats(good, 1, color_field=cf)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_writer_refuses_decompression_bombs():
    n = 20000  # every Gaussian identical: compresses far beyond MAX_EXPANSION
    splats = {"means": np.zeros((n, 3), np.float32), "scales": np.zeros((n, 3), np.float32),
              "quats": np.tile(np.float32([1, 0, 0, 0]), (n, 1)), "opacities": np.zeros(n, np.float32),
              "sh0": np.zeros((n, 1, 3), np.float32), "shN": np.zeros((n, 15, 3), np.float32)}
    with pytest.raises(SplatkitError, match="degenerate"):
        skz_to_bytes(CompactSplats.from_splats(splats, 3))


@pytest.mark.parametrize("bits", [1, 5, 8])
def test_hash_table_bits(bits):
    rng = np.random.default_rng(bits)
    cf = random_color_field(rng)
    table = rng.normal(0, 1e-2, size=(4096, 2)).astype(np.float32)  # most values near zero, as trained
    cf["tensors"]["grid.hash_table"] = table
    cf["config"]["quantize_bits"] = bits
    splats = {k: v for k, v in random_splats(50, 0).items() if k != "sh0"}
    data, report = skz_to_bytes(CompactSplats.from_splats(splats, 0, color_field=cf))
    got = skz_from_bytes(data).color_field
    assert got["config"]["quantize_bits"] == bits
    levels = 2 ** bits - 1
    err = np.abs(got["tensors"]["grid.hash_table"] - table)
    assert err.max() <= (table.max() - table.min()) / levels / 2 + 1e-9
    assert len(np.unique(got["tensors"]["grid.hash_table"])) <= levels + 1
    table_params = next(s["params"] for s in split_file(data)[0]["sections"] if s["name"] == "color_field/grid.hash_table")
    # 8 bits keeps the original params (files readable by the first reader); fewer bits name their levels
    assert table_params.get("levels") == (None if bits == 8 else levels)
    if bits < 8:  # fewer distinct values: a smaller section
        cf8 = dict(cf, config=dict(cf["config"], quantize_bits=8))
        _, report8 = skz_to_bytes(CompactSplats.from_splats(splats, 0, color_field=cf8))
        table_bytes = report["sections"]["color_field/grid.hash_table"]["compressed"]
        assert table_bytes < 0.9 * report8["sections"]["color_field/grid.hash_table"]["compressed"]


@pytest.mark.parametrize("bits", [0, 9, "6", True, 6.0])
def test_writer_refuses_bad_table_bits(bits):
    cf = random_color_field(np.random.default_rng(0))
    cf["config"]["quantize_bits"] = bits
    splats = {k: v for k, v in random_splats(5, 0).items() if k != "sh0"}
    with pytest.raises(SplatkitError, match="quantize_bits"):
        skz_to_bytes(CompactSplats.from_splats(splats, 0, color_field=cf))


def test_default_hash_table_rule():
    rng = np.random.default_rng(0)
    cf = {"config": {}, "tensors": {"encoder.hash_table": rng.random((64, 2)).astype(np.float32),
                                    "encoder.embeddings": rng.random((16, 2)).astype(np.float32),
                                    "mlp.weight": rng.random((4, 4)).astype(np.float32)}}
    splats = {k: v for k, v in random_splats(5, 0).items() if k != "sh0"}
    _, report = skz_to_bytes(CompactSplats.from_splats(splats, 0, color_field=cf))
    assert report["sections"]["color_field/encoder.hash_table"]["raw"] == 128  # uint8
    assert report["sections"]["color_field/encoder.embeddings"]["raw"] == 32  # uint8
    assert report["sections"]["color_field/mlp.weight"]["raw"] == 32  # float16


# -- reader: plain errors -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_file() -> bytes:
    """Small but complete: R-VQ (u8 and u16 indices), plain shN, sh0 and a colour field."""
    rng = np.random.default_rng(11)
    splats: dict = dict(random_splats(24, 1, seed=11))
    splats["scales"] = random_rvq(24, 3, 2, 8, rng)
    splats["quats"] = random_rvq(24, 4, 2, 300, rng)
    c = CompactSplats.from_splats(splats, 1, color_field=random_color_field(rng), normalization=NORM,
                                  meta={"note": "fuzz target"})
    data, _ = skz_to_bytes(c, level=3)
    return data


def test_reader_errors_are_clear(tmp_path, small_file):
    with pytest.raises(SplatkitError, match="not found"):
        read_skz(tmp_path / "missing.skz")
    with pytest.raises(SplatkitError, match="not found or not a file"):
        read_skz(tmp_path)
    with pytest.raises(SplatkitError, match="bad magic"):
        skz_from_bytes(b"PK\x03\x04" + small_file[4:])
    with pytest.raises(SplatkitError, match="written by a newer splatkit"):
        skz_from_bytes(with_crc(small_file[:4] + struct.pack("<H", FORMAT_VERSION + 1) + small_file[6:]))
    with pytest.raises(SplatkitError, match="checksum mismatch"):
        skz_from_bytes(small_file[:-1] + bytes([small_file[-1] ^ 1]))
    with pytest.raises(SplatkitError, match="unexpected bytes after the last section"):
        skz_from_bytes(with_crc(small_file[:-4] + b"junk" + small_file[-4:]))
    (tmp_path / "ok.skz").write_bytes(small_file)
    assert read_skz(tmp_path / "ok.skz").n == 24
    (tmp_path / "cut.skz").write_bytes(small_file[:100])
    with pytest.raises(SplatkitError) as info:
        read_skz(tmp_path / "cut.skz")
    msg = str(info.value)  # one line, naming the file
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'cut.skz'}: invalid .skz file: ")


# -- fuzzing ------------------------------------------------------------------------------------
def _load_or_error(data: bytes) -> CompactSplats | None:
    """Either SplatkitError (-> None) or a model that passes validation; anything else fails."""
    try:
        model = skz_from_bytes(data)
    except SplatkitError as exc:
        assert str(exc)
        return None
    model.validate()
    return model


def test_fuzz_every_truncation(small_file):
    tracemalloc.start()
    try:
        for length in range(len(small_file)):
            with pytest.raises(SplatkitError):
                skz_from_bytes(small_file[:length])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEM_LIMIT


def test_fuzz_random_flips_insertions_deletions(small_file):
    rng = np.random.default_rng(1234)
    size = len(small_file)
    tracemalloc.start()
    try:
        for trial in range(900):
            buf = bytearray(small_file)
            kind = trial % 3
            pos = int(rng.integers(0, size))
            if kind == 0:
                buf[pos] ^= int(rng.integers(1, 256))
            elif kind == 1:
                buf[pos:pos] = rng.integers(0, 256, size=int(rng.integers(1, 5)), dtype=np.uint8).tobytes()
            else:
                del buf[pos:pos + int(rng.integers(1, 5))]
            with pytest.raises(SplatkitError):  # the CRC (or a structural check) must catch it
                skz_from_bytes(bytes(buf))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEM_LIMIT


def test_fuzz_flips_with_recomputed_crc(small_file):
    """Past the CRC: every flip must be caught structurally or give a consistent model."""
    rng = np.random.default_rng(99)
    loaded = 0
    tracemalloc.start()
    try:
        for _ in range(400):
            buf = bytearray(small_file)
            for _ in range(int(rng.integers(1, 3))):
                buf[int(rng.integers(0, len(buf) - 4))] ^= 1 << int(rng.integers(0, 8))
            model = _load_or_error(with_crc(bytes(buf)))
            if model is not None:
                loaded += 1
                assert model.n == 24
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEM_LIMIT
    assert 0 < loaded < 400  # some flips hit value bytes (loads), most are caught


def _hostile_manifests(m: dict) -> list[tuple[str, dict]]:
    """Edited copies of a valid manifest; sizes lie but are self-consistent where possible."""
    out = []

    def edit(label, fn):
        mm = copy.deepcopy(m)
        fn(mm)
        out.append((label, mm))

    def sec(mm, name):
        return next(s for s in mm["sections"] if s["name"] == name)

    def scale_n(mm, n_new):
        mm["n"] = n_new
        for s in mm["sections"]:
            if s["shape"] and s["shape"][0] == m["n"] and not s["name"].startswith("color_field/"):
                s["shape"][0] = n_new
                s["raw"] = int(np.prod(s["shape"], dtype=object)) * skz._DTYPES[s["dtype"]].itemsize

    edit("huge n only", lambda mm: mm.update(n=10 ** 12))
    edit("huge n, consistent shapes", lambda mm: scale_n(mm, 10 ** 9))
    edit("n over the expansion cap", lambda mm: scale_n(mm, 300_000))
    edit("astronomical n", lambda mm: scale_n(mm, 10 ** 40))
    edit("negative n", lambda mm: mm.update(n=-1))
    edit("bool n", lambda mm: mm.update(n=True))
    edit("float n", lambda mm: mm.update(n=24.0))
    edit("string n", lambda mm: mm.update(n="24"))
    edit("sh degree 9", lambda mm: mm.update(sh_degree=9))
    edit("missing key", lambda mm: mm.pop("meta"))
    edit("extra key", lambda mm: mm.update(extra=1))
    edit("sections not a list", lambda mm: mm.update(sections={"means": 1}))
    edit("too many sections", lambda mm: mm.update(sections=mm["sections"] * 400))
    edit("duplicate section", lambda mm: mm["sections"].append(copy.deepcopy(mm["sections"][0])))
    edit("unknown section", lambda mm: sec(mm, "sh0").update(name="rgb"))
    edit("missing means", lambda mm: mm["sections"].pop(0))
    edit("bad normalization", lambda mm: mm.update(normalization=[[1, 0, 0]]))
    edit("meta a list", lambda mm: mm.update(meta=[1, 2]))
    edit("color config dropped", lambda mm: mm.update(color_field_config=None))
    edit("dtype float64", lambda mm: sec(mm, "means").update(dtype="float64"))
    edit("dtype object", lambda mm: sec(mm, "means").update(dtype="object"))
    edit("dtype numpy spelling", lambda mm: sec(mm, "opacities").update(dtype="|u1"))
    edit("encoding unknown", lambda mm: sec(mm, "sh0").update(encoding="pickle"))
    edit("huge shape dim", lambda mm: sec(mm, "sh0").update(shape=[24, 10 ** 15, 3], raw=24 * 10 ** 15 * 6))
    edit("negative shape", lambda mm: sec(mm, "sh0").update(shape=[24, -1, 3]))
    edit("bool shape", lambda mm: sec(mm, "sh0").update(shape=[24, True, 3]))
    edit("string shape", lambda mm: sec(mm, "sh0").update(shape="24,1,3"))
    edit("too many dims", lambda mm: sec(mm, "color_field/mlp.0.bias").update(shape=[1] * 9 + [8]))
    edit("raw disagrees with shape", lambda mm: sec(mm, "sh0").update(raw=10 ** 9))
    edit("compressed huge", lambda mm: sec(mm, "sh0").update(compressed=2 ** 62))
    edit("compressed negative", lambda mm: sec(mm, "sh0").update(compressed=-5))
    edit("compressed shifted", lambda mm: (sec(mm, "sh0").update(compressed=sec(mm, "sh0")["compressed"] + 3),
                                           sec(mm, "opacities").update(
                                               compressed=sec(mm, "opacities")["compressed"] - 3)))
    edit("huge codebook K", lambda mm: sec(mm, "quats/codebooks").update(shape=[2, 2 ** 33, 4], raw=2 ** 36))
    edit("codebook K consistent but huge", lambda mm: sec(mm, "quats/codebooks").update(
        shape=[2, 10 ** 7, 4], raw=2 * 10 ** 7 * 8))
    edit("codebook K shrunk below the indices", lambda mm: sec(mm, "quats/codebooks").update(
        shape=[2, 150, 4], raw=2 * 150 * 8))
    edit("stage count mismatch", lambda mm: sec(mm, "quats/codebooks").update(shape=[4, 150, 4], raw=4 * 150 * 8))
    edit("plain and R-VQ", lambda mm: mm["sections"].append(dict(sec(mm, "sh0"), name="scales")))
    edit("affine scale zero", lambda mm: sec(mm, "means")["params"].update(scale=[0, 1, 1]))
    edit("affine offset huge", lambda mm: sec(mm, "means")["params"].update(offset=[1e300, 0, 0]))
    edit("affine params missing", lambda mm: sec(mm, "means").pop("params"))
    edit("params where none belong", lambda mm: sec(mm, "sh0").update(params={"scale": 2}))
    edit("minmax reversed", lambda mm: sec(mm, "color_field/grid.hash_table")["params"].update(min=1.0, max=-1.0))
    edit("minmax beyond float32", lambda mm: sec(mm, "color_field/grid.hash_table")["params"].update(max=1e300))
    for levels in (0, 256, 6.0, True, "63", None):
        edit(f"levels {levels!r}", lambda mm, v=levels: sec(mm, "color_field/grid.hash_table")["params"].update(
            levels=v))
    # stored bytes go up to 255: fewer declared levels would decode them past max
    edit("levels below the stored values", lambda mm: sec(mm, "color_field/grid.hash_table")["params"].update(
        levels=3))
    edit("colour tensor with index encoding", lambda mm: sec(mm, "color_field/mlp.0.bias").update(
        encoding="index", dtype="uint16", raw=16))
    return out


def test_fuzz_hostile_headers_with_valid_crc(small_file):
    m, sections = split_file(small_file)
    assert skz_from_bytes(build_file(m, sections)).n == 24  # the rebuild itself is faithful
    cases = [(label, build_file(mm, sections)) for label, mm in _hostile_manifests(m)]
    mjson = json.dumps(m).encode()

    def patched(old: bytes, new: bytes) -> bytes:
        assert old in mjson
        return build_file(mjson.replace(old, new), sections)

    cases += [
        ("NaN in normalization", patched(b'"normalization": [[', b'"normalization": [[NaN, ')),
        ("Infinity in params", patched(b'"offset": [', b'"offset": [Infinity, ')),
        ("deep nesting", patched(b'"meta": {', b'"meta": {"x": ' + b"[" * 100000 + b"]" * 100000 + b", ")),
        ("huge integer literal", patched(b'"n": 24', b'"n": ' + b"9" * 5000)),
        ("duplicate key", patched(b'"n": 24', b'"n": 24, "n": 24')),
        ("not utf-8", patched(b'"fuzz target"', b'"\xff\xfe"')),
        ("manifest is a list", build_file(b"[1, 2, 3]", sections)),
        ("empty manifest", build_file(b"", sections)),
        ("manifest length past the end",
         build_file(mjson, sections, manifest_len=len(mjson) + len(sections) + 10)),
        ("manifest length over the cap", build_file(mjson, sections, manifest_len=2 ** 32 - 1)),
        ("manifest length short", build_file(mjson, sections, manifest_len=len(mjson) - 1)),
        ("version 0", build_file(m, sections, version=0)),
        ("no sections bytes", build_file(m, b"")),
    ]
    tracemalloc.start()
    try:
        for label, data in cases:
            with pytest.raises(SplatkitError) as info:
                skz_from_bytes(data)
            assert "checksum" not in str(info.value), label
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEM_LIMIT


def _rebuild(small_file: bytes, replace: dict[str, tuple[np.ndarray | None, bytes | None]],
             fix_manifest=True) -> bytes:
    """The small file with some sections' stored arrays (or raw zstd frames) swapped in."""
    m, blob = split_file(small_file)
    frames, pos = [], 0
    for s in m["sections"]:
        frame = blob[pos:pos + s["compressed"]]
        pos += s["compressed"]
        if s["name"] in replace:
            arr, raw_frame = replace[s["name"]]
            if raw_frame is None:
                frame = zstandard.ZstdCompressor(level=1).compress(skz._shuffle(arr))
                if fix_manifest:
                    s.update(dtype=arr.dtype.name, shape=list(arr.shape), raw=arr.nbytes)
            else:
                frame = raw_frame
            s["compressed"] = len(frame)
        frames.append(frame)
    return build_file(m, b"".join(frames))


def test_fuzz_hostile_sections_with_valid_crc(small_file):
    m, _ = split_file(small_file)
    raw_of = {s["name"]: s["raw"] for s in m["sections"]}
    nan_sh0 = np.zeros((24, 1, 3), np.float16)
    nan_sh0[5, 0, 1] = np.nan
    big_idx = np.zeros((24, 2), np.uint16)
    big_idx[7, 1] = 300  # K = 300: one past the end
    cases = {
        "index == K": {"quats/indices": (big_idx, None)},
        "NaN in sh0": {"sh0": (nan_sh0, None)},
        "inf in a colour tensor": {"color_field/mlp.0.bias": (np.full(8, np.inf, np.float16), None)},
        # zstd frames that lie about their size: the frame header, not the manifest, sizes the output
        "frame larger than declared": {"opacities": (None, zstandard.ZstdCompressor().compress(bytes(10 ** 6)))},
        "frame smaller than declared": {"opacities": (None, zstandard.ZstdCompressor().compress(bytes(3)))},
        "frame without content size": {"opacities": (None, zstandard.ZstdCompressor(
            write_content_size=False).compress(bytes(raw_of["opacities"])))},
        "two frames in one section": {"opacities": (None, zstandard.ZstdCompressor().compress(
            bytes(raw_of["opacities"])) * 2)},
        "garbage frame": {"opacities": (None, b"\x28\xb5\x2f\xfd" + bytes(20))},
        "empty frame": {"opacities": (None, b"")},
    }
    tracemalloc.start()
    try:
        for label, replace in cases.items():
            with pytest.raises(SplatkitError) as info:
                skz_from_bytes(_rebuild(small_file, replace))
            assert "checksum" not in str(info.value), label
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEM_LIMIT


def test_real_decompression_bomb_is_refused_before_decompressing(small_file):
    """A fully consistent file whose sections really decompress to ~70 MB (zeros): refused by the
    expansion cap without allocating the output."""
    m, blob = split_file(small_file)
    n = 2_000_000
    frames, pos = [], 0
    cctx = zstandard.ZstdCompressor(level=1)
    m["n"] = n
    for s in m["sections"]:
        frame = blob[pos:pos + s["compressed"]]
        pos += s["compressed"]
        if s["shape"] and s["shape"][0] == 24 and not s["name"].startswith("color_field/"):
            s["shape"][0] = n
            s["raw"] = int(np.prod(s["shape"])) * skz._DTYPES[s["dtype"]].itemsize
            frame = cctx.compress(bytes(s["raw"]))
            s["compressed"] = len(frame)
        frames.append(frame)
    data = build_file(m, b"".join(frames))
    assert len(data) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(SplatkitError, match="decompression bomb"):
            skz_from_bytes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEM_LIMIT


# -- q_affine sections (format version 2, `splatkit compress`) ------------------------------------
QUANT_BITS = {"means": 14, "sh0": 8, "scales": 7, "quats": 8, "shN": 6}


def quant_compact(n: int = 40, seed: int = 5) -> CompactSplats:
    rng = np.random.default_rng(seed)
    splats: dict = dict(random_splats(n, 2, seed=seed))
    splats["shN"] = random_rvq(n, 24, 1, 16, rng)  # a one-stage SH codebook, as compress writes
    return CompactSplats.from_splats(splats, 2, normalization=NORM, bits=QUANT_BITS, meta={"note": "quantised"})


@pytest.fixture(scope="module")
def quant_file() -> bytes:
    data, _ = skz_to_bytes(quant_compact(), level=3)
    return data


def test_q_affine_round_trip_within_half_a_step_and_rewrites_exactly(quant_file):
    c = quant_compact()
    out = skz_from_bytes(quant_file)
    assert struct.unpack("<H", quant_file[4:6])[0] in (skz.QUANT_VERSION, skz.DELTA_VERSION)
    assert out.bits == QUANT_BITS
    order = morton_order(c.means)
    for name, ref in (("means", c.means[order]), ("sh0", c.sh0[order]), ("scales", c.scales[order]),
                      ("quats", c.quats[order]), ("shN", c.shN.codebooks)):
        got = out.shN.codebooks if name == "shN" else getattr(out, name)
        flat = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
        half_step = (flat.max(0) - flat.min(0)) / (2 * ((1 << QUANT_BITS[name]) - 1))
        err = np.abs(got.reshape(flat.shape) - flat)
        assert (err <= half_step * (1 + 1e-5) + 1e-6).all(), name
    np.testing.assert_array_equal(out.shN.indices, c.shN.indices[order])
    # Decoded values are on the grid: written again (the same bits) they decode to the same values.
    again = skz_from_bytes(skz_to_bytes(out)[0])
    for name in ("means", "sh0", "scales", "quats", "opacities"):
        np.testing.assert_array_equal(getattr(again, name), getattr(out, name), err_msg=name)
    np.testing.assert_array_equal(again.shN.codebooks, out.shN.codebooks)
    # Without bits nothing changes: version 1, as before q_affine existed.
    plain, _ = skz_to_bytes(CompactSplats.from_splats(dict(random_splats(5, 1)), 1))
    assert struct.unpack("<H", plain[4:6])[0] == 1


def smooth_compact(n: int = 3000, seed: int = 3) -> CompactSplats:
    """Gaussians on a surface whose attributes vary with position, as a trained scene's do: the
    writer delta-codes their per-Gaussian sections."""
    rng = np.random.default_rng(seed)
    u, v = rng.random(n), rng.random(n)
    means = np.stack([u, v, 0.3 * np.sin(3 * u) * np.cos(2 * v)], 1).astype(np.float32)
    splats: dict = dict(random_splats(n, 1, seed=seed))
    splats["means"] = means
    splats["scales"] = (np.log(0.01 + 0.02 * means[:, :1]) + 0.05 * rng.standard_normal((n, 3))).astype(np.float32)
    splats["sh0"] = (np.stack([u, v, 1 - u], 1)[:, None] + 0.02 * rng.standard_normal((n, 1, 3))).astype(np.float32)
    return CompactSplats.from_splats(splats, 1, normalization=NORM, bits={"means": 14, "sh0": 8, "scales": 8})


def test_delta_coding_inverts_exactly_for_any_values():
    rng = np.random.default_rng(2)
    for dtype, hi in ((np.uint8, 256), (np.dtype("<u2"), 65536)):
        q = rng.integers(0, hi, size=(500, 3)).astype(dtype)
        q[:3] = [[0, hi - 1, 0], [hi - 1, 0, hi - 1], [0, 0, 0]]  # the widest jumps wrap
        z = skz._delta_encode(q)
        assert z.dtype == q.dtype
        np.testing.assert_array_equal(skz._delta_decode(z), q)
    # small steps become small codes: +1 -> 2, -1 -> 1
    np.testing.assert_array_equal(skz._delta_encode(np.array([[5], [6], [5]], np.uint8))[:, 0], [10, 2, 1])


def test_delta_coded_sections_are_smaller_and_decode_to_the_same_values():
    c = smooth_compact()
    data, report = skz_to_bytes(c, level=3)
    m, _ = split_file(data)
    delta = {s["name"] for s in m["sections"] if s.get("params", {}).get("delta")}
    assert "means" in delta and "sh0" in delta
    assert struct.unpack("<H", data[4:6])[0] == skz.DELTA_VERSION
    out = skz_from_bytes(data)
    # the same model written without deltas decodes to identical values
    plain_data, _ = skz_to_bytes(c, level=3, delta=False)
    assert struct.unpack("<H", plain_data[4:6])[0] == skz.QUANT_VERSION
    assert len(data) < len(plain_data)
    plain = skz_from_bytes(plain_data)
    for name in ("means", "sh0", "scales", "quats", "opacities"):
        np.testing.assert_array_equal(getattr(out, name), getattr(plain, name), err_msg=name)
    # hostile edits of the delta flag are clean errors
    m, blob = split_file(data)

    def edited(fn, version=skz.DELTA_VERSION):
        mm = copy.deepcopy(m)
        fn(next(s for s in mm["sections"] if s["name"] == "means"))
        return build_file(mm, blob, version=version)

    for label, bad in (("delta in a version-2 file", build_file(m, blob, version=2)),
                       ("delta false", edited(lambda s: s["params"].update(delta=False))),
                       ("delta a string", edited(lambda s: s["params"].update(delta="yes"))),
                       ("delta dropped", edited(lambda s: s["params"].pop("delta")))):
        with pytest.raises(SplatkitError) as info:
            skz_from_bytes(bad)
        assert "checksum" not in str(info.value), label


def test_q_affine_fewer_bits_make_smaller_files():
    c = quant_compact(n=2000)
    sizes = [len(skz_to_bytes(CompactSplats(**{**c.__dict__, "bits": {k: b for k in QUANT_BITS}}))[0])
             for b in (16, 10, 6)]
    assert sizes[0] > sizes[1] > sizes[2]


@pytest.mark.parametrize("bits, match", [({"opacities": 8}, "cannot be quantised"), ({"means": 0}, "1..16"),
                                         ({"means": 17}, "1..16"), ({"scales": 8.0}, "1..16")])
def test_writer_refuses_bad_bits(bits, match):
    with pytest.raises(SplatkitError, match=match):
        CompactSplats.from_splats(dict(random_splats(5, 1)), 1, bits=bits)


def test_fuzz_quantised_file_truncations_and_flips(quant_file):
    rng = np.random.default_rng(77)
    tracemalloc.start()
    try:
        for length in range(0, len(quant_file), 7):
            with pytest.raises(SplatkitError):
                skz_from_bytes(quant_file[:length])
        loaded = 0
        for _ in range(300):
            buf = bytearray(quant_file)
            buf[int(rng.integers(0, len(buf) - 4))] ^= 1 << int(rng.integers(0, 8))
            model = _load_or_error(with_crc(bytes(buf)))
            loaded += model is not None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEM_LIMIT
    assert loaded < 300


def test_fuzz_hostile_q_affine_params_with_valid_crc(quant_file):
    m, blob = split_file(quant_file)
    assert skz_from_bytes(build_file(m, blob, version=2)).n == 40

    def sec(mm, name):
        return next(s for s in mm["sections"] if s["name"] == name)

    edits = {
        "bits 0": lambda mm: sec(mm, "means")["params"].update(bits=0),
        "bits 17": lambda mm: sec(mm, "means")["params"].update(bits=17),
        "bits a string": lambda mm: sec(mm, "means")["params"].update(bits="14"),
        "bits vs dtype": lambda mm: sec(mm, "sh0")["params"].update(bits=12),
        "min above max": lambda mm: sec(mm, "scales")["params"].update(min=[5.0, 5.0, 5.0], max=[1.0, 1.0, 1.0]),
        "too few columns": lambda mm: sec(mm, "quats")["params"].update(min=[0.0], max=[1.0]),
        "huge min": lambda mm: sec(mm, "means")["params"].update(min=[1e300, 0.0, 0.0]),
        "extra param key": lambda mm: sec(mm, "means")["params"].update(offset=[0, 0, 0]),
        "no params": lambda mm: sec(mm, "scales").pop("params"),
        "q_affine opacities": lambda mm: sec(mm, "opacities").update(encoding="q_affine",
                                                                     params={"bits": 8, "min": [0.0], "max": [1.0]}),
        "q_affine indices": lambda mm: sec(mm, "shN/indices").update(encoding="q_affine",
                                                                     params={"bits": 8, "min": [0.0], "max": [1.0]}),
    }
    cases = []
    for label, fn in edits.items():
        mm = copy.deepcopy(m)
        fn(mm)
        cases.append((label, build_file(mm, blob, version=2)))
    cases.append(("q_affine in a version-1 file", build_file(m, blob, version=1)))
    # values above the declared bits: 8-bit sh0 stored in a 6-bit section
    mm = copy.deepcopy(m)
    sec(mm, "shN/codebooks")["params"]["bits"] = 4  # stored values go up to 63 > 15
    cases.append(("values above the bits", build_file(mm, blob, version=2)))
    for label, data in cases:
        with pytest.raises(SplatkitError) as info:
            skz_from_bytes(data)
        assert "checksum" not in str(info.value), label
