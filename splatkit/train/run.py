"""A training run's folder, as the trainer writes it and render/eval/export read it.

Layout::

    RUN/
      config.json          resolved TrainConfig + {"splatkit_version": ...}
      split.json           {"train": [view ids], "test": [view ids]}
      checkpoints/ckpt_{step:06d}.pt
      train_log.jsonl      one JSON object per logged step
      train_summary.json   test metrics at the end of training (none with train(score=False))
      metrics.json         written by ``splatkit eval``
      previews/            preview renders written during training
      renders/             written by ``splatkit render``
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from splatkit.errors import SplatkitError
from splatkit.train.config import TrainConfig, config_from_dict
from splatkit.utils.jsonfile import read_json_object

CONFIG_NAME = "config.json"
SPLIT_NAME = "split.json"
CHECKPOINT_DIR = "checkpoints"
LOG_NAME = "train_log.jsonl"
SUMMARY_NAME = "train_summary.json"
METRICS_NAME = "metrics.json"
PREVIEW_DIR = "previews"

_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"ckpt_{int(step):06d}.pt"


def checkpoint_step(path: str | Path) -> int:
    m = _CKPT_RE.match(Path(path).name)
    if m is None:
        raise SplatkitError("not a checkpoint file name (expected ckpt_NNNNNN.pt)", path)
    return int(m.group(1))


def _major(version: str) -> Optional[int]:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


@dataclass
class Run:
    path: Path
    config: TrainConfig

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        import splatkit

        path = Path(path)
        if not path.exists():
            raise SplatkitError("no such run folder", path)
        if not path.is_dir():
            raise SplatkitError("expected a run folder, got a file", path)
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise SplatkitError(f"not a run folder (no {CONFIG_NAME})", path)
        raw = read_json_object(cfg_path, "run config")
        written_by = raw.get("splatkit_version")
        ours = splatkit.__version__
        if written_by is None or _major(written_by) != _major(ours):
            raise SplatkitError(
                f"run written by splatkit {written_by or 'unknown'}, incompatible with this "
                f"splatkit {ours}", path)
        try:
            config = config_from_dict(raw, str(cfg_path))
        except SplatkitError as exc:
            # A key we do not know means a newer splatkit wrote it.
            raise SplatkitError(f"run config from an incompatible splatkit {written_by}: {exc.message}",
                                path) from None
        return cls(path=path, config=config)

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, sorted by step."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [p for p in self.checkpoint_dir.iterdir() if _CKPT_RE.match(p.name) and p.is_file()]
        return sorted(found, key=checkpoint_step)

    def latest_checkpoint(self) -> Path:
        ckpts = self.checkpoints()
        if not ckpts:
            raise SplatkitError("run has no checkpoints yet", self.path)
        return ckpts[-1]

    def checkpoint(self, which: Union[None, int, str, Path] = None) -> Path:
        """The latest checkpoint, the one for a step number, or an explicit file."""
        if which is None:
            return self.latest_checkpoint()
        if isinstance(which, int):
            p = self.checkpoint_dir / checkpoint_name(which)
            if not p.is_file():
                steps = [checkpoint_step(c) for c in self.checkpoints()]
                raise SplatkitError(f"no checkpoint for step {which} (have steps {steps})", self.path)
            return p
        p = Path(which)
        if not p.is_file():
            raise SplatkitError("checkpoint not found", p)
        return p

    def load_model(self, checkpoint: Union[None, int, str, Path] = None, map_location="cpu"):
        """``(model, payload)`` from the latest (or the given) checkpoint: the evaluation model of
        whichever method wrote it (:func:`splatkit.methods.load_checkpoint`)."""
        from splatkit.methods import load_checkpoint

        return load_checkpoint(self.checkpoint(checkpoint), map_location=map_location)

    # -- data -----------------------------------------------------------------------------------
    def load_scene(self):
        from splatkit.data import load_scene

        if self.config.data is None:
            raise SplatkitError("run config has no dataset path", self.path / CONFIG_NAME)
        cfg = self.config
        return load_scene(cfg.data, downscale=cfg.downscale, intrinsics_size=cfg.intrinsics_size,
                          center_crop=cfg.center_crop)

    def split(self) -> tuple[list[int], list[int]]:
        p = self.path / SPLIT_NAME
        if not p.is_file():
            raise SplatkitError(f"run has no {SPLIT_NAME}", self.path)
        try:
            d = json.loads(p.read_text())
            return [int(v) for v in d["train"]], [int(v) for v in d["test"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SplatkitError(f"unreadable split file ({type(exc).__name__})", p)

    def normalization(self, checkpoint: Union[None, int, str, Path] = None):
        """The scene normalisation recorded in the (latest) checkpoint's metadata."""
        from splatkit.methods.base import payload_normalization

        return payload_normalization(self.load_model(checkpoint)[1])

    def views(self, split: str):
        """``(scene, ids, positions)`` for the run's ``"train"`` or ``"test"`` views."""
        if split not in ("train", "test"):
            raise SplatkitError(f"split must be 'train' or 'test', got {split!r}")
        scene = self.load_scene()
        train_ids, test_ids = self.split()
        ids = test_ids if split == "test" else train_ids
        if not ids:
            raise SplatkitError(f"run has no {split} views", self.path)
        return scene, ids, scene.index_of(ids)

    # -- other files ----------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.path / LOG_NAME

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_NAME

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def preview_dir(self) -> Path:
        return self.path / PREVIEW_DIR
