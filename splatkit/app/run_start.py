"""A run folder that starts from a given model: its config, split and a checkpoint holding the
model with fresh optimisers, which the training loop then resumes (``Trainer(..., resume=True)``)
as ``splatkit train --resume`` would. ``splatkit compress`` fine-tunes pruned Gaussians this way,
``splatkit export --finetune-steps`` the Gaussians made from a NeRF."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

import splatkit
from splatkit.train import run as runfiles
from splatkit.train.run import Run
from splatkit.utils.atomic import atomic_path, write_text_atomic


def write_start(target: Path, run: Run, config, model, step: int, normalization) -> None:
    """``target`` as a run folder (``run``'s split, ``config``) whose checkpoint at ``step`` is
    ``model`` with fresh optimisers and ``config.seed``'s random streams, for the loop to resume."""
    write_text_atomic(target / runfiles.CONFIG_NAME,
                      json.dumps({**config.to_dict(), "splatkit_version": splatkit.__version__}, indent=2) + "\n")
    train_ids, test_ids = run.split()
    write_text_atomic(target / runfiles.SPLIT_NAME, json.dumps({"train": train_ids, "test": test_ids}) + "\n")
    payload = model.to_payload(step, normalization.to_dict(), method=config.method)
    gen = torch.Generator().manual_seed(config.seed)
    rng_state = random.Random(config.seed).getstate()
    payload["trainer"] = {"optimizers": {}, "aux_optimizers": {}, "strategy_state": {}, "plugins": {},
                          "rng": {"torch": torch.Generator().manual_seed(config.seed).get_state(), "cuda": None,
                                  "numpy": np.random.RandomState(config.seed % 2**32).get_state(),
                                  "python": rng_state, "generator": gen.get_state(),
                                  "sampler": {"perm": [], "pos": 0}},
                          "elapsed_s": 0.0, "config": config.to_dict()}
    save_payload(target, payload, step)


def save_payload(target: Path, payload: dict, step: int) -> None:
    """Write a checkpoint payload atomically as ``target``'s checkpoint at ``step``."""
    path = target / runfiles.CHECKPOINT_DIR / runfiles.checkpoint_name(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
