"""HollowNeRF pruning (``--set hollow=true``, :mod:`splatkit.models.hollow`): gradients of the
saliency path, the fused C++ hash encoding with the saliency mask against the PyTorch reference,
the ADMM pruner on a toy problem, pruned voxels in the occupancy grid, rows dropped at export,
exact resume and config errors."""

from __future__ import annotations

import json

import pytest
import torch

from splatkit.errors import SplatkitError
from splatkit.models import hollow
from splatkit.models.hashgrid import HashGrid, HashGridConfig, _corners
from splatkit.models.nerf_field import NerfConfig, NerfModel
from splatkit.render import nerf_cpu_backend

# test_nerf.py's tiny NeRF (seconds per run on the 48x36 scene).
TINY_VALUES = {"nerf_rays": 256, "nerf_log2_hashmap_size": 12, "nerf_levels": 4, "nerf_max_resolution": 64,
               "nerf_occ_resolution": 16, "nerf_occ_every": 4, "nerf_march_steps": 128, "checkpoint_every": 8,
               "keep_checkpoints": 0, "log_every": 4, "preview_every": 0}

needs_kernels = pytest.mark.skipif(nerf_cpu_backend.unavailable_reason() is not None,
                                   reason=f"NeRF C++ kernels unavailable: {nerf_cpu_backend.unavailable_reason()}")


def test_saliency_path_gradients_match_finite_differences():
    from splatkit.models.hashgrid import _HashGridFunction

    torch.manual_seed(0)
    logits = (torch.randn(5, 5, 5, dtype=torch.float64) * 2).requires_grad_()
    grid = HashGrid(HashGridConfig(n_levels=2, log2_hashmap_size=6, base_resolution=2, max_resolution=9,
                                   init_scale=0.5)).double()
    table = grid.table.detach().clone().requires_grad_()
    u = torch.rand(40, 3, dtype=torch.float64)

    def saliency(logits):  # p = sigmoid(trilinear(G, u))
        return torch.sigmoid(hollow.trilinear(logits, u))

    assert torch.autograd.gradcheck(saliency, (logits,), eps=1e-6, atol=1e-6)

    def features(table):
        return _HashGridFunction.apply(u, table, grid._get_plan(), 1024)

    def field(logits, table):  # v = p f: what the density MLP sees
        return features(table) * saliency(logits)[:, None]

    assert torch.autograd.gradcheck(field, (logits, table), eps=1e-6, atol=1e-5)
    # The gate: the paper's value tanh(alpha ||v||); its gradient reaches p as if f were constant ...
    f0 = features(table).detach()

    def gate_of_saliency(logits):
        p = saliency(logits)
        return hollow.zero_skip_gate(f0 * p[:, None], p, 3.0)

    assert torch.autograd.gradcheck(gate_of_saliency, (logits,), eps=1e-6, atol=1e-5)
    p0 = saliency(logits.detach())
    torch.testing.assert_close(hollow.zero_skip_gate(f0 * p0[:, None], p0, 3.0),
                               torch.tanh(3.0 * torch.linalg.vector_norm(f0 * p0[:, None], dim=-1)))
    # ... and never the hash table.
    p1 = saliency(logits)
    (g_table,) = torch.autograd.grad(hollow.zero_skip_gate(field(logits, table), p1, 3.0).sum(), table,
                                     allow_unused=True)
    assert g_table is None or torch.equal(g_table, torch.zeros_like(g_table))
    # The module is that function of its parameter.
    sal = hollow.SaliencyGrid(5).double()
    sal.logits.data.copy_(logits.detach())
    p, keep = sal(u)
    torch.testing.assert_close(p, saliency(logits.detach()))
    assert torch.equal(keep, p >= sal.threshold)
    # The ADMM terms and the gate at v = 0 (zero, with a zero subgradient).
    m = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: hollow.admm_penalty(m, torch.tensor(0.7), 0.1, 2.0), (m,))
    p_pruned = torch.tensor([0.5, 1e-3, 0.0], requires_grad=True)
    g = hollow.zero_skip_gate(torch.zeros(3, 4), p_pruned, 1e5)
    assert torch.equal(g, torch.zeros(3))
    (gp,) = torch.autograd.grad(g.sum(), p_pruned)
    assert torch.equal(gp, torch.zeros(3))


