"""Our own repair model: a compact UNet that needs no weights from outside.

GaussianObject (Yang et al., SIGGRAPH Asia 2024) repairs renders with a ControlNet on Stable
Diffusion 1.5, fine-tuned per scene with LoRA. Those weights cannot be had everywhere, so this
module follows the same two-stage shape with a network small enough to train on a CPU:

* a base model, a diffusers :class:`~diffusers.UNet2DModel` of ~1.6M parameters used as a
  **one-step** conditional repair network, pretrained by ``scripts/pretrain_repair.py`` on pairs
  generated from many procedural scenes of :mod:`splatkit.data.synthetic`; its weights (fp16,
  ~3 MB) ship in ``splatkit/priors/repair/weights/`` and are reproducible from that script;
* a per-scene fine-tune on the scene's own pairs (:meth:`UNetRepairModel.fine_tune`), with LoRA
  adapters through peft as GaussianObject does (``mode="lora"``) or of the whole small network
  (``mode="full"``).

The network sees the corrupted render (RGB; the interface passes no alpha) and predicts a
residual: ``repaired = clamp(render + strength * residual, 0, 1)``. Its timestep input is held at
0 (a one-step network has no noise level to be told). ``strength`` keeps the meaning it has for an
img2img diffusion model, how far the output may move from the render: 1 applies the full repair,
0.1 a tenth of it. This is a blend, not a noise level, so ``repair`` is deterministic and ignores
its ``generator``.

Weights files are safetensors whose metadata carry the UNet config (``"config"``, JSON), so a
file written by the script loads on its own (``load_repair_model("ours:PATH")``); the JSON beside
the shipped file says how it was made.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from splatkit.errors import SplatkitError
from splatkit.priors.repair.base import Progress, RepairModel, RepairPairs

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "repair_unet.safetensors"
WEIGHTS_FORMAT = "splatkit-repair-unet-1"

# The shipped architecture. Four levels (a /8 bottleneck) give a receptive field of ~100 px, wide
# enough for the blur and floaters of a 3-view fit at 100-200 px; 16 channels at full resolution
# keep a training step on 2 CPU cores well under a second (32 channels there cost ~4x more, for
# a model whose width is mostly needed at coarse levels). No attention: it is slow on a CPU and
# the probe in issue #15 used none.
DEFAULT_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [16, 32, 64, 96],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D"] * 4,
    "up_block_types": ["UpBlock2D"] * 4,
    "norm_num_groups": 8,
    "add_attention": False,
}

FINE_TUNE_MODES = ("lora", "full")
# Per-scene fine-tuning defaults, chosen by held-out repair PSNR on procedural scenes
# (scripts/pretrain_repair.py --compare-fine-tune; docs/benchmarks.md). Two held-out scenes, 300
# steps on each scene's own 18 pairs, PSNR of its repaired test renders (base model: 18.59, 18.31):
# lr 1e-3 LoRA / 2e-4 whole network 17.94 / 17.85 and 17.42 / 17.40; lr 1e-4 / 2e-5 (these
# defaults) 17.98 / 17.99 and 17.57 / 17.59. LoRA is never worse beyond noise and is what
# GaussianObject uses, so it is the default; lower rates lose less, but every per-scene fine-tune
# tried gives back part of the base model's gain (even on the leave-one-out pairs alone).
DEFAULT_FINE_TUNE: dict[str, Any] = {
    "mode": "lora",
    "lora_rank": 8,  # GaussianObject's LoRA rank on the SD UNet is 64 for 320-1280 channels; ours has 16-96
    "lr_lora": 1e-4,
    "lr_full": 2e-5,
    "batch_size": 4,
    "crop": 64,
    "ssim_weight": 0.2,  # 3DGS's D-SSIM weight
    # Image height the network works at: larger renders are repaired at this height and the
    # residual is upsampled (None: the height the weights were pretrained at; 0: full size).
    # Full size by default: on synthetic object 0 (200x150, 3 views) the sparse-repair preset gained
    # less at the pretraining height in a trial (configs/README.md), though that height repairs the
    # test renders on their own a little better.
    "work_height": 0,
}
# The shipped weights were pretrained on 100x75 renders (repair_unet.json's command).
PRETRAIN_HEIGHT = 75
LORA_TARGETS = ["conv_in", "conv1", "conv2", "conv_shortcut", "conv", "conv_out"]


def build_unet(config: Optional[dict] = None):
    from diffusers import UNet2DModel

    cfg = dict(DEFAULT_CONFIG if config is None else config)
    try:
        return UNet2DModel(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    except (TypeError, ValueError) as exc:
        raise SplatkitError(f"repair UNet config is not valid for diffusers' UNet2DModel: {exc}") from None


def pad_multiple(config: dict) -> int:
    """Image sides must be multiples of this (every down block but the last halves them)."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def peft_available() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def _missing(path: Path, what: str) -> SplatkitError:
    return SplatkitError(f"repair model weights {what}; make them with `python scripts/pretrain_repair.py --out "
                         f"{path}` (or use 'ours' for the shipped weights)", path)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (float32) and metadata (``config`` parsed) of a weights file; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, "not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}
        meta["config"] = json.loads(meta["config"])
    except Exception as exc:  # safetensors raises several types for a truncated or foreign file
        raise _missing(path, f"are unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    if meta.get("format") != WEIGHTS_FORMAT:
        raise _missing(path, f"have format {meta.get('format')!r}, expected {WEIGHTS_FORMAT!r}")
    return tensors, meta


def write_weights(path: str | Path, unet, info: Optional[dict] = None, dtype=torch.float16) -> str:
    """Write ``unet``'s weights (``dtype``, default fp16) atomically with its config in the metadata.
    Returns the file's sha256."""
    from safetensors.torch import save

    from splatkit.utils.atomic import write_bytes_atomic

    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet.config).items()
           if not k.startswith("_") and k in _config_keys()}
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in unet.state_dict().items()}
    meta = {"format": WEIGHTS_FORMAT, "config": json.dumps(cfg, sort_keys=True)}
    for k, v in (info or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    data = save(state, metadata=meta)
    write_bytes_atomic(path, data)
    Path(path).chmod(0o644)  # mkstemp's 0600 would keep a shipped file from other users
    return hashlib.sha256(data).hexdigest()


def _config_keys() -> set[str]:
    import inspect

    from diffusers import UNet2DModel

    return set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}


