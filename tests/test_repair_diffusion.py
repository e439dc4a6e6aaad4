"""The ControlNet repair model (GaussianObject's, through diffusers + peft) with tiny randomly
initialised models: saved in the diffusers layouts, loaded back through the offline path, never
touching the network."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch

from splatkit.errors import SplatkitError
from splatkit.priors.repair.base import RepairPairs, load_repair_model
from splatkit.priors.repair.diffusion import (DEFAULT_BASE_MODEL, DEFAULT_CONTROLNET, ControlNetRepairModel)

H, W = 22, 38  # not multiples of 8: the model resizes to 24 x 40 (latents 3 x 5, odd) and back


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache unless a test fills one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))

    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared CPU: one intra-op thread is ~10x faster than several fighting
    other processes for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tokenizer(folder):
    """A CLIP BPE tokenizer over single characters: enough to encode any lower-case prompt."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789,.":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """(SD 1.5-layout pipeline folder, ControlNet folder) of tiny random models."""
    from diffusers import (AutoencoderKL, ControlNetModel, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    tok = _tokenizer(root / "tok-src")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    # Four blocks: the VAE downsamples by 8 as SD's does.
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                        num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=32,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    # SD 1.5's scheduler config (PNDM); the repair model samples with DDIM on its noise schedule.
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(str(root / "sd"))
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 16))
    # from_unet leaves the zero convolutions at zero (no effect); give them weights so the tests
    # see the control image matter, as in a trained ControlNet.
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if "zero_conv" in name or "controlnet_" in name:
                p.normal_(0.0, 0.1)
    controlnet.save_pretrained(str(root / "cn"))
    return root / "sd", root / "cn"


def _load(tiny_models, **kw) -> ControlNetRepairModel:
    sd, cn = tiny_models
    kw.setdefault("num_inference_steps", 8)
    return ControlNetRepairModel.load(base_model=str(sd), controlnet=str(cn), **kw)


def _images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, H, W, 3, generator=g)