@needs_kernels
def test_kernel_with_saliency_mask_matches_the_reference_values_and_gradients():
    grid = HashGrid(HashGridConfig(n_levels=6, log2_hashmap_size=10, base_resolution=4, max_resolution=300,
                                   init_scale=0.5))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3000, 3, generator=g)
    p = torch.rand(3000, generator=g).requires_grad_()
    keep = torch.rand(3000, generator=g) > 0.4
    scale = p * keep
    ref = grid(x) * scale[:, None]  # the reference: every sample looked up, then scaled
    out = nerf_cpu_backend.hash_encode(grid, x, keep, scale)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[~keep], torch.zeros_like(out[~keep]))
    w = torch.randn(ref.shape, generator=g)
    gr = torch.autograd.grad((ref * w).sum(), (grid.table, p))
    gk = torch.autograd.grad((nerf_cpu_backend.hash_encode(grid, x, keep, p * keep) * w).sum(), (grid.table, p))
    torch.testing.assert_close(gk[0], gr[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gk[1], gr[1], rtol=1e-4, atol=1e-5)
    assert torch.equal(gk[1][~keep], torch.zeros(int((~keep).sum())))
    # Masked samples touch no rows: the table gradient equals that of the kept samples alone.
    (gt_kept,) = torch.autograd.grad((nerf_cpu_backend.hash_encode(grid, x[keep], None, p[keep]) * w[keep]).sum(),
                                     grid.table)
    torch.testing.assert_close(gk[0], gt_kept, rtol=1e-5, atol=1e-7)
    # Deterministic: the same bits on 1 and 2 threads, and run to run.
    from splatkit.render.cpu_backend import set_kernel_threads

    grads = []
    for n in (1, 2, 2):
        set_kernel_threads(n)
        try:
            grads.append(torch.autograd.grad((nerf_cpu_backend.hash_encode(grid, x, keep, p * keep) * w).sum(),
                                             (grid.table, p)))
        finally:
            set_kernel_threads(None)
    assert all(torch.equal(grads[0][i], gg[i]) for gg in grads[1:] for i in (0, 1))


def test_admm_drives_the_saliency_mass_under_the_budget_on_a_toy_problem():
    """A toy "render loss" wants p = 1 at points in one corner (a tenth of the box); the ADMM
    pruner must bring the mean saliency from 0.5 under a budget about that size while the corner
    stays kept, and the far side falls under the keep threshold (pruned)."""
    torch.manual_seed(0)
    budget = 0.1
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(1000, 3, generator=g) * 0.45  # the corner [0, 0.45]^3

    def run(admm: bool):
        sal = hollow.SaliencyGrid(9)
        opt = torch.optim.Adam([sal.logits], lr=0.1)
        for _ in range(150):
            p, _ = sal(pts)
            loss = ((1 - p) ** 2).mean()
            if admm:
                loss = loss + hollow.admm_penalty(sal.mass(), sal.gamma, budget, rho=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if admm:
                hollow.dual_step(sal.gamma, sal.mass().detach(), budget, rho=1.0)
        return sal

    sal = run(True)
    with torch.no_grad():
        assert float(sal.mass()) <= budget * 1.02
        assert float(sal(pts)[0].mean()) > 0.85  # what the loss needs is kept
        far = torch.rand(500, 3, generator=g) * 0.3 + 0.7
        assert not bool(sal(far)[1].any())  # the empty far corner is pruned
    assert float(sal.gamma) > 0
    plain = run(False)
    with torch.no_grad():
        assert float(plain.mass()) > 0.45  # without the pruner nothing pushes the mass down


def test_decoupled_step_is_the_lagrangian_gradient_per_logit_applied_beside_adam():
    """``decoupled_step`` moves each logit by ``lr`` times the augmented Lagrangian's gradient with
    the mass as a sum (T^3 x the paper's mean), and does nothing while gamma = 0 and the mass is
    under the budget."""
    torch.manual_seed(0)
    sal = hollow.SaliencyGrid(5)
    with torch.no_grad():
        sal.logits.normal_(0, 2)
        sal.gamma.fill_(0.7)
    before = sal.logits.detach().clone()
    budget, rho, lr = 0.2, 0.05, 0.1
    penalty = hollow.admm_penalty(sal.mass(), sal.gamma, budget, rho) * sal.logits.numel()
    (grad,) = torch.autograd.grad(penalty, sal.logits)
    hollow.decoupled_step(sal, lr, budget, rho)
    torch.testing.assert_close(sal.logits.detach(), before - lr * grad)
    with torch.no_grad():
        sal.gamma.zero_()
        sal.logits.fill_(-3.0)  # mass 0.047 < budget
    hollow.decoupled_step(sal, lr, budget, rho)
    assert bool((sal.logits == -3.0).all())


def test_decoupled_solver_keeps_what_a_weak_render_signal_asks_for():
    """The reason for ``hollow_solver=decoupled``: the real render loss's gradients on the logits are
    ~1e-9. Scaled down like that, the toy loss still keeps its corner with the pruner beside Adam
    (Adam normalises the weak signal, the pull stays outside), while inside Adam the Lagrangian
    swamps it and the corner is squeezed with the rest."""
    budget = 0.2  # the corner's points read ~17% of a 9^3 grid's values
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(1000, 3, generator=g) * 0.45

    def run(solver: str):
        sal = hollow.SaliencyGrid(9)
        opt = torch.optim.Adam([sal.logits], lr=0.1, eps=1e-15)
        rho = hollow.RHO_BY_SOLVER[solver] * 10  # a 300-step toy: faster dual ascent
        for _ in range(300):
            p, _ = sal(pts)
            loss = 1e-7 * ((1 - p) ** 2).mean()
            if solver == "adam":
                loss = loss + hollow.admm_penalty(sal.mass(), sal.gamma, budget, rho)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if solver == "decoupled":
                hollow.decoupled_step(sal, 0.1, budget, rho)
            hollow.dual_step(sal.gamma, sal.mass().detach(), budget, rho)
        return sal

    far = torch.rand(500, 3, generator=g) * 0.3 + 0.7
    dec, coupled = run("decoupled"), run("adam")
    with torch.no_grad():
        assert float(dec.mass()) <= budget
        assert float(dec(pts)[0].mean()) > 0.9  # kept
        assert float(dec(far)[0].mean()) < 0.05  # pulled down
        assert float(coupled(pts)[0].mean()) < 0.1  # squeezed with everything else
        assert abs(float(coupled(pts)[0].mean()) - float(coupled(far)[0].mean())) < 0.02


def _hollow_model(res: int = 8, impl: str = "auto") -> NerfModel:
    cfg = NerfConfig(aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], grid=HashGridConfig(
        n_levels=4, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, max_resolution=96),
        occ_resolution=16, march_steps=128, hollow_resolution=res)
    torch.manual_seed(0)
    model = NerfModel(cfg)
    model.impl = impl
    with torch.no_grad():
        model.field.grid.table.normal_(0, 1.0)
        model.field.density_mlp[-1].bias[0] += 2.0  # something to see
        model.estimator.binaries.fill_(True)
        # Keep the cells around a ball in the middle, prune the rest.
        S = res
        idx = torch.stack(torch.meshgrid(*(torch.arange(S),) * 3, indexing="ij"), -1).float() / (S - 1)
        inside = ((idx - 0.5).norm(dim=-1) < 0.3)
        model.field.saliency.logits.copy_(torch.where(inside, torch.tensor(4.0), torch.tensor(-9.0)))
    return model


def _cams(n: int = 2):
    eye = torch.tensor([[0.0, 0.0, -3.0], [2.5, 0.5, -1.5]])[:n]
    mats = []
    for e in eye:
        z = -e / e.norm()
        x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), z)
        x = x / x.norm()
        y = torch.linalg.cross(z, x)
        c2w = torch.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, e
        mats.append(torch.linalg.inv(c2w))
    K = torch.tensor([[40.0, 0, 24], [0, 40, 18], [0, 0, 1]]).expand(n, 3, 3)
    return torch.stack(mats), K


