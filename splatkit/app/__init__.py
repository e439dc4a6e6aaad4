"""The application layer: what the CLI's run-level commands do, as functions (train a config,
render a run's views and orbit, export a run). Below the CLI, above everything else."""

from splatkit.app.export import bake_report, export_run
from splatkit.app.render import render_orbit, render_split
from splatkit.app.train import train_command

__all__ = ["bake_report", "export_run", "render_orbit", "render_split", "train_command"]
