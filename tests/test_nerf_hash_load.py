"""scripts/nerf_hash_load.py: vertex ids match the hash grid's cells, and the ideal pruning keeps
the fewest cells holding the asked share."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import nerf_hash_load  # noqa: E402
from splatkit.models.hashgrid import HashGrid, HashGridConfig, _corners  # noqa: E402


def test_vertex_ids_name_the_same_vertices_as_a_dense_levels_rows():
    grid = HashGrid(HashGridConfig(n_levels=2, n_features_per_level=2, log2_hashmap_size=14, base_resolution=8,
                                   max_resolution=12))
    plan = grid._get_plan()
    assert all(plan.dense)
    u = torch.rand(3000, 3, generator=torch.Generator().manual_seed(0))
    u[:10] = 1.0  # the far face: vertex N, as the grid handles it
    u[10:20] = 0.0
    rows, _, _ = _corners(u, plan)
    for lvl, res in enumerate(grid.resolutions):
        keys = nerf_hash_load.vertex_keys(u, res)
        level_rows = rows[lvl].t().reshape(-1).long()  # [n, 8] in the same corner order
        pairs = torch.unique(torch.stack([keys, level_rows]), dim=1)
        # a bijection: as many distinct (id, row) pairs as distinct ids and as distinct rows
        assert pairs.shape[1] == torch.unique(keys).numel() == torch.unique(level_rows).numel()
        assert int(keys.max()) < (res + 1) ** 3


def test_cells_holding_keeps_the_fewest_heaviest_cells():
    mass = torch.tensor([0.05, 0.5, 0.0, 0.3, 0.15], dtype=torch.float64)
    assert nerf_hash_load.cells_holding(mass, 0.5).tolist() == [False, True, False, False, False]
    assert nerf_hash_load.cells_holding(mass, 0.8).tolist() == [False, True, False, True, False]
    assert nerf_hash_load.cells_holding(mass, 0.81).tolist() == [False, True, False, True, True]
    assert nerf_hash_load.cells_holding(mass, 1.0).sum() == 4  # the empty cell is never needed