def test_pruned_voxels_leave_the_occupancy_grid_fewer_samples_same_pictures():
    model = _hollow_model()
    vm, K = _cams()
    before = model.render(vm, K, 48, 36, render_mode="RGB+ED")
    from splatkit.models.nerf_field import camera_rays

    o, d, _ = camera_rays(vm, K, 48, 36)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    n_before = model.march(o, d, *model.segments(o, d)).ray_indices.numel()
    model.prune_occupancy()
    n_after = model.march(o, d, *model.segments(o, d)).ray_indices.numel()
    assert float(model.estimator.binaries.float().mean()) < 0.4
    assert n_after < 0.5 * n_before  # fewer marched samples ...
    after = model.render(vm, K, 48, 36, render_mode="RGB+ED")
    assert float(before[1].mean()) > 0.05  # (something to see)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-5)  # ... the same pictures
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=1e-5)
    # The training pass (occupancy update every n steps) ANDs them in as well.
    model.estimator.binaries.fill_(True)
    model.update_occupancy(0, every=1, warmup_steps=0)
    assert bool((model.estimator.binaries <= hollow.occupancy_keep(
        model.field.saliency, model.field.aabb, model.estimator.aabbs, (16, 16, 16))).all())


def test_export_drops_rows_only_pruned_cells_reach_and_renders_the_same(tmp_path):
    model = _hollow_model()
    grid, sal = model.field.grid, model.field.saliency
    kept = sal.kept_cells()
    reached = hollow.reached_rows(grid, kept)
    # Every corner row of every point in a kept cell is reached (hashgrid's own corner rows).
    g = torch.Generator().manual_seed(3)
    cells = kept.nonzero()
    pick = cells[torch.randint(len(cells), (4000,), generator=g)]
    u = (pick + torch.rand(4000, 3, generator=g)) / kept.shape[0]
    rows, _, _ = _corners(u, grid._get_plan())
    assert bool(reached[rows.reshape(-1).long()].all())
    assert 0 < int(reached.sum()) < reached.numel()

    payload = model.to_payload(7, None, "nerf", compact=True)
    info = payload["compact_export"]
    assert info["table_rows"] == int(reached.sum()) < info["table_rows_total"]
    assert info["parameters"] < info["parameters_before"]
    torch.save(payload, tmp_path / "compact.pt")
    small = NerfModel.from_payload(torch.load(tmp_path / "compact.pt", weights_only=False))
    assert int((small.field.grid.table.abs().sum(1) > 0).sum()) <= info["table_rows"]
    vm, K = _cams()
    a = model.render(vm, K, 48, 36, render_mode="RGB+ED")
    b = small.render(vm, K, 48, 36, render_mode="RGB+ED")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # bit for bit
    # The reference (PyTorch) path renders the same as the kernels with the mask.
    model.impl = "torch"
    c = model.render(vm, K, 48, 36, render_mode="RGB+ED")
    torch.testing.assert_close(c[0], a[0], rtol=1e-3, atol=1e-3)


