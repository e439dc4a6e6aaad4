"""``splatkit data poses`` and the pose step of ``splatkit train --data PHOTOS``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from splatkit.data.sfm import PoseOptions, PoseResult, is_photo_folder, pose_cache_dir, recover_poses
from splatkit.data.sfm.report import summary_lines


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def poses_command(images: Path, out: Path, options: PoseOptions, *, quiet: bool = False,
                  reuse: bool = True) -> PoseResult:
    """Run SfM on a folder of photos into the scene folder ``out`` and print the report's summary."""
    say = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    res = recover_poses(images, out, options, say=say, reuse=reuse)
    for line in summary_lines(res.report):
        say(line)
    say(f"scene folder: {res.scene_dir} (report: {res.scene_dir / 'sfm' / 'report.md'}, "
        f"cameras.png, cameras.html)")
    return res


def needs_pose_step(data: Optional[Path]) -> bool:
    """True for a folder of plain photos that no dataset reader recognises."""
    from splatkit.data.loader import detect_format
    from splatkit.errors import DataError

    if data is None or not Path(data).is_dir():
        return False
    try:
        detect_format(data)
        return False
    except DataError:
        return is_photo_folder(Path(data))


def pose_step_for_training(data: Path, *, quiet: bool = False) -> Path:
    """``splatkit train --data PHOTOS``: recover poses first (reused when already made from the same
    photos) and return the scene folder to train on. Progress goes to stderr."""
    out = pose_cache_dir(data)
    say = (lambda line: None) if quiet else _stderr
    _stderr(f"splatkit: {data} holds photos without camera poses: recovering them by structure from motion "
            f"into {out} first (what 'splatkit data poses' does; reused on the next run)")
    res = recover_poses(data, out, PoseOptions(), say=say)
    for line in summary_lines(res.report):
        say(line)
    return res.scene_dir
