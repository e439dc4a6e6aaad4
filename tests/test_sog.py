"""PlayCanvas SOG: round trips within the format's precision, a file built by hand from the
published spec's formulas read back exactly (an independent check of the reader), the model's own SH
codebook as the palette, and fuzzing of the untrusted reader."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pytest
import torch

from splatkit.errors import DataError, SplatkitError
from splatkit.export import read_splats_file, write_splats
from splatkit.export.sog import decode_sog, encode_sog, read_sog


def random_splats(n: int, degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {"means": torch.randn(n, 3, generator=g) * 2.0, "scales": torch.randn(n, 3, generator=g) * 0.5 - 4.0,
            "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g) * 3,
            "sh0": torch.randn(n, 1, 3, generator=g) * 0.8, "shN": torch.randn(n, k - 1, 3, generator=g) * 0.1}


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def rezip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def webp(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(buf, format="WEBP", lossless=True, exact=True)
    return buf.getvalue()


def match_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Index into ``b`` of each row of ``a`` (the writer stores Morton order)."""
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_within_the_format_precision(tmp_path, degree):
    s = random_splats(300, degree)
    res = write_splats(tmp_path / "a.sog", "sog", s, degree)
    assert res.num_written == 300 and res.path.suffix == ".sog"
    out, deg = read_splats_file(res.path)
    assert deg == degree and out["means"].shape == (300, 3)
    idx = match_rows(s["means"].numpy(), out["means"].numpy())
    assert len(set(idx.tolist())) == 300
    ref = {k: v.numpy() for k, v in s.items()}
    got = {k: v.numpy()[idx] for k, v in out.items()}
    # 16-bit positions in log space: a step of (range / 65535) * (1 + |x|)
    lg = np.sign(ref["means"]) * np.log1p(np.abs(ref["means"]))
    step = (lg.max(0) - lg.min(0)) / 65535 * np.exp(np.abs(lg))
    assert (np.abs(got["means"] - ref["means"]) <= step * 0.51 + 1e-6).all()
    q_ref = torch.nn.functional.normalize(torch.from_numpy(ref["quats"]), dim=1)
    dots = (q_ref * torch.from_numpy(got["quats"]).double()).sum(1).abs()
    assert float(dots.min()) > 0.995  # 8 bits per kept component
    np.testing.assert_allclose(1 / (1 + np.exp(-got["opacities"])), 1 / (1 + np.exp(-ref["opacities"])),
                               atol=0.5 / 255 + 1e-6)
    for name in ("scales", "sh0"):  # 256-entry 1-D k-means codebooks: fine in the bulk, coarse in the tails
        err = np.abs(got[name] - ref[name])
        assert err.mean() < 0.01 and err.max() < 0.25, name
    if degree:
        assert np.abs(got["shN"] - ref["shN"]).mean() < 0.05  # 300 vectors through a palette of 256


def test_writer_follows_the_spec_layout():
    data, n, dropped, k = encode_sog(random_splats(1000, 2), 2)
    files = unzip(data)
    meta = json.loads(files["meta.json"])
    assert meta["version"] == 2 and meta["count"] == 1000 and meta["shN"]["bands"] == 2
    assert len(meta["scales"]["codebook"]) == len(meta["sh0"]["codebook"]) == len(meta["shN"]["codebook"]) == 256
    from PIL import Image

    w = math.ceil(math.sqrt(1000) / 4) * 4
    h = math.ceil(1000 / w / 4) * 4
    for name in ("means_l.webp", "means_u.webp", "quats.webp", "scales.webp", "sh0.webp", "shN_labels.webp"):
        im = Image.open(io.BytesIO(files[name]))
        assert im.format == "WEBP" and im.size == (w, h), name
    quats = np.asarray(Image.open(io.BytesIO(files["quats.webp"])).convert("RGBA")).reshape(-1, 4)[:1000]
    assert set(np.unique(quats[:, 3])) <= {252, 253, 254, 255}
    cent = Image.open(io.BytesIO(files["shN_centroids.webp"]))
    assert cent.size == (64 * 8, math.ceil(meta["shN"]["count"] / 64))


