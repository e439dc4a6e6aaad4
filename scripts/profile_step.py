"""Where a CPU training step's time goes, against the rasterizer's own forward+backward.

Drives the real :class:`splatkit.train.trainer.Trainer` (``default`` preset: random initial
points, 3DGS learning rates, L1 + 0.2 D-SSIM, gsplat's ``DefaultStrategy``) on a synthetic scene,
and times each part of a step with wall-clock wrappers around the functions the trainer calls:

* ``activate``: ``GaussianModel.activated`` (exp scales, sigmoid opacities, SH concatenation);
* ``project``, ``SH``, ``bin``, ``raster``: the cpu backend's projection, SH colours, tile binning
  and compositing forwards; ``glue``: the rest of :func:`splatkit.render.rasterization`;
* ``loss``: ``photometric_loss`` (L1 + SSIM forward);
* ``strategy``: ``DefaultStrategy.step_pre_backward`` + ``step_post_backward``;
* ``bwd raster`` / ``bwd proj+SH`` / ``bwd other``: ``loss.backward()`` split into the C++
  compositing backward, the projection and SH backwards, and everything else (SSIM, L1, the
  activations, gradient accumulation);
* ``Adam``: every parameter group's ``step()`` + ``zero_grad()``;
* ``finite``: the trainer's per-step ``_check_finite``; ``other``: the rest of the loop iteration
  (batch, loss finiteness check, PSNR/log values, progress).

``step`` is the wall time from one step's end to the next (so it holds everything), ``steps/s``
its inverse. The reference, ``rasterizer``, is ``splatkit.render.rasterization(...)`` forward +
backward alone (projection, SH, binning, compositing; the output gradient given) on the same
views, Gaussians and SH degree, timed (best of 2) right after each step, so that both see the same
machine load; ``ratio`` = the median over the steps of step / rasterizer (the issue's target is at
most 2). Views differ in cost, so each step is paired with its own views.

SH degree ``d`` is reached at once (``sh_degree_interval`` 1): warm-up steps are not timed; the
timed steps are before ``refine_start_iter`` (500), i.e. the common step: the strategy only
accumulates its gradient statistics (a refinement every 100 steps costs more, then).

    .venv/bin/python scripts/profile_step.py [--sizes 20000 50000 100000] [--sh 1 3]
        [--frames 400x300 135x240 135x240-nodepth] [--steps 6] [--warmup 4] [--write]
        [--threads 1 --kernel-threads 2]   # torch on one thread, the C++ kernels on two
        [--what-if fused-adam,sum-finite]  # measure trainer changes not made yet
        [--profile]   # also print torch.profiler's top operators for each configuration
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdoc import load_average, machine_info, write_section  # noqa: E402  (scripts/ is on sys.path)

import splatkit.render  # noqa: E402
import splatkit.train.trainer as trainer_mod  # noqa: E402
from splatkit.models.gaussians import GaussianModel  # noqa: E402
from splatkit.render import cpu_backend  # noqa: E402
from splatkit.train import Trainer, resolve_config  # noqa: E402

SECTION = "profile_step"
N_VIEWS = 50  # the issue's capture: 50 photos
PARTS = ("activate", "project", "SH", "bin", "raster", "glue", "loss", "strategy",
         "bwd raster", "bwd proj+SH", "bwd other", "Adam", "finite", "other")


class Timers:
    """Wall time per part of the current step; wrappers nest (inner time is not double-counted
    by the part that contains it: the parent's figure is reduced afterwards)."""

    def __init__(self):
        self.on = False
        self.cur = defaultdict(float)

    @contextmanager
    def part(self, name):
        if not self.on:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.cur[name] += time.perf_counter() - t0


T = Timers()


def _wrap(name, fn):
    def wrapped(*a, **k):
        with T.part(name):
            return fn(*a, **k)
    wrapped.__wrapped__ = fn
    return wrapped


def install_wrappers():
    """Time the trainer's callees in place (module attributes are looked up at call time)."""
    GaussianModel.activated = _wrap("activate", GaussianModel.activated)
    splatkit.render.rasterization = _wrap("render", splatkit.render.rasterization)
    for attr, name in (("project_gaussians", "project"), ("sh_colors", "SH"),
                       ("bin_tiles", "bin"), ("rasterize_to_pixels", "raster")):
        setattr(cpu_backend, attr, _wrap(name, getattr(cpu_backend, attr)))
    trainer_mod.photometric_loss = _wrap("loss", trainer_mod.photometric_loss)
    torch.Tensor.backward = _wrap("backward", torch.Tensor.backward)
    # Autograd looks a Function's backward up on the class when it runs (CPU: on this thread).
    for cls, name in ((cpu_backend._RasterizeToPixelsCPU, "bwd raster"),
                      (cpu_backend._ProjectCPU, "bwd proj+SH"),
                      (cpu_backend._SphericalHarmonicsCPU, "bwd proj+SH")):
        cls.backward = staticmethod(_wrap(name, cls.backward))


def install_what_if(names: list[str]) -> None:
    """Trainer-level changes measured here before anyone makes them (see ``--what-if``)."""
    if "fused-adam" in names:
        init = torch.optim.Adam.__init__

        def fused_init(self, params, *a, **k):
            k.setdefault("fused", True)
            init(self, params, *a, **k)
        torch.optim.Adam.__init__ = fused_init
    if "sum-finite" in names:
        def check_finite(named, step, error=Exception):
            for name, p in named.items():
                if not bool(torch.isfinite(p.sum())):  # one reduction, no [N, ...] bool temporary
                    raise error(f"parameter {name!r} became non-finite at step {step}")
        if not hasattr(trainer_mod, "check_finite"):
            raise SystemExit("--what-if sum-finite: this trainer has no check_finite to replace")
        trainer_mod.check_finite = check_finite


def _owner(tr: Trainer):
    """What holds the model, optimisers and strategy: ``trainer.method`` (methods layout) or the
    trainer itself (older layout)."""
    return getattr(tr, "method", tr)


def install_instance_wrappers(tr: Trainer):
    own = _owner(tr)
    for opt in (*own.optimizers.values(), *getattr(own, "aux_optimizers", {}).values()):
        opt.step = _wrap("Adam", opt.step)
        opt.zero_grad = _wrap("Adam", opt.zero_grad)
    if getattr(own, "strategy", None) is not None:
        own.strategy.step_pre_backward = _wrap("strategy", own.strategy.step_pre_backward)
        own.strategy.step_post_backward = _wrap("strategy", own.strategy.step_post_backward)
    tr._check_finite = _wrap("finite", tr._check_finite)


def breakdown(raw: dict, total: float) -> dict:
    p = {k: raw.get(k, 0.0) for k in ("activate", "project", "SH", "bin", "raster", "loss", "strategy",
                                      "bwd raster", "bwd proj+SH", "Adam", "finite")}
    p["glue"] = raw.get("render", 0.0) - p["project"] - p["SH"] - p["bin"] - p["raster"]
    p["bwd other"] = raw.get("backward", 0.0) - p["bwd raster"] - p["bwd proj+SH"]
    p["other"] = total - sum(p.values())
    return p


class _Stop(Exception):
    pass


def reference_time(tr: Trainer, sh_degree: int, positions: list[int], reps: int = 2) -> float:
    """``rasterization()`` forward + backward alone on the trainer's current Gaussians and the
    views of the step just taken (the best of ``reps``: the work is deterministic)."""
    v = tr.views
    with torch.no_grad():
        act = _owner(tr).model.activated()
    leaves = {k: t.detach().clone().requires_grad_(True) for k, t in act.items()}
    pos = positions
    vm, K = v.viewmats[pos], v.Ks[pos]
    W, H = v.widths[pos[0]], v.heights[pos[0]]
    bg = torch.zeros(len(pos), 3)
    g_img = torch.rand(len(pos), H, W, 3, generator=torch.Generator().manual_seed(0)) * 1e-4
    g_alpha = torch.zeros(len(pos), H, W, 1)
    times = []
    for _ in range(reps):
        for t in leaves.values():
            t.grad = None
        t0 = time.perf_counter()
        img, alpha, _meta = splatkit.render.rasterization(
            leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["colors"],
            vm, K, W, H, sh_degree=sh_degree, backgrounds=bg, backend="cpu",
            near_plane=tr.config.near_plane, far_plane=tr.config.far_plane)
        torch.autograd.backward([img, alpha], [g_img, g_alpha])
        times.append(time.perf_counter() - t0)
    return min(times)


def run_config(scene_dir: Path, n: int, sh: int, warmup: int, steps: int, profile: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix="profile_step_"))
    cfg = resolve_config({"data": str(scene_dir), "out": str(out / "run"), "init_num_points": n,
                          "sh_degree": sh, "sh_degree_interval": 1, "checkpoint_every": 0,
                          "preview_every": 0, "backend": "cpu", "device": "cpu"}, preset="default")
    # Per timed step: (wall time, parts, reference time on the same views right after it). The
    # machine may be shared: pairing each step with its own reference keeps the ratio fair.
    samples: list[tuple[float, dict, float]] = []
    state = {"t": None, "pos": None}
    prof = None

    def callback(tr: Trainer, step: int):
        now = time.perf_counter()
        nonlocal prof
        if step == 1:
            install_instance_wrappers(tr)
            make_batch = tr._make_batch

            def recording_make_batch(step_, pos, bg):
                state["pos"] = list(pos)
                return make_batch(step_, pos, bg)
            tr._make_batch = recording_make_batch
        if step > warmup and state["t"] is not None:
            if prof is not None:
                prof.__exit__(None, None, None)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
                prof = None
            raw = dict(T.cur)
            T.on = False
            samples.append((now - state["t"], raw, reference_time(tr, sh, state["pos"])))
        if step >= warmup + steps:
            raise _Stop
        if step == warmup and profile:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof.__enter__()
        T.cur = defaultdict(float)
        T.on = step >= warmup
        state["t"] = time.perf_counter()

    tr = Trainer(cfg, quiet=True, callbacks=[callback])
    try:
        tr.train()
    except _Stop:
        pass
    T.on = False
    parts = {k: statistics.median(breakdown(raw, tot)[k] for tot, raw, _ in samples) for k in PARTS}
    return {"n": n, "gaussians": _owner(tr).model.num_gaussians, "sh": sh,
            "step": statistics.median(s[0] for s in samples),
            "ref": statistics.median(s[2] for s in samples),
            "ratio": statistics.median(s[0] / s[2] for s in samples),
            "parts": parts, "W": tr.views.widths[0], "H": tr.views.heights[0]}


