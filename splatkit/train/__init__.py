"""Gaussian-splat training: config, run folders, losses, regularisers and the trainer.

``Trainer`` and the loss/regulariser modules import torch, so they load on first use; ``Run`` and
``TrainConfig`` stay light for the CLI.
"""

from splatkit.train.config import TrainConfig, resolve_config
from splatkit.train.run import Run

__all__ = ["TrainConfig", "resolve_config", "Run", "Trainer", "train"]


def __getattr__(name):
    if name in ("Trainer", "train"):
        from splatkit.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'splatkit.train' has no attribute {name!r}")