def test_hollow_run_resumes_exactly_and_reports_its_export(scene_dir, tmp_path):
    from splatkit.cli.main import main
    from splatkit.train import resolve_config
    from splatkit.train.trainer import Trainer
    values = {**TINY_VALUES, "hollow": True, "hollow_resolution": 12, "hollow_budget": 0.3}
    cli = ["--set", *(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items())]
    common = ["--data", str(scene_dir), "--method", "nerf", "--quiet", "--steps", "12", *cli]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["train", *common, "--out", str(ref)]) == 0

    def crash(trainer, step):
        if step == 10:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        Trainer(resolve_config({"data": scene_dir, "method": "nerf", "steps": 12, "out": run, **values}),
                quiet=True, callbacks=[crash]).train()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0

    def state(path):
        return torch.load(path, map_location="cpu", weights_only=False)

    a, b = state(ref / "checkpoints/ckpt_000012.pt"), state(run / "checkpoints/ckpt_000012.pt")
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert {"field.saliency.logits", "field.saliency.gamma", "field.saliency.alpha"} <= set(a["state"])
    assert float(a["state"]["field.saliency.gamma"]) > 0  # the ADMM dual variable is in the checkpoint
    opt_a = a["trainer"]["optimizers"]["field"]["state"]
    opt_b = b["trainer"]["optimizers"]["field"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert all("saliency_mass" in r and "hollow_admm" in r for r in log)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["compact_export"]["parameters"] <= summary["compact_export"]["parameters_before"]


def test_hollow_config_errors():
    from splatkit.train import resolve_config

    with pytest.raises(SplatkitError, match="needs --method nerf"):
        resolve_config({"method": "3dgs", "hollow": True})
    with pytest.raises(SplatkitError, match="hollow_budget"):
        resolve_config({"method": "nerf", "hollow": True, "hollow_budget": 1.5})
    with pytest.raises(SplatkitError, match="hollow_resolution"):
        resolve_config({"method": "nerf", "hollow": True, "hollow_resolution": 1})
    with pytest.raises(SplatkitError, match="hollow_rho"):
        resolve_config({"method": "nerf", "hollow": True, "hollow_rho": 0})
    with pytest.raises(SplatkitError, match="hollow_init"):
        resolve_config({"method": "nerf", "hollow": True, "hollow_init": 0.005})
    with pytest.raises(SplatkitError, match="hollow_solver"):
        resolve_config({"method": "nerf", "hollow": True, "hollow_solver": "sgd"})
    # hollow_rho's default depends on the solver; an explicit one is kept.
    assert resolve_config({"method": "nerf", "hollow": True}).hollow_rho == hollow.RHO
    assert resolve_config({"method": "nerf", "hollow": True, "hollow_solver": "decoupled"}).hollow_rho == \
        hollow.RHO_DECOUPLED
    assert resolve_config({"method": "nerf", "hollow": True, "hollow_solver": "decoupled",
                           "hollow_rho": 0.3}).hollow_rho == 0.3
    cfg = resolve_config({"method": "nerf", "hollow": True, "hollow_budget": 0.1})
    assert cfg.hollow and cfg.hollow_budget == 0.1 and cfg.hollow_resolution == hollow.RESOLUTION
    # hollow_init is the saliency everywhere at the start.
    from splatkit.methods.nerf import nerf_config

    cfg = resolve_config({"method": "nerf", "hollow": True, "hollow_init": 0.9, "hollow_resolution": 4})
    field = NerfModel(nerf_config(cfg, [-1, -1, -1, 1, 1, 1])).field
    torch.testing.assert_close(torch.sigmoid(field.saliency.logits), torch.full((4, 4, 4), 0.9))
