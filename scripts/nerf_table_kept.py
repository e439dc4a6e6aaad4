"""Where a pruned NeRF's hash table kept its rows: per level, the share of rows that are not zero
(gradual magnitude pruning zeroes rows, splatkit/models/table_prune.py), for each run's latest
checkpoint (issue #13; docs/benchmarks.md "NeRF pruned tables: rows kept per level").

Usage: python scripts/nerf_table_kept.py RUN [RUN ...] [--write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import machine_info, write_section  # noqa: E402
from splatkit.methods import load_checkpoint  # noqa: E402
from splatkit.models.table_prune import pruned_rows  # noqa: E402
from splatkit.train import Run  # noqa: E402

SECTION = "nerf_table_kept"


def kept_per_level(grid) -> list[str]:
    """Share of each level's rows that are not zero, "d" marking the densely indexed levels."""
    alive = ~pruned_rows(grid.table.detach())
    return [f"{100 * float(alive[grid.level_slice(level)].float().mean()):.0f}%{' d' if dense else ''}"
            for level, dense in enumerate(grid.dense_levels)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run folders of nerf runs")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    columns, grid = [], None
    for run in args.runs:
        model, _ = load_checkpoint(Run.open(run).latest_checkpoint())
        grid = model.field.grid
        columns.append((run.name, kept_per_level(grid)))
    lines = [
        "## NeRF pruned tables: rows kept per level",
        "",
        f"`python scripts/nerf_table_kept.py {' '.join('RUNS/' + name for name, _ in columns)} --write` on "
        f"{machine_info()}. The runs are `scripts/bench_nerf_hollow.py` runs of the section \"... 5000 steps\" "
        "(seed 0); per level of the hash grid, the share of its table rows that are not zero at the end (d: a "
        "level indexed densely, one row per vertex).",
        "",
        "| level | resolution | " + " | ".join(name for name, _ in columns) + " |",
        "|---:|---:|" + "---:|" * len(columns),
    ]
    for level, res in enumerate(grid.resolutions):
        lines.append(f"| {level} | {res} | " + " | ".join(kept[level] for _, kept in columns) + " |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        print(f"wrote {write_section(SECTION, text)}")


if __name__ == "__main__":
    main()
