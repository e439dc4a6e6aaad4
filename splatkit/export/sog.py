"""PlayCanvas' SOG (``.sog``): the format SuperSplat, the PlayCanvas engine and viewer, and Spark
load, written and read after its published specification (PlayCanvas developer site,
``user-manual/gaussian-splatting/formats/sog.md``, version 2) and the reference writer
(github.com/playcanvas/splat-transform, ``src/lib/writers/write-sog.ts``).

A SOG is a ZIP ("bundled" variant) of ``meta.json`` and lossless WebP images of ``W x H`` pixels,
one pixel per Gaussian (row-major, Morton order of the positions), ``W = ceil(sqrt(N) / 4) * 4``,
``H = ceil(N / W / 4) * 4``:

* ``means_l`` / ``means_u``: each axis as 16 bits (low / high byte in R, G, B) between per-axis
  ``mins`` and ``maxs`` of ``sign(x) * log(1 + |x|)``;
* ``quats``: "smallest three": the other three components of the unit quaternion (PLY order
  ``w x y z``, the largest made positive) times sqrt(2), as ``255 * (v / 2 + 0.5)`` in R, G, B, and
  ``252 + index of the largest`` in A;
* ``scales``: indices into a 256-entry codebook of log-scales (one codebook for the three axes);
* ``sh0``: indices into a 256-entry codebook of DC coefficients (R, G, B) and opacity
  ``sigmoid * 255`` (A);
* ``shN_centroids`` / ``shN_labels`` (SH degree 1 to 3): a palette of up to 65536 SH rest vectors
  (64 entries per row, an entry's coefficient ``j`` at pixel ``(i % 64) * coeffs + j``, its R, G, B
  channels in R, G, B), each value an index into a 256-entry codebook; per Gaussian a 16-bit
  palette index (R low, G high).

Codebooks are 1-D k-means (:func:`splatkit.compress.posttrain.weighted_kmeans`), as the reference
writer's ``quantize1d``; the palette is k-means of the SH rest vectors with the reference's size
(``min(64, 2**floor(log2(N / 1024))) * 1024``) capped at :data:`MAX_FIT_PALETTE` entries to keep
the fit to seconds on a CPU. A model that already has SH codes (``splatkit compress``) gives its
own codebook as the palette instead: no second clustering. Positions keep the axes they are given
in, as the reference writer keeps a PLY's (splatkit writes the PLY's frame, so a SOG of ours
equals splat-transform's conversion of our PLY).

The reader treats files as untrusted: sizes are capped before anything is decompressed or
decoded, ``meta.json`` is checked key by key, image sizes against the count, quaternion modes,
codebook and palette indices against their lengths; every problem is a one-line
:class:`~splatkit.errors.DataError`.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import splatkit
from splatkit.compress.morton import morton_order
from splatkit.compress.posttrain import weighted_kmeans
from splatkit.errors import DataError, SplatkitError
from splatkit.export._shared import FormatExport, logit, read_file_bytes, sigmoid, splat_arrays, to_tensors

SOG_VERSION = 2
MAX_SH_DEGREE = 3
CODEBOOK_SIZE = 256
MAX_PALETTE = 65536  # 16-bit labels
MAX_FIT_PALETTE = 4096
PALETTE_ROW = 64
KMEANS_ITERS = 10
SQRT2 = math.sqrt(2.0)
MAX_FILE_BYTES = 2 << 30
MAX_MEMBER_BYTES = 1 << 30  # uncompressed bytes of one ZIP member
MAX_META_BYTES = 16 << 20
MAX_PIXELS = 1 << 26  # per image: 67 M Gaussians
_FILES = {"means": 2, "scales": 1, "quats": 1, "sh0": 1, "shN": 2}

NOTES = ("positions 16 bits per axis (log-transformed), rotation smallest-three 8 bits, log-scales and colour "
         "through 256-entry codebooks, opacity 8 bits, SH rest through a palette with a 256-entry codebook; "
         "lossless WebP in a ZIP")


def reference_palette_size(n: int) -> int:
    """splat-transform's palette size for ``n`` Gaussians."""
    return int(min(64, 2 ** math.floor(math.log2(max(n, 1) / 1024))) * 1024)


def _grid_size(n: int) -> tuple[int, int]:
    w = math.ceil(math.sqrt(n) / 4) * 4
    return w, math.ceil(n / w / 4) * 4


