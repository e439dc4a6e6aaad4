"""Could a repair model copy real pixels from the training photos? (issue #15, a route tried)

Difix3D+ (Wu et al., CVPR 2025) repairs a render of a novel view with a network that also sees a
*reference* training view, so the fix can copy real content instead of inventing it; with no
pretrained image prior on this machine, that would be the way to bring real information into our
repair model. It can only help if the reference, brought into the novel view, is better than the
render somewhere. This measures that upper bound without any network: for every test view of a
finished run, each training photo is warped into it through the run's own rendered depth (a pixel
back-projected with the test view's expected depth, projected into the training camera, its photo
sampled bilinearly), kept where the training view's rendered depth agrees within ``tol`` of the
distance (visible there, not occluded) and the render is opaque (alpha > 0.5), the nearest training
camera first. Reported: the share of object pixels so covered, PSNR of the render and of the warped
photos on exactly those pixels, and over the whole test view (masked PSNR on DTU, PSNR elsewhere)
the render, the render with covered pixels replaced by the warped photos, and half of each. The
training views warped into each other (photo against photo, through the rendered depths) show
whether the geometry itself registers the photos.

    .venv/bin/python scripts/repair_reference_probe.py --runs 'RUN1' 'RUN2*' [--tol 0.02 0.005] [--write]
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import load_average, machine_info, write_section  # noqa: E402

SECTION = "repair_reference_probe"
PICTURE = ROOT / "docs" / "images" / "repair_reference_probe.jpg"
ALPHA_MIN = 0.5


def psnr_of(err2: np.ndarray) -> float:
    return float(-10.0 * np.log10(max(float(err2.mean()), 1e-12))) if err2.size else float("nan")


def warp_photo(cams, target: int, source: int, depth: np.ndarray, photo: np.ndarray, source_depth: np.ndarray,
               tol: float, opaque: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``photo`` (camera ``source``'s image) seen from camera ``target`` through ``target``'s depth map
    ``depth`` (camera-space z per pixel): bilinear samples [H, W, 3], and where they are valid (inside
    the source image, in front of it, and ``source_depth`` there within ``tol`` of the distance, i.e.
    not occluded; and ``opaque`` where given)."""
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)  # pixel centres, as Cameras.pixel_rays
    K = cams.Ks[target]
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    # Expected depth is the camera-space z (gsplat's "ED"; a view warped into itself is exact).
    cam_pts = np.stack([x * depth, y * depth, depth], axis=-1)
    c2w = cams.camtoworlds[target]
    world = cam_pts @ c2w[:3, :3].T + c2w[:3, 3]
    w2c = np.linalg.inv(cams.camtoworlds[source])
    src = world @ w2c[:3, :3].T + w2c[:3, 3]
    z = src[..., 2]
    Ks = cams.Ks[source]
    with np.errstate(divide="ignore", invalid="ignore"):
        us = Ks[0, 0] * src[..., 0] / z + Ks[0, 1] * src[..., 1] / z + Ks[0, 2]
        vs = Ks[1, 1] * src[..., 1] / z + Ks[1, 2]
    Ws, Hs = int(cams.widths[source]), int(cams.heights[source])
    grid = torch.from_numpy(np.stack([us / Ws * 2 - 1, vs / Hs * 2 - 1], -1)).float()[None]
    grid = torch.nan_to_num(grid, nan=-2.0, posinf=-2.0, neginf=-2.0)
    img = torch.from_numpy(np.ascontiguousarray(photo)).float().permute(2, 0, 1)[None]
    sdepth = torch.from_numpy(np.ascontiguousarray(source_depth)).float()[None, None]
    warped = F.grid_sample(img, grid, align_corners=False)[0].permute(1, 2, 0).numpy()
    seen_depth = F.grid_sample(sdepth, grid, mode="nearest", align_corners=False)[0, 0].numpy()
    inside = (us > 0) & (us < Ws) & (vs > 0) & (vs < Hs) & (z > 0)
    valid = inside & (np.abs(seen_depth - z) < tol * z)
    return warped, valid if opaque is None else valid & opaque


