"""Pretrain the base weights of our repair model (``ours``) on procedural scenes.

GaussianObject's repair model starts from a pretrained diffusion model and is fine-tuned per scene;
ours starts from weights this script makes, with nothing from outside: many procedural scenes of
:mod:`splatkit.data.synthetic` (seeds that no benchmark uses), each fitted by 3DGS from ``--views``
of the DTU protocol's training ids, give pairs of a corrupted render and the true image:

* ``sparse`` (stored as kind ``loo``: a render of a camera the model never saw): the 3-view fit
  rendered at the protocol's 25 test cameras, at half and at the end of its fit (two levels of
  corruption), against the ray-traced images. This is what the plugin repairs: novel views of a
  sparse-view model.
* ``loo``: GaussianObject's leave-one-out renders (:func:`splatkit.priors.repair.pairs.generate_pairs`),
  for the first ``--loo-scenes`` scenes; their fits also measure the parameter statistics that the
  noise pairs of every scene use (a leave-one-out fit per view of every scene would cost 3x more).
* ``noise``: renders of the fit with GaussianObject's statistics noise on its Gaussians;
* ``identity``: the fit's renders of its own training views (without them the model over-corrects).

Pairs are cached per scene (``--cache``, ``pairs_*.pt``, uint8) so retraining the network does not
regenerate them. The network (:mod:`splatkit.priors.repair.unet`) trains on random crops with Adam
(L1 + 0.2 D-SSIM, warm-up then cosine decay) and is written atomically as fp16 safetensors with a
JSON beside it saying how it was made. Then it is scored on held-out scenes: PSNR of the repaired
test renders against the true images, over the unrepaired renders' PSNR. ``--compare-fine-tune``
also fine-tunes per held-out scene (LoRA and the whole network) on that scene's own pairs.

Reproducible from ``--seed`` on one machine (CPU float results may differ across thread counts).
Pair generation is the long part (about a minute per scene at 200x150, 1000-step fits, one
thread); ``--pairs-only --shard K/N`` splits it across N processes (one per core), then a run
without ``--shard`` trains on the cached pairs.

    nice -n 10 .venv/bin/python scripts/pretrain_repair.py [--scenes 10] [--views 3] \\
        [--resolution 100x75] [--steps 1500] [--out PATH] [--seed 0] [--compare-fine-tune 2] [--write]
    # on 2 cores: the pairs in two processes first, then the network
    for k in 0 1; do .venv/bin/python scripts/pretrain_repair.py --pairs-only --shard $k/2 [...] & done; wait
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import load_average, machine_info, write_section  # noqa: E402

SECTION = "pretrain_repair"
CACHE_VERSION = 1
# Scene seeds: the synthetic benchmark suite uses objects 0-2 (splatkit.eval.benchmark), the
# other scripts 0-1; pretraining starts far from them, held-out scenes further still.
TRAIN_SEED_BASE = 100
HELDOUT_SEED_BASE = 900
SEEDS_PER_RUN = 10000  # --seed s shifts every scene seed by s * SEEDS_PER_RUN


# ------------------------------------------------------------------------------------------------
# Progress: a rich bar with ETA on a terminal, plain lines with ETA in a log.
# ------------------------------------------------------------------------------------------------
class Reporter:
    def __init__(self):
        from rich.console import Console

        self.console = Console()
        self.tty = self.console.is_terminal

    def say(self, msg: str) -> None:
        print(msg, flush=True)

    def task(self, label: str, total: int):
        return _Task(self, label, total)


class _Task:
    def __init__(self, rep: Reporter, label: str, total: int):
        self.rep, self.label, self.total = rep, label, max(1, int(total))
        self.t0 = time.perf_counter()
        self.last_print = 0.0
        self.progress = None

    def __enter__(self):
        if self.rep.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}  ETA"), TimeRemainingColumn(),
                                     TextColumn("elapsed"), TimeElapsedColumn(), console=self.rep.console)
            self.progress.__enter__()
            self.tid = self.progress.add_task(self.label, total=self.total, info="")
        return self

    def update(self, done: int, info: str = "") -> None:
        if self.progress is not None:
            self.progress.update(self.tid, completed=done, info=info)
            return
        now = time.perf_counter()
        if now - self.last_print < 30 and done < self.total:
            return
        self.last_print = now
        el = now - self.t0
        eta = el / max(done, 1) * (self.total - done)
        print(f"{self.label}: {done}/{self.total} {info} elapsed {_fmt(el)} ETA {_fmt(eta)}", flush=True)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ------------------------------------------------------------------------------------------------
# Pairs of one scene.
# ------------------------------------------------------------------------------------------------
def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


def _fit_config(steps: int, seed: int):
    from splatkit.priors.repair.pairs import fit_config
    from splatkit.train.config import resolve_config

    # The sparse preset (3 views: random init, low SH degree) on black, the synthetic backdrop.
    cfg = resolve_config({"steps": steps, "background": "black", "device": "cpu", "seed": seed}, preset="sparse")
    return cfg, fit_config(cfg, steps, seed)


def make_scene_pairs(seed: int, args, stats, *, loo_steps: int, own_pairs: bool, say) -> dict:
    """Render scene ``seed``, fit 3DGS on ``args.views`` views, and return its pairs (uint8), the
    held-out test renders and, with ``stats`` None, the measured noise statistics."""
    from splatkit.data.synthetic import render_synthetic_scene
    from splatkit.eval.protocols import dtu_protocol
    from splatkit.methods import method_class
    from splatkit.methods.scoring import background_for
    from splatkit.models.init import scene_extent
    from splatkit.priors.repair.base import RepairPairs
    from splatkit.priors.repair.pairs import fit_views, generate_pairs

    t0 = time.perf_counter()
    W, H = args.size
    proto = dtu_protocol()
    synth = render_synthetic_scene(seed, W, H, n_views=proto.num_views)
    scene = synth.to_scene()
    scene.depths = None  # no depth prior in these fits
    pos = {i: p for p, i in enumerate(scene.ids)}
    train = scene.subset([pos[i] for i in proto.train_views(args.views)])
    test = scene.subset([pos[i] for i in proto.test_views()])
    t_render = time.perf_counter() - t0

    device = torch.device("cpu")
    cfg, fcfg = _fit_config(args.fit_steps, seed)
    bg = torch.from_numpy(background_for(cfg)).float()
    scale = scene_extent(train.cameras)
    vm = test.cameras.viewmats(device).float()
    Ks = test.cameras.intrinsics(device).float()
    gt = torch.from_numpy(np.stack(test.images)).float()
    masks = torch.from_numpy(np.stack(test.masks)).bool()

    def render_test(method):
        with torch.no_grad():
            return method.render(vm, Ks, W, H, bg.view(1, 3).expand(len(vm), 3), with_depth=False).colors.clamp(0, 1)

    # The fit: a plain 3DGS fit of the sparse preset's schedule, rendered at the test cameras
    # halfway and at the end (two levels of corruption). Global RNGs seeded: densification draws.
    torch.manual_seed(seed)
    half = args.fit_steps // 2
    t1 = time.perf_counter()
    method, _ = fit_views(method_class(cfg.method), fcfg, train, steps=half, seed=seed, device=device, background=bg,
                          scene_scale=scale)
    mid = render_test(method)
    method, _ = fit_views(method_class(cfg.method), fcfg, train, steps=args.fit_steps - half, seed=seed + 1,
                          device=device, background=bg, scene_scale=scale, method=method, start_step=half)
    final = render_test(method)
    t_fit = time.perf_counter() - t1

    t2 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs, report = generate_pairs(method, train, cfg, background=bg, scene_scale=scale, loo_steps=loo_steps,
                                       noise_draws=args.noise_draws, seed=seed + 17, stats=stats, say=say)
    t_pairs = time.perf_counter() - t2
    n = len(test)
    sparse = RepairPairs(torch.cat([mid, final]), gt.repeat(2, 1, 1, 1), ["loo"] * (2 * n), list(test.ids) * 2)
    everything = RepairPairs.cat([sparse, pairs])
    sub = ["sparse"] * (2 * n) + list(pairs.kinds)
    out = {
        "version": CACHE_VERSION, "seed": seed, "object": synth.object_name,
        "inputs": _u8(everything.inputs), "targets": _u8(everything.targets),
        "kinds": everything.kinds, "sub": sub, "view_ids": everything.view_ids,
        "test": {"renders": _u8(final), "gt": _u8(gt), "masks": masks, "ids": list(test.ids)},
        "stats": report["stats"],
        "seconds": {"render": t_render, "fit": t_fit, "pairs": t_pairs, "total": time.perf_counter() - t0},
    }
    if own_pairs:  # the scene's own pairs, as the plugin makes them (for the fine-tune comparison)
        out["own"] = {"inputs": _u8(pairs.inputs), "targets": _u8(pairs.targets), "kinds": pairs.kinds,
                      "view_ids": pairs.view_ids}
    return out


def cache_path(args, seed: int, role: str) -> Path:
    W, H = args.size
    return args.cache / (f"pairs_v{CACHE_VERSION}_{role}_s{seed}_{W}x{H}_{args.views}v_fit{args.fit_steps}"
                         f"_n{args.noise_draws}_loo{args.loo_steps}.pt")


def cached_scene(args, seed: int, role: str, stats, *, loo_steps: int, own_pairs: bool, rep: Reporter) -> dict:
    from splatkit.utils.atomic import atomic_path

    path = cache_path(args, seed, role)
    if path.is_file():
        return torch.load(path, weights_only=False)
    data = make_scene_pairs(seed, args, stats, loo_steps=loo_steps, own_pairs=own_pairs, say=rep.say)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return data


def to_pairs(data: dict, key: str = ""):
    from splatkit.priors.repair.base import RepairPairs

    d = data[key] if key else data
    return RepairPairs(_f32(d["inputs"]), _f32(d["targets"]), list(d["kinds"]), list(d["view_ids"]))


# ------------------------------------------------------------------------------------------------
# Scores.
# ------------------------------------------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR of [N, H, W, 3] images (``mask`` [N, H, W]: only those pixels)."""
    err = (a - b) ** 2
    if mask is None:
        mse = err.mean(dim=(1, 2, 3))
    else:
        m = mask.float()[..., None]
        mse = (err * m).sum(dim=(1, 2, 3)) / (3 * m.sum(dim=(1, 2, 3))).clamp_min(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def score_scene(model, data: dict, strengths=(1.0,)) -> dict:
    t = data["test"]
    render, gt, mask = _f32(t["renders"]), _f32(t["gt"]), t["masks"]
    out = {"before": float(psnr(render, gt).mean()), "before_masked": float(psnr(render, gt, mask).mean())}
    gen = torch.Generator().manual_seed(0)
    for s in strengths:
        rep = model.repair(render, strength=s, generator=gen)
        out[f"after_{s:g}"] = float(psnr(rep, gt).mean())
        out[f"after_{s:g}_masked"] = float(psnr(rep, gt, mask).mean())
    # Renders that are already right (the fit's own training views) must stay right.
    idn = [i for i, k in enumerate(data["kinds"]) if k == "identity"]
    if idn:
        x, y = _f32(data["inputs"][idn]), _f32(data["targets"][idn])
        out["identity_before"] = float(psnr(x, y).mean())
        out["identity_after"] = float(psnr(model.repair(x, strength=1.0, generator=gen), y).mean())
    return out


# ------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=10, help="procedural training scenes")
    p.add_argument("--heldout", type=int, default=4, help="held-out scenes the result is scored on")
    p.add_argument("--views", type=int, default=3, help="training views of each fit (DTU protocol ids)")
    p.add_argument("--resolution", default="100x75", help="WxH of the rendered scenes")
    p.add_argument("--fit-steps", type=int, default=300, help="3DGS steps of each scene's fit")
    p.add_argument("--loo-steps", type=int, default=100, help="leave-one-out fit steps (first --loo-scenes scenes)")
    p.add_argument("--loo-scenes", type=int, default=1, help="scenes with leave-one-out pairs (measure the noise)")
    p.add_argument("--noise-draws", type=int, default=2, help="noisy-Gaussian renders per training view")
    p.add_argument("--steps", type=int, default=1500, help="network training steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ssim-weight", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (fixed: results depend on it; on a shared 2-core machine 2 threads "
                        "spin against other jobs and ran 10x slower than 1)")
    p.add_argument("--out", type=Path, default=None,
                   help="weights file (default: the shipped splatkit/priors/repair/weights/repair_unet.safetensors)")
    p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "repair_pretrain")
    p.add_argument("--compare-fine-tune", type=int, default=0, metavar="N",
                   help="also fine-tune per scene (LoRA vs whole network) on the first N held-out scenes")
    p.add_argument("--tune-steps", type=int, default=300, help="per-scene fine-tune steps for the comparison")
    p.add_argument("--heldout-loo-steps", type=int, default=100,
                   help="leave-one-out steps of the held-out scenes' own pairs (fine-tune comparison)")
    p.add_argument("--pairs-only", action="store_true", help="generate (cache) the pairs and stop")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="with --pairs-only: generate every N-th scene from the K-th (0-based), so N processes "
                        "share the pair generation (the leave-one-out scenes stay in shard 0; other shards wait "
                        "for them to be cached)")
    p.add_argument("--eval-only", action="store_true", help="score the weights at --out, do not train")
    p.add_argument("--write", action="store_true", help="add the results to docs/benchmarks.md")
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.resolution.lower().split("x"))
    except ValueError:
        p.error(f"--resolution must look like 100x75, got {args.resolution!r}")
    args.size = (w, h)
    args.shard_index, args.shard_count = 0, 1
    if args.shard is not None:
        try:
            args.shard_index, args.shard_count = (int(v) for v in args.shard.split("/"))
        except ValueError:
            p.error(f"--shard must look like 0/2, got {args.shard!r}")
        if not 0 <= args.shard_index < args.shard_count:
            p.error(f"--shard K/N needs 0 <= K < N, got {args.shard!r}")
        if not args.pairs_only:
            p.error("--shard generates part of the pairs: use it with --pairs-only, then train without it")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from splatkit.priors.repair.unet import (DEFAULT_FINE_TUNE, DEFAULT_WEIGHTS, UNetRepairModel, train_steps,
                                             write_weights)

    torch.set_num_threads(args.threads)
    out = args.out or DEFAULT_WEIGHTS
    rep = Reporter()
    load = load_average()
    t_start = time.perf_counter()
    base = args.seed * SEEDS_PER_RUN
    train_seeds = [base + TRAIN_SEED_BASE + i for i in range(args.scenes)]
    held_seeds = [base + HELDOUT_SEED_BASE + i for i in range(args.heldout)]

    # 1. Pairs (cached per scene). The first scenes' leave-one-out fits measure the noise statistics.
    t0 = time.perf_counter()
    scenes, stats_list = [], []
    todo = [(s, "train") for s in ([] if args.eval_only else train_seeds)] + [(s, "heldout") for s in held_seeds]
    loo_seeds = train_seeds[:args.loo_scenes] if (args.loo_steps > 0 and not args.eval_only) else []
    if args.shard_count > 1:
        todo = shard_scenes(todo, loo_seeds, args.shard_index, args.shard_count)
        if args.shard_index > 0 and loo_seeds:
            _wait_for_cache(args, loo_seeds, rep)
    with rep.task("pairs", len(todo)) as task:
        for k, (seed, role) in enumerate(todo):
            with_loo = role == "train" and seed in loo_seeds
            if role == "heldout":
                own = held_seeds.index(seed) < args.compare_fine_tune
                loo = args.heldout_loo_steps if own else 0
            else:
                loo, own = (args.loo_steps if with_loo else 0), False
            stats = None  # a scene with leave-one-out fits measures its own
            if not loo:
                if not stats_list:  # no leave-one-out scene in this invocation: read the cached ones once
                    stats_list.append(_stats_from_cache(args, rep))
                stats = _mean_stats(stats_list)
            data = cached_scene(args, seed, role, stats, loo_steps=loo, own_pairs=own, rep=rep)
            if with_loo:
                stats_list.append(data["stats"])
            scenes.append((seed, role, data))
            task.update(k + 1, f"scene {seed} ({data['object']}, {len(data['kinds'])} pairs, "
                               f"{data['seconds']['total']:.0f} s)")
    t_pairs = time.perf_counter() - t0
    gen_seconds = sum(d["seconds"]["total"] for _, _, d in scenes)
    if args.pairs_only:
        rep.say(f"pairs of {len(scenes)} scenes cached in {args.cache} ({gen_seconds:.0f} s of generation)")
        return
    train_data = [d for _, r, d in scenes if r == "train"]
    held = [(s, d) for s, r, d in scenes if r == "heldout"]

    # 2. The network.
    info: dict = {}
    if not args.eval_only:
        from splatkit.priors.repair.base import RepairPairs

        pairs = RepairPairs.cat([to_pairs(d) for d in train_data])
        sub = [k for d in train_data for k in d["sub"]]
        counts = {k: sub.count(k) for k in sorted(set(sub))}
        rep.say(f"{len(pairs)} training pairs {counts} from {len(train_data)} scenes "
                f"(generated in {gen_seconds:.0f} s, this run {t_pairs:.0f} s)")
        model = UNetRepairModel.untrained(seed=args.seed)
        params = list(model.net.parameters())
        for p in params:
            p.requires_grad_(True)
        gen = torch.Generator().manual_seed(args.seed)
        torch.manual_seed(args.seed)
        t1 = time.perf_counter()
        with rep.task("train", args.steps) as task:
            first, last = train_steps(model.net, params, pairs, steps=args.steps, lr=args.lr, batch_size=args.batch,
                                      crop=args.crop, ssim_weight=args.ssim_weight, gen=gen,
                                      progress=lambda d, t, l: task.update(d, f"loss {l:.4f}"),
                                      warmup=max(1, args.steps // 20), cosine=True)
        t_train = time.perf_counter() - t1
        for p in params:
            p.requires_grad_(False)
        info = {
            "made_by": "scripts/pretrain_repair.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "seed": args.seed, "train_scene_seeds": train_seeds, "heldout_scene_seeds": held_seeds,
            "resolution": list(args.size), "views": args.views, "fit_steps": args.fit_steps,
            "loo_steps": args.loo_steps, "loo_scenes": args.loo_scenes, "noise_draws": args.noise_draws,
            "pairs": counts, "steps": args.steps, "batch": args.batch, "crop": args.crop, "lr": args.lr,
            "ssim_weight": args.ssim_weight, "loss_first": first, "loss_last": last,
            "seconds_pairs": round(gen_seconds, 1), "seconds_train": round(t_train, 1), "threads": args.threads,
        }
        sha = write_weights(out, model.unet, info={"made_by": info["made_by"], "seed": str(args.seed),
                                                   "resolution": f"{args.size[0]}x{args.size[1]}"})
        rep.say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {sha[:12]}); loss {first:.4f} -> {last:.4f} "
                f"in {t_train:.0f} s")
    else:  # scoring existing weights: how they were made comes from the JSON beside them
        sidecar = out.with_suffix(".json")
        info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        info = {k: v for k, v in info.items() if k not in ("file", "sha256", "config", "fine_tune_defaults", "heldout")}
    model = UNetRepairModel.load(out)

    # 3. Held-out scenes.
    rows, per = [], []
    for seed, data in held:
        sc = score_scene(model, data, strengths=(1.0, 0.5))
        per.append(sc)
        rows.append(f"| {seed} ({data['object']}) | {sc['before']:.2f} | {sc['after_1']:.2f} | {sc['after_0.5']:.2f} "
                    f"| {sc['before_masked']:.2f} | {sc['after_1_masked']:.2f} | "
                    f"{sc['identity_before']:.2f} -> {sc['identity_after']:.2f} |")
        rep.say(f"held-out scene {seed}: PSNR {sc['before']:.2f} -> {sc['after_1']:.2f} (strength 0.5: "
                f"{sc['after_0.5']:.2f}); masked {sc['before_masked']:.2f} -> {sc['after_1_masked']:.2f}; "
                f"training views {sc['identity_before']:.2f} -> {sc['identity_after']:.2f}")
    gains = [p["after_1"] - p["before"] for p in per]
    gains_m = [p["after_1_masked"] - p["before_masked"] for p in per]
    summary = {"gain_db": _ms(gains), "gain_masked_db": _ms(gains_m), "per_scene": per}

    # 4. Per-scene fine-tune: LoRA vs the whole network, on each scene's own pairs.
    tune_rows = []
    if args.compare_fine_tune:
        for seed, data in held[:args.compare_fine_tune]:
            own = to_pairs(data, "own")
            res = {"base": score_scene(model, data)["after_1"]}
            for mode in ("lora", "full"):
                m = UNetRepairModel.load(out, mode=mode)
                st = m.fine_tune(own, steps=args.tune_steps, seed=args.seed)
                res[mode] = score_scene(m, data)["after_1"]
                res[f"{mode}_seconds"] = st["seconds"]
                res[f"{mode}_params"] = st["trainable_params"]
            res["before"] = score_scene(model, data)["before"]
            rep.say(f"fine-tune, held-out scene {seed} ({len(own)} own pairs {own.counts()}): PSNR unrepaired "
                    f"{res['before']:.2f}, base {res['base']:.2f}, LoRA {res['lora']:.2f} ({res['lora_seconds']:.0f} s), "
                    f"whole network {res['full']:.2f} ({res['full_seconds']:.0f} s)")
            tune_rows.append((seed, data["object"], len(own), res))
        summary["fine_tune"] = [r for *_, r in tune_rows]

    total = time.perf_counter() - t_start
    if not args.eval_only or info:
        info["heldout"] = {"gain_db": summary["gain_db"], "gain_masked_db": summary["gain_masked_db"]}
        if tune_rows:
            info["fine_tune_compare"] = summary["fine_tune"]
        from splatkit.utils.atomic import write_text_atomic

        meta = {"file": out.name, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                "config": dict(json.loads(_read_config(out))), "fine_tune_defaults": DEFAULT_FINE_TUNE, **info}
        write_text_atomic(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
        out.with_suffix(".json").chmod(0o644)
    rep.say(f"held-out repair gain {summary['gain_db']} dB (masked {summary['gain_masked_db']}); total {total:.0f} s")
    (args.cache / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                         "info": info, **summary}, indent=2) + "\n")
    if args.write:
        text = _section(args, info, rows, summary, tune_rows, load, total)
        print(text)
        print(f"wrote {write_section(SECTION, text)}")


