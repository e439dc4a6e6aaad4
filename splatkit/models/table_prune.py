"""Gradual magnitude pruning of a hash table's rows (Zhu & Gupta, "To prune, or not to prune",
ICLR workshop 2018): train the large table, and during a window of the run zero its rows with the
smallest norms, on a cubic schedule, until ``keep`` of them are left; the rest of the run trains
the survivors around the holes.

A route to HollowNeRF's claim (a hash grid at <= 31% of the 2^19 grid's parameters within 0.1 dB
of it, issue #13) that does not assume the field is a thin shell: HollowNeRF drops the rows only
empty space reaches, while here any row may go, by how little the trained field uses it.

Ours, not the paper's (it prunes weight matrices): the unit is a table row (the F features one
hashed vertex reads), ranked by L2 norm; ``scope`` "global" ranks all rows together (the coarse
levels compete with the fine ones), "level" prunes every level to the same fraction. A pruned row
is exactly zero and stays so (its gradient and Adam moments are zeroed), so the pruned set is read
back from the table itself: nothing extra goes into a checkpoint, and a resumed run continues.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from splatkit.errors import SplatkitError

SCOPES = ("global", "level")


def check_settings(keep: float, start: float, end: float, every: int, scope: str) -> None:
    if not 0 < keep <= 1:
        raise SplatkitError(f"nerf_prune_keep must be in (0, 1] (a fraction of the table's rows), got {keep}")
    if not 0 <= start < end <= 1:
        raise SplatkitError(f"nerf_prune_start < nerf_prune_end must both be in [0, 1] (fractions of the run), "
                            f"got {start} and {end}")
    if every < 1:
        raise SplatkitError(f"nerf_prune_every must be >= 1, got {every}")
    if scope not in SCOPES:
        raise SplatkitError(f"nerf_prune_scope must be one of {', '.join(SCOPES)}, got {scope!r}")


def kept_fraction(step: int, steps: int, keep: float, start: float, end: float) -> float:
    """Zhu & Gupta's schedule: sparsity s_f (1 - (1 - p)^3) with p the progress through the window
    [start, end] of the run, so that most rows go early, while the field still adapts quickly."""
    t0, t1 = start * steps, end * steps
    p = min(max((step - t0) / max(t1 - t0, 1e-9), 0.0), 1.0)
    return 1.0 - (1.0 - keep) * (1.0 - (1.0 - p) ** 3)


def pruned_rows(table: Tensor) -> Tensor:
    """Rows that are exactly zero: the pruned ones (a trained row is never exactly zero)."""
    return (table == 0).all(dim=1)


def prune_smallest(table: Tensor, pruned: Tensor, n_keep: int, slices: Optional[Sequence[slice]] = None) -> Tensor:
    """Zero the smallest-norm rows still alive until ``n_keep`` are left (within each of ``slices``
    in proportion to its size, when given); returns the updated pruned mask."""
    norms = table.detach().norm(dim=1)
    norms = norms.masked_fill(pruned, float("inf"))
    pruned = pruned.clone()
    groups = slices if slices is not None else [slice(0, table.shape[0])]
    total = table.shape[0]
    for sl in groups:
        size = sl.stop - sl.start
        want = n_keep if slices is None else round(n_keep * size / total)
        alive = size - int(pruned[sl].sum())
        n_cut = alive - want
        if n_cut <= 0:
            continue
        cut = torch.topk(norms[sl], n_cut, largest=False).indices + sl.start
        pruned[cut] = True
    return pruned


def zero_rows(table: Tensor, pruned: Tensor, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Zero the pruned rows and their Adam moments: with zero gradients afterwards they stay zero."""
    with torch.no_grad():
        table.masked_fill_(pruned[:, None], 0.0)
        if optimizer is not None:
            for value in optimizer.state.get(table, {}).values():
                if torch.is_tensor(value) and value.shape == table.shape:
                    value.masked_fill_(pruned[:, None], 0.0)


class TablePruner:
    """Applies the schedule to one table during training (the nerf method's optimizer step)."""

    def __init__(self, table: Tensor, steps: int, keep: float, start: float, end: float, every: int,
                 scope: str, level_slices: Sequence[slice]):
        check_settings(keep, start, end, every, scope)
        self.table, self.steps, self.keep, self.start, self.end, self.every = table, steps, keep, start, end, every
        self.slices = list(level_slices) if scope == "level" else None
        self._pruned: Optional[Tensor] = None  # read from the table on first use (a resumed run)

    @property
    def pruned(self) -> Tensor:
        if self._pruned is None:
            self._pruned = pruned_rows(self.table)
        return self._pruned

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Call after backward, before the optimizer step."""
        first, last = math.ceil(self.start * self.steps), math.ceil(self.end * self.steps)
        if step < first:
            return
        if (step - first) % self.every == 0 or step == last:  # a short run still reaches ``keep``
            n_rows = self.table.shape[0]
            n_keep = round(n_rows * kept_fraction(step, self.steps, self.keep, self.start, self.end))
            if n_rows - int(self.pruned.sum()) > n_keep:
                self._pruned = prune_smallest(self.table, self.pruned, n_keep, self.slices)
                zero_rows(self.table, self._pruned, optimizer)
        if self.table.grad is not None:
            self.table.grad.masked_fill_(self.pruned[:, None], 0.0)

    def stats(self) -> dict[str, float]:
        return {"table_kept": 1.0 - float(self.pruned.float().mean())}
