"""GaussianObject's Gaussian repair model through diffusers: a ControlNet on a Stable Diffusion
1.5-class model, conditioned on the corrupted render, fine-tuned per scene with LoRA (peft).

GaussianObject (Yang et al., SIGGRAPH Asia 2024) uses ``control_v11f1e_sd15_tile`` on SD 1.5: the
corrupted render is both the ControlNet's control image and the img2img init image, and the repair
is a partial DDIM denoise of it (``process()`` in ``threestudio/systems/gaussian_object_system.py``).
Per scene it trains rank-64 LoRA on the attention blocks of the UNet and of the ControlNet with the
plain noise-prediction loss on (corrupted render -> photo) pairs (``train_lora.py``,
``dataset_lora.py``, ``cldm/cldm.py``).

Weights load strictly offline (``local_files_only``, ``HF_HUB_OFFLINE``): a local diffusers folder
or a repo id already in the Hugging Face cache (:mod:`splatkit.utils.hf_offline`). Nothing is ever
downloaded; a missing model is a one-line :class:`SplatkitError` saying how to provide it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from splatkit.errors import SplatkitError
from splatkit.priors.repair.base import Progress, RepairModel, RepairPairs
from splatkit.utils.hf_offline import cached_snapshot, download_hint, is_repo_id, not_available

# SD 1.5 as the hub now hosts it (runwayml/stable-diffusion-v1-5 was withdrawn); GaussianObject
# loads the same weights from `models/v1-5-pruned.ckpt` (train_lora.py).
DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# GaussianObject train_lora.py `--model_name control_v11f1e_sd15_tile` (configs/gaussian-object.yaml
# `model_name`), in its diffusers form.
DEFAULT_CONTROLNET = "lllyasviel/control_v11f1e_sd15_tile"
# GaussianObject README (`--prompt xxy5syt00`) and dataset_lora.py (`'a photo of a {prompt}'`): a
# rare token the LoRA binds to the scene. (With `--use_prompt_list` it also draws ImageNet-style
# templates per step; one fixed prompt lets us encode it once.)
DEFAULT_PROMPT = "a photo of a xxy5syt00"
# gaussian_object_system.py, process(..., a_prompt='best quality'), appended at repair time.
REPAIR_PROMPT_SUFFIX = ", best quality"
# gaussian_object_system.py process(): guidance scale 1.0 (so no negative prompt / CFG pass),
# control strength 1.0, DDIM eta 1.0.
GUIDANCE_SCALE = 1.0
CONTROL_SCALE = 1.0
DDIM_ETA = 1.0
# train_lora.py: `--lora_rank 64`, `--learning_rate 1e-3` (AdamW in cldm.py configure_optimizers),
# `--batch_size 1`; minLoRA's default lora_alpha=1, so the LoRA update is scaled by 1/rank.
LORA_RANK = 64
LORA_ALPHA = 1.0
LEARNING_RATE = 1e-3
BATCH_SIZE = 1
_ADAPTER = "repair"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _resolve(name: Optional[str], default_repo: str, what: str, marker: str, layout: str) -> tuple[Path, str]:
    """(local folder, label) of a model given as a folder or a repo id in the HF cache; ``marker``
    is the file that folder must hold (``model_index.json`` for a pipeline, ``config.json`` for a
    single model)."""
    name = default_repo if name is None or str(name).strip() == "" else str(name).strip()
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / marker).is_file():
            raise SplatkitError(f"not a {layout} folder for the {what} (no {marker})", p)
        return p.resolve(), str(p.resolve())
    if not is_repo_id(name):
        raise not_available(what, name, None, "no such folder and not a Hugging Face repo id",
                            f"pass a {layout} folder or a repo id present in the local Hugging Face cache "
                            f"(default {default_repo}: {download_hint(default_repo)})")
    snap = cached_snapshot(name, marker)
    if snap is None:
        why = f"{name} is not in the local Hugging Face cache" + (
            "" if name == default_repo else f" and no folder {name!r} exists")
        raise not_available(what, name, name, why)
    return snap, name


def _lora_targets(model: torch.nn.Module, *, everything: bool = False) -> list[str]:
    """Names of the layers that get LoRA. GaussianObject (train_lora.py) wraps every Linear /
    Conv2d / Embedding inside modules named ``*transformer_blocks`` (the attention and feed-forward
    layers; in diffusers too they are ``...transformer_blocks.N...``), or, for the text encoder,
    every such layer."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)
    return [n for n, m in model.named_modules()
            if isinstance(m, kinds) and (everything or ".transformer_blocks." in f".{n}")]


