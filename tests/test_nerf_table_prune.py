"""Gradual magnitude pruning of the NeRF's hash table (splatkit/models/table_prune.py): the cubic
schedule, which rows go (global and per level), pruned rows staying exactly zero through Adam, exact
resume mid-pruning, the compact export rendering the same, and bad settings."""

from __future__ import annotations

import pytest
import torch

from splatkit.cli.main import main
from splatkit.errors import SplatkitError
from splatkit.models import table_prune
from splatkit.models.nerf_field import NerfModel
from splatkit.train import resolve_config
from splatkit.train.trainer import Trainer

from test_nerf import TINY_VALUES, _state


def test_schedule_is_zhu_and_gupta_cubic():
    keep, steps = 0.3, 1000
    f = [table_prune.kept_fraction(s, steps, keep, 0.2, 0.6) for s in range(steps)]
    assert f[0] == f[200] == 1.0 and f[600] == f[999] == pytest.approx(keep)
    # half-way through the window: sparsity 0.7 * (1 - 0.5^3)
    assert f[400] == pytest.approx(1 - 0.7 * (1 - 0.125))
    assert all(a >= b for a, b in zip(f, f[1:]))  # never grows back


def test_prune_smallest_takes_the_smallest_norms_globally_or_per_level():
    table = torch.tensor([[3.0, 0], [0.1, 0], [0, 2], [0.5, 0.5], [1, 1], [0, 0.2]])
    norms = table.norm(dim=1)
    none = torch.zeros(6, dtype=torch.bool)
    pruned = table_prune.prune_smallest(table, none, 3)
    assert pruned.tolist() == (norms < 1.0).tolist()  # the three smallest: rows 1, 3, 5
    # Rows already pruned stay pruned and do not count as alive.
    again = table_prune.prune_smallest(table, pruned, 2)
    assert again[pruned].all() and int(again.sum()) == 4 and bool(again[4])  # next smallest: sqrt(2)
    # Per level: each slice keeps its share (two levels of 3 rows, keep 2 -> one each).
    per_level = table_prune.prune_smallest(table, none, 2, [slice(0, 3), slice(3, 6)])
    assert per_level.tolist() == [False, True, True, True, False, True]


def test_zeroed_rows_stay_zero_through_adam():
    table = torch.nn.Parameter(torch.randn(10, 2))
    opt = torch.optim.Adam([table], lr=0.1)
    pruner = table_prune.TablePruner(table, steps=20, keep=0.5, start=0.0, end=0.5, every=2, scope="global",
                                     level_slices=[slice(0, 10)])
    for step in range(20):
        loss = ((table - 3.0) ** 2).sum()
        loss.backward()
        pruner.before_step(step, opt)
        opt.step()
        opt.zero_grad()
    dead = table_prune.pruned_rows(table.detach())
    assert int(dead.sum()) == 5 and torch.equal(dead, pruner.pruned)
    assert bool((table.detach()[~dead] != 0).all())  # the survivors trained on
    assert pruner.stats()["table_kept"] == pytest.approx(0.5)
    # Rounds further apart than the window is long: the window's end still reaches ``keep``.
    short = torch.nn.Parameter(torch.randn(10, 2))
    pruner = table_prune.TablePruner(short, steps=30, keep=0.5, start=0.2, end=0.5, every=100, scope="global",
                                     level_slices=[slice(0, 10)])
    for step in range(30):
        pruner.before_step(step, torch.optim.Adam([short]))
    assert int(table_prune.pruned_rows(short.detach()).sum()) == 5


def test_pruned_nerf_resumes_exactly_and_its_compact_export_renders_the_same(scene_dir, tmp_path):
    values = {**TINY_VALUES, "nerf_prune_keep": 0.4, "nerf_prune_start": 0.25, "nerf_prune_end": 0.75,
              "nerf_prune_every": 2}
    ref, run = tmp_path / "ref", tmp_path / "run"
    trainer = Trainer(resolve_config({"data": scene_dir, "method": "nerf", "steps": 16, "out": ref, **values}),
                      quiet=True)
    trainer.train()

    def crash(trainer, step):
        if step == 11:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):  # stopped after its step-8 checkpoint, half-way through pruning
        Trainer(resolve_config({"data": scene_dir, "method": "nerf", "steps": 16, "out": run, **values}),
                quiet=True, callbacks=[crash]).train()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    a, b = _state(ref / "checkpoints/ckpt_000016.pt"), _state(run / "checkpoints/ckpt_000016.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the pruned set is read back from the table

    model = trainer.method.model
    table = model.field.grid.table.detach()
    dead = table_prune.pruned_rows(table)
    assert float(dead.float().mean()) == pytest.approx(0.6, abs=1e-3)
    info = trainer.summary["compact_export"]
    mlp = sum(p.numel() for n, p in model.field.named_parameters() if n != "grid.table")
    assert info["table_rows"] == int((~dead).sum()) and info["parameters"] == info["table_rows"] * 2 + mlp

    small = NerfModel.from_payload(model.to_payload(16, None, "nerf", compact=True))
    assert torch.equal(small.field.grid.table, table)
    cams = trainer.test_scene.cameras[[0]]
    with torch.no_grad():
        x = model.render(cams.viewmats(), cams.intrinsics(), 48, 36, render_mode="RGB+ED")
        y = small.render(cams.viewmats(), cams.intrinsics(), 48, 36, render_mode="RGB+ED")
    assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def test_prune_settings_errors():
    with pytest.raises(SplatkitError, match="needs --method nerf"):
        resolve_config({"method": "3dgs", "nerf_prune_keep": 0.3})
    with pytest.raises(SplatkitError, match="nerf_prune_keep must be in"):
        resolve_config({"method": "nerf", "nerf_prune_keep": 0})
    with pytest.raises(SplatkitError, match="nerf_prune_start < nerf_prune_end"):
        resolve_config({"method": "nerf", "nerf_prune_keep": 0.3, "nerf_prune_start": 0.6, "nerf_prune_end": 0.5})
    with pytest.raises(SplatkitError, match="nerf_prune_scope must be one of"):
        resolve_config({"method": "nerf", "nerf_prune_keep": 0.3, "nerf_prune_scope": "layer"})
