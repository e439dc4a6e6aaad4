"""Camera poses by structure from motion (`splatkit data poses`), measured against known poses.

* Sceaux castle (11 hand-held 2832x2128 photos, K.txt): how many register, time per stage, SIFT on
  photos resized to 1600 px (the default) and at full size.
* DTU scan 65 (400x300; all 49 views, and the protocol's first 9 and 6 training views) and LLFF
  fern (20 views at x8): rotation error (degrees) and camera-centre error (% of the scene scale: the
  largest distance between two known camera centres) after the similarity that best maps the
  recovered centres onto the known ones (Umeyama), with unknown and with known intrinsics.
* 3DGS test PSNR on DTU scan 65 (every 8th view held out, 200x150, `fast` preset, 1000 steps) trained on the
  recovered poses beside the same run on the known poses; both start from the preset's random
  points (`--init random`: the recovered scene's SfM points would be a head start), so only the
  poses differ.

Results go to docs/benchmarks.md (section bench_sfm). SfM results are cached under --out and reused
(their recorded times with them).

    flock /tmp/splatkit-heavy.lock .venv/bin/python scripts/bench_sfm.py [--seeds 2] [--write]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import load_average, machine_info, mean_std, write_section  # noqa: E402
from splatkit.data import load_scene  # noqa: E402
from splatkit.data.sfm import FEW_VIEWS, PoseOptions, recover_poses  # noqa: E402
from splatkit.data.sfm.evaluate import pose_errors  # noqa: E402
from splatkit.errors import SplatkitError  # noqa: E402

SECTION = "bench_sfm"
DATA = ROOT.parent / "shared" / "data"
DTU_TRAIN_IDS = (25, 22, 28, 40, 44, 48, 0, 8, 13)  # the pixelNeRF/RegNeRF protocol's order (data/splits)


def _subset_folder(src: Path, names: list[str], dst: Path) -> Path:
    """A photo folder holding links to some of ``src``'s photos."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for n in names:
        (dst / n).symlink_to(src / n)
    return dst


def _k_string(scene) -> str:
    K = scene.cameras.Ks.mean(axis=0)
    return ",".join(repr(float(v)) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))


def _sfm_row(label: str, photos: Path, out: Path, opts: PoseOptions, known, n_photos: int) -> dict:
    """One SfM run scored against ``known`` (a Scene whose view names are the photo stems)."""
    print(f"== {label}", flush=True)
    row = {"label": label, "photos": n_photos}
    try:
        res = recover_poses(photos, out, opts, say=lambda s: print("   " + s, flush=True))
    except SplatkitError as exc:
        row.update(registered=0, error=exc.message.split(" (log:")[0])
        return row
    rep = res.report
    row.update(registered=len(rep["registered"]), seconds=rep["seconds"]["total"],
               mapper=rep["settings"]["mapper"], reproj=rep["mean_reprojection_error"],
               track=rep["mean_track_length"], scene_dir=str(res.scene_dir))
    if len(rep["registered"]) >= 3:
        import pycolmap

        rec = pycolmap.Reconstruction(str(res.scene_dir / "sparse" / "0"))
        by_stem = {Path(im.name).stem: im for im in rec.images.values()}
        pos = [i for i, n in enumerate(known.names) if n in by_stem]
        c2w = []
        for i in pos:
            m = np.vstack([np.asarray(by_stem[known.names[i]].cam_from_world().matrix()), [0, 0, 0, 1]])
            c2w.append(np.linalg.inv(m))
        e = pose_errors(np.stack(c2w), known.cameras.camtoworlds[pos])
        row.update(rot_mean=e.mean_rotation_deg, rot_max=float(e.rotation_deg.max()),
                   ctr_mean=e.mean_center_pct, ctr_max=float(e.center_pct.max()))
    print(f"   -> {json.dumps({k: v for k, v in row.items() if k != 'scene_dir'})}", flush=True)
    return row


def _fmt(v, digits=2, unit=""):
    return "n/a" if v is None else f"{v:.{digits}f}{unit}"


