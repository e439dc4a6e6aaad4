"""A non-editable ``pip install`` outside the checkout ships everything splatkit reads at run time.

The presets (``configs/``), protocol split files (``data/splits/``) and C++ sources (``cuda/cpu/``)
live outside the ``splatkit/`` package; setup.py maps them into it (see
:mod:`splatkit.resources`). The slow test does what a user does: a fresh virtualenv, ``pip
install``, then ``splatkit data synthetic`` and ``splatkit train`` from an unrelated folder.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from. Copied, so that setuptools' build/ and egg-info go to tmp rather
# than into a checkout other test runs may be building from at the same time.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "splatkit", "configs", "data/splits", "cuda")


def test_resources_resolve_in_the_checkout():
    from splatkit import resources
    from splatkit.render.cpu_backend import SOURCES

    # No splatkit/_configs etc. in a checkout (or editable install): the top-level folders are used.
    assert resources.configs_dir() == REPO / "configs" and (REPO / "configs" / "sparse.json").is_file()
    assert resources.splits_dir() == REPO / "data" / "splits" and (REPO / "data" / "splits" / "dtu.json").is_file()
    assert resources.cpu_sources_dir() == REPO / "cuda" / "cpu"
    assert all((REPO / "cuda" / "cpu" / name).is_file() for name in SOURCES)


def _run(cmd, cwd, env, timeout=900) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.mark.slow
def test_pip_install_outside_the_checkout(tmp_path):
    src = tmp_path / "src"
    for name in BUILD_INPUTS:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kw = {"ignore": shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")} if (REPO / name).is_dir() else {}
        copy(REPO / name, src / name, **kw)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1",
               # A private build cache: the C++ kernels must compile from the installed sources.
               SPLATKIT_CACHE_DIR=str(tmp_path / "cache"))

    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                          text=True, env=env)
    py = venv / "bin" / "python"
    if made.returncode != 0 or not py.exists():
        pytest.skip(f"python -m venv does not work here: {made.stderr.strip()[-300:]}")

    # The dependencies (and pip, setuptools) come from this interpreter's site-packages, so nothing
    # is downloaded. A path in a .pth file does not run that folder's own .pth files, so the
    # checkout's editable install there stays inactive in the new venv.
    new_site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         tmp_path, env).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                          *site.getsitepackages()])
    (new_site / "_splatkit_test_deps.pth").write_text("".join(f"{p}\n" for p in ours if Path(p).is_dir()))
    # Asked in the new venv: importlib.util.find_spec("pip") here would make setuptools' distutils
    # shim step aside for the rest of this process (it assumes pip is running).
    for mod in ("pip", "setuptools"):
        if subprocess.run([py, "-c", f"import {mod}"], capture_output=True, env=env).returncode != 0:
            pytest.skip(f"{mod} is not installed for {sys.executable}; cannot test a pip install")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", src], tmp_path, env,
         timeout=600)

    work = tmp_path / "work"
    work.mkdir()
    probe = _run([py, "-c", (
        "import json, splatkit, splatkit.resources as r\n"
        "from splatkit.train.config import available_presets\n"
        "from splatkit.eval.protocols import dtu_protocol, llff_protocol\n"
        "dtu_protocol(); llff_protocol()\n"
        "print(json.dumps({'module': splatkit.__file__, 'presets': available_presets(),\n"
        "    'dirs': [str(d) for d in (r.configs_dir(), r.splits_dir(), r.cpu_sources_dir())],\n"
        "    'cpp': sorted(p.name for p in r.cpu_sources_dir().glob('*.cpp'))}))\n")], work, env)
    info = json.loads(probe.stdout.strip().splitlines()[-1])
    inside = [str(venv.resolve()), str(venv)]
    assert any(info["module"].startswith(v) for v in inside), f"splatkit imported from {info['module']}"
    for d in info["dirs"]:
        assert any(d.startswith(v) for v in inside), f"{d} is not inside the installed package"
    assert info["presets"] == sorted(p.stem for p in (REPO / "configs").glob("*.json"))
    assert info["cpp"] == sorted(p.name for p in (REPO / "cuda" / "cpu").glob("*.cpp"))

    splatkit = venv / "bin" / "splatkit"
    _run([splatkit, "data", "synthetic", "--out", "S", "--width", "48", "--height", "36", "--views", "10"],
         work, env)
    common = ["--data", "S", "--device", "cpu", "--quiet", "--set", "init_num_points=200"]
    # Backend auto: compiles the installed C++ sources into SPLATKIT_CACHE_DIR (about 40 s on 2 cores).
    _run([splatkit, "train", "--preset", "fast", "--steps", "5", "--out", "run_fast", *common], work, env)
    run = work / "run_fast"
    assert list(run.rglob("*.pt")), f"no checkpoint in {run}: {sorted(p.name for p in run.rglob('*'))}"
    summary = json.loads((run / "train_summary.json").read_text())
    from splatkit.render import cpu_backend

    if cpu_backend.unavailable_reason() is None:  # it builds from the checkout, so it must when installed
        assert summary["backend"] == "cpu", summary.get("backend")

    _run([splatkit, "train", "--preset", "sparse", "--steps", "2", "--out", "run_sparse", *common], work, env)
    saved = json.loads((work / "run_sparse" / "config.json").read_text())
    assert saved.get("preset") == "sparse"


def test_import_sets_passive_openmp_waiting_unless_the_user_chose():
    """Spinning OpenMP threads made a step 10x slower on a shared 2-core CPU (docs/benchmarks.md);
    ``import splatkit`` asks for passive waiting before torch loads the runtime, and an exported
    value wins."""
    import os
    import subprocess
    import sys

    code = "import os, splatkit; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
    # What the process actually runs with, as the benchmarks record it: torch loaded first has read
    # the (unset) policy before splatkit could set it.
    for code, want in (("import splatkit", "passive"), ("import torch, splatkit", "libgomp default")):
        out = subprocess.run([sys.executable, "-c", code + "; print(splatkit.openmp_wait_policy())"], env=env,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want