def _ms(values) -> str:
    if not values:
        return "n/a"
    return f"{np.mean(values):+.2f} ± {np.std(values):.2f}"


def _mean_stats(stats_list):
    if not stats_list:
        return None
    from splatkit.priors.repair.pairs import average_stats

    return average_stats(stats_list)


def shard_scenes(todo: list, loo_seeds, index: int, count: int) -> list:
    """Shard ``index`` of ``count``'s part of ``todo`` ([(seed, role)]): the shards together cover
    every scene once. The leave-one-out scenes measure the noise statistics every other scene uses,
    so shard 0 makes them first and the others take them from the cache."""
    loo = [t for t in todo if t[0] in loo_seeds and t[1] == "train"]
    rest = [t for t in todo if t not in loo]
    return (loo if index == 0 else []) + rest[index::count]


def _wait_for_cache(args, seeds, rep, poll_seconds: float = 20.0) -> None:
    """Block until the pairs of ``seeds`` (training scenes) are cached by another shard."""
    paths = [cache_path(args, s, "train") for s in seeds]
    if all(p.is_file() for p in paths):
        return
    rep.say(f"waiting for shard 0 to cache the leave-one-out scene(s) {seeds} (noise statistics)")
    while not all(p.is_file() for p in paths):
        time.sleep(poll_seconds)


