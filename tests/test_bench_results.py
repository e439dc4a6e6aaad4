"""The per-run ledger behind the benchmark tables (docs/results/): records survive, tables rebuild."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_sparse_real  # noqa: E402
import benchdoc  # noqa: E402


def test_record_result_adds_replaces_and_keeps_others(tmp_path, monkeypatch):
    monkeypatch.setattr(benchdoc, "RESULTS", tmp_path / "results")
    assert benchdoc.load_results("demo") == {}
    benchdoc.record_result("demo", "3v/3000/b/all/seed0", {"mean": {"psnr": 20.0}})
    benchdoc.record_result("demo", "3v/3000/a/all/seed0", {"mean": {"psnr": 18.0}})
    ledger = benchdoc.record_result("demo", "3v/3000/b/all/seed0", {"mean": {"psnr": 21.0}})
    assert list(ledger) == ["3v/3000/a/all/seed0", "3v/3000/b/all/seed0"]
    assert ledger["3v/3000/b/all/seed0"]["mean"] == {"psnr": 21.0}
    assert "recorded" in ledger["3v/3000/b/all/seed0"]
    assert ledger["3v/3000/b/all/seed0"]["machine"] == benchdoc.cpu_model()  # where its times come from
    on_disk = json.loads((tmp_path / "results" / "demo.json").read_text())
    assert on_disk == ledger == benchdoc.load_results("demo")


def test_table_header_counts_the_runs_by_the_machine_that_trained_them():
    results = {("fern", "all"): [{"machine": "CPU A"}, {"machine": "CPU A"}, {"machine": None}],
               ("fern", "plain"): [{"machine": "CPU B"}]}
    assert bench_sparse_real.runs_by_machine(results) == (
        "Runs: 2 on CPU A; 1 on CPU B; 1 recorded before the ledger named the machine.")
    assert bench_sparse_real.runs_by_machine({}) == ""


def _doc_section(section: str) -> str:
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    match = re.search(f"<!-- {section}:start -->(.*?)<!-- {section}:end -->", doc, flags=re.S)
    if match is None:
        pytest.skip(f"no {section} section in docs/benchmarks.md")
    return match.group(1)


def _doc_rows(section: str) -> dict[str, list[str]]:
    return _variant_rows(_doc_section(section))


def _variant_rows(text: str) -> dict[str, list[str]]:
    """A table's rows keyed by their `variant` cell."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def _paired_rows(text: str) -> dict[str, list[str]]:
    """The ablation table's rows (``+a vs plain``, ``all-a(+b) vs all(+b)``) keyed by their first cell."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and re.fullmatch(r"\S+ vs (plain|all\S*)", cells[0]):
            rows[cells[0]] = cells[1:]
    return rows


def _assert_same_cells(documented_rows, rebuilt_rows, tolerance: float, skip_last: bool):
    number = re.compile(r"[-+]?\d+\.\d+")
    assert set(documented_rows) <= set(rebuilt_rows), set(documented_rows) - set(rebuilt_rows)
    for row, cells in documented_rows.items():
        ours_cells = rebuilt_rows[row]
        if skip_last:  # minutes per run: the row's mean over whatever timing each entry kept
            cells, ours_cells = cells[:-1], ours_cells[:-1]
        assert len(cells) == len(ours_cells), (row, cells, ours_cells)
        for documented, ours in zip(cells, ours_cells):
            a, b = number.findall(documented), number.findall(ours)
            assert len(a) == len(b), (row, documented, ours)
            assert all(abs(float(x) - float(y)) <= tolerance for x, y in zip(a, b)), (row, documented, ours)
            assert re.findall(r"\[(\d+)\]", documented) == re.findall(r"\[(\d+)\]", ours), (row, documented, ours)


@pytest.mark.parametrize("views", [3, 6, 9])
def test_committed_ledger_rebuilds_the_documented_tables(views):
    """The docs' sparse_real tables are what the committed ledger says (within the last digit's
    rounding: restored entries hold the table's 2-decimal values)."""
    section = bench_sparse_real.SECTION if views == 3 else f"{bench_sparse_real.SECTION}_{views}v"
    rows = _doc_rows(section)
    ledger = benchdoc.load_results(bench_sparse_real.SECTION)
    scenes = [s for s in bench_sparse_real.SCENES if any(k.startswith(f"{views}v/3000/{s}/") for k in ledger)]
    results: dict[tuple[str, str], list[dict]] = {}
    for key, entry in ledger.items():
        v, steps, scene, variant, seed = key.split("/")
        if v == f"{views}v" and steps == "3000":
            results.setdefault((scene, variant), []).append({**entry, "seed": int(seed.removeprefix("seed"))})
    assert results, f"nothing recorded for {views} views"
    args = types.SimpleNamespace(views=views, scenes=",".join(scenes), steps=3000, seeds="0,1,2", variants=None)
    text = bench_sparse_real.report(args, scenes, list(rows), results, None, 0)
    _assert_same_cells(rows, _variant_rows(text), 0.011, skip_last=True)
    # Differences of two restored 2-decimal values: twice the rounding.
    paired = _paired_rows(_doc_section(section))
    assert set(paired) == set(_paired_rows(text))
    _assert_same_cells(paired, _paired_rows(text), 0.021, skip_last=False)