def _train_psnr(scene, data_path: Path, out: Path, train_ids, test_ids, seed: int, steps) -> dict:
    from splatkit.train import resolve_config
    from splatkit.train.trainer import Trainer

    summary = out / "train_summary.json"
    if not summary.is_file():
        if out.exists():
            shutil.rmtree(out)
        values = {"data": data_path, "out": out, "train_views": list(train_ids), "test_views": list(test_ids),
                  "seed": seed, "init": "random", "downscale": 2}
        if steps is not None:  # the fast preset's proportions: densify until 3/4 of the run
            values.update(steps=steps, refine_stop_iter=steps * 3 // 4)
        Trainer(resolve_config(values, preset="fast"), scene=scene, quiet=True).train()
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_sfm")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000,
                        help="3DGS steps (default 1000: half the fast preset's schedule, so 2 seeds x 2 runs fit)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    load_before = load_average()
    t_start = time.time()
    out = args.out
    rows = []

    # -- Sceaux: real hand-held photos, no poses --------------------------------------------------
    sceaux = DATA / "sceaux_castle_unposed"
    sceaux_rows = []
    if (sceaux / "images").is_dir():
        for size in (1600, -1):
            t0 = time.time()
            res = recover_poses(sceaux, out / f"sceaux_{size}", PoseOptions(max_image_size=size),
                                say=lambda s: print("   " + s, flush=True))
            rep = res.report
            sceaux_rows.append({"size": size, "registered": len(rep["registered"]), "photos": rep["num_photos"],
                                "seconds": rep["seconds"], "reproj": rep["mean_reprojection_error"],
                                "track": rep["mean_track_length"], "points": rep["num_points"],
                                "wall": time.time() - t0})
            print(sceaux_rows[-1], flush=True)

    # -- DTU scan 65 ------------------------------------------------------------------------------
    scan = DATA / "dtu_scan65"
    dtu_rec_dir = None
    if (scan / "cameras_sphere.npz").is_file():
        known = load_scene(scan)
        names = sorted(p.name for p in (scan / "image").iterdir())
        kstr = _k_string(known)
        rows.append(_sfm_row("DTU 65, 49 views, unknown K", scan / "image", out / "dtu_all_unknownK",
                             PoseOptions(intrinsics="none"), known, 49))
        dtu_rec_dir = rows[-1].get("scene_dir") if rows[-1]["registered"] else None
        rows.append(_sfm_row("DTU 65, 49 views, known K", scan / "image", out / "dtu_all_knownK",
                             PoseOptions(intrinsics=kstr), known, 49))
        for n in (9, 6, 3):
            sub = _subset_folder(scan / "image", [names[i] for i in DTU_TRAIN_IDS[:n]], out / f"dtu_photos_{n}")
            for kname, intr in (("known K", kstr), ("unknown K", "none")):
                for mapper in ("global", "incremental"):
                    tag = f"dtu_{n}_{kname.split()[0]}K_{mapper}"
                    rows.append(_sfm_row(f"DTU 65, {n} protocol views, {kname}", sub, out / tag,
                                         PoseOptions(intrinsics=intr, mapper=mapper), known, n))
                    if mapper == "global":  # GLOMAP's result moves from run to run: seeds 1, 2 as well
                        rows[-1]["repeats"] = [dict(rows[-1])] + [
                            _sfm_row(f"DTU 65, {n} protocol views, {kname}, seed {sd}", sub, out / f"{tag}_seed{sd}",
                                     PoseOptions(intrinsics=intr, mapper=mapper, seed=sd), known, n)
                            for sd in (1, 2)]

    # -- LLFF fern --------------------------------------------------------------------------------
    fern = DATA / "llff_fern"
    if (fern / "poses_bounds.npy").is_file():
        known = load_scene(fern, downscale=8)
        rows.append(_sfm_row("LLFF fern, 20 views x8, unknown K", fern / "images_8", out / "fern_unknownK",
                             PoseOptions(intrinsics="none"), known, 20))
        rows.append(_sfm_row("LLFF fern, 20 views x8, known K", fern / "images_8", out / "fern_knownK",
                             PoseOptions(intrinsics=_k_string(known)), known, 20))

    def publish() -> None:
        text = _section(args, load_before, t_start, sceaux_rows, rows, train_rows)
        print(text, flush=True)
        (out / "results.json").write_text(json.dumps({"sceaux": sceaux_rows, "poses": rows, "train": train_rows},
                                                     indent=1, default=str))
        if args.write:
            print(f"wrote {write_section(SECTION, text)}", flush=True)

    train_rows = []
    publish()  # the pose figures first: the training below takes longer
    # -- 3DGS on recovered vs known poses (DTU scan 65, all views) ------------------------------
    if not args.skip_train and dtu_rec_dir is not None:
        known = load_scene(scan, downscale=2)
        rec = load_scene(dtu_rec_dir, downscale=2)
        common = sorted(set(known.names) & set(rec.names))
        test_names = [n for n in common if int(n) % 8 == 0]
        train_names = [n for n in common if int(n) % 8 != 0]
        for label, scene, path in (("known poses", known, scan), ("recovered poses", rec, Path(dtu_rec_dir))):
            ids = dict(zip(scene.names, scene.ids))
            runs = [_train_psnr(scene, path, out / "train" / label.replace(" ", "_") / f"seed{s}",
                                [ids[n] for n in train_names], [ids[n] for n in test_names], s, args.steps)
                    for s in range(args.seeds)]
            train_rows.append({"label": label, "psnr": [r["mean"]["psnr"] for r in runs],
                               "ssim": [r["mean"]["ssim"] for r in runs],
                               "minutes": [r["train_time_s"] / 60 for r in runs],
                               "n_train": len(train_names), "n_test": len(test_names)})
            print(train_rows[-1], flush=True)

    if train_rows:
        publish()


def _section(args, load_before, t_start, sceaux_rows, rows, train_rows) -> str:
    load_note = "machine load unknown" if load_before is None else f"load average {load_before:.1f} at the start"
    lines = ["## Camera poses from photos (structure from motion)", "",
             f"`flock /tmp/splatkit-heavy.lock .venv/bin/python scripts/bench_sfm.py --seeds {args.seeds} --write` "
             f"on {machine_info()}; {load_note}; pycolmap {_pycolmap_version()} (CPU), every stage in a child process.",
             ""]
    if sceaux_rows:
        lines += ["Sceaux castle, 11 hand-held photos (2832x2128) with the camera's K.txt (found beside the "
                  "photos and held fixed), default settings (exhaustive matching, incremental mapper):", "",
                  "| SIFT on | registered | points | reproj. error (px) | mean track | features (s) | matching (s) | "
                  "mapping (s) | undistort + x2/4/8 copies (s) | total (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sceaux_rows:
            s = r["seconds"]
            on = "full size" if r["size"] < 0 else f"<= {r['size']} px"
            lines.append(f"| {on} | {r['registered']} of "
                         f"{r['photos']} | {r['points']} | {_fmt(r['reproj'], 3)} | {_fmt(r['track'])} | "
                         f"{s['features']:.1f} | {s['matching']:.1f} | {s['mapping']:.1f} | "
                         f"{s['undistortion'] + s['downscales']:.1f} | {s['total']:.1f} |")
        lines.append("")
    if rows:
        lines += ["Recovered against known poses (rotation error in degrees; centre error in % of the largest "
                  "distance between two known camera centres; after the similarity `splatkit.data.sfm.evaluate.align_poses` fits: "
                  "rotation from the chordal mean of the per-view rotation differences, scale and shift by least "
                  "squares on the centres; "
                  "errors over the registered views). \"known K\": the dataset's mean intrinsics given with "
                  "`--intrinsics` and held fixed; \"unknown K\": SIMPLE_RADIAL, focal length guessed and refined. "
                  f"Below {FEW_VIEWS} photos the few-view settings are on (two-view tracks, relaxed initial pair, "
                  "DSP-SIFT, affine shapes).", "",
                  "| run | mapper | registered | rotation mean / max (deg) | centre mean / max (%) | "
                  "reproj. error (px) | time (s) |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "repeats" in r:  # seeds 0..2: registered counts, then mean ± std of the per-run means
                reps = r["repeats"]
                ok = [x for x in reps if x.get("rot_mean") is not None]
                lines.append(f"| {r['label']} (seeds 0, 1, 2) | {r['mapper']} | "
                             f"{', '.join(str(x['registered']) for x in reps)} of {r['photos']} | "
                             f"{mean_std([x['rot_mean'] for x in ok], 3)} / {_fmt(max((x['rot_max'] for x in ok), default=None))} | "
                             f"{mean_std([x['ctr_mean'] for x in ok], 3)} / {_fmt(max((x['ctr_max'] for x in ok), default=None))} | "
                             f"{mean_std([x['reproj'] for x in ok], 3)} | {mean_std([x.get('seconds') for x in reps], 1)} |")
                continue
            if r["registered"] == 0:
                lines.append(f"| {r['label']} | | 0 of {r['photos']} ({r.get('error', '')}) | | | | |")
                continue
            lines.append(f"| {r['label']} | {r['mapper']} | {r['registered']} of {r['photos']} | "
                         f"{_fmt(r.get('rot_mean'), 3)} / {_fmt(r.get('rot_max'), 2)} | "
                         f"{_fmt(r.get('ctr_mean'), 3)} / {_fmt(r.get('ctr_max'), 2)} | {_fmt(r['reproj'], 3)} | "
                         f"{r['seconds']:.1f} |")
        lines.append("")
        by = {r["label"]: r for r in rows}

        def got(label, key):
            return by.get(label, {}).get(key)

        lines += [f"With all views the known-K runs are within the issue's target (mean rotation error <= 0.5 deg, "
                  f"centre error <= 0.5%): DTU {_fmt(got('DTU 65, 49 views, known K', 'rot_mean'), 3)} deg / "
                  f"{_fmt(got('DTU 65, 49 views, known K', 'ctr_mean'), 3)}%, fern "
                  f"{_fmt(got('LLFF fern, 20 views x8, known K', 'rot_mean'), 3)} deg / "
                  f"{_fmt(got('LLFF fern, 20 views x8, known K', 'ctr_mean'), 3)}%; from the photos alone fern is "
                  f"too ({_fmt(got('LLFF fern, 20 views x8, unknown K', 'rot_mean'), 3)} deg) and DTU's rotation just "
                  f"misses ({_fmt(got('DTU 65, 49 views, unknown K', 'rot_mean'), 3)} deg). With 3 to 9 views GLOMAP's "
                  "global mapper registers every view in most runs where COLMAP's incremental one leaves views out, "
                  "which is why it is the default below 10 photos. It is not reproducible run to run even with a "
                  "fixed seed (multi-threaded): reruns of these rows have registered none of the 9 views, or left "
                  "one view far off, so check the pose report. 3 views stay several degrees off. Timings (training "
                  "included) are wall-clock on the shared 2-core machine while other jobs ran (see the load "
                  "average), so they overstate what an idle machine takes.", ""]
    if train_rows:
        k, r = train_rows
        lines += [f"3DGS on DTU scan 65 (200x150, {k['n_train']} train / {k['n_test']} test views: every 8th "
                  f"held out; `fast` preset at {args.steps} steps (densifying until step {args.steps * 3 // 4}), CPU, `--init random` for both; seeds "
                  f"0..{args.seeds - 1}, mean ± std) on the known poses and on the poses recovered from the 49 "
                  "photos alone (unknown K; undistorted images):", "",
                  "| poses | test PSNR (dB) | test SSIM | training (min) |", "|---|---:|---:|---:|"]
        for t in train_rows:
            lines.append(f"| {t['label']} | {mean_std(t['psnr'])} | {mean_std(t['ssim'], 4)} | {mean_std(t['minutes'], 1)} |")
        lines += ["", f"Recovered minus known: {np.mean(r['psnr']) - np.mean(k['psnr']):+.2f} dB.", ""]
    lines.append(f"This run of the script: {(time.time() - t_start) / 60:.1f} min; SfM results and training runs "
                 "already under --out are reused with the times recorded when they were measured.")
    return "\n".join(lines)


def _pycolmap_version() -> str:
    import pycolmap

    return pycolmap.__version__


if __name__ == "__main__":
    main()
