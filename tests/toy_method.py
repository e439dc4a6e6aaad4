"""A method defined outside the package, the way a third party (or the coming NeRF) adds one: a
"sky box" whose colour depends only on the viewing direction (a small MLP per pixel ray), trained
by splatkit's loop on rays it renders itself. Nothing in it is Gaussian, so training, resuming,
evaluating and rendering it through the CLI shows the loop and the run tools name no
representation. ``tests/test_methods.py`` imports this module, which registers the method.
"""

from __future__ import annotations

import torch

from splatkit.methods import register_method
from splatkit.methods.base import Method, RenderOutputs

FORMAT = "toy-skybox"


class SkyboxModel(torch.nn.Module):
    """Colour = MLP(unit ray direction); opaque everywhere, expected depth 1."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))

    @property
    def num_primitives(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def render(self, viewmats, Ks, width, height, *, backgrounds=None, render_mode="RGB", near_plane=0.01,
               far_plane=1e10, backend="auto", **_):
        C = viewmats.shape[0]
        ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                                torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
        pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).to(viewmats.device)  # [H, W, 3]
        cam_dirs = pix @ torch.linalg.inv(Ks).transpose(-1, -2)[:, None]  # [C, H, W, 3]
        rot = torch.linalg.inv(viewmats)[:, :3, :3]  # camera-to-world rotation
        dirs = torch.nn.functional.normalize(torch.einsum("chwj,cij->chwi", cam_dirs, rot), dim=-1)
        rgb = torch.sigmoid(self.mlp(dirs))
        alphas = torch.ones(C, height, width, 1, device=viewmats.device)
        if render_mode in ("RGB+D", "RGB+ED"):
            rgb = torch.cat([rgb, torch.ones_like(alphas)], dim=-1)
        return rgb, alphas, {"rays": C * height * width}


@register_method
class ToySkybox(Method):
    name = "toy-skybox"
    checkpoint_format = FORMAT

    def initialize(self, scene, *, scene_scale: float) -> str:
        self.model = SkyboxModel().to(self.device)  # seeded by the loop (torch.manual_seed)
        return "a direction MLP"

    def restore(self, payload: dict, *, scene_scale: float) -> None:
        self.model = self.load_model(payload, map_location=self.device)

    def build_optimizers(self) -> None:
        self.optimizers = {"mlp": torch.optim.Adam(self.model.parameters(), lr=1e-2)}

    def load_training_state(self, state: dict) -> None:
        self.optimizers["mlp"].load_state_dict(state["optimizers"]["mlp"])

    def training_state(self) -> dict:
        return {"optimizers": {"mlp": self.optimizers["mlp"].state_dict()}}

    def render(self, viewmats, Ks, width, height, backgrounds, *, with_depth=True, step=None) -> RenderOutputs:
        renders, alphas, meta = self.model.render(viewmats, Ks, width, height,
                                                  render_mode="RGB+ED" if with_depth else "RGB")
        return RenderOutputs(colors=renders[..., :3], alphas=alphas, meta=meta,
                             depths=renders[..., 3:4] if with_depth else None)

    def render_train(self, step, batch, *, with_depth, param_hooks=()) -> RenderOutputs:
        return self.render(batch.viewmats, batch.Ks, batch.width, batch.height, batch.backgrounds,
                           with_depth=with_depth, step=step)

    def optimizer_step(self, step, outputs) -> None:
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)

    @property
    def num_primitives(self) -> int:
        return self.model.num_primitives

    def named_tensors(self) -> dict:
        return dict(self.model.named_parameters())

    def checkpoint_payload(self, step, normalization) -> dict:
        return {"step": int(step), "splatkit": self.metadata(normalization),
                "state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def eval_model(self):
        return self.model

    @classmethod
    def load_model(cls, payload, map_location="cpu", raw=False):
        model = SkyboxModel()
        model.load_state_dict(payload["state"])
        return model.to(map_location)