def _inject_lora(model: torch.nn.Module, rank: int, alpha: float, *, everything: bool = False) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = _lora_targets(model, everything=everything)
    if not targets:
        raise SplatkitError(f"{type(model).__name__} has no attention (transformer_blocks) layers to put LoRA on")
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, init_lora_weights=True)
    inject_adapter_in_model(cfg, model, adapter_name=_ADAPTER)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)


class ControlNetRepairModel(RepairModel):
    """ControlNet img2img repair with per-scene LoRA (GaussianObject's repair model)."""

    name = "controlnet"
    uses_strength = True

    def __init__(self, pipe, *, device: torch.device, prompt: str, num_inference_steps: int,
                 resolution: Optional[int], learning_rate: float, batch_size: int, lora_rank: int,
                 lora_alpha: float, text_encoder_lora: bool, max_batch: int, labels: tuple[str, str]):
        self.pipe = pipe
        self.device = device
        self.prompt = prompt
        self.num_inference_steps = num_inference_steps
        self.resolution = resolution
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.text_encoder_lora = text_encoder_lora
        self.max_batch = max_batch
        self.labels = labels  # (base model, controlnet), for messages
        # The image size must be a multiple of the VAE's downsampling (8 for SD).
        self.multiple = int(getattr(pipe, "vae_scale_factor", 8))

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, *, device: torch.device | str = "cpu", base_model: Optional[str] = None,
             controlnet: Optional[str] = None, lora_rank: int = LORA_RANK, lora_alpha: float = LORA_ALPHA,
             prompt: str = DEFAULT_PROMPT, num_inference_steps: int = 20, resolution: Optional[int] = None,
             learning_rate: float = LEARNING_RATE, batch_size: int = BATCH_SIZE,
             text_encoder_lora: bool = False, max_batch: int = 4, seed: int = 0,
             **unknown) -> "ControlNetRepairModel":
        """Load the base model (``base_model``: a diffusers Stable Diffusion folder or a repo id in
        the HF cache; default SD 1.5) and the ControlNet (``controlnet``: a folder or cached repo
        id; default GaussianObject's tile ControlNet), and put fresh LoRA (identity until
        fine-tuned; ``seed`` fixes its random half) on both.

        ``num_inference_steps``: DDIM steps of a full denoise (GaussianObject uses 50; a repair
        with strength s runs about ``s * steps`` of them). ``resolution``: when set, renders are
        scaled so their short side has this many pixels before the network sees them (SD 1.5 is
        trained at 512; GaussianObject feeds its renders at their own size); None keeps the size.
        ``text_encoder_lora``: also LoRA on the CLIP text encoder, as GaussianObject's
        ``--add_clip_lora`` asks; off by default because there its text conditioning is computed
        under ``no_grad`` (``ControlLDM.get_input``), so that LoRA never trains."""
        if unknown:
            raise SplatkitError(f"controlnet repair model: unknown option(s) {', '.join(sorted(unknown))}")
        if int(lora_rank) < 1:
            raise SplatkitError(f"controlnet repair model: lora_rank must be >= 1, got {lora_rank}")
        if int(num_inference_steps) < 1:
            raise SplatkitError(f"controlnet repair model: num_inference_steps must be >= 1, got {num_inference_steps}")
        if resolution is not None and int(resolution) < 8:
            raise SplatkitError(f"controlnet repair model: resolution must be >= 8 pixels, got {resolution}")
        if int(batch_size) < 1 or int(max_batch) < 1:
            raise SplatkitError("controlnet repair model: batch_size and max_batch must be >= 1")
        base_dir, base_label = _resolve(base_model, DEFAULT_BASE_MODEL, "base model", "model_index.json",
                                        "diffusers Stable Diffusion pipeline")
        cn_dir, cn_label = _resolve(controlnet, DEFAULT_CONTROLNET, "ControlNet", "config.json",
                                    "diffusers ControlNet")
        # Belt and braces with local_files_only: nothing below may touch the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler,
                                   StableDiffusionControlNetImg2ImgPipeline, UNet2DConditionModel)
            from transformers import CLIPTextModel, CLIPTokenizer
            import peft  # noqa: F401  (fail here, with a clear message, rather than at fine-tune time)
        except ImportError as exc:
            raise SplatkitError(f"the controlnet repair model needs diffusers, transformers and peft ({exc})")

        def part(cls_, folder: Path, sub: Optional[str], label: str, what: str):
            kw = {"subfolder": sub} if sub else {}
            try:
                return cls_.from_pretrained(str(folder), local_files_only=True, **kw)
            except Exception as exc:  # OSError (missing files), ValueError (bad config), ...
                where = f"the {sub} of " if sub else ""
                raise SplatkitError(f"cannot load {where}{what} {label!r} ({_first_line(exc)})", folder)

        what = "base model"
        unet = part(UNet2DConditionModel, base_dir, "unet", base_label, what)
        vae = part(AutoencoderKL, base_dir, "vae", base_label, what)
        text_encoder = part(CLIPTextModel, base_dir, "text_encoder", base_label, what)
        tokenizer = part(CLIPTokenizer, base_dir, "tokenizer", base_label, what)
        sched_cfg = part(DDIMScheduler, base_dir, "scheduler", base_label, what).config
        cn = part(ControlNetModel, cn_dir, None, cn_label, "ControlNet")
        if cn.config.cross_attention_dim != unet.config.cross_attention_dim:
            raise SplatkitError(f"ControlNet {cn_label!r} (cross-attention {cn.config.cross_attention_dim}) does not "
                                f"fit base model {base_label!r} ({unet.config.cross_attention_dim}); use an SD 1.5 ControlNet")

        # GaussianObject samples with DDIM (process(): DDIMSampler, eta 1.0); whatever scheduler
        # the base model ships (SD 1.5: PNDM), its noise schedule carries over.
        scheduler = DDIMScheduler.from_config(sched_cfg)
        pipe = StableDiffusionControlNetImg2ImgPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=cn,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        for m in (unet, vae, text_encoder, cn):
            m.requires_grad_(False)
            m.eval()
        # LoRA A matrices are random (B starts at zero): a fixed seed makes load() reproducible
        # without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            _inject_lora(unet, int(lora_rank), float(lora_alpha))
            _inject_lora(cn, int(lora_rank), float(lora_alpha))
            if text_encoder_lora:
                _inject_lora(text_encoder, int(lora_rank), float(lora_alpha), everything=True)
        dev = torch.device(device)
        try:
            pipe.to(dev)  # float32 as loaded: LoRA training wants full precision
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise SplatkitError(f"cannot use device {str(device)!r} for the controlnet repair model ({_first_line(exc)})")
        return cls(pipe, device=dev, prompt=str(prompt), num_inference_steps=int(num_inference_steps),
                   resolution=None if resolution is None else int(resolution), learning_rate=float(learning_rate),
                   batch_size=int(batch_size), lora_rank=int(lora_rank), lora_alpha=float(lora_alpha),
                   text_encoder_lora=bool(text_encoder_lora), max_batch=int(max_batch),
                   labels=(base_label, cn_label))

    # -- helpers --------------------------------------------------------------------------------
    def _lora_modules(self) -> dict[str, torch.nn.Module]:
        mods = {"unet": self.pipe.unet, "controlnet": self.pipe.controlnet}
        if self.text_encoder_lora:
            mods["text_encoder"] = self.pipe.text_encoder
        return mods

    def _lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self._lora_modules().values() for n, p in m.named_parameters() if "lora_" in n]

    def work_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network sees: optionally scaled to ``resolution`` on the short side,
        then rounded to the nearest multiple of the VAE factor (GaussianObject rounds to 64 in
        ``resize_image``; diffusers' UNet handles any multiple of 8)."""
        s = 1.0 if self.resolution is None else self.resolution / min(height, width)
        m = self.multiple
        return (max(m, int(round(height * s / m)) * m), max(m, int(round(width * s / m)) * m))

    @staticmethod
    def _check_images(images: torch.Tensor, what: str) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise SplatkitError(f"controlnet repair model: {what} must be a [B, H, W, 3] tensor, got {shape}")

    def _to_work(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """[B, H, W, 3] in [0, 1] -> [B, 3, h, w] on the device at the working size."""
        x = images.detach().to(self.device, torch.float32).permute(0, 3, 1, 2).clamp(0.0, 1.0)
        if tuple(x.shape[-2:]) != size:
            shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink).clamp(0.0, 1.0)
        return x.contiguous()

    def _encode_prompt(self, prompt: str, n: int) -> torch.Tensor:
        tok = self.pipe.tokenizer
        ids = tok([prompt] * n, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        return self.pipe.text_encoder(ids)[0]

    # -- the interface --------------------------------------------------------------------------
    def fine_tune(self, pairs: RepairPairs, *, steps: int, seed: int, progress: Progress = None) -> dict[str, float]:
        """GaussianObject's LoRA fine-tune (train_lora.py): per step a pair, its photo encoded by
        the VAE, a random timestep and noise; the UNet, given the ControlNet's residuals for the
        corrupted render, predicts the noise; MSE loss; AdamW on the LoRA weights only."""
        from diffusers import DDPMScheduler

        if len(pairs) == 0:
            raise SplatkitError("controlnet repair model: no training pairs")
        if int(steps) < 1:
            raise SplatkitError(f"controlnet repair model: steps must be >= 1, got {steps}")
        steps = int(steps)
        t0 = time.perf_counter()
        pipe, dev = self.pipe, self.device
        size = self.work_size(*pairs.inputs.shape[1:3])
        # All randomness from one CPU generator, so a seed gives the same run on any device.
        gen = torch.Generator().manual_seed(int(seed))
        noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        n_train_t = int(noise_sched.config.num_train_timesteps)
        sf = float(pipe.vae.config.scaling_factor)

        # The VAE is frozen: encode every photo once and keep its posterior (mean, std), drawing a
        # fresh latent per step as GaussianObject's get_first_stage_encoding does.
        means, stds, controls = [], [], []
        with torch.no_grad():
            for i in range(0, len(pairs), self.max_batch):
                tgt = self._to_work(pairs.targets[i:i + self.max_batch], size) * 2.0 - 1.0
                dist = pipe.vae.encode(tgt).latent_dist
                means.append(dist.mean.cpu())
                stds.append(dist.std.cpu())
                controls.append(self._to_work(pairs.inputs[i:i + self.max_batch], size).cpu())
            means, stds, controls = torch.cat(means), torch.cat(stds), torch.cat(controls)
            text = None if self.text_encoder_lora else self._encode_prompt(self.prompt, 1)

        params = self._lora_parameters()
        opt = torch.optim.AdamW(params, lr=self.learning_rate)
        losses: list[float] = []
        order: list[int] = []
        bs = min(self.batch_size, len(pairs))
        every = max(1, steps // 20)
        for step in range(steps):
            # Shuffled epochs, as GaussianObject's DataLoader(shuffle=True).
            if len(order) < bs:
                order += torch.randperm(len(pairs), generator=gen).tolist()
            idx, order = order[:bs], order[bs:]
            z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * sf
            noise = torch.randn(z0.shape, generator=gen)
            t = torch.randint(0, n_train_t, (bs,), generator=gen)
            z0, noise, t, ctrl = z0.to(dev), noise.to(dev), t.to(dev), controls[idx].to(dev)
            zt = noise_sched.add_noise(z0, noise, t)
            emb = (self._encode_prompt(self.prompt, bs) if text is None else text.expand(bs, -1, -1))
            down, mid = pipe.controlnet(zt, t, encoder_hidden_states=emb, controlnet_cond=ctrl,
                                        conditioning_scale=CONTROL_SCALE, return_dict=False)
            pred = pipe.unet(zt, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid, return_dict=False)[0]
            if noise_sched.config.prediction_type == "v_prediction":  # SD 2.x-class bases
                target = noise_sched.get_velocity(z0, noise, t)
            else:
                target = noise  # GaussianObject: parameterization "eps", l2 "simple" loss
            loss = F.mse_loss(pred.float(), target.float())
            if not torch.isfinite(loss):
                raise SplatkitError(f"controlnet repair model: the LoRA fine-tune diverged at step {step} (loss {loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            if progress is not None and ((step + 1) % every == 0 or step + 1 == steps):
                progress(step + 1, steps, losses[-1])
        opt.zero_grad(set_to_none=True)
        k = max(1, min(10, steps // 10))  # single-step losses are very noisy (random t): average a few
        return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
                "seconds": time.perf_counter() - t0, "steps": float(steps)}

    @torch.no_grad()
    def repair(self, images: torch.Tensor, *, strength: float, generator: torch.Generator) -> torch.Tensor:
        """img2img with the render as init and control image: noise it to ``strength`` of the way
        and denoise with DDIM (GaussianObject process(): ``t_enc = strength * ddim_steps``)."""
        self._check_images(images, "images")
        strength = float(strength)
        if not 0.0 < strength <= 1.0:
            raise SplatkitError(f"controlnet repair model: strength must be in (0, 1], got {strength}")
        steps = self.num_inference_steps
        # diffusers runs int(steps * strength) steps; at least one, or a small strength would
        # denoise nothing and fail.
        strength = max(strength, 1.0 / steps)
        h, w = images.shape[1:3]
        size = self.work_size(h, w)
        prompt = self.prompt + REPAIR_PROMPT_SUFFIX
        outs = []
        for i in range(0, images.shape[0], self.max_batch):
            x = self._to_work(images[i:i + self.max_batch], size)
            y = self.pipe(prompt=[prompt] * x.shape[0], image=x, control_image=x, height=size[0], width=size[1],
                          strength=strength, num_inference_steps=steps, guidance_scale=GUIDANCE_SCALE,
                          eta=DDIM_ETA, controlnet_conditioning_scale=CONTROL_SCALE, generator=generator,
                          output_type="pt").images
            if tuple(y.shape[-2:]) != (h, w):
                shrink = h < y.shape[-2] or w < y.shape[-1]
                y = F.interpolate(y.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
            outs.append(y.float().clamp(0.0, 1.0).permute(0, 2, 3, 1))
        return torch.cat(outs).to(images.device)

    def state_dict(self) -> dict:
        """The LoRA weights only (``<part>.<parameter name>``, on the CPU)."""
        return {f"{part}.{n}": p.detach().cpu().clone()
                for part, m in self._lora_modules().items() for n, p in m.named_parameters() if "lora_" in n}

    def load_state_dict(self, state: dict) -> None:
        own = {f"{part}.{n}": p for part, m in self._lora_modules().items()
               for n, p in m.named_parameters() if "lora_" in n}
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise SplatkitError(f"controlnet repair model: the LoRA state does not fit this model ({len(missing)} "
                                f"missing, {len(extra)} unexpected, e.g. {(missing or extra)[0]!r}); was it saved "
                                f"with another base model, lora_rank or text_encoder_lora?")
        bad = [k for k, p in own.items() if tuple(state[k].shape) != tuple(p.shape)]
        if bad:
            raise SplatkitError(f"controlnet repair model: LoRA weight {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, "
                                f"expected {tuple(own[bad[0]].shape)} (another lora_rank?)")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(state[k].to(p.device, p.dtype))
