"""``splatkit benchmark`` executors: the local process pool (``--jobs``) and Ray (``--executor ray``,
against a local Ray instance when Ray is installed) give the same figures as one run at a time, and
a restarted sweep reuses finished runs whichever executor wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splatkit.errors import SplatkitError
from splatkit.eval.benchmark import BenchmarkSpec, default_jobs, run_benchmark


def _spec(out: Path, root: Path, **kw) -> BenchmarkSpec:
    return BenchmarkSpec(suite="synthetic", out=out, root=root, views=3, scans=["1"], seeds=2, methods=["default"],
                         steps=4, synthetic_size=(48, 36), quiet=True,
                         overrides={"init_num_points": 300, "checkpoint_every": 0, "preview_every": 0}, **kw)


def _figures(result: dict) -> list:
    return [(r["scene"], r["method"], r["seed"], r["mean"]) for r in result["runs"]]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The sweep run one run at a time (the reference)."""
    base = tmp_path_factory.mktemp("bench")
    return base, run_benchmark(_spec(base / "serial", base / "scenes", jobs=1))


def test_process_pool_matches_serial_and_a_restart_reuses_runs(serial, capsys):
    base, ref = serial
    out = base / "pool"
    pooled = run_benchmark(_spec(out, base / "scenes", jobs=2))
    assert _figures(pooled) == _figures(ref) and not any(r["reused"] for r in pooled["runs"])
    # Restarted after one run was lost: the other is reused, the lost one trained again, same figures.
    lost = Path(pooled["runs"][1]["run"])
    (lost / "metrics.json").unlink()
    again = run_benchmark(_spec(out, base / "scenes", jobs=2))
    assert [r["reused"] for r in again["runs"]] == [True, False]
    assert _figures(again) == _figures(ref)
    agg = json.loads((out / "results.json").read_text())["aggregate"]
    assert agg["per_scene"] == ref["aggregate"]["per_scene"]  # (train times differ, figures do not)
    assert agg["methods"]["default"]["masked_psnr"] == ref["aggregate"]["methods"]["default"]["masked_psnr"]


@pytest.mark.parametrize("change, named", [({"steps": 5}, "steps: 4 in the run, 5 asked"),
                                            ({"overrides": {"init_num_points": 200}}, "init_num_points: 300")])
def test_a_finished_run_of_other_settings_is_not_reused(serial, change, named):
    """Started again into the same folder with other --steps or --set values, the benchmark names the
    difference instead of reporting the old runs as the new ones."""
    base, _ = serial
    spec = _spec(base / "serial", base / "scenes", jobs=1)
    spec.steps = change.get("steps", spec.steps)
    spec.overrides = {**spec.overrides, **change.get("overrides", {})}
    with pytest.raises(SplatkitError, match="finished run of another benchmark") as err:
        run_benchmark(spec)
    assert named in str(err.value) and "--out" in str(err.value)


def test_ray_executor_matches_serial_on_a_local_instance(serial):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'splatkit[ray]')")
    base, ref = serial
    out = base / "ray"
    result = run_benchmark(_spec(out, base / "scenes", executor="ray"))
    assert _figures(result) == _figures(ref)
    assert all(Path(p).is_file() for r in result["runs"] for p in r["images"])
    # A sweep the local executor finished is reused by Ray (and the other way round).
    again = run_benchmark(_spec(out, base / "scenes", jobs=1))
    assert all(r["reused"] for r in again["runs"]) and _figures(again) == _figures(ref)


def test_ray_missing_is_a_one_line_error(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from splatkit.eval.benchmark import _run_ray

    with pytest.raises(SplatkitError, match=r"pip install 'splatkit\[ray\]'"):
        _run_ray(_spec(tmp_path, tmp_path, executor="ray"), [])


@pytest.mark.parametrize("kw, match", [({"jobs": 0}, "--jobs"), ({"executor": "dask"}, "unknown executor"),
                                       ({"address": "auto"}, "--executor ray"),
                                       ({"executor": "ray", "jobs": 2}, "--jobs sizes the local")])
def test_bad_executor_options(tmp_path, kw, match):
    with pytest.raises(SplatkitError, match=match):
        run_benchmark(_spec(tmp_path / "o", tmp_path / "s", **kw))


def test_default_jobs_on_a_cpu():
    assert default_jobs("cpu") == 1
