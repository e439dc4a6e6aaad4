"""How much of each DTU test view the sparse training views can see at all (issue #14's gap analysis).

A masked-PSNR gap between two scans at the same view count can come from the method or from the
capture: object surface that no training camera sees has no photometric signal, whatever the
method. This measures the second. The object's geometry is the visual hull of all 49 object masks
(``splatkit.models.init.visual_hull_grid``; a voxel must be inside every mask that sees it and seen
by ``--min-views``); for every object pixel of each protocol test view, the ray's first hull voxel is
the surface point, and a training view *sees* it when the point projects inside that image, in
front of the camera, with no hull voxel between (checked by marching towards the camera). The hull
is larger than the object (concavities stay filled), so occlusion is over- and depth slightly
under-estimated; both are the same for every scan and view count.

Reported per scan and training-view count (the protocol's first 3 / 6 / 9 of 25, 22, 28, 40, 44,
48, 0, 8, 13): the share of test-view object pixels seen by at least one training view and by at
least two (what stereo initialisation and warp consistency need), mean over the 25 test views, and
the worst view; a picture of test view 1 per scan at 3 views (seen by 2+ views green, by 1 yellow,
by none red).

With ``--runs`` (finished DTU runs, a glob) it also splits each run's error: PSNR over the test
views' object pixels its training views see (by at least one) and over those they do not, pooled
over the pixels; what the method loses where it had photos, against what no method could know.
And what else the error is made of: PSNR after a per-view gain and offset fit (colour, lighting),
with render and photo both blurred (error above texture scale), and the share of object pixels
rendered partly transparent.

    .venv/bin/python scripts/dtu_coverage.py [--scans 65,37] [--views 3,6,9] [--resolution 160]
        [--runs 'outputs/bench/sparse_real/3v_3000/all/runs/scan*/sparse/seed*'] [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import machine_info, write_section  # noqa: E402

SECTION = "dtu_coverage"
SHARED = ROOT.parent / "shared" / "data"
PICTURE = ROOT / "docs" / "images" / "dtu_coverage_3v.jpg"
PICTURE_VIEW = 1  # the test view the other pictures of these scans show


class Hull:
    """The carved voxel grid with the two ray queries the coverage needs."""

    def __init__(self, flat: np.ndarray, lo: np.ndarray, hi: np.ndarray, resolution: int):
        self.R = resolution
        self.lo, self.hi = lo, hi
        self.size = (hi - lo) / resolution
        self.occ = np.zeros(resolution ** 3, dtype=bool)
        self.occ[flat] = True

    def occupied(self, pts: np.ndarray) -> np.ndarray:
        ijk = np.floor((pts - self.lo) / self.size).astype(np.int64)
        ok = np.all((ijk >= 0) & (ijk < self.R), axis=1)
        out = np.zeros(len(pts), dtype=bool)
        i = ijk[ok]
        out[ok] = self.occ[i[:, 0] + self.R * i[:, 1] + self.R ** 2 * i[:, 2]]
        return out

    def _span(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each ray enters and leaves the grid's box (slab test; t_in > t_out: misses it)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            a, b = (self.lo - o) / d, (self.hi - o) / d
        t_in = np.nanmax(np.minimum(a, b), axis=1)
        t_out = np.nanmin(np.maximum(a, b), axis=1)
        return np.maximum(t_in, 0.0), t_out

    def first_hit(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The first occupied point along each ray (NaN where it hits nothing), half-voxel steps."""
        step = 0.5 * float(self.size.min())
        t, t_out = self._span(o, d)
        hit = np.full(o.shape, np.nan)
        active = np.flatnonzero(t <= t_out)
        while len(active):
            p = o[active] + t[active, None] * d[active]
            occ = self.occupied(p)
            hit[active[occ]] = p[occ]
            t[active] += step
            active = active[~occ & (t[active] <= t_out[active])]
        return hit

    def blocked(self, pts: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Whether a hull voxel lies between each point and ``target`` (a camera centre); the march
        starts two voxels off the point so that its own voxel does not count."""
        d = target - pts
        dist = np.linalg.norm(d, axis=1)
        d = d / dist[:, None]
        step = 0.5 * float(self.size.min())
        start = 2.0 * float(np.linalg.norm(self.size))
        _, t_out = self._span(pts, d)
        t = np.full(len(pts), start)
        end = np.minimum(t_out, dist)
        out = np.zeros(len(pts), dtype=bool)
        active = np.flatnonzero(t <= end)
        while len(active):
            occ = self.occupied(pts[active] + t[active, None] * d[active])
            out[active[occ]] = True
            t[active] += step
            active = active[~occ & (t[active] <= end[active])]
        return out


def seen_count(scene, hull: Hull, view: int, train_positions: list[int], stride: int):
    """For the object pixels of ``view`` (every ``stride``-th row and column): their pixel
    coordinates and how many of the training views see their surface point."""
    cams = scene.cameras
    mask = scene.masks[view] >= 0.5
    sub = np.zeros_like(mask)
    sub[::stride, ::stride] = True
    ys, xs = np.nonzero(mask & sub)
    o, d = cams.pixel_rays(view)
    pts = hull.first_hit(o[ys, xs], d[ys, xs])
    found = ~np.isnan(pts[:, 0])
    count = np.zeros(len(ys), dtype=np.int32)
    p = pts[found]
    for t in train_positions:
        uv, z = cams[[t]].project(p)
        W, H = int(cams.widths[t]), int(cams.heights[t])
        inside = (z[0] > 0) & (uv[0, :, 0] >= 0) & (uv[0, :, 0] < W) & (uv[0, :, 1] >= 0) & (uv[0, :, 1] < H)
        vis = inside.copy()
        vis[inside] = ~hull.blocked(p[inside], cams.centers[t])
        count[np.flatnonzero(found)[vis]] += 1
    return ys, xs, count, found


def main() -> None:
    from splatkit.data.loader import load_scene
    from splatkit.eval.protocols import dtu_protocol
    from splatkit.models.init import visual_hull_grid

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", default="65,37")
    ap.add_argument("--views", default="3,6,9")
    ap.add_argument("--resolution", type=int, default=160, help="hull voxels a side")
    ap.add_argument("--min-views", type=int, default=3, help="views that must see a hull voxel")
    ap.add_argument("--stride", type=int, default=2, help="test pixels: every STRIDE-th row and column")
    ap.add_argument("--runs", default=None, help="glob of finished DTU runs whose error is split by coverage")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md and the picture")
    args = ap.parse_args()
    protocol = dtu_protocol()
    counts = [int(v) for v in args.views.split(",") if v]
    lines = ["| scan | training views | seen by >= 1 (mean over test views) | seen by >= 2 | worst test view (>= 1) | hull hit |",
             "|---|---|---|---|---|---|"]
    tiles = []
    t0 = time.time()
    runs = find_runs(args.runs)
    seen_maps: dict[tuple[str, int], dict[int, tuple]] = {}
    for scan in [s for s in args.scans.split(",") if s]:
        folder = SHARED / f"dtu_scan{scan}"
        if not folder.is_dir():
            print(f"scan {scan}: not found under {SHARED}; skipped")
            continue
        scene = load_scene(folder)
        flat, lo, hi = visual_hull_grid(scene, resolution=args.resolution, min_views=args.min_views)
        hull = Hull(flat, lo, hi, args.resolution)
        print(f"scan {scan}: {len(flat)} hull voxels of {args.resolution}^3 ({time.time() - t0:.0f} s)", flush=True)
        test_ids = protocol.test_views()
        tests = scene.index_of(test_ids)
        for k in sorted(set(counts) | {len(r.config.train_views) for r in runs if scan_of(r) == scan}):
            train = scene.index_of(protocol.train_views(k))
            one, two, hit = [], [], []
            seen_maps[scan, k] = {}
            for vid, view in zip(test_ids, tests):
                ys, xs, count, found = seen_count(scene, hull, view, train, args.stride)
                seen_maps[scan, k][vid] = (ys, xs, count)
                if k not in counts:
                    continue
                one.append(float(np.mean(count >= 1)))
                two.append(float(np.mean(count >= 2)))
                hit.append(float(np.mean(found)))
                if k == 3 and vid == PICTURE_VIEW:
                    tiles.append(coverage_picture(scene.images[view], ys, xs, count, args.stride))
            if k not in counts:
                continue
            worst = int(np.argmin(one))
            lines.append(f"| {scan} | {k} | {np.mean(one):.1%} | {np.mean(two):.1%} | "
                         f"{test_ids[worst]}: {one[worst]:.1%} | {np.mean(hit):.1%} |")
            print(lines[-1], flush=True)
    text = "\n".join([
        "## DTU: how much of the test views the training views see",
        "",
        f"`python scripts/dtu_coverage.py --scans {args.scans} --views {args.views} --resolution {args.resolution} "
        f"--min-views {args.min_views} --stride {args.stride}" + (f" --runs '{args.runs}'" if args.runs else "")
        + f" --write` on {machine_info()}, "
        f"{time.time() - t0:.0f} s. Geometry: the visual hull of all 49 object masks "
        f"({args.resolution}^3 voxels); for each object pixel of the 25 protocol test views (one "
        f"pixel in {args.stride}x{args.stride}), the first hull voxel on its ray is the surface point, and a "
        "training view sees it when it projects into that image with no hull voxel in between. The hull is "
        "larger than the object, so these shares are lower bounds of what is visible, equally for every "
        "row. \"Hull hit\": object pixels whose ray meets the hull. Picture: test view 1 at 3 views "
        "(green: seen by 2+ training views, yellow: by 1, red: by none).",
        "",
        *lines,
        "",
        f"![coverage of test view 1 at 3 views](images/{PICTURE.name})",
        *split_runs(runs, seen_maps),
    ])
    print(text)
    if args.write and tiles:
        from splatkit.data.imageio_utils import write_image

        write_image(PICTURE, np.concatenate(tiles, axis=1))
        print(f"wrote {write_section(SECTION, text)}")


def find_runs(pattern):
    import glob

    from splatkit.train.run import Run

    if not pattern:
        return []
    runs = [Run.open(Path(p)) for p in sorted(glob.glob(pattern)) if (Path(p) / "metrics.json").is_file()]
    if not runs:
        raise SystemExit(f"--runs {pattern!r}: no finished run (metrics.json) matches")
    return runs


def scan_of(run) -> str:
    name = Path(str(run.config.data)).name
    if not name.startswith("dtu_scan"):
        raise SystemExit(f"{run.path}: not a DTU run of ../shared/data ({name})")
    return name[len("dtu_scan"):]


def split_runs(runs, seen_maps) -> list[str]:
    """Each run's test renders scored over the object pixels seen / not seen by its training views,
    and what else its error is made of: colour off by a per-view gain and offset, error above a
    blur's scale (texture), object pixels left partly transparent."""
    import json

    from splatkit.methods.scoring import render_views, settings_for

    if not runs:
        return []
    lines = ["", "Each run's error split by coverage (PSNR pooled over the test views' object pixels tested "
             "above; `metrics.json`: the protocol's masked PSNR, a mean over views), and what else it is made "
             "of (means over the test views, all object pixels): the render with a per-channel gain and offset "
             "fitted to the photo per view (colour / lighting), render and photo both blurred by a Gaussian of "
             f"{BLUR_SIGMA:g} px (error above texture scale), and the share of object pixels rendered with alpha "
             f"below {ALPHA_SOLID}:", "",
             "| run | training views | metrics.json | all object pixels | seen (>= 1 view) | not seen | share not seen "
             "| gain + offset | both blurred | alpha < 0.95 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        scan, k = scan_of(run), len(run.config.train_views)
        model, _ = run.load_model()
        scene, ids, positions = run.views("test")
        se = {"all": [], "seen": [], "unseen": []}
        per_view = {"fitted": [], "blurred": [], "clear": []}
        for i, rgb, _, alpha in render_views(model, scene.cameras[positions], settings_for(run.config)):
            vid, pos = int(ids[i]), positions[i]
            if vid not in seen_maps[scan, k]:
                continue  # a run split otherwise than by the protocol: its protocol test views only
            rgb, gt = np.clip(np.asarray(rgb), 0, 1), np.asarray(scene.images[pos])
            mask = np.asarray(scene.masks[pos]) == 1.0
            ys, xs, count = seen_maps[scan, k][vid]
            err = np.mean((rgb[ys, xs] - gt[ys, xs]) ** 2, axis=1)
            se["all"].append(err)
            se["seen"].append(err[count >= 1])
            se["unseen"].append(err[count == 0])
            per_view["fitted"].append(_psnr(_gain_offset_fit(rgb, gt, mask), gt, mask))
            per_view["blurred"].append(_psnr(_blur(rgb), _blur(gt), mask))
            per_view["clear"].append(float(np.mean(np.asarray(alpha).reshape(mask.shape)[mask] < ALPHA_SOLID)))
        psnr = {key: -10 * np.log10(max(float(np.mean(np.concatenate(v))), 1e-10)) for key, v in se.items()}
        share = sum(map(len, se["unseen"])) / sum(map(len, se["all"]))
        reported = json.loads((run.path / "metrics.json").read_text())["mean"]["masked_psnr"]
        lines.append(f"| `{run.path.relative_to(ROOT) if run.path.is_relative_to(ROOT) else run.path}` | {k} | "
                     f"{reported:.2f} | {psnr['all']:.2f} | {psnr['seen']:.2f} | {psnr['unseen']:.2f} | {share:.1%} | "
                     f"{np.mean(per_view['fitted']):.2f} | {np.mean(per_view['blurred']):.2f} | "
                     f"{np.mean(per_view['clear']):.0%} |")
        print(lines[-1], flush=True)
    return lines


BLUR_SIGMA = 2.0  # px: above the granite / bone texture, below the block's faces
ALPHA_SOLID = 0.95


def _psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    return float(-10 * np.log10(max(float(np.mean((pred[mask] - gt[mask]) ** 2)), 1e-10)))


def _gain_offset_fit(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``pred`` with the per-channel gain and offset that best fit ``gt`` on the mask (least squares)."""
    out = pred.copy()
    for c in range(3):
        a = np.stack([pred[..., c][mask], np.ones(int(mask.sum()))], axis=1)
        (gain, offset), *_ = np.linalg.lstsq(a, gt[..., c][mask], rcond=None)
        out[..., c] = pred[..., c] * gain + offset
    return np.clip(out, 0, 1)


def _blur(img: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, (BLUR_SIGMA, BLUR_SIGMA, 0))


def coverage_picture(image: np.ndarray, ys, xs, count, stride: int) -> np.ndarray:
    """The photo, dimmed, with each tested object pixel's block coloured by its coverage."""
    out = 0.35 * np.asarray(image, dtype=np.float32)
    colours = np.array([[0.9, 0.1, 0.1], [0.95, 0.85, 0.1], [0.1, 0.8, 0.2]], dtype=np.float32)
    c = colours[np.minimum(count, 2)]
    for dy in range(stride):
        for dx in range(stride):
            yy, xx = np.minimum(ys + dy, out.shape[0] - 1), np.minimum(xs + dx, out.shape[1] - 1)
            out[yy, xx] = 0.35 * out[yy, xx] + 0.65 * c
    return np.clip(out, 0, 1)


if __name__ == "__main__":
    main()
