"""Our compact repair model (``ours``): shipped weights, repair, per-scene fine-tune (LoRA and the
whole network), state round trips and one-line errors. Fine-tuning runs on a tiny UNet built from
a config, so the module takes a few seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from splatkit.errors import SplatkitError
from splatkit.priors.repair.base import RepairPairs, load_repair_model
from splatkit.priors.repair.unet import (DEFAULT_WEIGHTS, UNetRepairModel, peft_available, read_weights,
                                         write_weights)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

TINY = {"in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D"] * 2, "up_block_types": ["UpBlock2D"] * 2, "norm_num_groups": 4,
        "add_attention": False}
needs_peft = pytest.mark.skipif(not peft_available(), reason="peft is not installed")


def _pairs(n: int = 6, h: int = 20, w: int = 28) -> RepairPairs:
    """Blurred, darkened images against the originals: a corruption a small net learns quickly."""
    g = torch.Generator().manual_seed(3)
    sharp = F.interpolate(torch.rand(n, 3, h // 4, w // 4, generator=g), size=(h, w), mode="bilinear",
                          align_corners=False)
    blurred = F.avg_pool2d(sharp, 3, 1, 1, count_include_pad=False) * 0.8
    return RepairPairs(blurred.permute(0, 2, 3, 1).contiguous(), sharp.permute(0, 2, 3, 1).contiguous(),
                       ["noise"] * (n - 1) + ["identity"])


def _tiny(seed: int = 0, **options) -> UNetRepairModel:
    m = UNetRepairModel.untrained(TINY, seed=seed, **{"crop": 16, "batch_size": 4, **options})
    # untrained() zeroes conv_out (identity output); give it weights so that every layer gets a gradient.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.nn.init.normal_(m.unet.conv_out.weight, std=0.02)
    return m


def _base(m: UNetRepairModel) -> dict[str, torch.Tensor]:
    """The base (non-adapter) weights, under their names before peft wrapped the layers."""
    return {k.replace(".base_layer", ""): v.clone() for k, v in m.unet.state_dict().items() if "lora_" not in k}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: these tiny convolutions gain nothing from two, and on a loaded machine
    two threads waiting on each other ran this module 30x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- shipped weights -------------------------------------------------------------------------------
def test_shipped_weights_load_and_repair():
    assert DEFAULT_WEIGHTS.is_file(), "run scripts/pretrain_repair.py to make the shipped weights"
    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert meta["file"] == DEFAULT_WEIGHTS.name and "made_by" in meta
    assert DEFAULT_WEIGHTS.stat().st_size < 8e6  # a few MB
    model = load_repair_model("ours")
    assert isinstance(model, UNetRepairModel) and model.name == "ours"
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 37, 51, 3, generator=g).requires_grad_(True)  # not a multiple of 8
    a = model.repair(images, strength=1.0, generator=g)
    b = model.repair(images, strength=1.0, generator=torch.Generator().manual_seed(5))
    assert a.shape == images.shape and not a.requires_grad
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)  # deterministic, the generator is not used
    assert not torch.equal(a, images.detach())  # the trained network does change a render
    # strength blends towards the full repair: half the strength, half the change (up to clamping).
    half = model.repair(images, strength=0.5, generator=g)
    inside = (a > 0) & (a < 1)
    assert torch.allclose((half - images.detach())[inside], 0.5 * (a - images.detach())[inside], atol=1e-5)


def test_missing_and_corrupt_weights_fail_in_one_line(tmp_path):
    missing = tmp_path / "none.safetensors"
    for call in (lambda: UNetRepairModel.load(missing), lambda: load_repair_model(f"ours:{missing}")):
        with pytest.raises(SplatkitError) as exc:
            call()
        msg = str(exc.value)
        assert "\n" not in msg and str(missing) in msg and "scripts/pretrain_repair.py" in msg
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(SplatkitError, match="unreadable") as exc:
        UNetRepairModel.load(bad)
    assert "\n" not in str(exc.value) and "pretrain_repair.py" in str(exc.value)


def test_weights_file_round_trip(tmp_path):
    m = _tiny(1)
    path = tmp_path / "w.safetensors"
    write_weights(path, m.unet, info={"made_by": "test"}, dtype=torch.float32)
    tensors, meta = read_weights(path)
    assert meta["config"]["block_out_channels"] == [8, 16] and meta["made_by"] == "test"
    loaded = UNetRepairModel.load(path)
    x = _pairs().inputs
    assert torch.equal(loaded.repair(x), m.repair(x))


def test_bad_input_is_a_splatkit_error():
    m = _tiny()
    with pytest.raises(SplatkitError, match="H, W, 3"):
        m.repair(torch.rand(2, 3, 8, 8))
    with pytest.raises(SplatkitError, match="strength"):
        m.repair(torch.rand(1, 8, 8, 3), strength=1.5)
    with pytest.raises(SplatkitError, match="unknown option"):
        UNetRepairModel.untrained(TINY, colour=1)
    with pytest.raises(SplatkitError, match="mode"):
        UNetRepairModel.untrained(TINY, mode="dora")
    with pytest.raises(SplatkitError, match="no training pairs"):
        m.fine_tune(RepairPairs(torch.zeros(0, 4, 4, 3), torch.zeros(0, 4, 4, 3)), steps=1, seed=0)


# -- fine-tuning -----------------------------------------------------------------------------------
def test_full_fine_tune_lowers_the_loss_and_is_deterministic():
    pairs = _pairs()
    m1, m2, m3 = (_tiny(mode="full", lr_full=2e-3) for _ in range(3))
    calls = []
    s1 = m1.fine_tune(pairs, steps=40, seed=7, progress=lambda d, t, l: calls.append((d, t)))
    s2 = m2.fine_tune(pairs, steps=40, seed=7)
    m3.fine_tune(pairs, steps=40, seed=8)
    assert s1["loss_last"] < 0.8 * s1["loss_first"] and s1["lora"] == 0.0
    assert calls and calls[-1] == (40, 40)
    assert s1["loss_last"] == s2["loss_last"]
    st1, st2, st3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert st1["mode"] == "full" and all(torch.equal(st1["tensors"][k], st2["tensors"][k]) for k in st1["tensors"])
    assert any(not torch.equal(st1["tensors"][k], st3["tensors"][k]) for k in st1["tensors"])
    assert all(not p.requires_grad for p in m1.net.parameters())
    # Round trip into a fresh model of the same base.
    fresh = _tiny(mode="full")
    fresh.load_state_dict(st1)
    assert torch.equal(fresh.repair(pairs.inputs), m1.repair(pairs.inputs))


@needs_peft
def test_lora_fine_tune_changes_only_the_adapters():
    pairs = _pairs()
    m = _tiny(mode="lora", lr_lora=3e-3)
    before = _base(m)
    stats = m.fine_tune(pairs, steps=40, seed=7)
    assert stats["lora"] == 1.0 and stats["loss_last"] < stats["loss_first"]
    after = _base(m)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    state = m.state_dict()
    assert state["mode"] == "lora" and state["tensors"] and all("lora_" in k for k in state["tensors"])
    assert any(float(t.abs().max()) > 0 for k, t in state["tensors"].items() if "lora_B" in k)
    assert stats["trainable_params"] == sum(t.numel() for t in state["tensors"].values())
    # Deterministic per seed, and the state restores the fine-tuned model in a fresh one.
    again = _tiny(mode="lora", lr_lora=3e-3)
    again.fine_tune(pairs, steps=40, seed=7)
    assert all(torch.equal(state["tensors"][k], again.state_dict()["tensors"][k]) for k in state["tensors"])
    fresh = _tiny(mode="lora")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.repair(pairs.inputs), m.repair(pairs.inputs))
    assert not torch.equal(_tiny().repair(pairs.inputs), m.repair(pairs.inputs))


def test_state_of_another_base_is_refused(tmp_path):
    m = _tiny(mode="full")
    m.fine_tune(_pairs(), steps=2, seed=0)
    state = m.state_dict()
    state["base_sha"] = "0" * 64
    path = tmp_path / "w.safetensors"
    write_weights(path, _tiny().unet)
    with pytest.raises(SplatkitError, match="other base weights"):
        UNetRepairModel.load(path).load_state_dict(state)


def test_large_renders_are_repaired_at_the_pretraining_height():
    model = load_repair_model("ours", work_height=None)
    assert model.options["work_height"] == 75  # None: the height the shipped weights were pretrained at
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 150, 200, 3, generator=g)
    out = model.repair(img, strength=1.0)
    # The same as repairing the area-downsampled render and adding the upsampled residual.
    x = img.permute(0, 3, 1, 2)
    small = F.interpolate(x, size=(75, 100), mode="area")
    residual = F.interpolate(model.net(small), size=(150, 200), mode="bilinear", align_corners=False)
    want = (x + residual).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(out, want, atol=1e-6)
    full = load_repair_model("ours").repair(img, strength=1.0)  # the default, 0: at full size
    assert not torch.allclose(full, out, atol=1e-3)


# -- pretraining script ----------------------------------------------------------------------------
def test_pretrain_shards_cover_every_scene_once():
    import pretrain_repair as script
    todo = [(s, "train") for s in range(100, 110)] + [(s, "heldout") for s in range(900, 904)]
    for count in (1, 2, 3):
        parts = [script.shard_scenes(todo, [100], k, count) for k in range(count)]
        assert sorted(t for part in parts for t in part) == sorted(todo)
        assert parts[0][0] == (100, "train")  # the leave-one-out scene first, in shard 0 only
        assert all((100, "train") not in part for part in parts[1:])
    args = script.parse_args(["--pairs-only", "--shard", "1/2"])
    assert (args.shard_index, args.shard_count) == (1, 2)
    for bad in (["--shard", "1/2"], ["--pairs-only", "--shard", "2/2"], ["--pairs-only", "--shard", "x"]):
        with pytest.raises(SystemExit):
            script.parse_args(bad)
