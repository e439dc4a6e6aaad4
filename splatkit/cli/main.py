"""The ``splatkit`` command: nerfstudio-style subcommands parsed by tyro.

Heavy imports (torch, open3d, ...) happen inside each command's ``run`` so ``splatkit --help``
stays fast. A :class:`~splatkit.errors.SplatkitError` becomes one line on stderr and exit status 2;
``--verbose`` (anywhere on the command line) keeps the traceback.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import tyro

from splatkit.errors import SplatkitError

EXIT_USAGE = 2


@dataclass
class Synthetic:
    """Write a synthetic DTU-like scene (ray-traced object, masks, depth) that our readers load."""

    out: Path
    """Folder to write (created; must be empty or absent)."""
    seed: int = 0
    """Chooses the object, its texture and the lighting; the same seed gives the same files."""
    width: int = 200
    height: int = 150
    views: int = 49
    """Number of cameras on the DTU-like sphere cap (49 matches DTU's view ids 0..48)."""
    preset: Optional[str] = None
    """'test' (200x150) or 'bench' (400x300); overrides width/height."""
    backdrop: Literal["dark", "white"] = "dark"
    """'dark': DTU's lit table fading into a dark room; 'white': the object alone on pure white
    (a capture masked to white, product photos, MonoSDF's DTU crops)."""

    def run(self) -> None:
        from splatkit.data.synthetic import write_synthetic_scene

        w, h = self.width, self.height
        if self.preset is not None:
            presets = {"test": (200, 150), "bench": (400, 300)}
            if self.preset not in presets:
                raise SplatkitError(f"unknown preset {self.preset!r}; choose from {sorted(presets)}")
            w, h = presets[self.preset]
        path = write_synthetic_scene(self.out, seed=self.seed, width=w, height=h, n_views=self.views,
                                    backdrop=self.backdrop)
        print(f"wrote synthetic scene to {path}")


@dataclass
class Info:
    """Load a dataset folder and describe what splatkit sees in it."""

    path: tyro.conf.Positional[Path]
    downscale: int = 1
    intrinsics_size: Optional[str] = None
    """IDR/NeuS cameras.npz: the image size WxH its intrinsics describe."""
    center_crop: tyro.conf.FlagCreatePairsOff[bool] = False
    """The images are centre crops of the --intrinsics-size frame (MonoSDF's DTU release)."""

    def run(self) -> None:
        from splatkit.data import load_scene

        scene = load_scene(self.path, downscale=self.downscale, intrinsics_size=self.intrinsics_size,
                           center_crop=self.center_crop)
        w, h = scene.image_size
        print(f"{self.path}: format {scene.source_format}, {len(scene)} views, {w}x{h}")
        print(f"  masks: {'yes' if scene.masks is not None else 'no'}, depth: "
              f"{'yes' if scene.depths is not None else 'no'}, SfM points: "
              f"{0 if scene.points is None else len(scene.points)}")
        train, test = scene.train_test_ids()
        print(f"  split: {len(train)} train / {len(test)} test views")


@dataclass
class Poses:
    """Camera poses for a folder of photos by structure from motion (pycolmap: SIFT, matching,
    COLMAP's incremental or GLOMAP's global mapper), written as a COLMAP scene folder splatkit
    trains on: undistorted PINHOLE images/ + sparse/0, images_2/4/8, and a pose report in OUT/sfm
    (report.md, cameras.png, cameras.html). Rerun on the same photos and settings: reused."""

    images: Path
    """Folder of photos (or a folder whose images/ holds them)."""
    out: Path
    """Scene folder to write (absent, empty, or made by an earlier 'data poses')."""
    intrinsics: Optional[str] = None
    """Known intrinsics: fx,fy,cx,cy[,k1,k2,p1,p2[,k3]] in pixels (COLMAP's convention) or a K.txt
    file; 'none' ignores a K.txt beside the photos (used by default)."""
    refine_intrinsics: Optional[bool] = None
    """Refine the intrinsics in bundle adjustment (default: only when they are not given)."""
    refine_principal_point: tyro.conf.FlagCreatePairsOff[bool] = False
    """Refine the principal point too (helps photos whose optical centre is off the image centre, seen
    from all around, e.g. DTU; makes forward-facing captures like LLFF a little worse)."""
    camera_model: Optional[Literal["SIMPLE_RADIAL", "RADIAL", "SIMPLE_PINHOLE", "PINHOLE", "OPENCV"]] = None
    """Camera model when the intrinsics are unknown (default SIMPLE_RADIAL)."""
    focal_factor: Optional[float] = None
    """Unknown intrinsics, no EXIF focal length: first focal guess as a multiple of the longest side
    (COLMAP's 1.2)."""
    peak_threshold: Optional[float] = None
    """SIFT peak threshold (lower: more features); default 0.002 when SIFT sees photos of at most
    1000 px, else COLMAP's 0.0067."""
    guided_matching: tyro.conf.FlagCreatePairsOff[bool] = False
    """Match again guided by each verified pair's two-view geometry."""
    per_image_camera: tyro.conf.FlagCreatePairsOff[bool] = False
    """One camera per photo instead of one shared camera (photos from several cameras or zooms)."""
    matching: Literal["exhaustive", "sequential", "vocabtree"] = "exhaustive"
    """exhaustive (every pair), sequential (video-like captures, by file name order), vocabtree
    (large sets; needs --vocab-tree)."""
    vocab_tree: Optional[Path] = None
    """Vocabulary tree file (vocabtree matching; loop detection with sequential)."""
    overlap: int = 10
    """Sequential matching: each photo is matched with the next OVERLAP photos, or with
    --quadratic-overlap (the default) with those 1, 2, 4, ..., 2^(OVERLAP-1) further on."""
    quadratic_overlap: tyro.conf.FlagCreatePairsOff[bool] = True
    mapper: Optional[Literal["incremental", "global"]] = None
    """incremental (COLMAP) or global (GLOMAP); default: global below 10 photos, else incremental."""
    max_image_size: int = 1600
    """SIFT runs on photos resized to this longest side (-1: full size); poses stay in full pixels."""
    few_views: Optional[bool] = None
    """Few-view settings (two-view tracks, relaxed initial pair, DSP-SIFT, affine shapes); default:
    on below 10 photos. Each has its own flag too."""
    two_view_tracks: Optional[bool] = None
    relaxed_init: Optional[bool] = None
    dsp: Optional[bool] = None
    affine: Optional[bool] = None
    seed: int = 0
    reuse: tyro.conf.FlagCreatePairsOff[bool] = True
    """Reuse OUT when it was made from the same photos and settings (--no-reuse recomputes)."""
    quiet: tyro.conf.FlagCreatePairsOff[bool] = False

    def run(self) -> None:
        from splatkit.app.poses import poses_command
        from splatkit.data.sfm import PoseOptions

        opts = PoseOptions(
            matching=self.matching, vocab_tree=None if self.vocab_tree is None else str(self.vocab_tree),
            overlap=self.overlap, quadratic_overlap=self.quadratic_overlap, mapper=self.mapper, intrinsics=self.intrinsics,
            refine_intrinsics=self.refine_intrinsics, refine_principal_point=self.refine_principal_point,
            camera_model=self.camera_model, focal_factor=self.focal_factor, peak_threshold=self.peak_threshold,
            guided_matching=self.guided_matching,
            single_camera=not self.per_image_camera, max_image_size=self.max_image_size, few_views=self.few_views,
            two_view_tracks=self.two_view_tracks, relaxed_init=self.relaxed_init, dsp=self.dsp, affine=self.affine,
            seed=self.seed)
        poses_command(self.images, self.out, opts, quiet=self.quiet, reuse=self.reuse)


@dataclass
class Data:
    """Dataset tools: camera poses for photos, synthetic scenes, inspect folders."""

    action: tyro.conf.OmitSubcommandPrefixes[
        Union[
            Annotated[Poses, tyro.conf.subcommand("poses")],
            Annotated[Synthetic, tyro.conf.subcommand("synthetic")],
            Annotated[Info, tyro.conf.subcommand("info")],
        ]
    ]

    def run(self) -> None:
        self.action.run()


@dataclass
class Train:
    """Train a scene (3D Gaussian splats, or another registered --method) from a folder of posed images.

    Settings come from the preset (configs/NAME.json; without --preset/--load-config/--resume,
    'default' on a CUDA GPU and 'cpu' (minutes) on a CPU), then a saved config (--load-config),
    then these flags; --set KEY=VALUE reaches every field of splatkit.train.config.TrainConfig,
    and --plugin.NAME.SETTING VALUE each plugin's settings (e.g. --plugin.depth-ranking.weight 0.1)."""

    data: Optional[Path] = None
    """Dataset folder (not needed with --resume or --load-config)."""
    downscale: Optional[int] = None
    """Integer image downscale factor."""
    intrinsics_size: Optional[str] = None
    """IDR/NeuS cameras.npz without camera_mat: the image size WxH its intrinsics describe."""
    center_crop: tyro.conf.FlagCreatePairsOff[bool] = False
    """The images are centre crops of the --intrinsics-size frame (MonoSDF's DTU release)."""
    preset: Optional[str] = None
    """Preset name in configs/ (default, cpu, fast, sparse, sparse6, sparse9, compact, mcmc, ...) or a path to a .json file."""
    method: Optional[str] = None
    """What to train: a registered method (3dgs; others register through the splatkit.methods entry points)."""
    strategy: Optional[Literal["default", "mcmc"]] = None
    """Densification: default (3DGS clone/split/prune) or mcmc (3DGS-MCMC relocation, up to --cap-max)."""
    cap_max: Optional[int] = None
    """MCMC strategy: the most Gaussians it grows to."""
    steps: Optional[int] = None
    out: Optional[Path] = None
    """Run folder (default: outputs/<scene>/<method>/<timestamp>); the run to continue with --resume."""
    resume: tyro.conf.FlagCreatePairsOff[bool] = False
    """Continue the run in --out from its last checkpoint (more --steps extend it)."""
    load_config: Optional[Path] = None
    """Start from a previous run's config.json (RUN/config.json)."""
    train_views: Optional[str] = None
    """Original view ids to train on, e.g. 25,22,28."""
    test_views: Optional[str] = None
    """Original view ids to evaluate on."""
    seed: Optional[int] = None
    device: Optional[Literal["auto", "cpu", "cuda"]] = None
    backend: Optional[Literal["auto", "cpu", "torch", "gsplat"]] = None
    """Rasterizer backend."""
    batch_size: Optional[int] = None
    sh_degree: Optional[int] = None
    background: Optional[Literal["auto", "black", "white", "random"]] = None
    """auto (default): the images' uniform backdrop (white sweep, images masked to white) when
    there is one, else black; random: a new colour per step (with --use-masks)."""
    init: Optional[Literal["auto", "sfm", "random", "triangulated", "mvs", "visual_hull"]] = None
    init_num_points: Optional[int] = None
    depth_prior: Optional[str] = None
    """Depth prior for the depth losses: none, files (depth/<image stem>.npy|png|pfm), mvs (the
    training views' own plane-sweep stereo: no network) or a depth model (depth-anything-v2-small,
    dpt-hybrid-midas, a Hugging Face id or a local folder; offline)."""
    depth_prior_kind: Optional[Literal["metric", "depth", "inverse"]] = None
    """What depth files hold: metric z-depth, relative depth or relative inverse depth / disparity
    (default: their folder's kind.txt, else relative depth)."""
    depth_prior_dir: Optional[Path] = None
    """Folder of depth-prior files (default: DATA/depth)."""
    depth_align: Optional[Literal["off", "sfm"]] = None
    """sfm: fit each relative depth map (scale and shift) to points triangulated with the known
    cameras (pycolmap) so it can bound the initial points; the fit's residual is reported."""
    regularizers: Optional[str] = None
    """Plugins (priors, regularisers), comma separated, replacing the preset's: depth_ranking,
    depth_continuity, depth_pearson, depth_patch, dropout, backdrop_prune, or a third-party plugin."""
    use_masks: tyro.conf.FlagCreatePairsOff[bool] = False
    """Supervise the rendered alpha with the dataset's masks (turn off a preset's with --set use_masks=false)."""
    mask_weight: Optional[float] = None
    checkpoint_every: Optional[int] = None
    log_every: Optional[int] = None
    preview_every: Optional[int] = None
    quiet: tyro.conf.FlagCreatePairsOff[bool] = False
    """No progress bar or status lines."""
    set: list[str] = field(default_factory=list)
    """Any other config field as KEY=VALUE (JSON values), e.g. --set grow_grad2d=0.0004 init=random."""

    def run(self) -> None:
        from splatkit.train.config import parse_set_overrides, parse_view_ids
        from splatkit.app import train_command

        overrides = {k: getattr(self, k) for k in (
            "data", "downscale", "steps", "out", "seed", "device", "backend", "batch_size", "sh_degree",
            "method", "strategy", "cap_max", "intrinsics_size",
            "background", "init", "init_num_points", "mask_weight", "checkpoint_every", "log_every",
            "preview_every", "depth_prior", "depth_prior_kind", "depth_prior_dir", "depth_align")
                     if getattr(self, k) is not None}
        if self.regularizers is not None:
            overrides["regularizers"] = [r for r in self.regularizers.replace(",", " ").split() if r]
        if self.use_masks:
            overrides["use_masks"] = True
        if self.center_crop:
            overrides["center_crop"] = True
        for flag, key in (("--train-views", "train_views"), ("--test-views", "test_views")):
            ids = parse_view_ids(getattr(self, key), flag)
            if ids is not None:
                overrides[key] = ids
        overrides.update(parse_set_overrides(self.set))
        trainer = train_command(overrides, preset=self.preset, load_config=self.load_config,
                                resume=self.resume, quiet=self.quiet)
        print(f"run folder: {trainer.run_path}")


@dataclass
class Render:
    """Render a trained run's views (colour + expected-depth PNGs) and, with --orbit, an orbit video."""

    run_dir: Annotated[Path, tyro.conf.arg(name="run")]
    """Run folder written by 'splatkit train'."""
    split: Literal["test", "train"] = "test"
    """Which views to render to RUN/renders/<split>/."""
    orbit: bool = False
    """Also render a closed orbit around the scene (fitted to the training cameras) as a video."""
    video: Optional[Path] = None
    """Orbit video file, .mp4 or .gif (default RUN/renders/orbit.mp4; implies --orbit)."""
    checkpoint: Optional[Path] = None
    """Checkpoint file (default: the run's latest)."""
    frames: int = 120
    """Number of orbit frames."""
    fps: int = 30
    batch_size: int = 4
    """Views rendered at once (bounds memory)."""

    def run(self) -> None:
        from splatkit.app import render_orbit, render_split

        # Checked before the (slower) split render so a bad option fails at once.
        for name, value in (("frames", self.frames), ("fps", self.fps), ("batch-size", self.batch_size)):
            if value < 1:
                raise SplatkitError(f"--{name} must be >= 1, got {value}")
        if self.video is not None and self.video.suffix.lower() not in (".mp4", ".gif"):
            raise SplatkitError(f"--video must end in .mp4 or .gif, got {self.video.name!r}")
        res = render_split(self.run_dir, split=self.split, checkpoint=self.checkpoint,
                           batch_size=self.batch_size)
        print(f"rendered {len(res.images)} {self.split} views (step {res.step}) to {res.folder} "
              f"(depth maps in {res.folder / 'depth'}, turbo from {res.depth_range[0]:.3g} to "
              f"{res.depth_range[1]:.3g})")
        if self.orbit or self.video is not None:
            vid = render_orbit(self.run_dir, video=self.video, n_frames=self.frames,
                               checkpoint=self.checkpoint, fps=self.fps, batch_size=self.batch_size)
            if vid.fallback_reason:
                print(f"splatkit: note: {vid.fallback_reason}", file=sys.stderr)
            print(f"wrote orbit video {vid.path} ({vid.num_frames} frames)")


@dataclass
class Eval:
    """Score a trained run on its test views (PSNR/SSIM/LPIPS, masked too when the scene has masks)."""

    run_dir: Annotated[Path, tyro.conf.arg(name="run")]
    """Run folder written by 'splatkit train'."""
    json: Optional[Path] = None
    """Where to write the report (default RUN/metrics.json)."""
    split: Literal["test", "train"] = "test"
    checkpoint: Optional[Path] = None
    """Checkpoint file (default: the run's latest)."""
    splats: Optional[Path] = None
    """Score the model decoded from this exported file (.ply, .compressed.ply, .splat, .spz, .skz with
    its colour field) instead of the checkpoint (report in RUN/metrics_<file>.json)."""
    batch_size: int = 4

    def run(self) -> None:
        from splatkit.eval.evaluate import evaluate_run, print_report

        report = evaluate_run(self.run_dir, split=self.split, checkpoint=self.checkpoint,
                              json_path=self.json, batch_size=self.batch_size, splats=self.splats)
        print_report(report)


@dataclass
class Export:
    """Export a trained run for splat viewers, in the dataset's original world frame: standard 3DGS
    PLY, antimatter15 .splat, PlayCanvas/SuperSplat compressed PLY, Niantic .spz, PlayCanvas .sog, or splatkit's
    compact .skz (R-VQ codes and the colour field of Compact-3DGS runs). A run's colour field is
    baked to SH for every format but skz; the PSNR that costs on the test views is printed. A NeRF
    run: --format mesh writes its surface as a coloured triangle mesh (marching cubes over the
    density; .ply or .obj); the splat formats write Gaussians made from that surface (an
    approximation; the PSNR it costs is printed)."""

    run_dir: Annotated[Path, tyro.conf.arg(name="run")]
    """Run folder written by 'splatkit train'."""
    format: str = "ply"
    """ply, splat, ply-compressed, spz, sog or skz; mesh (NeRF runs)."""
    out: Optional[Path] = None
    """Output file (default RUN/export/splats.<ext>: .ply, .splat, .compressed.ply, .spz, .skz; mesh:
    RUN/export/mesh.ply, or a .obj)."""
    checkpoint: Optional[Path] = None
    """Checkpoint file (default: the run's latest)."""
    bake_report: tyro.conf.FlagCreatePairsOff[bool] = True
    """After baking a colour field (or turning a NeRF into Gaussians), render the test views before
    and after and print the PSNR lost (--no-bake-report skips it; it needs the dataset)."""
    table_bits: Optional[int] = None
    """skz: bits per hash-table value of a colour field, 1..8 (default splatkit.export.SKZ_TABLE_BITS,
    6; Compact-3DGS stores 8)."""
    mesh_resolution: int = 256
    """NeRF runs: density lattice points along the scene box's longest side (marching cubes)."""
    mesh_threshold: Optional[float] = None
    """NeRF runs: the density of the surface (per unit length of the run's normalised frame; default:
    the median density of the occupancy grid's occupied cells)."""
    mesh_keep_largest: int = 0
    """NeRF runs: keep only this many largest connected components of the surface (0: all)."""
    nerf_sh_degree: int = 0
    """NeRF runs, splat formats: SH degree fitted to the colour MLP per Gaussian (0..3)."""
    finetune_steps: int = 0
    """NeRF runs, splat formats: train the Gaussians this many 3DGS steps on the run's training
    views before writing them (in RUN/gaussians; 0: as converted)."""
    quiet: tyro.conf.FlagCreatePairsOff[bool] = False
    """No progress output."""

    def run(self) -> None:
        from splatkit.app.export import MESH_FORMAT, NerfSurface, export_run
        from splatkit.export import check_format

        fmt = self.format.lower() if self.format.lower() == MESH_FORMAT else check_format(self.format)
        bits = {} if self.table_bits is None else {"table_bits": self.table_bits}
        surface = NerfSurface(self.mesh_resolution, self.mesh_threshold, self.mesh_keep_largest,
                              self.nerf_sh_degree, self.quiet, self.finetune_steps)
        res = export_run(self.run_dir, fmt, out=self.out, checkpoint=self.checkpoint, report_bake=self.bake_report,
                         surface=surface, **bits)
        if fmt == MESH_FORMAT:
            print(f"wrote a mesh of {res.num_vertices} vertices and {res.num_faces} triangles to {res.path}")
            print(f"mesh: {res.notes}")
            return
        dropped = f", left out {res.num_dropped} with non-finite values" if res.num_dropped else ""
        print(f"wrote {res.num_written} Gaussians (SH degree {res.sh_degree}{dropped}) to {res.path}")
        print(f"{res.format}: {res.notes}")
        rep = res.bake
        if rep and rep.get("source") == "nerf":
            print(f"note: Gaussians made from a NeRF are an approximation: {rep['split']} PSNR "
                  f"{rep['psnr_field']:.2f} dB with the NeRF, {rep['psnr_baked']:.2f} dB as Gaussians "
                  f"({rep['loss_db']:.2f} dB lost)")
        elif rep:  # the run has a colour field
            print(f"baking the colour field to SH degree {rep['sh_degree']}: {rep['split']} PSNR "
                  f"{rep['psnr_field']:.2f} dB with the field, {rep['psnr_baked']:.2f} dB baked "
                  f"({rep['loss_db']:.2f} dB lost)")
        elif res.notes and "from the NeRF's surface" in res.notes:
            print("note: Gaussians made from a NeRF are an approximation (its own PSNR is not reached)")


@dataclass
class Compress:
    """Compress a finished 3DGS run (plain, sparse, MCMC or compact): prune by importance and
    fine-tune, code the SH rest bands with a sensitivity-weighted codebook, fine-tune on the stored
    grids, write .skz. The result is a new run folder (default RUN/compressed) that eval, render
    and export take; the test PSNR before and after is printed."""

    run_dir: Annotated[Path, tyro.conf.arg(name="run")]
    """Run folder written by 'splatkit train'."""
    target_ratio: Optional[float] = None
    """Keep as many Gaussians as make the .skz about this many times smaller than the plain PLY."""
    keep: Optional[float] = None
    """Share of the Gaussians to keep, by importance (default 0.6; or use --target-ratio)."""
    sh_codebook: Optional[int] = None
    """SH codebook entries (default: 256, more for over 64k Gaussians, at most 4096)."""
    bits: Optional[str] = None
    """Bits per stored value, NAME=BITS pairs (default means=14,scales=8,quats=8,sh0=8,shN=8)."""
    prune_steps: int = 300
    """Fine-tune steps after pruning."""
    qat_steps: int = 200
    """Quantisation-aware fine-tune steps after the SH codebook."""
    out: Optional[Path] = None
    """Output run folder (default RUN/compressed; must not exist or be empty)."""
    checkpoint: Optional[Path] = None
    """Checkpoint file to compress (default: the run's latest)."""
    device: Optional[str] = None
    """auto, cpu or cuda (default: the run's)."""
    quiet: tyro.conf.FlagCreatePairsOff[bool] = False
    """No progress output."""

    def run(self) -> None:
        from splatkit.app.compress import compress_run
        from splatkit.compress.posttrain import parse_bits

        compress_run(self.run_dir, keep=self.keep, target_ratio=self.target_ratio, sh_codebook=self.sh_codebook,
                     bits=parse_bits(self.bits), prune_steps=self.prune_steps, qat_steps=self.qat_steps,
                     out=self.out, checkpoint=self.checkpoint, device=self.device, quiet=self.quiet,
                     say=print)


def parse_size(text: str) -> tuple[int, int]:
    """``"200x150"`` -> ``(200, 150)``."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit() or int(w) < 8 or int(h) < 8:
        raise SplatkitError(f"--size takes WIDTHxHEIGHT like 200x150 (at least 8x8), got {text!r}")
    return int(w), int(h)


@dataclass
class Benchmark:
    """Train, render and score every scene of a sparse-view suite with the published protocol
    (DTU / LLFF / SpaRe, or our generated synthetic DTU-like scenes); writes OUT/results.json,
    OUT/results.md (mean ± std over seeds) and side-by-side pictures in OUT/images."""

    suite: Literal["dtu", "spare", "llff", "synthetic"] = "synthetic"
    root: Optional[Path] = None
    """Dataset folder (dtu: holds scan{N}/, dtu_scan{N}/ or Rectified/; llff: holds fern/, llff_fern/ or
    nerf_llff_data/fern/ ...; spare: the dataset).
    Synthetic: where the generated scenes go (default OUT/scenes)."""
    views: int = 3
    """Training views: 3, 6 or 9 (the published counts; DTU and synthetic take any other count up to 9 as
    the first of the same ordered ids, with a warning); SpaRe takes them from its split file."""
    scans: Optional[str] = None
    """Scenes to run, comma separated (DTU scan numbers, LLFF scene names, SpaRe scene names,
    synthetic object seeds); default: every protocol scene found."""
    seeds: int = 1
    """Training seeds per scene and method (tables report mean ± std over seeds)."""
    methods: str = "default,sparse"
    """Presets to compare, comma separated (configs/NAME.json)."""
    steps: Optional[int] = None
    """Training steps for every method (default: each preset's own)."""
    depth_prior: Optional[str] = None
    """Depth prior for methods with depth losses: files or a depth model (synthetic: its degraded
    priors by default)."""
    split_file: Optional[Path] = None
    """SpaRe split file (Track1_split_development.json, ...)."""
    size: str = "200x150"
    """Synthetic suite: image size WxH of the generated scenes."""
    out: Path = Path("outputs/benchmark")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quiet: tyro.conf.FlagCreatePairsOff[bool] = False
    set: list[str] = field(default_factory=list)
    """Config values for every run, KEY=VALUE."""
    jobs: Optional[int] = None
    """Runs at once in a local process pool (default: one per GPU on CUDA, else 1: a CPU run already
    uses every core)."""
    executor: Literal["local", "ray"] = "local"
    """local: a process pool on this machine; ray: one Ray task per run (pip install 'splatkit[ray]';
    data and --out at the same paths on every node)."""
    address: Optional[str] = None
    """Ray cluster to join (e.g. auto or ray://head:10001); default: start a local Ray instance."""
    cpus_per_run: float = 1.0
    """Ray: CPUs each run's task reserves."""
    gpus_per_run: Optional[float] = None
    """Ray: GPUs each run's task reserves (default: 1 when the cluster has GPUs)."""

    def run(self) -> None:
        from splatkit.eval.benchmark import BenchmarkSpec, run_benchmark
        from splatkit.train.config import parse_set_overrides

        def names(text):
            return None if text is None else [t for t in text.replace(",", " ").split() if t]

        out = self.out / f"{self.suite}-{self.views}view" if self.out == Path("outputs/benchmark") else self.out
        spec = BenchmarkSpec(suite=self.suite, out=out, root=self.root, views=self.views,
                             scans=names(self.scans), seeds=self.seeds, methods=names(self.methods) or [],
                             steps=self.steps, depth_prior=self.depth_prior,
                             overrides=parse_set_overrides(self.set), split_file=self.split_file,
                             device=self.device, quiet=self.quiet, synthetic_size=parse_size(self.size),
                             jobs=self.jobs, executor=self.executor, address=self.address,
                             cpus_per_run=self.cpus_per_run, gpus_per_run=self.gpus_per_run)
        result = run_benchmark(spec)
        print(result["markdown"])
        print(f"wrote {spec.out / 'results.json'} and {spec.out / 'results.md'}")


@dataclass
class Demo:
    """The README's main job: synthetic scene -> train (fast preset) -> eval -> renders, video, PLY."""

    out: Path = Path("outputs/demo")
    """Folder for the scene (OUT/scene, reused when present) and the run (OUT/run)."""
    steps: Optional[int] = None
    """Training steps (default: the fast preset's)."""

    def run(self) -> None:
        from splatkit.cli.demo import run_demo

        run_demo(self.out, steps=self.steps)


Command = Union[
    Annotated[Train, tyro.conf.subcommand("train")],
    Annotated[Render, tyro.conf.subcommand("render")],
    Annotated[Eval, tyro.conf.subcommand("eval")],
    Annotated[Export, tyro.conf.subcommand("export")],
    Annotated[Compress, tyro.conf.subcommand("compress")],
    Annotated[Benchmark, tyro.conf.subcommand("benchmark")],
    Annotated[Data, tyro.conf.subcommand("data")],
    Annotated[Demo, tyro.conf.subcommand("demo")],
]


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings about the user's data (skipped frames, fallbacks) as one readable line."""
    print(f"splatkit: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    previous_showwarning = warnings.showwarning
    if not verbose:
        warnings.showwarning = _one_line_warning
    try:
        # --plugin.NAME.SETTING VALUE: nested plugin settings, which tyro cannot know in advance.
        from splatkit.train.config import plugin_flags

        argv, plugin_sets = plugin_flags(argv)
        if plugin_sets:
            if not argv or argv[0] != "train":
                raise SplatkitError("--plugin.NAME.SETTING only applies to 'splatkit train'")
            at = argv.index("--set") + 1 if "--set" in argv else len(argv)
            argv = argv[:at] + ([] if "--set" in argv else ["--set"]) + plugin_sets + argv[at:]
        cmd = tyro.cli(tyro.conf.OmitSubcommandPrefixes[Command], args=argv, prog="splatkit",
                       description="splatkit: sparse-view 3D reconstruction (add --verbose for tracebacks)")
        cmd.run()
    except SplatkitError as exc:
        if verbose:
            traceback.print_exc()
        print(f"splatkit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("splatkit: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous_showwarning
    return 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
