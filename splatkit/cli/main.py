"""The ``splatkit`` command: nerfstudio-style subcommands parsed by tyro.

Heavy imports (torch, open3d, ...) happen inside each command's ``run`` so ``splatkit --help``
stays fast. A :class:`~splatkit.errors.SplatkitError` becomes one line on stderr and exit status 2;
``--verbose`` (anywhere on the command line) keeps the traceback.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional, Union

import tyro

from splatkit.errors import NotBuiltError, SplatkitError

EXIT_USAGE = 2


def _not_built(name: str, issue: str) -> None:
    raise NotBuiltError(f"'splatkit {name}' is not built yet ({issue}).")


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

    def run(self) -> None:
        from splatkit.data.synthetic import write_synthetic_scene

        w, h = self.width, self.height
        if self.preset is not None:
            presets = {"test": (200, 150), "bench": (400, 300)}
            if self.preset not in presets:
                raise SplatkitError(f"unknown preset {self.preset!r}; choose from {sorted(presets)}")
            w, h = presets[self.preset]
        path = write_synthetic_scene(self.out, seed=self.seed, width=w, height=h, n_views=self.views)
        print(f"wrote synthetic scene to {path}")


@dataclass
class Info:
    """Load a dataset folder and describe what splatkit sees in it."""

    path: tyro.conf.Positional[Path]
    downscale: int = 1

    def run(self) -> None:
        from splatkit.data import load_scene

        scene = load_scene(self.path, downscale=self.downscale)
        w, h = scene.image_size
        print(f"{self.path}: format {scene.source_format}, {len(scene)} views, {w}x{h}")
        print(f"  masks: {'yes' if scene.masks is not None else 'no'}, depth: "
              f"{'yes' if scene.depths is not None else 'no'}, SfM points: "
              f"{0 if scene.points is None else len(scene.points)}")
        train, test = scene.train_test_ids()
        print(f"  split: {len(train)} train / {len(test)} test views")


@dataclass
class Data:
    """Dataset tools: generate synthetic scenes, inspect folders."""

    action: tyro.conf.OmitSubcommandPrefixes[
        Union[
            Annotated[Synthetic, tyro.conf.subcommand("synthetic")],
            Annotated[Info, tyro.conf.subcommand("info")],
        ]
    ]

    def run(self) -> None:
        self.action.run()


@dataclass
class Train:
    """Train a Gaussian-splat scene from a folder of posed images."""

    data: Path
    steps: Optional[int] = None

    def run(self) -> None:
        _not_built("train", "Gaussian splatting trainer, issue #3")


@dataclass
class Render:
    """Render a trained run's views or an orbit video."""

    run_dir: Annotated[Path, tyro.conf.arg(name="run")]

    def run(self) -> None:
        _not_built("render", "issue #3")


@dataclass
class Eval:
    """Score a trained run on its test views."""

    run_dir: Annotated[Path, tyro.conf.arg(name="run")]

    def run(self) -> None:
        _not_built("eval", "issue #3")


@dataclass
class Export:
    """Export a trained run to a splat file format."""

    run_dir: Annotated[Path, tyro.conf.arg(name="run")]

    def run(self) -> None:
        _not_built("export", "issues #3 and #5")


@dataclass
class Benchmark:
    """Run a benchmark suite (DTU, SpaRe, LLFF, synthetic)."""

    suite: str = "synthetic"

    def run(self) -> None:
        _not_built("benchmark", "sparse-view protocol, issue #4")


@dataclass
class Demo:
    """The README's main job: make the default synthetic scene (and, once built, train on it)."""

    out: Path = Path("outputs/demo")

    def run(self) -> None:
        from splatkit.cli.demo import run_demo

        run_demo(self.out)


Command = Union[
    Annotated[Train, tyro.conf.subcommand("train")],
    Annotated[Render, tyro.conf.subcommand("render")],
    Annotated[Eval, tyro.conf.subcommand("eval")],
    Annotated[Export, tyro.conf.subcommand("export")],
    Annotated[Benchmark, tyro.conf.subcommand("benchmark")],
    Annotated[Data, tyro.conf.subcommand("data")],
    Annotated[Demo, tyro.conf.subcommand("demo")],
]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    try:
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
    return 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
