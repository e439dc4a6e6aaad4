"""``transforms.json`` in its three common flavours.

* instant-ngp: ``fl_x``/``fl_y`` or ``camera_angle_x``/``camera_angle_y``, ``cx``, ``cy``, ``w``,
  ``h``, distortion ``k1 k2 p1 p2``; any of them may be overridden per frame. Distortion is kept
  in ``Cameras.distortion`` but not applied (non-zero coefficients give a warning).
* nerfstudio: the same keys plus ``camera_model`` and ``k3``; ``file_path`` relative to the json,
  optional per-frame ``mask_path``; ``train_filenames``/``val_filenames``/``test_filenames``
  become ``Scene.splits``. A prebuilt ``images_{d}`` folder replaces ``images/`` for downscale d.
* Blender / NeRF-synthetic: ``transforms_{train,val,test}.json`` with ``camera_angle_x`` only and
  ``file_path`` without extension (``./train/r_0``); the splits go to ``Scene.splits``.

``transform_matrix`` is camera-to-world in OpenGL axes. Without ``cx``/``cy`` the principal point
is the image centre ``(w/2, h/2)`` in corner-origin pixel coordinates (nerfstudio's and
instant-ngp's convention, the same as ours). RGBA images are composited on white, and their
alpha becomes ``Scene.masks`` when there are no mask files. Frames whose image is missing are
skipped with a warning. Ids are frame indices in file order, running across train, val, test.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from splatkit.data.cameras import opengl_to_opencv
from splatkit.data.imageio_utils import IMAGE_SUFFIXES
from splatkit.data.readers._common import (
    DEPTH_DIR, MASK_DIRS, ViewSpec, assemble_scene, attach_extras, image_size, validate_pose,
)
from splatkit.data.scene import Scene
from splatkit.errors import DataError

NAME = "transforms"
SPLITS = ("train", "val", "test")
WHITE = (1.0, 1.0, 1.0)
# nerfstudio/COLMAP model names that are plain pinhole projections (+ OpenCV distortion).
PERSPECTIVE_MODELS = {"OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "PERSPECTIVE"}


def detect(root: Path) -> bool:
    root = Path(root)
    return (root / "transforms.json").is_file() or (root / "transforms_train.json").is_file()


def _load_json(path: Path) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg} at line {exc.lineno})", path)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read ({type(exc).__name__}: {exc})", path)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise DataError("expected a JSON object with a 'frames' list", path)
    return meta


def _resolve_image(base: Path, file_path: str, downscale: int) -> tuple[Path | None, bool]:
    """The image file for ``file_path`` (Blender paths lack the extension) and whether it came
    from a prebuilt ``images_{downscale}`` folder."""
    rel = Path(file_path)
    candidates = []
    # pathlib drops "." components, so "./images/a.png" has parts ("images", "a.png").
    if downscale > 1 and len(rel.parts) > 1 and rel.parts[0] == "images":
        candidates.append((base / f"images_{downscale}" / Path(*rel.parts[1:]), True))
    candidates.append((base / rel, False))
    for path, pre in candidates:
        if path.is_file():
            return path, pre
        for ext in IMAGE_SUFFIXES:
            alt = path.with_name(path.name + ext)
            if alt.is_file():
                return alt, pre
    return None, False


def _number(value, key: str, where: str, path: Path) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: '{key}' is not a number ({value!r})", path)
    if not math.isfinite(x):
        raise DataError(f"{where}: '{key}' is not finite", path)
    return x


def _intrinsics(meta: dict, frame: dict, image: Path, where: str, path: Path):
    """(K, (w, h), distortion) with per-frame values overriding the file's."""

    def get(key):
        v = frame.get(key, meta.get(key))
        return None if v is None else _number(v, key, where, path)

    model = str(frame.get("camera_model", meta.get("camera_model", "OPENCV"))).upper()
    if model not in PERSPECTIVE_MODELS or frame.get("is_fisheye", meta.get("is_fisheye", False)):
        raise DataError(f"{where}: camera model {model if model not in PERSPECTIVE_MODELS else 'fisheye'} "
                        "is not supported (pinhole/OpenCV only)", path)
    w, h = get("w"), get("h")
    if w is None or h is None:
        w, h = image_size(image)
    fx, fy = get("fl_x"), get("fl_y")
    ax, ay = get("camera_angle_x"), get("camera_angle_y")
    if fx is None and ax is not None:
        fx = 0.5 * w / math.tan(0.5 * ax)
    if fy is None and ay is not None:
        fy = 0.5 * h / math.tan(0.5 * ay)
    if fx is None and fy is None:
        raise DataError(f"{where}: no focal length (needs fl_x or camera_angle_x)", path)
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    cx = get("cx")
    cy = get("cy")
    cx = w / 2.0 if cx is None else cx
    cy = h / 2.0 if cy is None else cy
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    coeffs = [get(k) or 0.0 for k in ("k1", "k2", "p1", "p2", "k3")]
    dist = np.array(coeffs) if any(coeffs) else None
    return K, (int(round(w)), int(round(h))), dist