def _pairs(n=3):
    targets = _images(n, seed=1)
    inputs = (targets + 0.2 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    return RepairPairs(inputs, targets, ["loo", "noise", "identity"][:n], list(range(n)))


def _split(model):
    """(LoRA parameters, other parameters) of the UNet and the ControlNet, as CPU copies."""
    lora, base = {}, {}
    for part, m in (("unet", model.pipe.unet), ("controlnet", model.pipe.controlnet)):
        for n, p in m.named_parameters():
            (lora if "lora_" in n else base)[f"{part}.{n}"] = p.detach().clone()
    return lora, base


def test_load_from_folders_puts_lora_on_attention_only(tiny_models):
    m = load_repair_model("controlnet", base_model=str(tiny_models[0]), controlnet=str(tiny_models[1]),
                          lora_rank=4)
    assert isinstance(m, ControlNetRepairModel) and m.name == "controlnet" and m.uses_strength
    lora, base = _split(m)
    assert lora and all(".transformer_blocks." in k for k in lora)
    assert any(k.startswith("controlnet.") for k in lora) and any(k.startswith("unet.") for k in lora)
    # GaussianObject's rank, and B starts at zero so a fresh LoRA changes nothing.
    assert all(p.shape[0] == 4 for k, p in lora.items() if "lora_A" in k)
    assert all(float(p.abs().max()) == 0.0 for k, p in lora.items() if "lora_B" in k)
    assert all(not p.requires_grad for n, p in m.pipe.unet.named_parameters() if "lora_" not in n)
    assert m.work_size(H, W) == (24, 40)
    assert ControlNetRepairModel.load.__kwdefaults__["lora_rank"] == 64


def test_repo_ids_resolve_through_the_hub_cache(tiny_models, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    for repo, folder in (("tiny-org/tiny-sd", tiny_models[0]), ("tiny-org/tiny-cn", tiny_models[1])):
        base = hub / ("models--" + repo.replace("/", "--"))
        shutil.copytree(folder, base / "snapshots" / "abc123")
        (base / "refs").mkdir()
        (base / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    m = ControlNetRepairModel.load(base_model="tiny-org/tiny-sd", controlnet="tiny-org/tiny-cn", lora_rank=2,
                                   num_inference_steps=2)
    assert m.labels == ("tiny-org/tiny-sd", "tiny-org/tiny-cn")
    out = m.repair(_images(1), strength=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, H, W, 3)


def test_missing_weights_give_one_line_errors(tiny_models, tmp_path):
    sd, cn = tiny_models
    cases = [
        # Defaults: GaussianObject's models, absent from the (empty) cache.
        (dict(), [DEFAULT_BASE_MODEL, "not in the local Hugging Face cache", f"download {DEFAULT_BASE_MODEL}",
                  "no weights can be downloaded"]),
        (dict(base_model=str(sd)), [DEFAULT_CONTROLNET, f"download {DEFAULT_CONTROLNET}"]),
        (dict(base_model="some-org/sd-like", controlnet=str(cn)),
         ["'some-org/sd-like'", "no folder 'some-org/sd-like' exists", "download some-org/sd-like"]),
        (dict(base_model=str(tmp_path / "nope" / "sd"), controlnet=str(cn)), ["no such folder", "pass a diffusers"]),
        (dict(base_model=str(tmp_path), controlnet=str(cn)), ["no model_index.json"]),
        (dict(base_model=str(sd), controlnet=str(sd)), ["no config.json"]),
        (dict(base_model=str(sd), controlnet=str(cn), lora_rnak=4), ["unknown option(s) lora_rnak"]),
    ]
    for kw, words in cases:
        with pytest.raises(SplatkitError) as info:
            ControlNetRepairModel.load(**kw)
        msg = str(info.value)
        assert "\n" not in msg, msg
        for w in words:
            assert w in msg, (w, msg)
    # A pipeline folder whose UNet weights are missing names the part.
    broken = tmp_path / "broken"
    shutil.copytree(sd, broken)
    for f in (broken / "unet").glob("diffusion_pytorch_model*"):
        f.unlink()
    with pytest.raises(SplatkitError, match="cannot load the unet of base model") as info:
        ControlNetRepairModel.load(base_model=str(broken), controlnet=str(cn))
    assert "\n" not in str(info.value)


def test_fine_tune_trains_lora_only(tiny_models):
    m = _load(tiny_models, lora_rank=4)
    lora0, base0 = _split(m)
    seen = []
    stats = m.fine_tune(_pairs(), steps=4, seed=0, progress=lambda d, t, loss: seen.append((d, t, loss)))
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert stats["loss_first"] > 0 and stats["seconds"] > 0
    assert seen and seen[-1][:2] == (4, 4)
    lora1, base1 = _split(m)
    assert all(torch.equal(base0[k], base1[k]) for k in base0)
    changed = [k for k in lora0 if not torch.equal(lora0[k], lora1[k])]
    assert any(".lora_B." in k for k in changed) and any(k.startswith("controlnet.") for k in changed)
    # The same seed gives the same fine-tune.
    m2 = _load(tiny_models, lora_rank=4)
    assert m2.fine_tune(_pairs(), steps=4, seed=0)["loss_last"] == pytest.approx(stats["loss_last"], rel=1e-5)
    with pytest.raises(SplatkitError, match="steps"):
        m.fine_tune(_pairs(), steps=0, seed=0)


def test_text_encoder_lora_is_optional_and_trains(tiny_models):
    m = _load(tiny_models, lora_rank=2, text_encoder_lora=True)
    before = {k: v for k, v in m.state_dict().items() if k.startswith("text_encoder.")}
    assert before and any("lora_embedding" in k for k in before)  # token / position embeddings too
    m.fine_tune(_pairs(2), steps=2, seed=0)
    after = m.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k or "lora_embedding_B" in k)


def test_repair_shape_range_and_determinism(tiny_models):
    m = _load(tiny_models, lora_rank=2)
    x = _images(3)
    out = m.repair(x, strength=0.6, generator=torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    again = m.repair(x, strength=0.6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    other = m.repair(x, strength=0.6, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(out, other)
    # Batches larger than max_batch are split without changing the size; a tiny strength still
    # runs one step.
    m.max_batch = 2
    assert m.repair(x, strength=0.01, generator=torch.Generator().manual_seed(0)).shape == x.shape
    with pytest.raises(SplatkitError, match="strength"):
        m.repair(x, strength=0.0, generator=torch.Generator())
    with pytest.raises(SplatkitError, match=r"\[B, H, W, 3\]"):
        m.repair(x[0], strength=0.5, generator=torch.Generator())


def test_state_dict_round_trip_reproduces_the_repair(tiny_models):
    m = _load(tiny_models, lora_rank=4, learning_rate=5e-2)
    x = _images(1, seed=3)
    before = m.repair(x, strength=0.8, generator=torch.Generator().manual_seed(1))
    m.fine_tune(_pairs(), steps=3, seed=1)
    state = m.state_dict()
    assert state and all(".lora_" in k and v.device.type == "cpu" for k, v in state.items())
    after = m.repair(x, strength=0.8, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(before, after)  # the fine-tune changed the model

    fresh = _load(tiny_models, lora_rank=4, seed=123)
    fresh.load_state_dict(state)
    restored = fresh.repair(x, strength=0.8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(restored, after, rtol=0, atol=1e-6)

    other_rank = _load(tiny_models, lora_rank=2)
    with pytest.raises(SplatkitError, match="lora_rank"):
        other_rank.load_state_dict(state)
    with pytest.raises(SplatkitError, match="does not fit"):
        fresh.load_state_dict({k: v for k, v in list(state.items())[1:]})
