"""The pose report: what SfM registered and how well, as JSON, Markdown and two pictures.

``cameras.png`` (Pillow: the cameras and points seen from above and from the front, so a glance
shows whether the cameras form the path the photographer walked) and ``cameras.html`` (plotly:
the same in 3D, rotatable, with the photo name on each camera; plotly.js is embedded so the page
works offline). ``report.json`` is written last (its presence marks a finished run).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from splatkit.utils.atomic import write_text_atomic

MAX_PLOT_POINTS = 20000  # enough to see the scene's shape; keeps cameras.html a few MB


def model_geometry(model_dir: Path) -> dict:
    """Camera centres, axes (camera-to-world, OpenCV), names, points, colours and track lengths."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(model_dir))
    names, centers, rots, fov = [], [], [], []
    for iid in sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name):
        im = rec.images[iid]
        m = np.asarray(im.cam_from_world().matrix(), dtype=np.float64)
        R, t = m[:, :3], m[:, 3]
        names.append(im.name)
        centers.append(-R.T @ t)
        rots.append(R.T)
        cam = rec.cameras[im.camera_id]
        fov.append((cam.width / (2 * cam.focal_length_x), cam.height / (2 * cam.focal_length_y)))
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)
    tracks = np.array([p.track.length() for p in pts], dtype=np.int64)
    return {"names": names, "centers": np.array(centers).reshape(-1, 3), "rotations": np.array(rots).reshape(-1, 3, 3),
            "half_fov": np.array(fov).reshape(-1, 2), "xyz": xyz, "rgb": rgb, "tracks": tracks}


def _frustum(c, R, half_fov, size) -> np.ndarray:
    """Five corners (centre, then the image plane's four) of a camera pyramid of depth ``size``."""
    hx, hy = half_fov
    corners = np.array([[-hx, -hy, 1], [hx, -hy, 1], [hx, hy, 1], [-hx, hy, 1]]) * size
    return np.vstack([c, corners @ R.T + c])


def _scene_size(geo: dict) -> float:
    c = geo["centers"]
    spread = float(np.linalg.norm(c - c.mean(axis=0), axis=1).max()) if len(c) > 1 else 0.0
    if spread <= 0 and len(geo["xyz"]):
        spread = float(np.percentile(np.linalg.norm(geo["xyz"] - c.mean(axis=0), axis=1), 50))
    return spread if spread > 0 else 1.0


def _plot_frame(geo: dict) -> np.ndarray:
    """Rows: right, down (the mean camera "down"), forward axes to draw in."""
    down = geo["rotations"][:, :, 1].mean(axis=0)
    fwd = geo["rotations"][:, :, 2].mean(axis=0)
    down /= max(np.linalg.norm(down), 1e-12)
    fwd = fwd - down * (fwd @ down)
    fwd /= max(np.linalg.norm(fwd), 1e-12)
    return np.stack([np.cross(down, fwd), down, fwd])


def write_png(path: Path, geo: dict, title: str) -> None:
    """Top view (right vs forward) and front view (right vs down), side by side."""
    from PIL import Image, ImageDraw

    W, H, pad = 560, 520, 30
    img = Image.new("RGB", (2 * W, H + 30), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill=(0, 0, 0))
    F = _plot_frame(geo)
    size = _scene_size(geo)
    center = geo["centers"].mean(axis=0)
    pts, cols = geo["xyz"], geo["rgb"]
    if len(pts):  # robust extent: cameras plus the central 96% of points
        d = np.linalg.norm(pts - center, axis=1)
        keep = d <= np.percentile(d, 96)
        pts, cols = pts[keep], cols[keep]
    if len(pts) > MAX_PLOT_POINTS:
        keep = np.random.default_rng(0).choice(len(pts), MAX_PLOT_POINTS, replace=False)
        pts, cols = pts[keep], cols[keep]
    sel = pts
    for panel, (a, b, label) in enumerate(((0, 2, "top view (right / forward)"), (0, 1, "front view (right / down)"))):
        ox = panel * W
        allp = np.vstack([geo["centers"], sel]) if len(sel) else geo["centers"]
        q = (allp - center) @ F.T
        lo, hi = q[:, [a, b]].min(axis=0), q[:, [a, b]].max(axis=0)
        span = max(float((hi - lo).max()), 1e-9)
        s = (min(W, H) - 2 * pad) / span

        def to_px(p):
            r = (np.atleast_2d(p) - center) @ F.T
            x = ox + pad + (r[:, a] - lo[0]) * s
            y = 30 + pad + (r[:, b] - lo[1]) * s if b == 1 else 30 + H - pad - (r[:, b] - lo[1]) * s
            return np.stack([x, y], axis=1)

        draw.text((ox + 10, 24), label, fill=(90, 90, 90))
        if len(sel):
            for (x, y), c in zip(to_px(sel), cols):
                draw.rectangle((float(x), float(y), float(x) + 1, float(y) + 1), fill=tuple(int(v) for v in c))
        for c, R, hf, name in zip(geo["centers"], geo["rotations"], geo["half_fov"], geo["names"]):
            fr = to_px(_frustum(c, R, hf, 0.15 * size))
            for k in range(1, 5):
                draw.line([tuple(fr[0]), tuple(fr[k])], fill=(200, 30, 30))
                draw.line([tuple(fr[k]), tuple(fr[1 + k % 4])], fill=(200, 30, 30))
            draw.text(tuple(fr[0] + 3), Path(name).stem, fill=(20, 20, 160))
    img.save(path)


