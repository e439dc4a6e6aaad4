"""Sparse views on real photos: each network-free technique added to plain 3DGS, each removed from
all of them together, on the real scenes of ``../shared/data`` (DTU scans 65 and 37, masked DTU
protocol; LLFF fern at x8, LLFF protocol), scored as ``splatkit benchmark`` scores (same runs, same
pictures).

Variants (``--variants``, comma separated), all on the ``sparse`` preset's other settings (SH degree
1, 10k initial points, no opacity reset, no depth prior):

* ``plain``: random init in the sphere every camera sees, densification from steps/60 to steps/2
  (3DGS' proportions), no plugins;
* ``+a+b``: techniques added to ``plain``; ``all``: every technique of ``FULL`` that applies to the
  scene (the ``sparse`` preset's, with opacity decay at the paper's x0.995, as every recorded row
  has it; the 3-view preset's x0.990 is ``all+decay990``); ``all-a+b``: ``all`` without some of
  them, with others.

Techniques: ``mvs`` (``init="mvs"``, plane-sweep stereo), ``triangulated`` (``init="triangulated"``),
``opacity_decay`` (Binocular3DGS x0.995 per step, densifying to the end as its authors do), ``warp``
(Binocular3DGS warp consistency), ``dropout`` (DropGaussian), ``dark_backdrop`` (DTU only),
``dark_exclude`` (DTU only: ``dark_backdrop`` with the backdrop also left out of the photometric
loss, as CoR-GS does on DTU), ``bright`` (DTU only: ``dark_backdrop`` with white runs too),
``table`` (DTU only: ``dark_backdrop`` with the table of a two-part backdrop too), ``solid`` (DTU only:
``dark_backdrop`` penalising 1 - alpha off the backdrop; ``background auto`` switches both on for a
two-part backdrop), ``no_table`` (DTU only: neither of them, the preset before it did), ``no_solid``
(DTU only: the table's term without the opacity one), ``solid3`` (DTU only: the opacity term x 3),
``random_bg`` (a random background colour per step), ``white_bg`` (a white background), ``black_bg``
(a black one: what ``all`` trained on before ``background auto`` learned two-part backdrops),
``aniso`` (PhysGaussian's anisotropy cap), ``decay980`` / ``decay990`` / ``decay998`` (opacity decay's factor 0.980 / 0.990 / 0.998
instead of 0.995), ``sh0`` (SH degree 0: no view dependence), ``smooth`` / ``smooth10`` (RegNeRF's depth smoothness on
unobserved views, weight 1 / 10), ``mvs_all`` (every stereo point), ``mvs_depth`` (the stereo depth as a Pearson depth prior), ``co_reg``
(CoR-GS: a second field, co-pruning, pseudo-view co-regularisation, about twice a plain run's time;
its authors' DTU settings, LLFF's on fern).

Each run takes a lock file (``--lock``, default ``/tmp/splatkit-heavy.lock``: the machine is shared)
while it trains; finished runs are reused, so an interrupted measurement continues where it stopped.
With ``--write`` every run's figures also go into ``docs/results/bench_sparse_real.json`` (committed):
a run recorded there whose folder is not on this machine is reported from it, not retrained, so the
tables survive the machine (``--fresh`` measures it again).
Pictures (ground truth | render | error) are in ``OUT/<variant>/images``.

    .venv/bin/python scripts/bench_sparse_real.py [--scenes scan65,scan37,fern] [--steps 3000]
        [--views 3] [--seeds 0,1,2] [--variants plain,+mvs,all,all-warp] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import cpu_model, load_average, load_results, machine_info, mean_std, record_result, write_section  # noqa: E402

SECTION = "bench_sparse_real"
SHARED = ROOT.parent / "shared" / "data"
LOCK = Path("/tmp/splatkit-heavy.lock")
BASE_PRESET = "sparse"
SCENES = {"scan65": ("dtu", "dtu_scan65"), "scan37": ("dtu", "dtu_scan37"), "fern": ("llff", "llff_fern")}


def techniques(steps: int, dtu: bool) -> dict[str, dict]:
    """Each technique as the config values it adds to the base (``plain``)."""
    from splatkit.priors.co_regularization import PRUNE_THRESHOLD_LLFF, PSEUDO_START_LLFF
    from splatkit.priors.sparse_views import OPACITY_DECAY

    # The paper's factor, pinned: every recorded ``all`` row has it, whatever the preset now sets.
    out = {"opacity_decay": {"regularizers": ["opacity_decay"], "refine_stop_iter": steps,
                             "plugins": {"opacity_decay": {"factor": OPACITY_DECAY}}},
           # Opacity decay's factor (Binocular3DGS: 0.995) stronger / weaker, on runs that have it.
           "decay980": {"plugins": {"opacity_decay": {"factor": 0.980}}},
           "decay990": {"plugins": {"opacity_decay": {"factor": 0.990}}},
           "decay998": {"plugins": {"opacity_decay": {"factor": 0.998}}},
           "warp": {"regularizers": ["warp_consistency"]},
           "triangulated": {"init": "triangulated"},
           "mvs": {"init": "mvs"},
           # Every consistent stereo point (up to 200k), not a random init_num_points subset of them.
           "mvs_all": {"init": "mvs", "init_num_points": 200_000},
           # The stereo depth as a depth prior (FSGS' Pearson loss on the pixels two views agree on).
           "mvs_depth": {"depth_prior": "mvs", "regularizers": ["depth_pearson"]},
           "dropout": {"regularizers": ["dropout"]},
           # View-independent colour: three close cameras may fit a view dependence that does not
           # hold far from them (DTU's top and low test views; metal on scan 37).
           "sh0": {"sh_degree": 0},
           # RegNeRF's depth smoothness on an unobserved view per step (weight 1; smooth10: x 10).
           "smooth": {"regularizers": ["depth_smoothness"]},
           "smooth10": {"regularizers": ["depth_smoothness"], "plugins": {"depth_smoothness": {"weight": 10.0}}},
           # PhysGaussian's cap on each Gaussian's axis ratio (no needles along the training rays).
           "aniso": {"regularizers": ["anisotropy"]},
           # A new random background colour per step: the splats must cover the photo opaquely.
           "random_bg": {"background": "random"},
           # A white background (DTU scans on a white table): the saturated table costs no Gaussians.
           "white_bg": {"background": "white"},
           # A black background whatever the capture: the preset before background auto learned
           # two-part backdrops (dark void + white table, DTU scan 37).
           "black_bg": {"background": "black"},
           "co_reg": {"regularizers": ["co_reg"]} if dtu else {
               "regularizers": ["co_reg"],
               "plugins": {"co_reg": {"start": PSEUDO_START_LLFF, "prune_threshold": PRUNE_THRESHOLD_LLFF}}}}
    if dtu:
        out["dark_backdrop"] = {"regularizers": ["dark_backdrop"]}
        out["dark_exclude"] = {"regularizers": ["dark_backdrop"],
                               "plugins": {"dark_backdrop": {"exclude_from_loss": True}}}
        # White tables too (out of the loss, alpha penalised): FreeNeRF's black/white prior.
        out["bright"] = {"regularizers": ["dark_backdrop"], "plugins": {"dark_backdrop": {"bright": True}}}
        # The table of a two-part backdrop (the background's colour) gets dark_backdrop's alpha
        # penalty too; ``solid``: the pixels that are no backdrop get one on 1 - alpha.
        out["table"] = {"regularizers": ["dark_backdrop"], "plugins": {"dark_backdrop": {"table": True}}}
        out["solid"] = {"regularizers": ["dark_backdrop"], "plugins": {"dark_backdrop": {"solid_weight": 1.0}}}
        # background auto switches both on for a two-part backdrop; ``no_table``: neither (the
        # preset before 2026-12-03 evening), ``no_solid``: the table only.
        out["no_table"] = {"plugins": {"dark_backdrop": {"table": False, "solid_weight": 0.0}}}
        out["no_solid"] = {"plugins": {"dark_backdrop": {"solid_weight": 0.0}}}
        out["solid3"] = {"plugins": {"dark_backdrop": {"solid_weight": 3.0}}}  # the opacity term x 3
    return out


# The techniques of ``all`` (the full combination the ablation removes one at a time from).
FULL = ("mvs", "opacity_decay", "warp", "dropout", "dark_backdrop")
DEFAULT_VARIANTS = ("plain", "+opacity_decay", "+warp", "+triangulated", "+mvs", "+dropout", "+dark_backdrop",
                    "+co_reg", "+dark_exclude", "all")


def variant_config(name: str, steps: int, dtu: bool) -> dict:
    """Config values of a variant: ``plain``; ``+a+b`` (techniques added to plain); ``all`` (every
    technique of :data:`FULL` that applies to the scene); ``all-a+b`` (``all`` without some, with
    others)."""
    table = techniques(steps, dtu)
    if name == "plain":
        chosen: list[str] = []
    elif name.startswith("all"):
        ops = re.findall(r"([+-])([a-z_0-9]+)", name[3:])
        removed = [t for op, t in ops if op == "-"]
        added = [t for op, t in ops if op == "+"]
        chosen = [t for t in FULL if t in table and t not in removed] + added
        unknown = [t for t in removed if t not in FULL] + [t for t in added if t not in table]
    elif name.startswith("+"):
        chosen = [t for t in name[1:].split("+") if t]
        unknown = [t for t in chosen if t not in table]
    else:
        raise SystemExit(f"variant {name!r}: write plain, +a+b or all-a-b")
    if name != "plain" and unknown:
        raise SystemExit(f"variant {name!r}: unknown technique(s) {unknown}; known: {', '.join(techniques(steps, True))}")
    # plain: random init of init_num_points, densification over 3DGS' share of the run (1/60 to 1/2),
    # no plugins, whatever the preset itself lists.
    values: dict = {"regularizers": [], "init": "random", "refine_stop_iter": max(1, steps // 2)}
    for t in chosen:
        for key, val in table[t].items():
            if key == "regularizers":
                values["regularizers"] += [r for r in val if r not in values["regularizers"]]
            elif key == "plugins":
                for plugin, settings in val.items():
                    values.setdefault("plugins", {}).setdefault(plugin, {}).update(settings)
            else:
                values[key] = val
    return values


# The techniques only DTU's backdrop has a use for: what ``techniques`` adds for DTU.
DTU_ONLY = tuple(sorted(set(techniques(1, True)) - set(techniques(1, False))))


def applies(name: str, dtu: bool) -> bool:
    """Variants that add a DTU-only technique are skipped on LLFF (``all`` leaves them out there)."""
    return dtu or not any(t in DTU_ONLY for t in re.findall(r"\+([a-z_0-9]+)", name))


@contextmanager
def heavy_lock(path: Path = LOCK):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def default_out(views: int, steps: int) -> Path:
    return ROOT / "outputs" / "bench" / "sparse_real" / f"{views}v_{steps}"


def variant_spec(suite: str, variant: str, views: int, steps: int, out: Path):
    """The benchmark spec of one variant's runs (``OUT/<variant>``; their preset is ``BASE_PRESET``)."""
    from splatkit.eval.benchmark import BenchmarkSpec

    overrides = variant_config(variant, steps, suite == "dtu")
    return BenchmarkSpec(suite=suite, out=out / variant, views=views, steps=steps, device="cpu",
                         overrides={**overrides, "preview_every": 0})