def _codebook_1d(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(256 sorted centroids, uint8 labels shaped as ``values``): 1-D k-means, each value then labelled
    with its nearest entry (the reference's quantize1d does the same; k-means' own labels come from
    float32 ``cdist``, whose rounding picks the farther of two close entries now and then)."""
    flat = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(-1, 1))
    cent, _ = weighted_kmeans(flat, torch.ones(flat.shape[0]), CODEBOOK_SIZE, iters=KMEANS_ITERS)
    cb = np.sort(cent[:, 0].numpy().astype(np.float64))
    cb = np.concatenate([cb, np.full(CODEBOOK_SIZE - len(cb), cb[-1])])  # fewer distinct values than 256
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    i = np.clip(np.searchsorted(cb, v), 1, CODEBOOK_SIZE - 1)
    labels = np.where(np.abs(v - cb[i - 1]) <= np.abs(v - cb[i]), i - 1, i)
    return cb, labels.astype(np.uint8).reshape(values.shape)


def _log_transform(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _webp(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # exact: keep the RGB of transparent pixels (opacity 0 must not change the colour indices).
    Image.fromarray(rgba, "RGBA").save(buf, format="WEBP", lossless=True, quality=100, method=4, exact=True)
    return buf.getvalue()


def _image(rows: np.ndarray, w: int, h: int, alpha: Optional[np.ndarray] = None) -> np.ndarray:
    """[n, 3] uint8 per Gaussian (+ alpha) -> an [h, w, 4] image, unused pixels 0 (alpha 255)."""
    img = np.zeros((h * w, 4), np.uint8)
    img[:, 3] = 255
    img[:len(rows), :3] = rows
    if alpha is not None:
        img[:len(rows), 3] = alpha
    return img.reshape(h, w, 4)


def encode_sog(splats: dict, sh_degree: int, palette: Optional[tuple[np.ndarray, np.ndarray]] = None
               ) -> tuple[bytes, int, int, int]:
    """``(bundled .sog bytes, Gaussians written, dropped, palette entries)``. ``palette``:
    ``(codebook [K, (d+1)^2-1, 3], labels [N])`` to store the SH rest through instead of fitting one."""
    a, dropped = splat_arrays(splats, sh_degree, MAX_SH_DEGREE, "sog")
    degree = int(sh_degree)
    n = len(a["means"])
    keep = np.ones(n + dropped, bool)
    if palette is not None and dropped:  # splat_arrays dropped rows: drop their labels too
        flat = [torch.as_tensor(splats[k]).detach().reshape(n + dropped, -1).double().numpy() for k in
                ("means", "scales", "quats", "opacities", "sh0", "shN")]
        keep = np.isfinite(np.concatenate(flat, axis=1)).all(axis=1) & (np.linalg.norm(flat[2], axis=1) > 0)
    order = morton_order(a["means"].astype(np.float32))
    a = {k: v[order] for k, v in a.items()}
    w, h = _grid_size(n)
    files: dict[str, bytes] = {}

    lg = _log_transform(a["means"])
    mins, maxs = lg.min(axis=0), lg.max(axis=0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    q16 = np.clip(np.rint(65535.0 * (lg - mins) / span), 0, 65535).astype(np.uint32)
    files["means_l.webp"] = _webp(_image((q16 & 0xFF).astype(np.uint8), w, h))
    files["means_u.webp"] = _webp(_image((q16 >> 8).astype(np.uint8), w, h))

    q = a["quats"]  # unit, w x y z: the PLY's rot_0..rot_3
    largest = np.argmax(np.abs(q), axis=1)
    rows = np.arange(n)
    q = np.where((q[rows, largest] < 0)[:, None], -q, q)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    three = np.take_along_axis(q, others, axis=1) * SQRT2
    files["quats.webp"] = _webp(_image(np.clip(np.rint(255.0 * (three * 0.5 + 0.5)), 0, 255).astype(np.uint8), w, h,
                                       (252 + largest).astype(np.uint8)))

    scale_cb, scale_idx = _codebook_1d(a["scales"])
    files["scales.webp"] = _webp(_image(scale_idx, w, h))
    sh0_cb, sh0_idx = _codebook_1d(a["sh0"])
    alpha = np.clip(np.rint(sigmoid(a["opacities"]) * 255.0), 0, 255).astype(np.uint8)
    files["sh0.webp"] = _webp(_image(sh0_idx, w, h, alpha))

    meta: dict = {"version": SOG_VERSION, "asset": {"generator": f"splatkit {splatkit.__version__}"}, "count": n,
                  "antialias": False,
                  "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
                  "scales": {"codebook": scale_cb.tolist(), "files": ["scales.webp"]},
                  "quats": {"files": ["quats.webp"]},
                  "sh0": {"codebook": sh0_cb.tolist(), "files": ["sh0.webp"]}}
    k_pal = 0
    if degree > 0:
        coeffs = (degree + 1) ** 2 - 1
        if palette is not None:
            cb = np.asarray(palette[0], dtype=np.float64).reshape(-1, coeffs, 3)
            labels = np.asarray(palette[1]).reshape(-1)[keep][order]
            if len(cb) > MAX_PALETTE or labels.size != n or (labels.size and labels.max() >= len(cb)):
                raise SplatkitError(f"SOG palette must have at most {MAX_PALETTE} entries and one label per Gaussian")
        else:
            k = min(reference_palette_size(n), MAX_FIT_PALETTE, n)
            x = torch.from_numpy(a["shN"].reshape(n, -1).astype(np.float32))
            cent, lab = weighted_kmeans(x, torch.ones(n), k, iters=KMEANS_ITERS)
            cb, labels = cent.numpy().astype(np.float64).reshape(-1, coeffs, 3), lab.numpy()
        k_pal = len(cb)
        sh_cb, sh_idx = _codebook_1d(cb)  # [K, coeffs, 3] indices
        ph = math.ceil(k_pal / PALETTE_ROW)
        cimg = np.zeros((ph * PALETTE_ROW, coeffs, 4), np.uint8)
        cimg[:, :, 3] = 255
        cimg[:k_pal, :, :3] = sh_idx
        files["shN_centroids.webp"] = _webp(cimg.reshape(ph, PALETTE_ROW * coeffs, 4))
        lab16 = labels.astype(np.uint32)
        files["shN_labels.webp"] = _webp(_image(np.stack([lab16 & 0xFF, lab16 >> 8, np.zeros_like(lab16)], axis=1)
                                                .astype(np.uint8), w, h))
        meta["shN"] = {"count": k_pal, "bands": degree, "codebook": sh_cb.tolist(),
                       "files": ["shN_centroids.webp", "shN_labels.webp"]}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("meta.json", (1980, 1, 1, 0, 0, 0)), json.dumps(meta), zipfile.ZIP_DEFLATED)
        for name, data in files.items():  # WebP is compressed already
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_STORED)
    return buf.getvalue(), n, dropped, k_pal


def write_sog(path: str | Path, splats: dict, sh_degree: int,
              palette: Optional[tuple[np.ndarray, np.ndarray]] = None) -> FormatExport:
    """Write a bundled ``.sog`` atomically (see the module docstring)."""
    from splatkit.utils.atomic import write_bytes_atomic

    data, written, dropped, k = encode_sog(splats, sh_degree, palette)
    path = Path(path)
    write_bytes_atomic(path, data)
    notes = NOTES + (f"; SH palette of {k} entries" + (" (the model's own SH codebook)" if palette is not None else "")
                     if k else "")
    return FormatExport(path, "sog", written, dropped, int(sh_degree), notes)


def sog_palette(model, normalization) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The SH palette a coded model brings (``model.rvq["shN"]`` with one stage), in the user's
    frame: rotating SH is linear and the same for every Gaussian, so the rotated codebook with the
    same labels is the rotated model. None for a model without such codes."""
    from splatkit.export.ply import splats_to_original_frame

    code = getattr(model, "rvq", {}).get("shN")
    if code is None or code.codebooks.shape[0] != 1 or model.sh_degree == 0:
        return None
    k = code.codebooks.shape[1]
    coeffs = (model.sh_degree + 1) ** 2 - 1
    dummy = {"means": torch.zeros(k, 3), "scales": torch.zeros(k, 3),
             "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(k, 1),
             "opacities": torch.zeros(k), "sh0": torch.zeros(k, 1, 3),
             "shN": torch.from_numpy(code.codebooks[0].reshape(k, coeffs, 3).astype(np.float32))}
    rotated = splats_to_original_frame(dummy, normalization, model.sh_degree)["shN"]
    return rotated.numpy(), np.asarray(code.indices[:, 0])


# -- reading ------------------------------------------------------------------------------------
def _fail(path, msg: str) -> DataError:
    return DataError(f"invalid SOG: {msg}", path)


def _num_list(v, length: Optional[int] = None, lo: int = 1, hi: int = CODEBOOK_SIZE) -> bool:
    if not isinstance(v, list):
        return False
    if not (len(v) == length if length is not None else lo <= len(v) <= hi):
        return False
    return all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) < 1e30 for x in v)