def read(root: Path, downscale: int = 1) -> Scene:
    root = Path(root)
    if (root / "transforms_train.json").is_file():
        files = [(s, root / f"transforms_{s}.json") for s in SPLITS if (root / f"transforms_{s}.json").is_file()]
    elif (root / "transforms.json").is_file():
        files = [(None, root / "transforms.json")]
    else:
        raise DataError("no transforms.json or transforms_train.json", root)

    views: list[ViewSpec] = []
    splits: dict[str, list[int]] = {}
    frame_index = 0  # ids run across the split files
    prebuilt = []
    for split, jpath in files:
        meta = _load_json(jpath)
        base = jpath.parent
        missing = []
        file_of_id = {}
        for frame in meta["frames"]:
            idx = frame_index
            frame_index += 1
            if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
                raise DataError(f"frame {idx}: needs 'file_path' and 'transform_matrix'", jpath)
            fp = str(frame["file_path"])
            where = f"frame {idx} ({fp})"
            try:
                c2w_gl = np.asarray(frame["transform_matrix"], dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{where}: transform_matrix is not a numeric matrix", jpath)
            c2w_gl = validate_pose(c2w_gl, where, jpath)
            image, pre = _resolve_image(base, fp, downscale)
            if image is None:
                missing.append(fp)
                continue
            K, size, dist = _intrinsics(meta, frame, image, where, jpath)
            mask_path = None
            if frame.get("mask_path"):
                mask_path = base / str(frame["mask_path"])
                if not mask_path.is_file():
                    raise DataError(f"{where}: mask file is missing", mask_path)
            views.append(ViewSpec(image_path=image, K=K, c2w=opengl_to_opencv(c2w_gl), id=idx, size=size,
                                  distortion=dist, mask_path=mask_path, background=WHITE))
            prebuilt.append(pre)
            file_of_id[idx] = fp
            if split is not None:
                splits.setdefault(split, []).append(idx)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            warnings.warn(f"{jpath}: skipping {len(missing)} frame(s) whose image file is missing: {shown}",
                          stacklevel=2)
        if split is None:
            splits.update(_named_splits(meta, file_of_id))
    if not views:
        raise DataError(f"none of the {frame_index} frames has an existing image file", files[0][1])
    # A downscale applies uniformly: either every frame came from images_{d} or none did.
    remaining = downscale
    if any(prebuilt):
        if not all(prebuilt):
            raise DataError(f"images_{downscale}/ lacks some of the frames' images; "
                            "complete it or remove it", root / f"images_{downscale}")
        remaining = 1
    attach_extras(views, [root / d for d in MASK_DIRS], [root / DEPTH_DIR])
    return assemble_scene(views, downscale=remaining, root=root, splits=splits, masks_from_alpha=True)


def _named_splits(meta: dict, file_of_id: dict[int, str]) -> dict[str, list[int]]:
    """nerfstudio's ``{train,val,test}_filenames`` lists as view-id splits."""

    def key(p: str) -> str:
        return Path(p).with_suffix("").as_posix()

    out = {}
    by_file = {key(fp): i for i, fp in file_of_id.items()}
    for split in SPLITS:
        names = meta.get(f"{split}_filenames")
        if isinstance(names, list):
            out[split] = sorted(by_file[key(str(n))] for n in names if key(str(n)) in by_file)
    return out
