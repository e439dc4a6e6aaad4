"""The split files against the published protocol ids, and the benchmark's averaging arithmetic."""

import json
from pathlib import Path

import pytest

from splatkit.errors import SplatkitError
from splatkit.eval.benchmark import aggregate, markdown_table, primary_metrics
from splatkit.eval.protocols import SPLITS_DIR, dtu_protocol, llff_protocol

# pixelNeRF / RegNeRF DTU protocol, as the issue states it.
DTU_TEST_SCANS = [8, 21, 30, 31, 34, 38, 40, 41, 45, 55, 63, 82, 103, 110, 114]
DTU_TRAIN = [25, 22, 28, 40, 44, 48, 0, 8, 13]
DTU_EXCLUDED = [3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39]


def test_dtu_split_file_matches_the_protocol():
    p = dtu_protocol()
    assert list(p.test_scans) == DTU_TEST_SCANS
    assert p.train_views(3) == [25, 22, 28]
    assert p.train_views(6) == [25, 22, 28, 40, 44, 48]
    assert p.train_views(9) == DTU_TRAIN
    test = p.test_views()
    assert test == [i for i in range(49) if i not in DTU_TRAIN + DTU_EXCLUDED]
    assert len(test) == 25 and test[:4] == [1, 2, 9, 10] and test[-3:] == [45, 46, 47]
    assert p.image_size == (400, 300) and p.downscale == 4 and p.light == 3
    # Other counts (GaussianObject's 4 views) are the first k of the same order, with a warning.
    with pytest.warns(UserWarning, match="not one of the DTU protocol's published counts.*25, 22, 28, 40"):
        assert p.train_views(4) == [25, 22, 28, 40]
    with pytest.raises(SplatkitError, match="cannot train on 10"):
        p.train_views(10)


def test_llff_split_rule():
    p = llff_protocol()
    assert p.test_every == 8 and p.downscale == 8 and "fern" in p.scenes
    # fern has 20 images: test 0, 8, 16; the other 17 picked by round(linspace(0, 16, k)).
    train, test = p.split(20, 3)
    assert test == [0, 8, 16]
    rest = [i for i in range(20) if i not in test]
    assert train == [rest[0], rest[8], rest[16]]
    train9, _ = p.split(20, 9)
    assert train9 == [rest[j] for j in (0, 2, 4, 6, 8, 10, 12, 14, 16)]
    # Python's round is half-to-even, as in RegNeRF: 5 left, k=3 -> linspace(0, 4, 3) = 0, 2, 4.
    assert p.split(6, 3) == ([1, 3, 5], [0])
    with pytest.raises(SplatkitError):
        p.split(4, 5)


def test_split_files_are_plain_json():
    for name in ("dtu.json", "llff.json"):
        json.loads((SPLITS_DIR / name).read_text())


def _rec(scene, method, seed, psnr, ssim=None):
    mean = {"masked_psnr": psnr, "masked_ssim": ssim, "masked_lpips": None, "psnr": psnr - 5}
    return {"scene": scene, "method": method, "seed": seed, "mean": mean, "train_time_s": 10.0}


def test_aggregate_means_scenes_then_seeds():
    recs = [_rec("a", "m", 0, 20.0, 0.8), _rec("b", "m", 0, 22.0, 0.9),
            _rec("a", "m", 1, 24.0, 0.7), _rec("b", "m", 1, 26.0, 0.6)]
    assert primary_metrics(recs) == ["masked_psnr", "masked_ssim"]  # masked wins, LPIPS absent
    agg = aggregate(recs, ["m"])
    # seed 0: mean(20, 22) = 21; seed 1: mean(24, 26) = 25 -> 23 ± 2 (population std over seeds).
    assert agg["methods"]["m"]["masked_psnr"] == {"mean": 23.0, "std": 2.0, "seeds": 2}
    assert agg["methods"]["m"]["masked_ssim"]["mean"] == pytest.approx(0.75)
    assert agg["per_scene"]["a"]["m"]["masked_psnr"] == {"mean": 22.0, "std": 2.0}
    table = markdown_table({"aggregate": agg, "spec": {"suite": "synthetic", "views": 3, "seeds": 2},
                            "lpips_unavailable": "lpips is not installed"})
    assert "23.00 ± 2.00" in table and "22.00 ± 2.00" in table and "not computed" in table


def test_aggregate_ignores_a_seed_missing_a_scene():
    recs = [_rec("a", "m", 0, 20.0), _rec("b", "m", 0, 22.0), _rec("a", "m", 1, 30.0)]
    agg = aggregate(recs, ["m"])
    assert agg["methods"]["m"]["masked_psnr"] == {"mean": 21.0, "std": 0.0, "seeds": 1}


def test_benchmark_synthetic_suite_end_to_end(tmp_path):
    """``splatkit benchmark --suite synthetic`` on a tiny scene: both methods train on the DTU ids,
    the depth-prior method reads the degraded inverse-depth priors, results and pictures are written."""
    import numpy as np

    from splatkit.cli.main import main
    from splatkit.data.depth_io import read_depth_file

    out = tmp_path / "bench"
    assert main(["benchmark", "--suite", "synthetic", "--scans", "1", "--views", "3", "--size", "48x36",
                 "--steps", "4", "--methods", "default,sparse", "--out", str(out), "--root", str(tmp_path / "s"),
                 "--quiet", "--set", "init_num_points=300", "checkpoint_every=0", "preview_every=0"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert [(r["scene"], r["method"]) for r in result["runs"]] == [("object1", "default"), ("object1", "sparse")]
    proto = dtu_protocol()
    for r in result["runs"]:
        split = json.loads((Path(r["run"]) / "split.json").read_text())
        assert split == {"train": [25, 22, 28], "test": proto.test_views()}
        assert r["mean"]["masked_psnr"] > 5 and len(r["images"]) == 3
        assert all(Path(p).is_file() for p in r["images"])
    cfg_default = json.loads((Path(result["runs"][0]["run"]) / "config.json").read_text())
    cfg_sparse = json.loads((Path(result["runs"][1]["run"]) / "config.json").read_text())
    assert cfg_default["depth_prior"] == "none"
    assert cfg_sparse["depth_prior"] == "files" and cfg_sparse["depth_prior_kind"] == "inverse"
    log = [json.loads(line) for line in (Path(result["runs"][1]["run"]) / "train_log.jsonl").read_text().splitlines()]
    assert "depth_ranking" in log[-1] and "depth_continuity" in log[-1]
    # The priors are monocular-like: inverse depth, so nearer surfaces have larger values.
    scene = tmp_path / "s" / "object1_48x36"
    gt = np.load(scene / "depth" / "000025.npy")
    prior = read_depth_file(scene / "depth_prior" / "000025.png")
    near, far = gt == gt[gt > 0].min(), gt == gt.max()
    assert prior[near].mean() > prior[far].mean()
    md = (out / "results.md").read_text()
    assert "| `default` |" in md and "| `sparse` |" in md


def test_depth_losses_without_a_prior_are_left_out_with_a_warning():
    from splatkit.train.config import resolve_config
    from splatkit.methods.plugins import enabled_plugin_names as regularizer_names

    with pytest.warns(UserWarning, match="depth losses depth_ranking, depth_continuity are off"):
        names = regularizer_names(resolve_config({}, preset="sparse"))
    assert names == ["opacity_decay", "warp_consistency", "dropout", "dark_backdrop"]
    with pytest.warns(UserWarning, match="not used"):
        assert regularizer_names(resolve_config({"depth_prior": "files"})) == []