def test_a_file_built_from_the_spec_reads_back_exactly(tmp_path):
    """Two Gaussians written pixel by pixel with the spec's formulas (section 3), not our writer."""
    W = H = 4
    img = {k: np.zeros((H * W, 4), np.uint8) for k in ("ml", "mu", "q", "s", "c", "lab")}
    for v in img.values():
        v[:, 3] = 255
    q16 = np.array([[0, 65535, 32768], [12345, 1, 65534]])
    img["ml"][:2, :3], img["mu"][:2, :3] = q16 & 0xFF, q16 >> 8
    img["q"][:2] = [[128, 64, 200, 252], [10, 255, 128, 255]]
    img["s"][:2, :3] = [[0, 1, 2], [2, 1, 0]]
    img["c"][:2] = [[2, 0, 1, 255], [1, 1, 1, 0]]
    img["lab"][:2, :2] = [[1, 0], [0, 0]]
    cent = np.zeros((1, 64 * 3, 4), np.uint8)
    cent[..., 3] = 255
    cent[0, 0:3, :3] = [[0, 1, 2], [2, 2, 2], [1, 0, 1]]  # entry 0: coefficients 0..2 (R, G, B)
    cent[0, 3:6, :3] = [[1, 1, 1], [0, 0, 0], [2, 1, 0]]  # entry 1
    meta = {"version": 2, "count": 2, "antialias": False,
            "means": {"mins": [-1.0, 0.0, -2.0], "maxs": [1.0, 2.0, 0.5], "files": ["ml.webp", "mu.webp"]},
            "scales": {"codebook": [-5.0, -4.0, -3.0], "files": ["s.webp"]}, "quats": {"files": ["q.webp"]},
            "sh0": {"codebook": [-0.5, 0.0, 0.75], "files": ["c.webp"]},
            "shN": {"count": 2, "bands": 1, "codebook": [-0.1, 0.0, 0.2], "files": ["cent.webp", "lab.webp"]}}
    files = {"meta.json": json.dumps(meta).encode(), "cent.webp": webp(cent)}
    files.update({f"{k}.webp": webp(v.reshape(H, W, 4)) for k, v in img.items() if k != "lab"})
    files["lab.webp"] = webp(img["lab"].reshape(H, W, 4))
    (tmp_path / "scene.sog").write_bytes(rezip(files))
    out, degree = read_sog(tmp_path / "scene.sog")
    assert degree == 1
    mins, maxs = np.array(meta["means"]["mins"]), np.array(meta["means"]["maxs"])
    nl = mins + (maxs - mins) * q16 / 65535
    np.testing.assert_allclose(out["means"].numpy(), np.sign(nl) * (np.exp(np.abs(nl)) - 1), rtol=1e-6, atol=1e-6)

    def comp(c):
        return (c / 255 - 0.5) * 2.0 / math.sqrt(2)

    a, b, c = comp(128), comp(64), comp(200)
    d = math.sqrt(max(0, 1 - a * a - b * b - c * c))
    np.testing.assert_allclose(out["quats"][0].numpy(), [d, a, b, c], atol=1e-6)  # mode 0: component 0 (w) omitted
    a, b, c = comp(10), comp(255), comp(128)
    d = math.sqrt(max(0, 1 - a * a - b * b - c * c))
    np.testing.assert_allclose(out["quats"][1].numpy(), [a, b, c, d], atol=1e-6)
    np.testing.assert_allclose(out["scales"].numpy(), [[-5, -4, -3], [-3, -4, -5]])
    np.testing.assert_allclose(out["sh0"][:, 0].numpy(), [[0.75, -0.5, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(torch.sigmoid(out["opacities"]).numpy(), [1 - 0.5 / 255, 0.5 / 255], atol=1e-6)
    cb = np.array(meta["shN"]["codebook"])
    np.testing.assert_allclose(out["shN"][0].numpy(), cb[[[1, 1, 1], [0, 0, 0], [2, 1, 0]]], atol=1e-7)  # label 1
    np.testing.assert_allclose(out["shN"][1].numpy(), cb[[[0, 1, 2], [2, 2, 2], [1, 0, 1]]], atol=1e-7)
    # The unbundled layout (meta.json beside the images) reads the same.
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    again, _ = read_splats_file(tmp_path / "meta.json")
    for k in out:
        torch.testing.assert_close(again[k], out[k])


def test_a_given_palette_is_stored_as_is():
    s = random_splats(500, 1)
    g = torch.Generator().manual_seed(1)
    cb = (torch.randn(37, 3, 3, generator=g) * 0.2).numpy()
    labels = torch.randint(0, 37, (500,), generator=g).numpy()
    s["shN"] = torch.from_numpy(cb[labels])
    data, _, _, k = encode_sog(s, 1, palette=(cb, labels))
    assert k == 37 and json.loads(unzip(data)["meta.json"])["shN"]["count"] == 37
    out, _ = decode_sog(unzip(data))
    idx = match_rows(s["means"].numpy(), out["means"].numpy())
    # Only the 256-value codebook of the format rounds the palette's values.
    err = np.abs(out["shN"].numpy()[idx] - cb[labels])
    assert err.max() < 0.01


def test_codebook_values_are_the_nearest_entry():
    """Each scale and colour is stored as its nearest codebook entry, as splat-transform's quantize1d
    does (k-means' own float32 labels picked the farther of two close entries for ~0.2% of values:
    found by scripts/check_viewer_formats.py)."""
    s = random_splats(4000, 0, seed=5)
    data, *_ = encode_sog(s, 0)
    meta = json.loads(unzip(data)["meta.json"])
    out, _ = decode_sog(unzip(data))
    idx = match_rows(out["means"].numpy(), s["means"].numpy())
    for key in ("scales", "sh0"):
        ref = s[key].double().numpy()[idx].reshape(4000, -1)
        got = out[key].double().numpy().reshape(4000, -1)
        cb = np.asarray(meta[key]["codebook"])
        nearest = np.abs(ref[..., None] - cb).min(-1)
        assert (np.abs(got - ref) <= nearest + 1e-6).all(), key


def test_writer_refuses_what_sog_cannot_hold(tmp_path):
    with pytest.raises(SplatkitError, match="SH degree 0 to 3"):
        encode_sog(random_splats(10, 4), 4)
    with pytest.raises(SplatkitError, match="palette"):
        encode_sog(random_splats(10, 1), 1, palette=(np.zeros((4, 3, 3)), np.full(10, 7)))


# -- untrusted input ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good() -> bytes:
    return encode_sog(random_splats(40, 1, seed=3), 1)[0]


def test_reader_errors(tmp_path, good):
    with pytest.raises(DataError, match="not found"):
        read_sog(tmp_path / "missing.sog")
    (tmp_path / "junk.sog").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="ZIP"):
        read_sog(tmp_path / "junk.sog")
    files = unzip(good)
    meta = json.loads(files["meta.json"])

    def with_meta(**changes) -> dict:
        m = json.loads(json.dumps(meta))
        for path, value in changes.items():
            node = m
            keys = path.split(".")
            for k in keys[:-1]:
                node = node[k]
            if value is None:
                node.pop(keys[-1])
            else:
                node[keys[-1]] = value
        return {**files, "meta.json": json.dumps(m).encode()}

    pw = 12 * 12  # pixels of a 40-Gaussian SOG
    cases = {
        "version": with_meta(version=3), "count": with_meta(count=pw + 1), "count zero": with_meta(count=0),
        "count bool": with_meta(count=True), "mins": with_meta(**{"means.mins": [0, 0]}),
        "maxs NaN": {**files, "meta.json": files["meta.json"].replace(b'"maxs": [', b'"maxs": [NaN, ')},
        "codebook long": with_meta(**{"scales.codebook": [0.0] * 257}),
        "codebook short": with_meta(**{"sh0.codebook": [0.0]}),  # indices past it
        "files": with_meta(**{"quats.files": []}), "missing image": with_meta(**{"scales.files": ["nope.webp"]}),
        "bands": with_meta(**{"shN.bands": 4}), "palette count": with_meta(**{"shN.count": 70000}),
        "palette short": with_meta(**{"shN.count": 1}),  # labels past it
        "no meta": {k: v for k, v in files.items() if k != "meta.json"},
        "meta not json": {**files, "meta.json": b"{"}, "meta list": {**files, "meta.json": b"[]"},
        "image not an image": {**files, "sh0.webp": b"RIFF0000WEBPVP8L garbage"},
        "image size": {**files, "scales.webp": webp(np.zeros((4, 4, 4)))},
        "bad quats mode": {**files, "quats.webp": webp(np.full((12, 12, 4), 7))},
    }
    for label, fs in cases.items():
        with pytest.raises(DataError) as info:
            decode_sog(fs)
        assert "\n" not in str(info.value), label


def test_fuzz_truncations_and_flips(good):
    rng = np.random.default_rng(5)
    for length in range(0, len(good), max(1, len(good) // 150)):
        with pytest.raises(DataError):
            decode_sog_bytes(good[:length])
    loaded = 0
    for _ in range(150):
        buf = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(0, len(buf)))] ^= 1 << int(rng.integers(0, 8))
        try:
            out, _ = decode_sog_bytes(bytes(buf))
        except DataError:
            continue
        loaded += 1
        assert all(bool(torch.isfinite(v).all()) for v in out.values())
    assert loaded < 150


def decode_sog_bytes(data: bytes):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "f.sog"
        p.write_bytes(data)
        return read_sog(p)


def test_zip_member_sizes_are_checked_before_reading(monkeypatch, good):
    from splatkit.export import sog

    monkeypatch.setattr(sog, "MAX_MEMBER_BYTES", 100)
    with pytest.raises(DataError, match="over the limit"):
        decode_sog_bytes(good)
