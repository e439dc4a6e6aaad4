"""Where depth priors come from: files beside the dataset, or a monocular depth estimator.

Convention for a depth PRIOR map: float32 [H, W] at the view's image size, ordered like depth
(larger = farther), NaN = unknown. Its scale and shift are unknown, so the regularisers that use
it must be invariant to them (e.g. Pearson correlation as in FSGS, or a fitted scale and shift).

Sources declare what their values are:

* ``kind="depth"`` (the default for files): z-depth, or any value that grows with depth.
* ``kind="inverse"``: disparity / inverse depth, what relative monocular models (Depth Anything,
  MiDaS/DPT) output. It is converted by negation, which keeps the order without amplifying noise
  near zero as ``1/x`` would (FSGS likewise correlates the negated disparity with rendered depth).

In files of either kind a stored 0 or a non-finite value means unknown (see
:mod:`splatkit.data.depth_io`); so does 0 in a model's inverse output (sky: infinitely far).

Monocular models load strictly offline through ``transformers.AutoModelForDepthEstimation``: from a
local ``save_pretrained`` folder or from the Hugging Face cache. Their predictions are cached on disk
under ``$SPLATKIT_CACHE_DIR/depth`` (default ``~/.cache/splatkit/depth``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from splatkit.data.depth_io import DEPTH_SUFFIXES, find_depth_file, read_depth_file
from splatkit.errors import DataError, SplatkitError
from splatkit.utils.atomic import atomic_path
from splatkit.utils.hf_offline import cached_snapshot, is_repo_id, not_available

KINDS = ("metric", "depth", "inverse")  # splatkit.data.depth_io.DEPTH_KINDS; metric orders like depth

MODEL_ALIASES = {
    "depth-anything-v2-small": "depth-anything/Depth-Anything-V2-Small-hf",
    "depth-anything-v2-base": "depth-anything/Depth-Anything-V2-Base-hf",
    "depth-anything-v2-large": "depth-anything/Depth-Anything-V2-Large-hf",
    "dpt-hybrid-midas": "Intel/dpt-hybrid-midas",
    "dpt-large": "Intel/dpt-large",
}

# ImageNet statistics (torchvision's / timm's IMAGENET_DEFAULT_MEAN/STD), the default of DPT-style
# processors when a model folder has no preprocessor_config.json.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Model types whose output is metric depth even without ``depth_estimation_type == "metric"``.
_METRIC_MODEL_TYPES = {"zoedepth"}


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise SplatkitError(f"depth prior kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def to_prior(values: np.ndarray, kind: str) -> np.ndarray:
    """A raw depth-like map of ``kind`` as a prior map: float32, larger = farther, NaN = unknown."""
    _check_kind(kind)
    d = np.array(values, dtype=np.float32, copy=True)
    d[~np.isfinite(d)] = np.nan
    if kind == "inverse":
        d[d == 0] = np.nan
        d = -d
    return d


# -- resizing -----------------------------------------------------------------------------------
def resize_prior(prior: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize that ignores unknown (NaN) pixels: values and validity are interpolated
    separately and a pixel is kept where the interpolated validity exceeds 0.5."""
    import torch
    import torch.nn.functional as F

    h0, w0 = prior.shape
    if (w0, h0) == (width, height):
        return prior.astype(np.float32)
    valid = np.isfinite(prior)
    v = torch.from_numpy(np.where(valid, prior, 0.0).astype(np.float32))
    m = torch.from_numpy(valid.astype(np.float32))
    x = torch.stack([v * m, m])[None]
    # Antialiasing (a wider triangle filter) only when shrinking, else plain bilinear.
    aa = width < w0 or height < h0
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=aa)[0]
    num, den = y[0].numpy(), y[1].numpy()
    out = np.full((height, width), np.nan, np.float32)
    keep = den > 0.5
    out[keep] = num[keep] / den[keep]
    return out


# -- files --------------------------------------------------------------------------------------
def load_prior_files(scene, folder: Optional[str | Path] = None, kind: Optional[str] = "depth") -> list[np.ndarray]:
    """One prior map per view from ``folder/<view name>.{npy,png,pfm}`` (default ``scene.root/depth``),
    resized to the view's image size. ``kind`` None: what the folder's ``kind.txt`` declares, else
    relative depth."""
    from splatkit.data.depth_io import declared_depth_kind

    if folder is None:
        if scene.root is None:
            raise SplatkitError("the scene has no root folder; give the depth prior folder explicitly")
        folder = Path(scene.root) / "depth"
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("depth prior folder does not exist", folder)
    kind = _check_kind(kind if kind is not None else (declared_depth_kind(folder) or "depth"))
    paths = [find_depth_file(folder, name) for name in scene.names]
    missing = [name for name, p in zip(scene.names, paths) if p is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"no depth prior file for {len(missing)} of {len(paths)} views ({shown}); "
                        f"expected <view name>{'/'.join(DEPTH_SUFFIXES)}", folder)
    out = []
    for img, p in zip(scene.images, paths):
        h, w = img.shape[:2]
        out.append(resize_prior(to_prior(read_depth_file(p), kind), w, h))
    return out