def scene_for(frame: str, cache: Path) -> Path:
    """The synthetic scene for ``WxH`` (cached). ``WxH-nodepth``: the same without its depth maps
    and masks, as a photo capture (e.g. the issue's fox): random initial points then fill the
    region every camera sees instead of the depth maps' tight box (bigger, more overlapping
    Gaussians at the start)."""
    import shutil

    from splatkit.data.synthetic import write_synthetic_scene

    size, _, variant = frame.lower().partition("-")
    W, H = (int(x) for x in size.split("x"))
    d = cache / f"synthetic_{W}x{H}_{N_VIEWS}"
    if not d.exists():
        print(f"writing the synthetic scene {d} ...", flush=True)
        write_synthetic_scene(d, seed=0, width=W, height=H, n_views=N_VIEWS)
    if variant == "nodepth":
        nd = cache / f"synthetic_{W}x{H}_{N_VIEWS}_nodepth"
        if not nd.exists():
            shutil.copytree(d, nd, ignore=shutil.ignore_patterns("depth", "mask"))
        return nd
    if variant:
        raise SystemExit(f"unknown frame variant {variant!r} (WxH or WxH-nodepth)")
    return d


def ms(x: float) -> str:
    return f"{x * 1000:.0f}" if x >= 0.0095 else f"{x * 1000:.1f}"