class RunViews:
    """A finished run's renders (colour, expected depth, alpha) of its training and test views."""

    def __init__(self, path: Path):
        from splatkit.eval.protocols import dtu_protocol
        from splatkit.methods.scoring import render_views, settings_for
        from splatkit.train.run import Run

        run = Run.open(path)
        model, _ = run.load_model()
        self.scene = run.load_scene()
        train_ids, test_ids = run.split()
        # DTU (49 views with object masks): the protocol's 25 test views, as the benchmarks score it.
        self.dtu = self.scene.masks is not None and len(self.scene) == 49
        if self.dtu:
            test_ids = list(dtu_protocol().test_views())
        self.name = f"{Path(str(run.config.data)).name} ({path.name})"
        self.train = [int(p) for p in self.scene.index_of(train_ids)]
        self.test = [int(p) for p in self.scene.index_of(test_ids)]
        self.test_ids = list(test_ids)
        settings = settings_for(run.config)
        self.renders: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        positions = self.train + self.test
        for i, rgb, depth, alpha in render_views(model, self.scene.cameras[positions], settings):
            self.renders[positions[i]] = (rgb, depth, alpha)

    def object_pixels(self, view: int) -> np.ndarray:
        masks = self.scene.masks
        return (masks[view] >= 1.0) if masks is not None else np.ones(self.renders[view][1].shape, bool)

    def warp(self, target: int, source: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
        _, depth, alpha = self.renders[target]
        return warp_photo(self.scene.cameras, target, source, depth, self.scene.images[source],
                          self.renders[source][1], tol, opaque=alpha > ALPHA_MIN)

    def composite(self, target: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
        """The render with every valid pixel replaced by the nearest training camera's warped photo."""
        rgb = self.renders[target][0].copy()
        centre = self.scene.cameras.camtoworlds[target][:3, 3]
        order = sorted(self.train, key=lambda s: np.linalg.norm(self.scene.cameras.camtoworlds[s][:3, 3] - centre))
        filled = np.zeros(rgb.shape[:2], bool)
        for source in order:
            if source == target:
                continue
            warped, valid = self.warp(target, source, tol)
            take = valid & ~filled
            rgb[take] = warped[take]
            filled |= valid
        return rgb, filled


def probe(rv: RunViews, tol: float) -> dict:
    covered, on_render, on_warped, whole = [], [], [], {"render": [], "composite": [], "half": []}
    pictures = {}
    for view, vid in zip(rv.test, rv.test_ids):
        rgb = rv.renders[view][0]
        gt = rv.scene.images[view].astype(np.float32)
        obj = rv.object_pixels(view)
        comp, filled = rv.composite(view, tol)
        half = 0.5 * (comp + rgb)
        sel = filled & obj
        covered.append(sel.sum() / max(obj.sum(), 1))
        on_render.append(((rgb - gt) ** 2)[sel])
        on_warped.append(((comp - gt) ** 2)[sel])
        for key, img in (("render", rgb), ("composite", comp), ("half", half)):
            whole[key].append(psnr_of(((img - gt) ** 2)[obj]))
        if not pictures:
            pictures = {"view": vid, "images": (rgb, comp, gt)}
    cross = []
    for t in rv.train:
        for s in rv.train:
            if s != t:
                warped, valid = rv.warp(t, s, tol)
                sel = valid & rv.object_pixels(t)
                cross.append(psnr_of(((warped - rv.scene.images[t]) ** 2)[sel]))
    return {"covered": float(np.mean(covered)),
            "valid_render": psnr_of(np.concatenate(on_render)), "valid_warped": psnr_of(np.concatenate(on_warped)),
            **{k: float(np.mean(v)) for k, v in whole.items()},
            "cross": (float(np.min(cross)), float(np.max(cross))) if cross else None, "pictures": pictures}


def write_picture(rows: list[tuple[str, float, dict]]) -> None:
    from splatkit.data.imageio_utils import write_image

    strips = []
    for _, _, r in rows:
        rgb, comp, gt = r["pictures"]["images"]
        strips.append(np.concatenate([rgb, comp, gt], axis=1))
    width = min(s.shape[1] for s in strips)

    def fit(strip: np.ndarray) -> np.ndarray:
        height = round(strip.shape[0] * width / strip.shape[1])
        t = torch.from_numpy(np.ascontiguousarray(strip)).float().permute(2, 0, 1)[None]
        return F.interpolate(t, size=(height, width), mode="area")[0].permute(1, 2, 0).numpy()

    write_image(PICTURE, np.concatenate([fit(s) for s in strips], axis=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="finished run folders (globs)")
    ap.add_argument("--tol", type=float, nargs="+", default=[0.02, 0.005],
                    help="relative depth agreement that counts a pixel as seen by a training view")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md and the picture")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = [Path(p) for pattern in args.runs for p in sorted(glob.glob(pattern))]
    paths = [p for p in paths if (p / "checkpoints").is_dir()]
    if not paths:
        sys.exit(f"no finished run folder matches {args.runs}")
    t0, load = time.perf_counter(), load_average()
    rows, pictured = [], []
    for path in paths:
        rv = RunViews(path)
        for tol in args.tol:
            r = probe(rv, tol)
            rows.append((rv.name, tol, r))
            if tol == args.tol[0]:
                pictured.append((rv.name, tol, r))
            print(f"{rv.name} tol {tol}: covered {r['covered']:.2f}, on them render {r['valid_render']:.2f} "
                  f"warped {r['valid_warped']:.2f}; whole view render {r['render']:.2f} composite "
                  f"{r['composite']:.2f} half {r['half']:.2f}; training views into each other {r['cross']}",
                  flush=True)
    metric = "masked PSNR (DTU) / PSNR"
    lines = [
        "## Reference-based repair: training photos warped into the test views",
        "",
        f"`python scripts/repair_reference_probe.py --runs {' '.join(str(p) for p in paths)} --tol "
        f"{' '.join(str(t) for t in args.tol)} --write` on {machine_info()}; load average "
        f"{load if load is None else round(load, 1)} at the start; {time.perf_counter() - t0:.0f} s.",
        "Could a repair model conditioned on a reference training view (Difix3D+, Wu et al., CVPR 2025)",
        "copy real pixels into a 3-view render? Each training photo is warped into every test view through",
        "the run's rendered depth and kept where the training view's rendered depth agrees within the",
        "tolerance (relative to the distance) and the render is opaque; nearest training camera first",
        "(the script's doc). Covered: share of the test views' object pixels (DTU: inside the mask; LLFF:",
        "all) with a warped photo. On them: PSNR of the render and of the warped photos over exactly those",
        f"pixels, pooled. Whole view ({metric}, mean over the test views): the render, the render with",
        "the covered pixels replaced by the warped photos, and half of each. Last column: the training",
        "views warped into one another (photo against photo, over the covered object pixels), worst to best pair.",
        "",
        "| run | tolerance | covered | on them: render | on them: warped photos | whole view: render | composite | half | training views into each other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, tol, r in rows:
        cross = "-" if r["cross"] is None else f"{r['cross'][0]:.2f} - {r['cross'][1]:.2f}"
        lines.append(f"| {name} | {tol:g} | {r['covered']:.0%} | {r['valid_render']:.2f} | {r['valid_warped']:.2f} "
                     f"| {r['render']:.2f} | {r['composite']:.2f} | {r['half']:.2f} | {cross} |")
    lines += ["", f"Picture (`docs/images/{PICTURE.name}`), the first test view of each run at tolerance "
              f"{args.tol[0]:g}: render | composite | ground truth.", "",
              f"![render, composite, ground truth](images/{PICTURE.name})"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_picture(pictured)
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