def test_paired_ablation_rows_pair_by_seed():
    """``+a vs plain`` subtracts the same seed's plain run, ``all+b vs all`` the same seed's ``all``;
    a seed without its pair is left out."""
    results = {("scan65", "plain"): [{"mean": {"masked_psnr": 10.0}, "seed": 0}, {"mean": {"masked_psnr": 12.0}, "seed": 1}],
               ("scan65", "+mvs"): [{"mean": {"masked_psnr": 15.0}, "seed": 0}, {"mean": {"masked_psnr": 16.0}, "seed": 1},
                                    {"mean": {"masked_psnr": 30.0}, "seed": 2}],
               ("scan65", "all"): [{"mean": {"masked_psnr": 20.0}, "seed": 1}],
               ("scan65", "all-warp"): [{"mean": {"masked_psnr": 19.0}, "seed": 0}],
               ("scan65", "all+black_bg"): [{"mean": {"masked_psnr": 14.0}, "seed": 1}],
               ("scan65", "all-dropout+black_bg"): [{"mean": {"masked_psnr": 13.5}, "seed": 1}]}
    lines = bench_sparse_real.ablation_lines(["scan65"], ["plain", "+mvs", "all", "all-warp", "all+black_bg",
                                                          "all-dropout+black_bg"], results, {"scan65": "masked_psnr"})
    rows = _paired_rows("\n".join(lines))
    # all-warp's seed 0 has no `all` to pair with; a removal under other settings pairs with them.
    assert rows == {"+mvs vs plain": ["+4.50 ± 0.50 [2]"], "all+black_bg vs all": ["-6.00 [1]"],
                    "all-dropout+black_bg vs all+black_bg": ["-0.50 [1]"]}