def cases(name: str, views: int):
    from splatkit.eval.benchmark import dtu_cases, llff_cases

    suite, folder = SCENES[name]
    if suite == "dtu":
        (case,) = dtu_cases(SHARED, [folder.split("scan")[-1]], views)
    else:
        (case,) = llff_cases(SHARED, [folder], views)
    return suite, dataclasses.replace(case, name=name)


def result_key(views: int, steps: int, scene: str, variant: str, seed: int) -> str:
    """A run's key in the ledger ``docs/results/bench_sparse_real.json``."""
    return f"{views}v/{steps}/{scene}/{variant}/seed{seed}"


def main() -> None:
    from splatkit.eval.benchmark import _run_done, run_one

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", default="scan65,scan37,fern")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default=None, help="comma separated (default: every one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: outputs/bench/sparse_real/<views>v_<steps>")
    parser.add_argument("--write", action="store_true",
                        help="update docs/benchmarks.md and record each run in docs/results/bench_sparse_real.json")
    parser.add_argument("--record", action="store_true",
                        help="record each run in docs/results/bench_sparse_real.json, leave docs/benchmarks.md "
                             "(parts of one measurement running side by side; --report-only --write then makes "
                             "the table)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: report the runs that have finished (others show '-')")
    parser.add_argument("--pictures", default=None, metavar="VARIANTS",
                        help="also write docs/images/sparse_real_<views>v.jpg: per scene one test view, ground "
                             "truth beside these finished variants (comma separated, seed 0)")
    parser.add_argument("--fresh", action="store_true",
                        help="train the runs the ledger has but this machine does not (their entries are replaced)")
    parser.add_argument("--lock", type=Path, default=LOCK,
                        help="file locked while a run trains (give parallel measurements their own)")
    args = parser.parse_args()
    if args.out is None:
        args.out = default_out(args.views, args.steps)
    scenes = [s for s in args.scenes.split(",") if s]
    unknown = sorted(set(scenes) - set(SCENES))
    if unknown:
        parser.error(f"unknown scenes {unknown}; choose from {', '.join(SCENES)}")
    missing = [s for s in scenes if not (SHARED / SCENES[s][1]).is_dir()]
    if missing:
        parser.error(f"{', '.join(missing)} not found under {SHARED}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    load = load_average()
    results: dict[tuple[str, str], list[dict]] = {}
    plan = []
    for scene in scenes:
        suite, case = cases(scene, args.views)
        dtu = suite == "dtu"
        chosen = [v for v in (args.variants.split(",") if args.variants else DEFAULT_VARIANTS) if applies(v, dtu)]
        plan += [(scene, suite, case, v) for v in chosen]
    order = list(dict.fromkeys(v for _, _, _, v in plan))
    section = SECTION if args.views == 3 else f"{SECTION}_{args.views}v"
    text = ""
    ledger = load_results(SECTION)
    here = cpu_model()
    for scene, suite, case, variant in plan:
        spec = variant_spec(suite, variant, args.views, args.steps, args.out)
        metric = "masked_psnr" if suite == "dtu" else "psnr"
        for seed in seeds:
            key = result_key(args.views, args.steps, scene, variant, seed)
            done = _run_done(spec.out / "runs" / case.name / BASE_PRESET / f"seed{seed}")
            machine = here  # a run folder never outlives its machine
            if key in ledger and not done and not args.fresh:
                record = ledger[key]  # measured on a machine whose run folder is gone
                machine = record.get("machine")
            elif args.report_only and not done:
                continue  # never touch a run another process may be training
            else:
                with heavy_lock(args.lock) if not done else contextlib.nullcontext():
                    record = run_one(spec, case, BASE_PRESET, seed, print)
                # A reused run is recorded once; re-reading it must not churn the committed ledger.
                if (args.write or args.record) and (not done or key not in ledger):
                    ledger = record_result(SECTION, key, {
                        "mean": {metric: record["mean"][metric]}, "train_time_s": record.get("train_time_s"),
                        "num_gaussians": record.get("num_gaussians")})
            results.setdefault((scene, variant), []).append({**record, "seed": seed, "machine": machine})
            # The section is rewritten after every run: a long measurement shows what has finished.
            text = report(args, scenes, order, results, load, len(plan) * len(seeds))
            if args.write:
                write_section(section, text)
    print(text)
    if args.pictures:
        path = pictures(args, scenes, [v for v in args.pictures.split(",") if v])
        print(f"wrote {path}")


# The test view shown per scene: a DTU view far from the three training cameras (the hard case
# the masked mean is dominated by) and fern's first held-out image.
PICTURE_VIEW = {"scan65": 1, "scan37": 1, "fern": None}
PICTURE_TILE = (300, 225)  # every tile's (width, height): DTU's and LLFF's 4:3 at the same size


def pictures(args, scenes: list[str], variants: list[str]) -> Path:
    """One row per scene: ground truth | each variant's render of one test view (seed 0 runs) |
    the last variant's error (|render - ground truth| x4, as ``splatkit benchmark`` draws it; on
    DTU inside the object mask only, the pixels its masked PSNR scores)."""
    from splatkit.data.imageio_utils import write_image
    from splatkit.eval.benchmark import error_image
    from splatkit.methods.scoring import render_views, settings_for
    from splatkit.train.run import Run

    rows = []
    for scene_name in scenes:
        _, case = cases(scene_name, args.views)
        tiles = []
        for v in variants:
            run = Run.open(args.out / v / "runs" / case.name / BASE_PRESET / "seed0")
            model, _ = run.load_model()
            scene, ids, positions = run.views("test")
            want = PICTURE_VIEW.get(scene_name)
            pos = positions[ids.index(want)] if want in ids else positions[0]
            if not tiles:
                tiles.append(scene.images[pos])
            (_, rgb, _, _), = render_views(model, scene.cameras[[pos]], settings_for(run.config))
            tiles.append(np.clip(rgb, 0, 1))
        err = error_image(tiles[-1], tiles[0])
        if SCENES[scene_name][0] == "dtu" and scene.masks is not None:  # only what the masked metric scores
            err = err * scene.masks[pos][..., None]
        tiles.append(err)
        rows.append(np.concatenate([_resized(t, PICTURE_TILE) for t in tiles], axis=1))
    out = ROOT / "docs" / "images" / f"sparse_real_{args.views}v.jpg"
    write_image(out, np.concatenate(rows, axis=0))
    return out


def _resized(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    t = torch.nn.functional.interpolate(t, size=(size[1], size[0]), mode="bilinear", antialias=True)
    return t[0].permute(1, 2, 0).clamp(0, 1).numpy()


def runs_by_machine(results) -> str:
    """Where the table's runs trained (the ledger's ``machine``): its times come from there, not
    from the machine that wrote the table."""
    from collections import Counter

    count = Counter(r.get("machine") for rs in results.values() for r in rs)
    known = [f"{n} on {m}" for m, n in sorted(count.items(), key=lambda mn: -mn[1]) if m]
    if count.get(None):
        known.append(f"{count[None]} recorded before the ledger named the machine")
    return f"Runs: {'; '.join(known)}." if known else ""


def report(args, scenes, order, results, load, planned: int) -> str:
    """Variants as rows, scenes as columns: mean ± std over seeds (and how many), the difference
    to ``plain`` in brackets."""
    metrics = {s: "masked_psnr" if SCENES[s][0] == "dtu" else "psnr" for s in scenes}
    head = "| variant | " + " | ".join(f"{s} {metrics[s].replace('_', ' ')}" for s in scenes) + " | minutes per run |"
    lines = [head, "|---|" + "---|" * (len(scenes) + 1)]
    for v in order:
        cells, minutes = [], []
        for s in scenes:
            rs = results.get((s, v), [])
            vals = [r["mean"][metrics[s]] for r in rs]
            base = [r["mean"][metrics[s]] for r in results.get((s, "plain"), [])]
            if not vals:
                cells.append("-" if applies(v, SCENES[s][0] == "dtu") else "n/a")
                continue
            delta = "" if v == "plain" or not base else f" ({np.mean(vals) - np.mean(base):+.2f})"
            cells.append(f"{mean_std(vals)} [{len(vals)}]{delta}")
            minutes += [r["train_time_s"] / 60 for r in rs if r.get("train_time_s")]
        lines.append(f"| `{v}` | " + " | ".join(cells) + f" | {np.mean(minutes):.1f} |" if minutes else
                     f"| `{v}` | " + " | ".join(cells) + " | - |")
    done = sum(len(rs) for rs in results.values())
    paired = ablation_lines(scenes, order, results, metrics)
    return f"""## Sparse views on real photos ({args.views} views): techniques added to plain 3DGS and removed from all

`python scripts/bench_sparse_real.py --views {args.views} --scenes {args.scenes} --steps {args.steps} --seeds {args.seeds}
{'' if args.variants is None else f'--variants {args.variants} '}--write` on {machine_info()}; load
average {'unknown' if load is None else f'{load:.1f}'} at the start (the machine is shared: times are
upper bounds). {runs_by_machine(results)} {args.views} training views (DTU: the protocol's first {args.views} of 25, 22, 28, 40, 44, 48, 0, 8, 13,
masked PSNR over the 25 protocol test views; fern: x8, every 8th image held out, PSNR), {args.steps} steps; each
cell is the mean ± std over the seeds that finished [how many], its difference to `plain` in brackets;
{done} of {planned} planned runs ("-": not run). `plain`: random init of 10k points in the sphere every camera
sees, SH degree 1, densification over 1/60 to 1/2 of the run, no plugins, no depth prior. `+a+b` adds
techniques to it, `all` is every technique of the `sparse` preset ({', '.join(FULL)}), opacity decay at
Binocular3DGS' x0.995 (the ablation's base; the 3-view `sparse` preset itself has x0.990 since 2026-12-04,
row `all+decay990`, and `sparse6` / `sparse9` keep x0.995; on fern without
`dark_backdrop`, whose dark mask covers 4e-6 of its pixels; on scan 37's two-part backdrop `background auto`
adds its `table` and `solid` terms, `no_table` takes them out), `all-a+b` removes / adds some; see the script's doc. Minutes: training time per
run, averaged over the row (runs shared the 2 cores with up to two others, 1 thread each). Pictures (ground
truth | render | error): `OUT/<variant>/images/`; per-run figures: `docs/results/{SECTION}.json`.

{chr(10).join(lines)}
{ABLATION_INTRO if paired else ""}{chr(10).join(paired)}
"""


ABLATION_INTRO = """
The ablation as paired differences: each run minus the run of the same scene and seed it changes
(`+a` minus `plain`, `all-a` or `all+b` minus `all`, `all-a+b` minus `all+b`; one `+b` only), mean ± std over the seeds both have [how many]; seed-to-seed
spread cancels in the pairs. Rows with no pair on any scene are left out.

"""


def signed_mean_std(values) -> str:
    """A difference's ``+mean ± std`` (the value alone, signed, for one)."""
    if len(values) == 1:
        return f"{values[0]:+.2f}"
    return f"{np.mean(values):+.2f} ± {np.std(values):.2f}"


def ablation_lines(scenes, order, results, metrics) -> list[str]:
    """Rows ``+a vs plain``, ``all-a vs all`` and ``all+b vs all``: per scene the per-seed differences to the run
    the variant changes (mean ± std and how many seeds pair)."""
    lines = []
    for v in order:
        if v.startswith("+"):
            base = "plain"
        elif v.startswith("all+") and v.count("+") == 1:  # one setting changed on top of all
            base = "all"
        elif v.startswith("all-"):
            # all-a+b changes all+b: a removal measured under other settings pairs with those settings.
            base = "all" + "".join(f"+{t}" for op, t in re.findall(r"([+-])([a-z_0-9]+)", v[3:]) if op == "+")
        else:
            continue
        cells, any_pair = [], False
        for s in scenes:
            ref = {r["seed"]: r["mean"][metrics[s]] for r in results.get((s, base), [])}
            diffs = [r["mean"][metrics[s]] - ref[r["seed"]] for r in results.get((s, v), []) if r["seed"] in ref]
            any_pair |= bool(diffs)
            cells.append(f"{signed_mean_std(diffs)} [{len(diffs)}]" if diffs else "-")
        if any_pair:
            lines.append(f"| {v} vs {base} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    head = "| paired difference | " + " | ".join(f"{s} (dB)" for s in scenes) + " |"
    return [head, "|---|" + "---|" * len(scenes)] + lines


if __name__ == "__main__":
    main()