def _stats_from_cache(args, rep):
    """Noise statistics when no leave-one-out scene ran in this invocation: the mean over the cached
    leave-one-out training scenes (generating them if needed)."""
    base = args.seed * SEEDS_PER_RUN + TRAIN_SEED_BASE
    stats = [cached_scene(args, base + i, "train", None, loo_steps=max(args.loo_steps, 1), own_pairs=False,
                          rep=rep)["stats"] for i in range(max(args.loo_scenes, 1))]
    return _mean_stats(stats)


def _read_config(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["config"]


def _section(args, info, rows, summary, tune_rows, load, total) -> str:
    from splatkit.priors.repair.unet import DEFAULT_FINE_TUNE

    W, H = args.size
    lines = [
        "## Repair model pretraining",
        "",
        f"`nice -n 10 python scripts/pretrain_repair.py --scenes {args.scenes} --heldout {args.heldout} --views {args.views} "
        f"--resolution {W}x{H} --fit-steps {args.fit_steps} --steps {args.steps} --seed {args.seed}"
        + (f" --compare-fine-tune {args.compare_fine_tune}" if args.compare_fine_tune else "") + " --write` on "
        f"{machine_info()}; load average {'unknown' if load is None else f'{load:.1f}'} at the start (shared machine: "
        "times are upper bounds).",
        "",
        "The base weights of the `ours` repair model (`splatkit/priors/repair/weights/repair_unet.safetensors`, "
        "a 1.6M-parameter diffusers `UNet2DModel`, fp16) come from this run. Each procedural scene (synthetic "
        f"generator, seeds from {TRAIN_SEED_BASE}; the benchmarks use 0-2) is fitted by plain 3DGS (sparse preset, "
        f"{args.fit_steps} steps, {args.views} DTU-protocol views, {W}x{H}); its pairs are the fit's renders of the 25 "
        "test cameras (half-way and final) against the true images, leave-one-out renders (first scene), "
        "noisy-Gaussian renders (GaussianObject's statistics noise) and identity pairs.",
        "",
    ]
    if info:
        lines += [f"* pairs: {info['pairs']} from {args.scenes} scenes, generated in {info['seconds_pairs'] / 60:.1f} min; "
                  f"network: {info['steps']} steps (batch {info['batch']}, {info['crop']}px crops) in "
                  f"{info['seconds_train'] / 60:.1f} min, loss {info['loss_first']:.4f} -> {info['loss_last']:.4f}", ""]
    lines += [
        f"Held-out scenes ({args.heldout}, seeds from {HELDOUT_SEED_BASE}): PSNR (dB) of each scene's 3-view fit "
        "rendered at the 25 test cameras against the true images, before and after repair (strength 1 = the full "
        "residual, 0.5 = half of it); masked = object pixels only; last column: the fit's own training views "
        "(identity; must not get worse).",
        "",
        "| scene | unrepaired | repaired | strength 0.5 | unrepaired masked | repaired masked | training views |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Mean gain of the base model on held-out scenes: **{summary['gain_db']} dB** PSNR, "
        f"{summary['gain_masked_db']} dB masked PSNR (mean ± std over scenes).",
    ]
    if tune_rows:
        lines += [
            "",
            f"Per-scene fine-tune ({args.tune_steps} steps on the scene's own pairs: leave-one-out "
            f"({args.heldout_loo_steps}-step fits), noise and identity; scored on its test renders):",
            "",
            "| scene | own pairs | unrepaired | base | LoRA (rank 8) | whole network |",
            "|---|---|---|---|---|---|",
        ]
        for seed, obj, n, r in tune_rows:
            lines.append(f"| {seed} ({obj}) | {n} | {r['before']:.2f} | {r['base']:.2f} | {r['lora']:.2f} "
                         f"({r['lora_seconds']:.0f} s) | {r['full']:.2f} ({r['full_seconds']:.0f} s) |")
        d_lora = [r["lora"] - r["base"] for *_, r in tune_rows]
        d_full = [r["full"] - r["base"] for *_, r in tune_rows]
        lines += ["", f"Fine-tuning changes the base model's repaired PSNR by {_ms(d_lora)} dB (LoRA, the default) and "
                  f"{_ms(d_full)} dB (whole network); learning rates {DEFAULT_FINE_TUNE['lr_lora']:g} (LoRA) and "
                  f"{DEFAULT_FINE_TUNE['lr_full']:g} (whole network), batch {DEFAULT_FINE_TUNE['batch_size']}, "
                  f"{DEFAULT_FINE_TUNE['crop']}px crops."]
    lines += ["", f"Total {total / 60:.1f} min."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