def test_coverage_hull_queries_match_a_box():
    """dtu_coverage's ray queries on a grid holding one axis-aligned box: the first hit is the face
    the ray enters by (within a half-voxel step), and a point behind the box is blocked from a
    camera in front of it but not from one beside it."""
    import numpy as np
    from dtu_coverage import Hull

    R = 40
    lo, hi = np.zeros(3), np.ones(3)
    ijk = np.stack(np.meshgrid(*[np.arange(R)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (ijk + 0.5) / R
    in_box = np.all((centres > 0.4) & (centres < 0.6), axis=1)
    hull = Hull(ijk[in_box, 0] + R * ijk[in_box, 1] + R * R * ijk[in_box, 2], lo, hi, R)
    o = np.array([[0.5, 0.5, -1.0], [0.45, 0.55, 2.0], [0.1, 0.1, -1.0]])
    d = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    hit = hull.first_hit(o, d)
    assert abs(hit[0, 2] - 0.4) <= 0.5 / R + 1e-9 and abs(hit[1, 2] - 0.6) <= 0.5 / R + 1e-9
    assert np.isnan(hit[2]).all()  # misses the box
    behind = np.array([[0.5, 0.5, 0.9]])
    assert hull.blocked(behind, np.array([0.5, 0.5, -2.0]))[0]
    assert not hull.blocked(behind, np.array([3.0, 0.5, 0.9]))[0]


def test_error_anatomy_gain_offset_fit_undoes_a_colour_change_and_blur_keeps_flat_regions():
    """dtu_coverage's split of a run's error: an image off by a per-channel gain and offset is fitted
    back exactly on the mask; a flat image stays flat under the blur."""
    import numpy as np
    from dtu_coverage import _blur, _gain_offset_fit, _psnr

    rng = np.random.default_rng(0)
    gt = rng.uniform(0.2, 0.8, (24, 32, 3))
    mask = np.zeros((24, 32), bool)
    mask[4:20, 6:26] = True
    pred = gt * np.array([0.8, 1.1, 0.9]) + np.array([0.05, -0.03, 0.02])
    assert _psnr(pred, gt, mask) < 30
    assert _psnr(_gain_offset_fit(pred, gt, mask), gt, mask) > 80
    flat = np.full((24, 32, 3), 0.3)
    assert np.allclose(_blur(flat), flat)


def test_hollow_ledger_rebuilds_the_documented_hollow_tables():
    """Every HollowNeRF section that names its ledger settings is what those rows summarise."""
    import bench_nerf_hollow

    ledger = benchdoc.load_results(bench_nerf_hollow.LEDGER)
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    sections = re.findall(r"<!-- (bench_nerf_hollow\w*):start -->(.*?)<!-- \1:end -->", doc, flags=re.S)
    checked = 0
    for name, text in sections:
        named = re.search(r"bench_nerf_hollow\.json`, settings `([^`]+)`", text)
        if named is None:
            continue  # written before the ledger
        settings = named.group(1)
        rows = [r for k, r in ledger.items() if k.startswith(settings + "/")]
        assert rows, f"{name}: the ledger has no rows with settings {settings}"
        _, table, _, _ = bench_nerf_hollow.summarize(rows, gpu=settings.startswith("cuda/"))
        documented = [line for line in text.splitlines() if line.startswith("| 2^")]
        assert documented == table, name
        checked += 1
    if not checked:
        pytest.skip("no HollowNeRF section written from the ledger yet")


def test_bench_repair_tags_name_one_folder():
    import bench_repair

    assert bench_repair.tag_value("additive") == "additive"
    assert bench_repair.tag_value(0) == "0"
    assert bench_repair.tag_value("ours:outputs/repair_pretrain/unet_fit1000.safetensors") == "ours-unet_fit1000"
    assert bench_repair.tag_value("ours:w.safetensors") == "ours-w"
    assert "/" not in bench_repair.tag_value("a/b")


def test_bench_repair_lengths_and_settings_get_their_own_run_folders(tmp_path):
    import bench_repair

    default = bench_repair.run_folder(tmp_path, 3, 1000, "")
    assert default == tmp_path / "3v"
    longer = bench_repair.run_folder(tmp_path, 3, 3000, "")
    tagged = bench_repair.run_folder(tmp_path, 3, 3000, bench_repair.setting_tag(["mix=additive", "tune_steps=0"]))
    assert len({default, longer, tagged}) == 3 and tagged == longer / "mix-additive_tune_steps-0"
    assert bench_repair.repair_settings(["tune_steps=0", "mix=additive"]) == {"tune_steps": 0, "mix": "additive"}


def test_bench_repair_reads_settings_as_the_runs_use_them():
    import bench_repair

    # The preset skips the per-scene fine-tune; --set overrides it; unset keys fall to the plugin's default.
    assert bench_repair.effective_setting([], "tune_steps") == 0
    assert bench_repair.effective_setting(["tune_steps=300"], "tune_steps") == 300
    assert bench_repair.effective_setting([], "mix") == "gaussian_object"
    assert bench_repair.effective_setting(["mix=additive"], "mix") == "additive"


def test_run_cli_times_a_child_run_and_reports_failure(scene_dir, tmp_path):
    """The benchmark scripts' launcher: a `splatkit train` child (torch loaded first, as the OpenMP
    benchmark launches libgomp's default), its own usage, summary and config; a failing command raises."""
    import subprocess

    import bench_cpu_sharing

    out = tmp_path / "run"
    env = benchdoc.child_env({"OMP_NUM_THREADS": "1"})
    assert not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SPLATKIT_CPU_THREADS"} & set(env)
    r = benchdoc.run_cli(["--data", str(scene_dir), "--preset", "fast", "--steps", "4", "--set", "log_every=2"],
                         out, env=env, torch_first=True)
    assert r["summary"]["step"] == 4 and r["config"]["steps"] == 4 and r["run"] == out
    assert 0 < r["cpu"] and 0 < r["wall"] and 0.05 < r["peak_rss_gb"] < 16
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    first, last = log[0], log[-1]
    assert bench_cpu_sharing.log_rate(out) == pytest.approx((last["step"] - first["step"])
                                                            / (last["elapsed_s"] - first["elapsed_s"]))
    with pytest.raises(subprocess.CalledProcessError):
        benchdoc.run_cli(["--data", str(tmp_path / "missing")], tmp_path / "bad")
