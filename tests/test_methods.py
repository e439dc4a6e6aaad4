"""The extension points: a method registered from outside the package trains, resumes, evaluates
and renders through the CLI; the method registry's errors; plugins' hooks and nested settings;
the MCMC strategy; and the layering of the package (no import runs up the layers)."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

import toy_method  # noqa: F401  (registers the "toy-skybox" method, as a third-party package would)
from splatkit.cli.main import main
from splatkit.errors import SplatkitError
from splatkit.methods import available_methods, load_checkpoint, method_class, method_of_payload
from splatkit.methods.base import Plugin
from splatkit.methods.plugins import register_plugin
from splatkit.methods.strategies import binomial_table, relocation_torch
from splatkit.train import Run, TrainConfig, resolve_config
from splatkit.train.trainer import Trainer


def params_of(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state"]


# -- a method from outside the package ---------------------------------------------------------------
def test_outside_method_trains_resumes_evaluates_and_renders_through_the_cli(scene_dir, tmp_path, capsys):
    assert "toy-skybox" in available_methods() and "3dgs" in available_methods()
    common = ["--data", str(scene_dir), "--method", "toy-skybox", "--quiet", "--set", "checkpoint_every=10",
              "keep_checkpoints=0", "log_every=5", "preview_every=0"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["train", *common, "--steps", "30", "--out", str(ref)]) == 0
    assert main(["train", *common, "--steps", "20", "--out", str(run)]) == 0
    assert main(["train", "--resume", "--out", str(run), "--steps", "30", "--quiet"]) == 0
    a, b = params_of(ref / "checkpoints/ckpt_000030.pt"), params_of(run / "checkpoints/ckpt_000030.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resume is exact

    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["method"] == "toy-skybox" and summary["num_primitives"] == 3 * 16 + 16 + 16 * 3 + 3
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(5, 31, 5)) and log[-1]["loss"] < log[0]["loss"]

    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 0
    report = json.loads((run / "metrics.json").read_text())
    assert report["method"] == "toy-skybox" and report["num_views"] == len(Run.open(run).split()[1])
    assert report["mean"]["psnr"] == pytest.approx(summary["mean"]["psnr"], abs=1e-6)  # one scoring path
    assert main(["render", "--run", str(run), "--orbit", "--frames", "3", "--video", str(tmp_path / "o.gif")]) == 0
    assert len(list((run / "renders" / "test").glob("*.png"))) == report["num_views"]
    assert (tmp_path / "o.gif").is_file()
    model, payload = load_checkpoint(Run.open(run).latest_checkpoint())
    assert isinstance(model, toy_method.SkyboxModel) and payload["splatkit"]["method"] == "toy-skybox"
    # Splat formats need Gaussians: a clear one-line error, not a traceback.
    capsys.readouterr()
    assert main(["export", "--run", str(run)]) == 2
    assert "no Gaussians" in capsys.readouterr().err


def test_method_registry_errors(tmp_path):
    with pytest.raises(SplatkitError, match="unknown method 'nerfish'.*3dgs"):
        resolve_config({"method": "nerfish"}, preset="fast")
    with pytest.raises(SplatkitError, match="unknown method"):
        method_class("nerfish")
    # Checkpoints from before the method tag are 3DGS's by their format.
    legacy = {"splatkit": {"format": "splatkit-gaussians", "version": 1}}
    assert method_of_payload(legacy).name == "3dgs"
    path = tmp_path / "ckpt_000001.pt"
    torch.save({"splatkit": {"format": "elsewhere", "version": 1, "method": "other"}}, path)
    with pytest.raises(SplatkitError, match="unknown method"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SplatkitError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_old_run_labels_load_as_3dgs_runs():
    cfg = resolve_config({"method": "sparse"}, preset="fast")
    assert cfg.method == "3dgs" and cfg.run_name == "sparse"
    assert resolve_config({}, preset="sparse").run_name == "sparse"


# -- plugins -------------------------------------------------------------------------------------------
@register_plugin
class HookRecorder(Plugin):
    """Records every hook call, renders an extra camera every 4 steps, keeps state across resumes."""

    name = "test_hook_recorder"
    every = 4

    from dataclasses import dataclass

    @dataclass
    class Config:
        weight: float = 0.0

    calls: list = []

    def setup(self, state):
        self.state, self.count = state, 0
        HookRecorder.calls.append(("setup", state.resumed))

    def on_step_start(self, step, state):
        HookRecorder.calls.append(("start", step))

    def render_params(self, step, params):
        HookRecorder.calls.append(("params", step))
        return params

    def loss(self, step, batch, outputs):
        HookRecorder.calls.append(("loss", step))
        return self.settings.weight * outputs.alphas.mean()

    def after_backward(self, step, state):
        grads = [p.grad for p in state.method.optimizers["means"].param_groups[0]["params"]]
        HookRecorder.calls.append(("after_backward", step, grads[0] is not None))

    def on_step_end(self, step, state):
        HookRecorder.calls.append(("end", step))

    def every_n(self, step, state):
        self.count += 1
        view = state.scene.cameras[[0]]
        out = state.render(view.viewmats(state.device), view.intrinsics(state.device),
                           int(view.widths[0]), int(view.heights[0]), torch.zeros(1, 3))
        HookRecorder.calls.append(("every_n", step, tuple(out.colors.shape), out.depths is not None))

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_plugin_hooks_order_every_n_and_state(scene_dir, tmp_path):
    HookRecorder.calls.clear()
    cfg = TrainConfig(data=scene_dir, out=tmp_path / "run", steps=8, seed=1, backend="torch", device="cpu",
                      init_num_points=100, sh_degree=0, regularizers=["test_hook_recorder"],
                      plugins={"test_hook_recorder": {"weight": 0.5}}, checkpoint_every=0, preview_every=0,
                      log_every=1).resolved()
    trainer = Trainer(cfg, quiet=True)
    trainer.train()
    calls = HookRecorder.calls
    assert calls[0] == ("setup", False)
    first = [c[0] for c in calls[1:6]]
    assert first == ["start", "params", "loss", "after_backward", "end"]
    assert all(c[2] for c in calls if c[0] == "after_backward")  # gradients exist there
    every = [c for c in calls if c[0] == "every_n"]
    assert [c[1] for c in every] == [4, 8] and every[0][2] == (1, 36, 48, 3) and every[0][3]
    plugin = next(p for p in trainer.plugins if p.name == "test_hook_recorder")
    assert plugin.settings.weight == 0.5
    payload = torch.load(Run.open(tmp_path / "run").latest_checkpoint(), weights_only=False)
    assert payload["trainer"]["plugins"]["test_hook_recorder"] == {"count": 2}
    log = json.loads((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()[0])
    assert "test_hook_recorder" in log


def test_plugin_settings_are_nested_checked_and_old_keys_are_aliases(scene_dir, tmp_path):
    cfg = resolve_config({"plugins.depth_ranking.weight": 0.3, "depth_continuity_weight": 0.7,
                          "depth_rank_pairs": 128}, preset="sparse")
    assert cfg.plugins["depth_ranking"] == {"weight": 0.3, "pairs": 128}
    assert cfg.plugins["depth_continuity"] == {"weight": 0.7, "pairs": 128}
    sparse9 = resolve_config({}, preset="sparse9")
    assert sparse9.plugins["depth_ranking"] == {"weight": 0.1}  # the preset's section ...
    merged = resolve_config({"plugins.dropout.gamma": 0.02, "plugins.depth_ranking.pairs": 64}, preset="sparse9")
    assert merged.plugins["dropout"] == {"gamma": 0.02}  # ... overridden setting by setting
    assert merged.plugins["depth_ranking"] == {"weight": 0.1, "pairs": 64}
    with pytest.raises(SplatkitError, match="unknown plugins.depth_ranking setting 'wieght'"):
        resolve_config({"plugins.depth_ranking.wieght": 1.0}, preset="fast")
    with pytest.raises(SplatkitError, match="unknown plugin 'nope'"):
        resolve_config({"plugins": {"nope": {}}}, preset="fast")
    with pytest.raises(SplatkitError, match="plugins.depth_ranking.box must be in"):
        resolve_config({"plugins.depth_ranking.box": 2.0}, preset="fast")
    with pytest.raises(SplatkitError, match="not a valid float"):
        resolve_config({"plugins.dropout.gamma": "lots"}, preset="fast")
    # The CLI's --plugin.NAME.SETTING flags, and the config a run writes holds the nested section.
    out = tmp_path / "run"
    assert main(["train", "--data", str(scene_dir), "--steps", "2", "--out", str(out), "--quiet", "--backend", "torch",
                 "--regularizers", "dropout", "--plugin.dropout.gamma", "0.3", "--set", "init_num_points=100",
                 "--mask-weight", "0.4"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["plugins"] == {"dropout": {"gamma": 0.3}, "mask": {"weight": 0.4}}
    assert "dropout_gamma" not in saved and "mask_weight" not in saved


# -- MCMC ------------------------------------------------------------------------------------------------
def test_mcmc_relocation_matches_eq9_of_the_paper():
    binoms = binomial_table()
    o = torch.tensor([0.9, 0.5, 0.2, 0.05, 0.7])
    s = torch.rand(5, 3) + 0.1
    n = torch.tensor([1, 2, 3, 7, 51])
    new_o, new_s = relocation_torch(o, s, n, binoms)
    for j in range(5):
        k = int(n[j])
        want_o = 1 - (1 - float(o[j])) ** (1 / k)
        denom = sum(math.comb(i - 1, q) * (-1) ** q / math.sqrt(q + 1) * want_o ** (q + 1)
                    for i in range(1, k + 1) for q in range(i))
        assert float(new_o[j]) == pytest.approx(want_o, rel=1e-5)
        torch.testing.assert_close(new_s[j], float(o[j]) / denom * s[j], rtol=2e-4, atol=1e-6)
    # One copy is the Gaussian itself.
    assert float(new_o[0]) == pytest.approx(0.9) and torch.allclose(new_s[0], s[0])


def test_mcmc_strategy_trains_caps_the_count_and_resumes_exactly(scene_dir, tmp_path):
    base = dict(data=scene_dir, steps=24, seed=2, backend="torch", device="cpu", init_num_points=150,
                sh_degree=0, strategy="mcmc", cap_max=180, init_opacity=0.5, init_scale=0.5, refine_start_iter=2,
                refine_every=3, refine_stop_iter=22, checkpoint_every=10, keep_checkpoints=0, preview_every=0,
                log_every=1)
    counts = {}

    def record(trainer, step):
        counts[step] = trainer.method.num_primitives

    Trainer(TrainConfig(**base, out=tmp_path / "ref"), quiet=True, callbacks=[record]).train()
    assert counts[3] == 150 and max(counts.values()) == 180 and counts[24] == 180  # grows 5% a time, capped
    log = [json.loads(line) for line in (tmp_path / "ref" / "train_log.jsonl").read_text().splitlines()]
    assert "opacity_reg" in log[0] and "scale_reg" in log[0]

    def crash(trainer, step):
        if step == 15:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        Trainer(TrainConfig(**base, out=tmp_path / "run"), quiet=True, callbacks=[crash]).train()
    Trainer(TrainConfig(**base, out=tmp_path / "run"), resume=True, quiet=True).train()
    a = torch.load(tmp_path / "ref/checkpoints/ckpt_000024.pt", weights_only=False)["splats"]
    b = torch.load(tmp_path / "run/checkpoints/ckpt_000024.pt", weights_only=False)["splats"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- layers ------------------------------------------------------------------------------------------------
# data -> render -> compress -> models -> methods -> priors -> train -> export -> eval -> app -> cli
LAYERS = {"errors": 0, "utils": 0, "resources": 0, "data": 1, "render": 2, "metrics": 2, "compress": 3,
          "models": 4, "methods": 5, "priors": 6, "train": 7, "export": 8, "eval": 9, "app": 10, "cli": 11}


def test_no_import_runs_up_the_layers():
    root = Path(__file__).resolve().parents[1] / "splatkit"
    bad = []
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        own = parts[0] if len(parts) > 1 or parts[0] != "__init__" else None
        if own is None:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("splatkit."):
                    target = name.split(".")[1]
                    assert target in LAYERS, f"{target} has no layer in this test"
                    if LAYERS[target] > LAYERS[own]:
                        bad.append(f"{f.relative_to(root)} imports {name}")
    assert not bad, "\n".join(bad)


def test_cli_strategy_flags_and_plain_status_lines_with_an_eta(scene_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(scene_dir), "--steps", "20", "--out", str(out), "--backend", "torch",
                 "--strategy", "mcmc", "--cap-max", "120", "--set", "init_num_points=100", "sh_degree=0",
                 "refine_start_iter=2", "refine_every=5", "log_every=10", "preview_every=0"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["strategy"] == "mcmc" and saved["cap_max"] == 120
    assert json.loads((out / "train_summary.json").read_text())["num_gaussians"] <= 120
    text = capsys.readouterr().out
    # No terminal under pytest: plain status lines, each with the rate and an ETA.
    assert "schedule: 20 steps" in text and "strategy mcmc" in text
    status = [line for line in text.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in status] == ["10/20", "20/20"]
    assert all(" it/s  ETA " in line for line in status)


def test_mcmc_with_learnable_masks_prunes_without_touching_its_constants(scene_dir, tmp_path):
    # Mask pruning removes Gaussians from every tensor of the strategy state: MCMC keeps its
    # binomial table out of it.
    cfg = TrainConfig(data=scene_dir, out=tmp_path / "run", steps=14, seed=2, backend="torch", device="cpu",
                      init_num_points=150, sh_degree=0, strategy="mcmc", cap_max=200, refine_start_iter=2,
                      refine_every=4, refine_stop_iter=12, gaussian_masks=True, mask_lr=0.4, mask_lambda=0.05,
                      mask_min_gaussians=20, checkpoint_every=0, preview_every=0, log_every=1)
    trainer = Trainer(cfg, quiet=True)
    trainer.train()
    assert trainer.method.strategy_state == {} and "mask" in trainer.model.splats
    assert trainer.summary["num_gaussians"] <= 200
