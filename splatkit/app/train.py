"""``splatkit train`` once its flags are parsed: config resolution (preset, saved config, flags),
resume, and the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from splatkit.errors import SplatkitError
from splatkit.train import run as runfiles
from splatkit.train.config import resolve_config
from splatkit.train.trainer import Trainer


def train_command(overrides: dict[str, Any], *, preset: Optional[str] = None,
                  load_config: Optional[Path] = None, resume: bool = False, quiet: bool = False) -> Trainer:
    """What ``splatkit train`` does once its flags are parsed; returns the finished trainer.

    ``resume`` continues the run folder ``overrides["out"]`` with its own ``config.json`` (unless
    ``load_config`` names another), overridden by the other flags (e.g. more ``steps``).
    """
    if resume:
        out = overrides.get("out")
        if out is None:
            raise SplatkitError("--resume needs the run folder to continue (--out RUN)")
        runfiles.Run.open(out)  # clear errors for a missing or foreign folder
        if load_config is None:
            load_config = Path(out) / runfiles.CONFIG_NAME
    if not resume and overrides.get("data") is not None:
        from splatkit.app.poses import needs_pose_step, pose_step_for_training

        if needs_pose_step(Path(overrides["data"])):  # plain photos: poses by SfM first (cached)
            resolve_config(overrides, preset=preset, load_config=load_config)  # a bad flag fails before SfM
            overrides = {**overrides, "data": pose_step_for_training(Path(overrides["data"]), quiet=quiet)}
    config = resolve_config(overrides, preset=preset, load_config=load_config)
    trainer = Trainer(config, resume=resume, quiet=quiet)
    trainer.train()
    return trainer