def _check_meta(meta, path) -> None:
    if not isinstance(meta, dict):
        raise _fail(path, "meta.json must be a JSON object")
    if meta.get("version") != SOG_VERSION:
        raise _fail(path, f"version {meta.get('version')!r}; this reader reads version {SOG_VERSION}")
    n = meta.get("count")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_PIXELS:
        raise _fail(path, f"count must be an integer in 1..{MAX_PIXELS}, got {n!r}")
    for key in ("means", "scales", "quats", "sh0") + (("shN",) if "shN" in meta else ()):
        sec = meta.get(key)
        if not isinstance(sec, dict):
            raise _fail(path, f"meta.json needs an object {key!r}")
        files = sec.get("files")
        if not isinstance(files, list) or len(files) != _FILES[key] or not all(
                isinstance(f, str) and 0 < len(f) <= 256 for f in files):
            raise _fail(path, f"{key}.files must list {_FILES[key]} file name(s)")
    m = meta["means"]
    if not (_num_list(m.get("mins"), 3) and _num_list(m.get("maxs"), 3)):
        raise _fail(path, "means.mins and means.maxs must be 3 finite numbers each")
    for key in ("scales", "sh0") + (("shN",) if "shN" in meta else ()):
        if not _num_list(meta[key].get("codebook")):
            raise _fail(path, f"{key}.codebook must be 1..{CODEBOOK_SIZE} finite numbers")
    if "shN" in meta:
        s = meta["shN"]
        for key, hi in (("count", MAX_PALETTE), ("bands", MAX_SH_DEGREE)):
            v = s.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                raise _fail(path, f"shN.{key} must be an integer in 1..{hi}, got {v!r}")