def table(rows: list[dict]) -> str:
    head = ("| frame | Gaussians | SH | " + " | ".join(PARTS) + " | **step** | steps/s | rasterizer | **ratio** |")
    lines = [head, "|" + "---|" * 3 + "---:|" * (len(PARTS) + 4)]
    for r in rows:
        lines.append(f"| {r['W']}x{r['H']} | {r['gaussians']:,} | {r['sh']} | "
                     + " | ".join(ms(r["parts"][k]) for k in PARTS)
                     + f" | **{ms(r['step'])}** | {1 / r['step']:.1f} | {ms(r['ref'])} | **{r['ratio']:.2f}** |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000, 100_000])
    ap.add_argument("--sh", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--frames", nargs="+", default=["400x300", "135x240"])
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--cache", type=Path, default=ROOT / "outputs" / "profile_step")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (the C++ kernels follow it); default: torch's")
    ap.add_argument("--kernel-threads", type=int, default=None,
                    help="threads of the C++ kernels only (cpu_backend.set_kernel_threads)")
    ap.add_argument("--what-if", default="", help="comma-separated trainer changes to measure: "
                    "fused-adam (torch.optim.Adam(fused=True)), sum-finite (NaN guard on p.sum())")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kernel_threads:
        cpu_backend.set_kernel_threads(args.kernel_threads)
    load_before = load_average()
    what_if = [w for w in args.what_if.split(",") if w]
    install_what_if(what_if)
    install_wrappers()
    rows = []
    for frame in args.frames:
        scene = scene_for(frame, args.cache)
        for n in args.sizes:
            for sh in args.sh:
                r = run_config(scene, n, sh, args.warmup, args.steps, args.profile)
                rows.append(r)
                print(table([r]).splitlines()[-1], flush=True)
    load_note = ("machine load unknown" if load_before is None
                 else f"load average {load_before:.1f} at the start")
    # A run with trainer changes or thread settings gets its own section beside the plain one.
    setting = []
    if what_if:
        setting.append("trainer what-if: " + ", ".join(what_if))
    if args.threads or args.kernel_threads:
        setting.append(f"torch {torch.get_num_threads()} thread(s), C++ kernels {cpu_backend.kernel_threads()}")
    cmd = "python scripts/profile_step.py" + "".join(
        f" {flag} {val}" for flag, val in (("--what-if", args.what_if), ("--threads", args.threads),
                                           ("--kernel-threads", args.kernel_threads)) if val) + " --write"
    heading = "## Training step on CPU" + (f" ({'; '.join(setting)})" if setting else "")
    section = SECTION + ("_" + "_".join(sorted(what_if)) if what_if else "") + (
        f"_t{args.threads or 0}k{args.kernel_threads or 0}" if args.threads or args.kernel_threads else "")
    text = f"""{heading}

`{cmd}` on {machine_info()}; {load_note}.

The real `Trainer` (`default` preset: N random initial points, L1 + 0.2 D-SSIM, Adam per
parameter group, gsplat's `DefaultStrategy`, cpu backend) on the synthetic scene ({N_VIEWS} views)
at two frame sizes; median of {args.steps} steps after {args.warmup} warm-up steps, at SH degree
`SH` from the start (before densification starts: the common step). Milliseconds per part (see the
script's docstring): `activate` (exp/sigmoid/SH concatenation), the rasterizer forward stages
(`project`, `SH`, `bin`, `raster`, `glue`), `loss` (L1 + SSIM forward), `strategy` (gsplat's
step_pre/post_backward), the backward split into compositing, projection+SH and the rest (SSIM,
activations), `Adam` (all groups' step + zero_grad), `finite` (the per-step parameter check) and
`other`. `rasterizer` is `rasterization()` forward+backward alone on the same views, Gaussians and
SH degree, timed right after each step; **ratio** = median over the steps of step / rasterizer
(target: at most 2). The machine may be shared: compare the load note, and rerun when it is high.

{table(rows)}
"""
    print("\n" + text)
    if args.write:
        print(f"wrote {write_section(section, text)}")


if __name__ == "__main__":
    main()