# -- monocular models ---------------------------------------------------------------------------
def default_cache_dir() -> Path:
    env = os.environ.get("SPLATKIT_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "splatkit") / "depth"


def _not_available(name: str, repo: Optional[str], why: str) -> SplatkitError:
    how = None if repo is not None else (
        "pass one of " + ", ".join(MODEL_ALIASES) + ", a Hugging Face repo id present in the local "
        "cache, or the path of a folder saved with save_pretrained")
    return not_available("depth model", name, repo, why, how)


def _resolve_model(name: str) -> tuple[Path, str]:
    """(local model folder, human-readable model id) for an alias, repo id or folder path."""
    repo = MODEL_ALIASES.get(name.lower())
    p = Path(name).expanduser()
    if repo is None and p.is_dir():
        if not (p / "config.json").is_file():
            raise SplatkitError("not a saved depth model folder (no config.json)", p)
        return p.resolve(), p.resolve().name
    if repo is None and is_repo_id(name):
        repo = name
    if repo is None:
        raise _not_available(name, None, "not a known model alias, a repo id or an existing folder")
    snap = cached_snapshot(repo)
    if snap is None:
        where = "" if name.lower() in MODEL_ALIASES else f"no folder {name!r} exists and "
        raise _not_available(name, repo, f"{where}{repo} is not in the local Hugging Face cache")
    return snap, repo


def _model_key(label: str, folder: Path) -> str:
    """Cache folder name: readable label plus a hash of the configs and weight files (name, size,
    mtime), so retrained or replaced weights never reuse stale predictions."""
    h = hashlib.sha1(str(folder).encode())
    for fname in ("config.json", "preprocessor_config.json"):
        f = folder / fname
        if f.is_file():
            h.update(f.read_bytes())
    for f in sorted(folder.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".pt", ".pth") and f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    slug = re.sub(r"[^\w.-]+", "--", label).strip("-") or "model"
    return f"{slug}-{h.hexdigest()[:12]}"


def _image_key(image: np.ndarray) -> str:
    h = hashlib.sha1(f"{image.shape}:{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


class MonocularDepth:
    """A depth estimator from transformers' ``AutoModelForDepthEstimation``, run without its image
    processor (the fast processors need torchvision): resizing and normalisation follow the model's
    saved ``preprocessor_config.json``, or DPT's defaults when there is none."""

    def __init__(self, model, *, key: str, kind: str, size: tuple[int, int], keep_aspect_ratio: bool,
                 multiple: int, mean: Sequence[float], std: Sequence[float], pixel_scale: float,
                 resample: str, device: str = "cpu", cache_dir: Optional[str | Path] = None):
        self.model = model
        self.key = key
        self.kind = _check_kind(kind)
        self.size = size  # (height, width) target of the resize
        self.keep_aspect_ratio = keep_aspect_ratio
        self.multiple = multiple
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.pixel_scale = pixel_scale  # model input = image in [0, 1] * pixel_scale, then normalised
        self.resample = resample
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    @classmethod
    def load(cls, name_or_path: str, device: str = "cpu", *,
             cache_dir: Optional[str | Path] = None) -> "MonocularDepth":
        """Load an alias (see :data:`MODEL_ALIASES`), a Hugging Face repo id present in the local
        cache, or a ``save_pretrained`` folder; never downloads."""
        name = str(name_or_path)
        folder, label = _resolve_model(name)
        # Belt and braces with local_files_only: nothing below may touch the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModelForDepthEstimation
        except ImportError as exc:
            raise SplatkitError(f"monocular depth needs transformers and torch ({exc})")
        try:
            model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # OSError (missing weights), ValueError/KeyError (unknown model type)
            raise SplatkitError(f"cannot load depth model {name!r} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})", folder)
        try:
            model = model.to(device=torch.device(device), dtype=torch.float32).eval()
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise SplatkitError(f"cannot use device {device!r} for the depth model "
                                f"({(str(exc).splitlines() or [''])[0][:200]})")
        cfg = model.config
        metric = (getattr(cfg, "depth_estimation_type", None) == "metric"
                  or getattr(cfg, "model_type", "") in _METRIC_MODEL_TYPES)

        proc = {}
        pfile = folder / "preprocessor_config.json"
        if pfile.is_file():
            try:
                proc = json.loads(pfile.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot parse preprocessor config ({type(exc).__name__})", pfile)
            if not isinstance(proc, dict):
                raise DataError("preprocessor config is not a JSON object", pfile)
        backbone = getattr(cfg, "backbone_config", None)
        patch = getattr(cfg, "patch_size", None) or getattr(backbone, "patch_size", None) or 1
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        default_side = int(getattr(backbone, "image_size", None) or getattr(cfg, "image_size", None) or 384)
        size = proc.get("size", {"height": default_side, "width": default_side})
        if isinstance(size, (int, float)):
            size = {"height": int(size), "width": int(size)}
        if not isinstance(size, dict):
            size = {}
        if "height" in size and "width" in size:
            target = (int(size["height"]), int(size["width"]))
        else:  # {"shortest_edge": n}: a square target with the aspect ratio kept
            side = int(size.get("shortest_edge", default_side))
            target = (side, side)
        if not proc.get("do_resize", True):
            target = None  # keep the image size, only snap it to the multiple
        keep = bool(proc.get("keep_aspect_ratio", not proc))  # DA/MiDaS keep it; DPT's class default does not
        # transformers' DPT with its built-in ViT (dpt-large) or a hybrid backbone (dpt-hybrid-midas)
        # folds the token sequence back into a sqrt(n) x sqrt(n) grid: square inputs only.
        if getattr(cfg, "model_type", "") == "dpt" and (backbone is None or getattr(cfg, "is_hybrid", False)):
            side = target[0] if target is not None else default_side
            target, keep = (side, side), False
        multiple = int(proc.get("ensure_multiple_of", 1) or 1)
        if proc.get("do_pad") and proc.get("size_divisor"):
            multiple = math.lcm(multiple, int(proc["size_divisor"]))
        multiple = math.lcm(multiple, patch)  # the backbone cuts the input into whole patches
        if proc.get("do_normalize", True):
            mean, std = proc.get("image_mean", IMAGENET_MEAN), proc.get("image_std", IMAGENET_STD)
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        pixel_scale = 255.0 * float(proc.get("rescale_factor", 1 / 255)) if proc.get("do_rescale", True) else 255.0
        # PIL resampling codes: 2 = bilinear, 3 = bicubic (the DPT default); others -> bicubic.
        resample = {0: "nearest", 2: "bilinear"}.get(proc.get("resample", 3), "bicubic")
        return cls(model, key=_model_key(label, folder), kind="depth" if metric else "inverse",
                   size=target, keep_aspect_ratio=keep, multiple=multiple, mean=mean, std=std,
                   pixel_scale=pixel_scale, resample=resample, device=device, cache_dir=cache_dir)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network sees: DPT/MiDaS's rule (scale as little as possible when
        keeping the aspect ratio, then round each side to the nearest multiple)."""
        th, tw = self.size if self.size is not None else (height, width)
        sh, sw = th / height, tw / width
        if self.keep_aspect_ratio:
            if abs(1 - sw) < abs(1 - sh):
                sh = sw
            else:
                sw = sh
        m = self.multiple
        return (max(m, int(round(sh * height / m)) * m), max(m, int(round(sw * width / m)) * m))

    def _run(self, image: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(self.device)
        ih, iw = self.input_size(h, w)
        if (ih, iw) != (h, w):
            kw = {} if self.resample == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=(ih, iw), mode=self.resample, **kw).clamp(0.0, 1.0)
        x = x * self.pixel_scale
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        with torch.no_grad():
            out = self.model(pixel_values=x)
        pred = out.predicted_depth if hasattr(out, "predicted_depth") else out[0]
        pred = pred.reshape(1, 1, *pred.shape[-2:]).float()
        # Back to the image size as transformers' post_process_depth_estimation does (bicubic).
        pred = F.interpolate(pred, size=(h, w), mode="bicubic", align_corners=False)
        return pred[0, 0].cpu().numpy().astype(np.float32)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Raw model output float32 [H, W] for an RGB image [H, W, 3] (float in [0, 1] or uint8);
        :attr:`kind` says whether it is depth or inverse depth. Cached on disk per model and image."""
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[-1] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
            raise SplatkitError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
        img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        path = self.cache_dir / self.key / f"{_image_key(img)}.npy"
        if path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.shape == img.shape[:2]:
                    return cached.astype(np.float32)
            except Exception:  # a damaged cache entry is recomputed and overwritten
                pass
        pred = self._run(img)
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, pred)  # a file object: np.save would append ".npy" to a tmp name
        except OSError:
            pass  # an unwritable cache only costs recomputation
        return pred


# -- one entry point ----------------------------------------------------------------------------
def depth_priors_for_scene(scene, source: str, *, kind: Optional[str] = "depth", folder: Optional[str | Path] = None,
                           device: str = "cpu", cache_dir: Optional[str | Path] = None
                           ) -> Optional[list[np.ndarray]]:
    """Prior maps (larger = farther, NaN = unknown, image size) for every view of ``scene``.

    ``source``: ``"none"`` (returns None), ``"files"`` (:func:`load_prior_files` with ``folder``
    and ``kind``), ``"mvs"`` (plane-sweep stereo between the views,
    :func:`splatkit.data.mvs.stereo_depths`: sparse, metric) or a model alias / repo id / folder
    (:class:`MonocularDepth`; the kind comes from the model, ``kind`` is ignored).
    """
    src = str(source).strip()
    if src.lower() == "none":
        return None
    if src.lower() == "files":
        return load_prior_files(scene, folder, kind)
    if src.lower() == "mvs":
        # No network: the training views' own plane-sweep stereo, metric z-depth where two views
        # agree (splatkit.data.mvs; the same sweep as init "mvs"), unknown elsewhere.
        from splatkit.data.mvs import stereo_depths

        maps, _ = stereo_depths(scene)
        return [np.where(m > 0, m, np.nan).astype(np.float32) for m in maps]
    model = MonocularDepth.load(src, device, cache_dir=cache_dir)
    return [to_prior(model.predict(img), model.kind) for img in scene.images]


# -- simulated monocular estimates ----------------------------------------------------------------
def _nan_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    valid = np.isfinite(x)
    num = gaussian_filter(np.where(valid, x, 0.0), sigma, mode="nearest")
    den = gaussian_filter(valid.astype(np.float64), sigma, mode="nearest")
    out = np.full(x.shape, np.nan)
    np.divide(num, den, out=out, where=valid & (den > 1e-6))
    return out


def degrade_depth(depth: np.ndarray, rng, *, noise: float = 0.02, blur_sigma: float = 1.5) -> np.ndarray:
    """Simulate a relative monocular estimate from true z-depth (0 or NaN = unknown).

    Returns an INVERSE-depth map (kind ``"inverse"``) with NaN where the input was unknown: true
    inverse depth normalised to [0, 1], bent by a random monotone curve (a power with exponent in
    [0.6, 1.6] blended with a random increasing piecewise-linear curve), given a random unknown
    scale and shift, blurred (NaN-aware Gaussian, ``blur_sigma`` pixels) and perturbed by
    multiplicative and additive Gaussian noise of relative size ``noise``. ``rng`` is a
    ``numpy.random.Generator`` (or a seed); the result depends only on its state.
    """
    rng = np.random.default_rng(rng)
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise SplatkitError(f"expected a 2D depth map, got shape {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    out = np.full(d.shape, np.nan, np.float32)
    if not valid.any():
        return out
    inv = np.where(valid, 1.0 / np.where(valid, d, 1.0), np.nan)
    lo, hi = np.nanmin(inv), np.nanmax(inv)
    t = (inv - lo) / (hi - lo) if hi > lo else np.where(valid, 0.5, np.nan)

    # Random monotone warp of [0, 1] onto [0, 1]. The piecewise-linear part keeps every slope
    # >= 0.3x its mean, so the blend stays strictly increasing (order kept) while the power
    # exponent and the uneven slopes make the map clearly non-affine.
    p = rng.uniform(0.6, 1.6)
    knots_y = np.concatenate([[0.0], np.cumsum(rng.uniform(0.3, 1.7, 6))])
    knots_y /= knots_y[-1]
    knots_x = np.linspace(0.0, 1.0, knots_y.size)
    a = rng.uniform(0.3, 0.7)
    tc = np.clip(np.nan_to_num(t), 0.0, 1.0)
    g = a * tc ** p + (1 - a) * np.interp(tc, knots_x, knots_y)

    scale = math.exp(rng.uniform(math.log(0.1), math.log(10.0)))
    shift = rng.uniform(0.0, 0.5) * scale
    v = np.where(valid, scale * g + shift, np.nan)
    if blur_sigma > 0:
        v = _nan_gaussian(v, blur_sigma)
    n_mul = rng.standard_normal(d.shape)
    n_add = rng.standard_normal(d.shape)
    v = v * (1.0 + noise * n_mul) + noise * 0.25 * scale * n_add
    out[valid] = v[valid].astype(np.float32)
    return out