def write_html(path: Path, geo: dict, title: str) -> None:
    import plotly.graph_objects as go

    rng = np.random.default_rng(0)
    xyz, rgb = geo["xyz"], geo["rgb"]
    if len(xyz) > MAX_PLOT_POINTS:
        keep = rng.choice(len(xyz), MAX_PLOT_POINTS, replace=False)
        xyz, rgb = xyz[keep], rgb[keep]
    size = _scene_size(geo)
    lines = [[], [], []]
    for c, R, hf in zip(geo["centers"], geo["rotations"], geo["half_fov"]):
        fr = _frustum(c, R, hf, 0.15 * size)
        for seg in ([0, 1], [0, 2], [0, 3], [0, 4], [1, 2, 3, 4, 1]):
            for k in range(3):
                lines[k] += list(fr[seg, k]) + [None]
    fig = go.Figure([
        go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", name="points",
                     marker=dict(size=1.5, color=[f"rgb({r},{g},{b})" for r, g, b in rgb]), hoverinfo="skip"),
        go.Scatter3d(x=lines[0], y=lines[1], z=lines[2], mode="lines", name="cameras",
                     line=dict(color="red", width=3), hoverinfo="skip"),
        go.Scatter3d(x=geo["centers"][:, 0], y=geo["centers"][:, 1], z=geo["centers"][:, 2], mode="markers+text",
                     name="photos", text=[Path(n).stem for n in geo["names"]], marker=dict(size=3, color="red"),
                     hovertext=geo["names"], hoverinfo="text"),
    ])
    fig.update_layout(title=title, scene=dict(aspectmode="data"), margin=dict(l=0, r=0, t=40, b=0))
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def _num(value, fmt: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{format(value, fmt)}{unit}"


def markdown(report: dict) -> str:
    n_reg, n = len(report["registered"]), report["num_photos"]
    err = report["mean_reprojection_error"]
    lines = [f"# Pose report: {n_reg} of {n} photos registered", "",
             f"- photos: `{report['photos']}`",
             f"- mapper: {report['settings']['mapper']}, matching: {report['settings']['matching']}, camera: "
             f"{report['settings']['camera_model']}{' (known, fixed)' if report['settings']['camera_params'] and not report['settings']['refine_intrinsics'] else ''}",
             f"- 3D points: {report['num_points']}, mean reprojection error: "
             f"{_num(err, '.3f', ' px')}, mean track length: "
             f"{_num(report['mean_track_length'], '.2f')} views",
             *[f"- camera {i + 1} as the mapper left it (before undistortion): {m} "
               f"{', '.join(f'{v:.6g}' for v in params)}" for i, (m, params) in enumerate(report.get("camera_estimate") or [])],
             "- track lengths (views: points): " + ", ".join(f"{k}: {v}" for k, v in report.get("track_histogram", {}).items()),
             "- time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items()), ""]
    if report["not_registered"]:
        lines += ["## Not registered", ""] + [f"- `{k}`: {v}" for k, v in report["not_registered"].items()] + [""]
    if report["other_models"]:
        lines += ["Other models (not kept): " + "; ".join(", ".join(m) for m in report["other_models"]), ""]
    lines += ["Pictures: `cameras.png` (top and front views), `cameras.html` (interactive 3D).", ""]
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    n_reg, n = len(report["registered"]), report["num_photos"]
    err = report["mean_reprojection_error"]
    out = [f"registered {n_reg} of {n} photos; {report['num_points']} points, mean reprojection error "
           f"{_num(err, '.2f', ' px')}, mean track length {_num(report['mean_track_length'], '.2f')}"]
    for name, why in report["not_registered"].items():
        out.append(f"  not registered: {name}: {why}")
    return out


def write_report(out: Path, report: dict) -> None:
    sfm = Path(out) / "sfm"
    geo = model_geometry(Path(out) / "sparse" / "0")
    hist = np.bincount(geo["tracks"]) if len(geo["tracks"]) else np.zeros(0, dtype=np.int64)
    report["track_histogram"] = {str(k): int(v) for k, v in enumerate(hist) if v}
    report["median_track_length"] = float(np.median(geo["tracks"])) if len(geo["tracks"]) else None
    title = f"{len(report['registered'])} of {report['num_photos']} photos registered, {report['num_points']} points"
    write_png(sfm / "cameras.png", geo, title)
    write_html(sfm / "cameras.html", geo, title)
    write_text_atomic(sfm / "report.md", markdown(report))
    write_text_atomic(sfm / "report.json", json.dumps(report, indent=2) + "\n")
