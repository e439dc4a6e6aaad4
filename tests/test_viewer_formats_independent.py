"""SOG and SPZ against an independent implementation (issue #16): files PlayCanvas' splat-transform
wrote, committed under tests/data/splat_transform/ (CI has no npm; ``scripts/check_viewer_formats.py
--fixtures`` regenerates them, its ``manifest.json`` names the version and the commands).

* splat-transform's ``.sog`` and ``.spz`` (3, 4) of our PLY, read with our readers, are the PLY's values
  within each format's quantisation (the tolerances are the script's, documented in its
  ``source_rows_*``);
* our SPZ writer, given the same PLY, writes the bytes the spz library (inside splat-transform) wrote;
* splat-transform's PLY conversion of our ``.sog`` equals our own decoding of it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest

from splatkit.export import read_ply, read_sog, read_spz
from splatkit.export.spz import encode_spz

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "splat_transform"


def _load_script():
    spec = importlib.util.spec_from_file_location("check_viewer_formats", ROOT / "scripts" / "check_viewer_formats.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_viewer_formats", module)
    spec.loader.exec_module(module)
    return module


check = _load_script()


def assert_rows(rows) -> None:
    bad = [r for r in rows if not r.ok]
    assert not bad, "outside tolerance:\n" + check.table(bad)


@pytest.fixture(scope="module")
def source():
    splats, degree = read_ply(DATA / "source.ply")
    assert degree == check.DEGREE
    return splats


def test_fixtures_are_what_the_manifest_says():
    manifest = json.loads((DATA / "manifest.json").read_text())
    assert manifest["gaussians"] == check.FIXTURE_N and manifest["sh_degree"] == 3
    assert set(manifest["files"]) | {"manifest.json"} == {p.name for p in DATA.iterdir()}
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 200_000
    with zipfile.ZipFile(DATA / "st.sog") as z:
        assert json.loads(z.read("meta.json"))["asset"]["generator"].startswith("splat-transform")
    # the source is the script's deterministic set, as float32
    want = check.make_splats(check.FIXTURE_N)
    got, _ = read_ply(DATA / "source.ply")
    for key, value in want.items():
        assert got[key].shape == value.shape and bool((got[key] == value).all()), key


def test_we_read_splat_transforms_sog_within_its_quantisation(source):
    splats, degree = read_sog(DATA / "st.sog")
    assert degree == 3 and splats["means"].shape == (check.FIXTURE_N, 3)
    assert_rows(check.source_rows_sog("st.sog", DATA / "st.sog", splats, source))


@pytest.mark.parametrize("version", [3, 4])
def test_we_read_splat_transforms_spz_within_its_quantisation(source, version):
    splats, degree = read_spz(DATA / f"st_v{version}.spz")
    assert degree == 3
    assert_rows(check.source_rows_spz(f"st_v{version}.spz", splats, source))


@pytest.mark.parametrize("version", [3, 4])
def test_our_spz_writer_makes_the_spz_librarys_bytes(source, version):
    ours = encode_spz(source, 3, version=version)[0]
    assert_rows([check.bytes_row(f"st_v{version}.spz", ours, (DATA / f"st_v{version}.spz").read_bytes())])


def test_splat_transform_decodes_our_sog_as_we_do():
    ours, degree = read_sog(DATA / "ours.sog")
    theirs, their_degree = read_ply(DATA / "ours.sog.st.ply")
    assert degree == their_degree == 3
    assert_rows(check.same_file_rows("ours.sog", "splat-transform's decoding vs ours", ours, theirs, degree))


def test_our_sog_of_the_source_is_within_its_quantisation(source):
    assert_rows(check.source_rows_sog("ours.sog", DATA / "ours.sog", read_sog(DATA / "ours.sog")[0], source,
                                      transparent_colour_lost=False))


def test_the_script_says_in_one_line_when_splat_transform_is_missing(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["check_viewer_formats.py", "--splat-transform", str(tmp_path / "none")])
    assert check.main() == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "splat-transform not found" in out
