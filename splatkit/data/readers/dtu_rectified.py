"""DTU MVS "Rectified" release, as the RegNeRF / SpaRe sparse-view protocols use it.

Layout::

    <dtu>/Rectified/scan{N}/rect_{i:03d}_{light}_r5000.png   (i = view index + 1; r7000 from view 50 on)
    <dtu>/Calibration/cal18/pos_{i:03d}.txt                   (3x4 P = K [R | t] for 1600x1200,
                                                               pixel centres on integers)
    <dtu>/idrmasks/scan{N}/mask/{i-1:03d}.png                 (optional; also submission_data/idrmasks,
                                                               or without the mask/ level)

SpaRe's naming ``cam_{i:03d}_{light}_0000.png`` is accepted in place of ``rect_...``; a
``mask/`` (``{i-1:03d}.png``) or ``depth/`` (``<image stem>.npy``) folder inside the scan folder is
also read. Lighting 3
is used by default (the protocol's choice); ``read(..., light="max")`` picks ``rect_*_max.png``.

Point ``load_scene`` at a folder holding ``Rectified/`` with a single scan, or directly at
``<dtu>/Rectified/scan{N}`` (its ``Calibration/`` is then found two levels up). When
``Rectified/`` holds several scans the reader refuses to guess and lists them; programmatic
callers may pass ``read(root, scan=N)``. Images stored below 1600x1200 (400x300 is the protocol's
resolution) get their intrinsics scaled to match. There is no object sphere, so the world is
normalised from the cameras. Ids are 0-based DTU view indices.

:func:`view_specs` and :func:`read_projection` serve layouts whose scene folder and calibration
folder are not in the ``Rectified/`` + ``Calibration/cal18`` arrangement (SpaRe's scene folders such
as ``Amplifier``: :mod:`splatkit.eval.spare`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from splatkit.data.readers._common import (
    DEPTH_DIR, MASK_DIRS, ViewSpec, assemble_scene, attach_extras, decompose_projection,
)
from splatkit.data.scene import Scene
from splatkit.errors import DataError

NAME = "dtu_rectified"
FULL_SIZE = (1600, 1200)  # the size the cal18 projection matrices describe
DEFAULT_LIGHT = 3
_RECT = re.compile(r"rect_(\d{3})_(\d|max)(?:_r\d+)?\.png")
_CAM = re.compile(r"cam_(\d{3})_(\d)_\d+\.png")
_SCAN = re.compile(r"scan(\d+)(?:_train)?")


def _layout(root: Path) -> tuple[Path, Path | None]:
    """(dataset root holding Calibration/, the scan folder if ``root`` is one)."""
    if root.parent.name == "Rectified" and _SCAN.fullmatch(root.name) \
            and (root.parent.parent / "Calibration").is_dir():
        return root.parent.parent, root
    return root, None


def detect(root: Path) -> bool:
    root = Path(root)
    base, scan_dir = _layout(root)
    return scan_dir is not None or ((root / "Rectified").is_dir() and (root / "Calibration").is_dir())


def _scan_dirs(rect: Path) -> dict[int, Path]:
    out = {}
    for d in sorted(rect.iterdir()) if rect.is_dir() else []:
        m = _SCAN.fullmatch(d.name)
        if d.is_dir() and m:
            out.setdefault(int(m.group(1)), d)
    return dict(sorted(out.items()))


def _images(scan_dir: Path, light) -> dict[int, Path]:
    """DTU view index (0-based) -> image file for the chosen lighting."""
    light = str(light)
    found: dict[int, Path] = {}
    lights = set()
    for p in sorted(scan_dir.iterdir()):
        m = _RECT.fullmatch(p.name) or _CAM.fullmatch(p.name)
        if not m:
            continue
        lights.add(m.group(2))
        if m.group(2) == light:
            found.setdefault(int(m.group(1)) - 1, p)
    if not found:
        if lights:
            raise DataError(f"no images with lighting {light} (found lightings {', '.join(sorted(lights))})",
                            scan_dir)
        raise DataError("no rect_XXX_L_r5000.png (or cam_XXX_L_0000.png) images", scan_dir)
    return dict(sorted(found.items()))


def read_projection(calib_dir: Path, idx: int, for_what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(K in our pixel convention for a 1600x1200 image, OpenCV camera-to-world) of 0-based DTU
    view ``idx`` from ``calib_dir/pos_{idx+1:03d}.txt``."""
    pos = Path(calib_dir) / f"pos_{idx + 1:03d}.txt"
    if not pos.is_file():
        raise DataError(f"calibration file is missing{for_what}", pos)
    try:
        P = np.loadtxt(pos, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"cannot parse projection matrix ({str(exc).splitlines()[0][:120]})", pos)
    return decompose_projection(P, "projection matrix", pos)


def view_specs(scan_dir: Path, calib_dir: Path, light=DEFAULT_LIGHT, ids=None) -> list[ViewSpec]:
    """One :class:`ViewSpec` per image of ``scan_dir`` in lighting ``light`` (all of them, or the
    0-based view ``ids`` asked for, in that order), posed from ``calib_dir/pos_XXX.txt``."""
    found = _images(Path(scan_dir), light)
    if ids is None:
        chosen = found
    else:
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            names = ", ".join(f"rect_{i + 1:03d}_{light}_r5000.png or cam_{i + 1:03d}_{light}_0000.png"
                              for i in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"no image for view id(s) {missing} (expected {names}{more})", scan_dir)
        chosen = {int(i): found[int(i)] for i in ids}
    views = []
    for idx, path in chosen.items():
        K, c2w = read_projection(calib_dir, idx, for_what=f" for image {path.name}")
        views.append(ViewSpec(image_path=path, K=K, c2w=c2w, id=idx, size=FULL_SIZE))
    return views


def read(root: Path, downscale: int = 1, scan: int | None = None, light=DEFAULT_LIGHT) -> Scene:
    root = Path(root)
    base, scan_dir = _layout(root)
    if scan_dir is None:
        scans = _scan_dirs(base / "Rectified")
        if not scans:
            raise DataError("no scan{N} folders", base / "Rectified")
        if scan is not None:
            if int(scan) not in scans:
                raise DataError(f"scan{scan} not found (have {', '.join(f'scan{s}' for s in scans)})",
                                base / "Rectified")
            scan_dir = scans[int(scan)]
        elif len(scans) > 1:
            raise DataError(f"holds {len(scans)} scans ({', '.join(f'scan{s}' for s in scans)}); point at a "
                            f"folder holding one scan, e.g. {next(iter(scans.values()))}",
                            base / "Rectified")
        else:
            scan_dir = next(iter(scans.values()))
    scan_no = int(_SCAN.fullmatch(scan_dir.name).group(1))
    calib = base / "Calibration" / "cal18"

    views = view_specs(scan_dir, calib, light)

    # The IDR masks RegNeRF evaluates with, or the shared mask/ folder beside the images.
    mask_dirs = [base / sub / f"scan{scan_no}" / leaf
                 for sub in ("idrmasks", "submission_data/idrmasks") for leaf in ("mask", ".")]
    mask_dirs += [scan_dir / d for d in MASK_DIRS]
    attach_extras(views, mask_dirs, [scan_dir / DEPTH_DIR], by_id=True)
    return assemble_scene(views, downscale=downscale, root=root)