def _crop_batch(pairs: RepairPairs, idx: torch.Tensor, crop: int, gen: torch.Generator):
    """Random ``crop`` x ``crop`` windows (smaller images: the whole image) with random
    horizontal flips, as [B, 3, h, w] inputs and targets."""
    _, H, W, _ = pairs.inputs.shape
    ch, cw = min(crop, H), min(crop, W)
    ys = torch.randint(0, H - ch + 1, (len(idx),), generator=gen)
    xs = torch.randint(0, W - cw + 1, (len(idx),), generator=gen)
    flips = torch.rand(len(idx), generator=gen) < 0.5
    ins, tgs = [], []
    for i, y, x, flip in zip(idx.tolist(), ys.tolist(), xs.tolist(), flips.tolist()):
        a = pairs.inputs[i, y:y + ch, x:x + cw]
        b = pairs.targets[i, y:y + ch, x:x + cw]
        if flip:
            a, b = a.flip(1), b.flip(1)
        ins.append(a)
        tgs.append(b)
    return torch.stack(ins).permute(0, 3, 1, 2), torch.stack(tgs).permute(0, 3, 1, 2)


def repair_loss(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> torch.Tensor:
    """``(1 - w) L1 + w D-SSIM`` (3DGS's photometric loss) on [B, 3, H, W] images."""
    loss = (pred - target).abs().mean()
    if ssim_weight > 0:
        from splatkit.methods.losses import ssim_map

        s = ssim_map(pred.permute(0, 2, 3, 1), target.permute(0, 2, 3, 1)).mean()
        loss = (1 - ssim_weight) * loss + ssim_weight * (1 - s)
    return loss


class RepairNet(torch.nn.Module):
    """The UNet as an image -> residual map, on [B, 3, H, W] images in [0, 1] (sides padded to
    the UNet's multiple inside and cropped back)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.multiple = pad_multiple(dict(unet.config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ph, pw = (-H) % self.multiple, (-W) % self.multiple
        xin = x * 2 - 1  # diffusers UNets expect [-1, 1]
        if ph or pw:
            # Replicate: a zero (grey after the shift) border would look like an edge to repair.
            xin = F.pad(xin, (0, pw, 0, ph), mode="replicate")
        t = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)  # one step: the timestep is unused
        return self.unet(xin, t).sample[..., :H, :W]


def train_steps(net: RepairNet, params, pairs: RepairPairs, *, steps: int, lr: float, batch_size: int, crop: int,
                ssim_weight: float, gen: torch.Generator, progress: Progress = None,
                warmup: int = 0, cosine: bool = False) -> tuple[float, float]:
    """Adam on random crops of ``pairs``; returns the mean loss over the first and the last
    tenth of the steps (single batches are too noisy to compare). Shared by the per-scene
    fine-tune and the pretraining script."""
    opt = torch.optim.Adam(params, lr=lr)
    window = max(1, steps // 10)
    first, last = [], []
    n = len(pairs)
    net.train()
    for step in range(steps):
        scale = 1.0
        if warmup and step < warmup:
            scale = (step + 1) / warmup
        elif cosine:
            scale = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x, y = _crop_batch(pairs, idx, crop, gen)
        loss = repair_loss(x + net(x), y, ssim_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if step < window:
            first.append(value)
        if step >= steps - window:
            last.append(value)
        if progress is not None and (step % 10 == 0 or step == steps - 1):
            progress(step + 1, steps, value)
    net.eval()
    return (sum(first) / len(first), sum(last) / len(last)) if steps else (float("nan"), float("nan"))


class UNetRepairModel(RepairModel):
    """The compact one-step repair UNet (see the module doc). Build with :meth:`load`."""

    name = "ours"
    uses_strength = True  # as a blend towards the full repair, see the module doc

    def __init__(self, unet, *, device: torch.device | str = "cpu", base_sha: str = "", weights_path: str = "",
                 **options):
        unknown = sorted(set(options) - set(DEFAULT_FINE_TUNE))
        if unknown:
            raise SplatkitError(f"unknown option(s) for the 'ours' repair model: {', '.join(unknown)}; "
                                f"known: {', '.join(DEFAULT_FINE_TUNE)}")
        self.options = {**DEFAULT_FINE_TUNE, **options}
        if self.options["mode"] not in FINE_TUNE_MODES:
            raise SplatkitError(f"repair fine-tune mode must be one of {', '.join(FINE_TUNE_MODES)}, "
                                f"got {self.options['mode']!r}")
        self.device = torch.device(device)
        self.net = RepairNet(unet).to(self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.base_sha = base_sha
        self.weights_path = weights_path
        self.tuned: Optional[str] = None  # None, "lora" or "full": what fine-tuning changed

    # -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, *, device: torch.device | str = "cpu", **options) -> "UNetRepairModel":
        """The base model from ``path`` (a file of ``scripts/pretrain_repair.py``), by default the
        weights that ship with splatkit. ``options`` override :data:`DEFAULT_FINE_TUNE`."""
        path = DEFAULT_WEIGHTS if path is None else Path(path)
        tensors, meta = read_weights(path)
        unet = build_unet(meta["config"])
        missing, unexpected = unet.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise _missing(path, f"do not match their config ({len(missing)} missing, {len(unexpected)} unexpected tensors)")
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if "work_height" in options and options["work_height"] is None:  # None: the pretraining height
            res = str(meta.get("resolution", ""))
            options = {**options, "work_height": int(res.split("x")[1]) if "x" in res else PRETRAIN_HEIGHT}
        return cls(unet, device=device, base_sha=sha, weights_path=str(path), **options)

    @classmethod
    def untrained(cls, config: Optional[dict] = None, *, seed: int = 0, device: torch.device | str = "cpu",
                  **options) -> "UNetRepairModel":
        """A freshly initialised network whose output is the identity (``conv_out`` zeroed):
        the start of pretraining, and a tiny model for tests."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = build_unet(config)
        torch.nn.init.zeros_(unet.conv_out.weight)
        torch.nn.init.zeros_(unet.conv_out.bias)
        return cls(unet, device=device, **options)

    @property
    def unet(self):
        return self.net.unet

    # -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def repair(self, images: torch.Tensor, *, strength: float = 1.0,
               generator: Optional[torch.Generator] = None, batch: int = 4) -> torch.Tensor:
        """``[B, H, W, 3]`` in [0, 1] -> ``clamp(images + strength * residual, 0, 1)``, same size.
        Deterministic (``generator`` is not used: see the module doc)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise SplatkitError(f"repair expects [B, H, W, 3] images, got {tuple(images.shape)}")
        if not 0.0 <= float(strength) <= 1.0:
            raise SplatkitError(f"repair strength must be in [0, 1], got {strength}")
        self.net.eval()
        out = []
        for chunk in images.split(batch):
            x = chunk.to(self.device, torch.float32).permute(0, 3, 1, 2)
            small = self._to_work_size(x)
            residual = self.net(small)
            if small.shape[-2:] != x.shape[-2:]:
                residual = F.interpolate(residual, size=x.shape[-2:], mode="bilinear", align_corners=False)
            y = (x + float(strength) * residual).clamp(0.0, 1.0)
            out.append(y.permute(0, 2, 3, 1).to(images.device))
        return torch.cat(out) if out else images.clone()

    def _to_work_size(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` area-downsampled to the working height (module doc), or as it is."""
        h = int(self.options.get("work_height") or 0)
        H, W = x.shape[-2:]
        if h <= 0 or H <= h:
            return x
        return F.interpolate(x, size=(h, max(1, round(W * h / H))), mode="area")

    def _pairs_at_work_size(self, pairs: RepairPairs) -> RepairPairs:
        """Pairs scaled as :meth:`repair` scales renders, so fine-tuning sees what repair sees."""
        ins = self._to_work_size(pairs.inputs.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()
        if ins.shape == pairs.inputs.shape:
            return pairs
        tgs = self._to_work_size(pairs.targets.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()
        return RepairPairs(ins, tgs, list(pairs.kinds), list(pairs.view_ids))

    # -------------------------------------------------------------------------------------------
    def _inject_lora(self, seed: int) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        rank = int(self.options["lora_rank"])
        cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), lora_dropout=0.0,
                         init_lora_weights=True)  # B = 0: the adapter starts as the identity
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # lora_A's Kaiming init draws from the global RNG
            inject_adapter_in_model(cfg, self.net.unet)
        self.net.to(self.device)

    def _lora_params(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.net.unet.named_parameters() if "lora_" in n}

    def fine_tune(self, pairs: RepairPairs, *, steps: int, seed: int, progress: Progress = None) -> dict[str, float]:
        """Fine-tune on this scene's ``pairs``: LoRA adapters (peft; the base weights stay frozen)
        or the whole network (``mode="full"``, also the fallback when peft is not installed).
        L1 + D-SSIM on random crops; deterministic for ``seed``. Calling it again continues the
        same fine-tune."""
        if len(pairs) == 0:
            raise SplatkitError("repair fine-tune: no training pairs")
        if steps < 0:
            raise SplatkitError(f"repair fine-tune: steps must be >= 0, got {steps}")
        mode = self.options["mode"] if self.tuned is None else self.tuned
        if mode == "lora" and not peft_available():
            warnings.warn("peft is not installed: fine-tuning the whole repair network instead of LoRA adapters "
                          "(pip install peft for LoRA)", stacklevel=2)
            mode = "full"
        t0 = time.perf_counter()
        if mode == "lora" and self.tuned is None:
            self._inject_lora(seed)
        self.tuned = mode
        if mode == "lora":
            params = list(self._lora_params().values())
            lr = float(self.options["lr_lora"])
        else:
            params = list(self.net.parameters())
            lr = float(self.options["lr_full"])
        for p in self.net.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        gen = torch.Generator().manual_seed(int(seed))
        try:
            first, last = train_steps(self.net, params, self._pairs_at_work_size(pairs), steps=int(steps), lr=lr,
                                      batch_size=int(self.options["batch_size"]), crop=int(self.options["crop"]),
                                      ssim_weight=float(self.options["ssim_weight"]), gen=gen, progress=progress)
        finally:
            for p in params:
                p.requires_grad_(False)
            self.net.eval()
        return {"loss_first": first, "loss_last": last, "seconds": time.perf_counter() - t0,
                "trainable_params": float(sum(p.numel() for p in params)), "lora": float(mode == "lora")}

    # -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What fine-tuning changed (the LoRA tensors, or the whole network for ``full``)."""
        if self.tuned is None:
            return {"format": WEIGHTS_FORMAT, "mode": None, "base_sha": self.base_sha}
        if self.tuned == "lora":
            tensors = {n: p.detach().cpu().clone() for n, p in self._lora_params().items()}
        else:
            tensors = {n: t.detach().cpu().clone() for n, t in self.net.unet.state_dict().items()}
        return {"format": WEIGHTS_FORMAT, "mode": self.tuned, "base_sha": self.base_sha,
                "lora_rank": int(self.options["lora_rank"]), "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != WEIGHTS_FORMAT:
            raise SplatkitError(f"repair model state has format {state.get('format')!r}, expected {WEIGHTS_FORMAT!r}")
        if state.get("base_sha") and self.base_sha and state["base_sha"] != self.base_sha:
            raise SplatkitError("the checkpoint's repair model was fine-tuned from other base weights "
                                f"(sha256 {state['base_sha'][:12]}, loaded {self.base_sha[:12]} from {self.weights_path})")
        mode = state.get("mode")
        if mode is None:
            return
        if mode not in FINE_TUNE_MODES:
            raise SplatkitError(f"repair model state has unknown mode {mode!r}")
        if self.tuned is not None and self.tuned != mode:
            raise SplatkitError(f"repair model was fine-tuned with {self.tuned!r}; cannot load a {mode!r} state")
        tensors = state["tensors"]
        if mode == "lora":
            if not peft_available():
                raise SplatkitError("the checkpoint's repair model has LoRA adapters; install peft to load them")
            if self.tuned is None:
                self.options["lora_rank"] = int(state.get("lora_rank", self.options["lora_rank"]))
                self._inject_lora(0)  # values are overwritten below
            own = self._lora_params()
            if set(own) != set(tensors):
                raise SplatkitError("repair model LoRA state does not match the network "
                                    f"({len(set(tensors) - set(own))} unknown, {len(set(own) - set(tensors))} missing tensors)")
            with torch.no_grad():
                for n, p in own.items():
                    p.copy_(tensors[n].to(p))
        else:
            missing, unexpected = self.net.unet.load_state_dict(copy.copy(tensors), strict=False)
            if missing or unexpected:
                raise SplatkitError(f"repair model state does not match the network ({len(missing)} missing, "
                                    f"{len(unexpected)} unexpected tensors)")
        self.tuned = mode
        self.net.eval()