def _load_image(data: bytes, name: str, path, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """RGBA uint8 [H, W, 4] of an 8-bit image, its size checked before it is decoded."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise _fail(path, f"{name} is {w}x{h}, over {MAX_PIXELS} pixels")
        if size is not None and (w, h) != size:
            raise _fail(path, f"{name} is {w}x{h}, expected {size[0]}x{size[1]}")
        if im.mode not in ("RGB", "RGBA"):
            raise _fail(path, f"{name} has pixel mode {im.mode}, expected 8-bit RGB(A)")
        return np.asarray(im.convert("RGBA"))
    except DataError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _fail(path, f"{name} is not a readable image ({exc})")


def decode_sog(files: dict[str, bytes], path=None) -> tuple[dict, int]:
    """``(splats, sh_degree)`` of a SOG's files (``meta.json`` and the images it names)."""
    if "meta.json" not in files:
        raise _fail(path, "no meta.json")
    try:
        meta = json.loads(files["meta.json"].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise _fail(path, f"meta.json is not valid JSON ({str(exc)[:80]})")
    _check_meta(meta, path)
    n = meta["count"]

    def image(name: str, size=None) -> np.ndarray:
        if name not in files:
            raise _fail(path, f"{name} is missing (named in meta.json)")
        return _load_image(files[name], name, path, size)

    ml = image(meta["means"]["files"][0])
    size = (ml.shape[1], ml.shape[0])
    if n > size[0] * size[1]:
        raise _fail(path, f"count {n} is more than the {size[0]}x{size[1]} pixels of the images")

    def rows(img: np.ndarray) -> np.ndarray:
        return img.reshape(-1, 4)[:n].astype(np.int64)

    mu = rows(image(meta["means"]["files"][1], size))
    q16 = (mu[:, :3] << 8) | rows(ml)[:, :3]
    mins, maxs = np.asarray(meta["means"]["mins"]), np.asarray(meta["means"]["maxs"])
    nl = mins + (maxs - mins) * q16 / 65535.0
    means = np.sign(nl) * np.expm1(np.abs(nl))
    if not np.isfinite(means).all():
        raise _fail(path, "positions decode outside the float range")

    qi = rows(image(meta["quats"]["files"][0], size))
    mode = qi[:, 3] - 252
    if ((mode < 0) | (mode > 3)).any():
        raise _fail(path, "quats.webp alpha must be 252..255 (the smallest-three mode)")
    three = (qi[:, :3] / 255.0 - 0.5) * 2.0 / SQRT2
    d = np.sqrt(np.maximum(0.0, 1.0 - (three ** 2).sum(axis=1)))
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[mode]
    quats = np.zeros((n, 4))
    np.put_along_axis(quats, others, three, axis=1)
    quats[np.arange(n), mode] = d

    def lookup(cb: list, idx: np.ndarray, what: str) -> np.ndarray:
        if idx.size and idx.max() >= len(cb):
            raise _fail(path, f"{what} index past its {len(cb)}-entry codebook")
        return np.asarray(cb, dtype=np.float64)[idx]

    scales = lookup(meta["scales"]["codebook"], rows(image(meta["scales"]["files"][0], size))[:, :3], "scales")
    s0 = rows(image(meta["sh0"]["files"][0], size))
    sh0 = lookup(meta["sh0"]["codebook"], s0[:, :3], "sh0")
    opacities = logit(s0[:, 3] / 255.0, 0.5 / 255.0)
    degree = 0
    shN = np.zeros((n, 0, 3))
    if "shN" in meta:
        s = meta["shN"]
        degree, k = s["bands"], s["count"]
        coeffs = (degree + 1) ** 2 - 1
        ph = math.ceil(k / PALETTE_ROW)
        cent = image(s["files"][0])
        if cent.shape[1] != PALETTE_ROW * coeffs or cent.shape[0] < ph:
            raise _fail(path, f"{s['files'][0]} is {cent.shape[1]}x{cent.shape[0]}, a {k}-entry palette of "
                              f"{coeffs} coefficients needs {PALETTE_ROW * coeffs}x{ph}")
        pal = lookup(s["codebook"], cent[:ph].reshape(ph * PALETTE_ROW, coeffs, 4)[:k, :, :3].astype(np.int64),
                     "shN palette")
        lab = rows(image(s["files"][1], size))
        labels = lab[:, 0] | (lab[:, 1] << 8)
        if labels.max() >= k:
            raise _fail(path, f"an SH label is past the {k}-entry palette")
        shN = pal[labels]
    return to_tensors(means, scales, quats, opacities, sh0, shN), degree


def read_sog(path: str | Path) -> tuple[dict, int]:
    """Read a bundled ``.sog`` (ZIP) or an unbundled SOG's ``meta.json`` (images beside it) into
    gsplat-named float32 tensors and the SH degree."""
    path = Path(path)
    if path.name.lower().endswith(".json"):
        if not path.is_file():
            raise DataError("SOG meta.json not found", path)
        try:
            meta_bytes = path.read_bytes() if path.stat().st_size <= MAX_META_BYTES else None
        except OSError as exc:
            raise DataError(f"cannot read SOG file ({exc.strerror or exc})", path)
        if meta_bytes is None:
            raise _fail(path, f"meta.json is over {MAX_META_BYTES} bytes")
        files = {"meta.json": meta_bytes}
        try:
            meta = json.loads(meta_bytes.decode("utf-8"))
        except (ValueError, RecursionError):
            meta = None
        if isinstance(meta, dict):
            for sec in meta.values():
                for name in (sec.get("files") or []) if isinstance(sec, dict) else []:
                    f = path.parent / str(name)
                    if isinstance(name, str) and "/" not in name and "\\" not in name and f.is_file() \
                            and f.stat().st_size <= MAX_MEMBER_BYTES:
                        files[name] = f.read_bytes()
        return decode_sog(files, path)
    data = read_file_bytes(path, "SOG")
    if len(data) > MAX_FILE_BYTES:
        raise _fail(path, f"file is over {MAX_FILE_BYTES} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if len(infos) > 64:
                raise _fail(path, f"{len(infos)} archive members; a SOG has at most 8")
            total = 0
            files = {}
            for info in infos:
                total += info.file_size
                if info.file_size > MAX_MEMBER_BYTES or total > MAX_FILE_BYTES:
                    raise _fail(path, f"archive member {info.filename!r} declares {info.file_size} bytes, "
                                      "over the limit")
                raw = z.read(info)
                if len(raw) != info.file_size:
                    raise _fail(path, f"archive member {info.filename!r} does not match its declared size")
                files[info.filename] = raw
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, RuntimeError,
            ValueError, zlib.error, struct.error) as exc:  # what zipfile raises on damaged archives
        raise _fail(path, f"not a readable ZIP archive ({exc})")
    return decode_sog(files, path)
