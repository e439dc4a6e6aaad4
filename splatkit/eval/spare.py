"""SpaRe: the AIM 2024 Sparse Neural Rendering Challenge (Nazarczuk et al., ECCV 2024 workshops).

What the challenge publishes (SpaReBenchmark.github.io, ``docs/dataset/structure.md``,
``docs/dataset/download.md``, ``docs/benchmark/submission.md``; the split files on Hugging Face,
``aim2024-sparse-rendering/AIM2024-SparseNeuralRendering``):

* Two tracks: Track 1 has 3 input views per scene, Track 2 has 9. Each track has a development
  (validation) and a test split: ``Track{1,2}_split_{development,test}.json``.
* A split file is a JSON object keyed by scene name (also the scene's folder name, e.g. ``scan63``
  or ``Amplifier``); each value holds ``input_views`` and ``test_views`` (lists of view indices)
  and ``dataset`` (``"DTU"`` or ``"Synthetic"``). Indices are 0-based: index ``i`` is camera
  ``i + 1``. Only the input views' images are released; the test views' images are hidden.
* Images: DTU ``rect_{i+1:03d}_{light}_r5000.png``, Synthetic ``cam_{i+1:03d}_{light}_0000.png``;
  lighting 0-6, and lighting 3 (all lights on) is the one evaluated.
* Calibration: 3x4 projection matrices, one ``pos_{i+1:03d}.txt`` per camera, "compatible with
  common data loading codes (e.g. as in RegNeRF)", released as ``dtu_calibration.zip`` and
  ``synth_calibration.zip``; inputs as ``{dtu,synth}_{development,test}_{3,9}views.zip``.
* Submission: every test view rendered at 1600x1200, saved as
  ``<scene>/rect_{i+1:03d}_3_r5000.png`` (DTU) or ``<scene>/cam_{i+1:03d}_3_0000.png``
  (Synthetic), all in ONE zip whose root holds the scene folders (no upper-level folder). A
  submission may cover DTU, Synthetic or both.

What the public material leaves open, and what this module does:

* The folder layout inside the zips is not documented. :func:`spare_scene_dir` looks for a folder
  named after the scene up to four levels below the root given (so unzipping every archive into
  its own folder, or all into one, both work) and takes the one holding the split's input views.
  :func:`spare_calibration_dir` looks, in order, in the scene folder itself, in folders named after
  the calibration archives (``dtu_calibration*`` / ``synth_calibration*``, searched inside for the
  ``pos_XXX.txt`` files, preferring a sub-folder named after the scene), then in RegNeRF's
  ``Calibration/cal18`` (or ``Calibration/``) beside the scene folder or any folder above it up
  to the root. ``calibration=`` overrides the search.
* The Synthetic projection matrices are taken to follow DTU's convention (a 1600x1200 image,
  pixel centres on integers), as "RegNeRF-compatible" implies; images stored at another 4:3 size
  get their intrinsics scaled, as for DTU.
* Only the input views are loaded (the split's ids, in its order), so the model never sees a test
  view even where a folder holds more; the world is normalised from the input and test cameras
  together (their poses are public) so :func:`spare_test_cameras` lands in the same frame.
* Split checks are the structural ones (non-empty, disjoint, unique, whole 0-based indices, the
  track's input count for files named ``TrackN_split_*``); the 10 test views per scene and the 49
  cameras of the released files are not required, so custom splits load too.
* Renders of any 4:3 size are resized to 1600x1200 with Pillow's bilinear filter and stored as
  8-bit RGB PNG. :func:`write_submission` writes one zip per scene (``<out>/<scene>.zip`` holding
  ``<scene>/<name>.png``); :func:`pack_submission` merges them into the single archive the
  challenge takes.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from splatkit.data.cameras import Cameras
from splatkit.data.scene import Normalization, Scene
from splatkit.errors import DataError, SplatkitError

SUBMISSION_SIZE = (1600, 1200)  # (W, H) the challenge scores at
LIGHT = 3  # the lighting the challenge evaluates (all lights on)
DATASETS = ("DTU", "Synthetic")
TRACK_INPUT_VIEWS = {1: 3, 2: 9}
# The release's calibration archives, per part (download.md).
CALIBRATION_ARCHIVES = {"DTU": "dtu_calibration", "Synthetic": "synth_calibration"}
SEARCH_DEPTH = 4  # how far below the root folders are looked for
_SPLIT_NAME = re.compile(r"track(\d+)_split_([a-z]+)", re.IGNORECASE)
# A fixed timestamp makes two submissions of the same renders byte-identical.
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)
_MAX_VIEW = 998  # names carry i + 1 in three digits


def spare_image_name(dataset: str, view_id: int, light: int | str = LIGHT) -> str:
    """The challenge's file name for 0-based ``view_id`` of a ``"DTU"`` or ``"Synthetic"`` scene."""
    if dataset == "DTU":
        return f"rect_{int(view_id) + 1:03d}_{light}_r5000.png"
    if dataset == "Synthetic":
        return f"cam_{int(view_id) + 1:03d}_{light}_0000.png"
    raise SplatkitError(f"unknown SpaRe dataset {dataset!r} (expected one of {', '.join(DATASETS)})")


def _view_list(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise SplatkitError(f"'{key}' must be a list of view indices, got {type(value).__name__}")
    if not value:
        raise SplatkitError(f"'{key}' is empty")
    out = []
    for v in value:
        # bool is an int subclass; a float like 3.0 in a JSON index list is a writer's mistake.
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise SplatkitError(f"'{key}' holds {v!r}; view indices are whole numbers")
        if not 0 <= int(v) <= _MAX_VIEW:
            raise SplatkitError(f"'{key}' holds {int(v)}; view indices are 0-based, 0..{_MAX_VIEW}")
        out.append(int(v))
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise SplatkitError(f"'{key}' lists view(s) {dup} more than once")
    return tuple(out)


@dataclass(frozen=True)
class SpareScene:
    """One scene of a SpaRe split; view ids are 0-based (image name number minus one)."""

    name: str
    dataset: str  # "DTU" or "Synthetic"
    input_views: tuple[int, ...]
    test_views: tuple[int, ...]
    track: Optional[int] = None  # from the split file's name, when it follows the challenge's
    phase: Optional[str] = None  # "development" or "test", likewise
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)  # other keys, as read

    def __post_init__(self) -> None:
        name = self.name
        # The name becomes a folder inside the submission zip and a folder searched for on disk.
        if not isinstance(name, str) or not name.strip() or name != name.strip() \
                or name in (".", "..") or "/" in name or "\\" in name:
            raise SplatkitError(f"scene name {name!r} is not a usable folder name")
        canon = {d.lower(): d for d in DATASETS}.get(str(self.dataset).lower()) \
            if isinstance(self.dataset, str) else None
        if canon is None:
            raise SplatkitError(f"'dataset' is {self.dataset!r}; expected one of {', '.join(DATASETS)}")
        object.__setattr__(self, "dataset", canon)
        inputs = _view_list(self.input_views, "input_views")
        tests = _view_list(self.test_views, "test_views")
        overlap = sorted(set(inputs) & set(tests))
        if overlap:
            raise SplatkitError(f"view(s) {overlap} are both input and test views")
        object.__setattr__(self, "input_views", inputs)
        object.__setattr__(self, "test_views", tests)
        expected = TRACK_INPUT_VIEWS.get(self.track) if self.track is not None else None
        if expected is not None and len(inputs) != expected:
            raise SplatkitError(f"{len(inputs)} input views, but Track {self.track} uses {expected}")

    def image_name(self, view_id: int, light: int | str = LIGHT) -> str:
        return spare_image_name(self.dataset, view_id, light)

    @property
    def submission_names(self) -> list[str]:
        """Archive paths of this scene's test-view renders, in ``test_views`` order."""
        return [f"{self.name}/{self.image_name(v)}" for v in self.test_views]


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs):
    # json.loads would keep the last of two same-named scenes silently.
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise _DuplicateKey(k)
    return dict(pairs)


def read_spare_split(path: str | Path) -> list[SpareScene]:
    """The scenes of a ``Track{N}_split_{phase}.json`` file, in file order.

    Malformed entries, empty or overlapping view lists, unknown ``dataset`` values and (for files
    named as the challenge names them) an input-view count that does not match the track raise
    :class:`DataError` naming the file and the scene.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("split file is missing" if not path.exists() else "expected a split JSON file", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        raise DataError(f"key {exc.args[0]!r} appears more than once", path)
    except UnicodeDecodeError:
        raise DataError("split file is not UTF-8 text", path)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", path)
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object keyed by scene name, got {type(data).__name__}", path)
    if not data:
        raise DataError("split file lists no scenes", path)
    m = _SPLIT_NAME.fullmatch(path.stem)
    track = int(m.group(1)) if m else None
    phase = m.group(2).lower() if m else None
    scenes = []
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise DataError(f"scene {name!r}: expected an object with input_views, test_views and "
                            f"dataset, got {type(entry).__name__}", path)
        missing = [k for k in ("input_views", "test_views", "dataset") if k not in entry]
        if missing:
            raise DataError(f"scene {name!r}: missing {', '.join(repr(k) for k in missing)}", path)
        extra = {k: v for k, v in entry.items() if k not in ("input_views", "test_views", "dataset")}
        try:
            scenes.append(SpareScene(name=name, dataset=entry["dataset"], input_views=entry["input_views"],
                                     test_views=entry["test_views"], track=track, phase=phase, extra=extra))
        except SplatkitError as exc:
            raise DataError(f"scene {name!r}: {exc.message}", path) from None
    return scenes


# -- finding things on disk --------------------------------------------------------------------
def _subdirs(root: Path, max_depth: int, want=None) -> list[Path]:
    """Folders below ``root`` (not itself) up to ``max_depth`` levels, hidden ones skipped, sorted;
    only those whose name satisfies ``want`` when given (their insides are still searched)."""
    out, stack = [], [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(".") or not e.is_dir():
                continue
            p = Path(e.path)
            if want is None or want(e.name):
                out.append(p)
            if depth + 1 < max_depth:
                stack.append((p, depth + 1))
    return sorted(out)


_LIGHT3 = re.compile(rf"(?:rect_(\d{{3}})_{LIGHT}(?:_r\d+)?|cam_(\d{{3}})_{LIGHT}_\d+)\.png")


def _views_present(folder: Path) -> set[int]:
    """0-based ids with a lighting-3 image in ``folder`` (either naming: the DTU reader takes both)."""
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError:
        return set()
    return {int(m.group(1) or m.group(2)) - 1 for m in map(_LIGHT3.fullmatch, names) if m}


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError("no such folder" if not root.exists() else "expected the SpaRe data folder, got a file",
                        root)
    return root


def spare_scene_dir(root: str | Path, scene: SpareScene) -> Path:
    """The folder holding ``scene``'s input images: ``root`` itself when it is that folder, else the
    folder named ``scene.name`` up to four levels below ``root`` that holds every input view.

    Where several do (Track 1 and Track 2 downloads unzipped side by side), the one holding exactly
    the input views wins; a remaining tie is an error asking for a narrower ``root``.
    """
    root = _check_root(root)
    cands = [root] if root.name == scene.name else []
    cands += _subdirs(root, SEARCH_DEPTH, want=lambda n: n == scene.name)
    need = set(scene.input_views)
    full, partial = [], []
    for c in cands:
        have = _views_present(c)
        if need <= have:
            full.append((c, have))
        elif have:  # a same-named folder without images (a per-scene calibration) is no candidate
            partial.append((c, have))
    if len(full) == 1:
        return full[0][0]
    if len(full) > 1:
        exact = [c for c, have in full if have == need]
        if len(exact) == 1:
            return exact[0]
        listed = ", ".join(str(c) for c, _ in full)
        raise DataError(f"several folders hold scene {scene.name}'s input views ({listed}); "
                        f"point at the one for this split", root)
    if partial:
        c, have = max(partial, key=lambda t: len(t[1] & need))
        lack = sorted(need - have)
        raise DataError(f"scene {scene.name} lacks input view(s) {lack} "
                        f"({', '.join(scene.image_name(v) for v in lack[:3])})", c)
    raise DataError(f"no folder named {scene.name} with lighting-{LIGHT} images within "
                    f"{SEARCH_DEPTH} levels (unzip the {scene.dataset} input-view archive here)", root)


def _has_all(folder: Path, ids: Iterable[int]) -> bool:
    return all((folder / f"pos_{v + 1:03d}.txt").is_file() for v in ids)


def _has_any_pos(folder: Path) -> bool:
    try:
        return any(re.fullmatch(r"pos_\d{3}\.txt", e.name) for e in os.scandir(folder))
    except OSError:
        return False


def spare_calibration_dir(root: str | Path, scene: SpareScene, scene_dir: Optional[Path] = None) -> Path:
    """The folder of ``pos_XXX.txt`` projection matrices covering ``scene``'s input and test views
    (search order in the module docstring)."""
    root = _check_root(root)
    scene_dir = spare_scene_dir(root, scene) if scene_dir is None else Path(scene_dir)
    need = list(scene.input_views) + list(scene.test_views)
    seen: list[Path] = []

    def accept(folder: Path) -> bool:
        if folder.is_dir() and _has_any_pos(folder):
            seen.append(folder)
            return _has_all(folder, need)
        return False

    if accept(scene_dir):
        return scene_dir
    # The release's archive for this part (named so, it cannot be the other part's calibration).
    stem = CALIBRATION_ARCHIVES[scene.dataset]
    for arch in _subdirs(root, SEARCH_DEPTH, want=lambda n: n.lower().startswith(stem)):
        inside = [arch] + _subdirs(arch, 3)
        named = [d for d in inside if d.name == scene.name and accept(d)]
        if named:
            return named[0]
        holding = [d for d in inside if accept(d)]
        if len(holding) == 1:
            return holding[0]
        if len(holding) > 1:
            raise DataError(f"several calibration folders ({', '.join(str(d) for d in holding)}); "
                            f"pass calibration= for scene {scene.name}", arch)
    # RegNeRF's layout: Calibration/cal18 beside the scene folder or in a folder above it, up to
    # the root (Rectified/scanN -> Calibration/cal18 two levels up).
    ups, d = [], scene_dir.resolve()
    top = root.resolve()
    while d.is_relative_to(top):
        ups.append(d)
        if d == top:
            break
        d = d.parent
    for up in ups or [scene_dir.parent]:
        for sub in (Path("Calibration") / "cal18", Path("Calibration")):
            if accept(up / sub):
                return up / sub
    if seen:
        lack = [v for v in need if not (seen[0] / f"pos_{v + 1:03d}.txt").is_file()]
        raise DataError(f"calibration lacks pos_{lack[0] + 1:03d}.txt (view {lack[0]}) needed by scene "
                        f"{scene.name}" + (f" and {len(lack) - 1} more" if len(lack) > 1 else ""), seen[0])
    raise DataError(f"no pos_XXX.txt calibration for {scene.dataset} scene {scene.name} (unzip "
                    f"{stem}.zip under this folder, or pass calibration=)", root)


# -- loading -----------------------------------------------------------------------------------
def _full_res_cameras(calib: Path, ids: Sequence[int]) -> Cameras:
    from splatkit.data.readers.dtu_rectified import FULL_SIZE, read_projection

    poses = [read_projection(calib, v, for_what=f" for view {v}") for v in ids]
    return Cameras(Ks=np.stack([K for K, _ in poses]), camtoworlds=np.stack([c for _, c in poses]),
                   widths=FULL_SIZE[0], heights=FULL_SIZE[1])


def load_spare_scene(root: str | Path, scene: SpareScene, downscale: int = 1, *,
                     calibration: Optional[str | Path] = None) -> Scene:
    """The input views of ``scene`` (lighting 3) as a normalised :class:`Scene`.

    ``scene.ids`` are the split's ``input_views`` in the split's order; ``splits["train"]`` holds
    them too. The test views have no images here: get their cameras, in the same world frame,
    from :func:`spare_test_cameras` with this scene's ``normalization``.
    """
    from splatkit.data.normalize import normalization_from_cameras
    from splatkit.data.readers._common import DEPTH_DIR, MASK_DIRS, assemble_scene, attach_extras
    from splatkit.data.readers.dtu_rectified import view_specs

    if int(downscale) != downscale or downscale < 1:
        raise SplatkitError(f"downscale must be a positive integer, got {downscale}")
    root = _check_root(root)
    scene_dir = spare_scene_dir(root, scene)
    calib = Path(calibration) if calibration is not None else spare_calibration_dir(root, scene, scene_dir)
    if not calib.is_dir():
        raise DataError("calibration folder does not exist", calib)
    views = view_specs(scene_dir, calib, light=LIGHT, ids=scene.input_views)
    attach_extras(views, [scene_dir / d for d in MASK_DIRS], [scene_dir / DEPTH_DIR], by_id=True)
    norm = normalization_from_cameras(_full_res_cameras(calib, list(scene.input_views) + list(scene.test_views)))
    out = assemble_scene(views, downscale=int(downscale), root=scene_dir, normalization=norm,
                         splits={"train": list(scene.input_views)})
    out.source_format = "spare"
    return out


def spare_test_cameras(root: str | Path, scene: SpareScene, normalization: Normalization,
                       downscale: int = 1, *, calibration: Optional[str | Path] = None) -> Cameras:
    """Cameras of ``scene.test_views`` (in that order) in the world frame ``normalization`` defines
    (pass the loaded scene's), for 1600x1200 images downscaled as :func:`load_spare_scene` does
    (``1600 // d`` x ``1200 // d``, intrinsics / d), so renders match the training views' scale."""
    if int(downscale) != downscale or downscale < 1:
        raise SplatkitError(f"downscale must be a positive integer, got {downscale}")
    root = _check_root(root)
    calib = Path(calibration) if calibration is not None else spare_calibration_dir(root, scene)
    cams = _full_res_cameras(calib, scene.test_views)
    d = int(downscale)
    if d > 1:
        # Block averaging crops sizes that do not divide; a right/bottom crop leaves K unchanged.
        cams = cams.rescaled(1.0 / d)
        cams.widths[:] = SUBMISSION_SIZE[0] // d
        cams.heights[:] = SUBMISSION_SIZE[1] // d
    return cams.transformed(normalization.matrix)


# -- submission --------------------------------------------------------------------------------
def _as_rgb01(img: Any, view: int) -> np.ndarray:
    arr = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise SplatkitError(f"render of view {view} has shape {arr.shape}; expected [H, W, 3]")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise SplatkitError(f"render of view {view} has dtype {arr.dtype}; expected float in [0, 1]")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise SplatkitError(f"render of view {view} has non-finite values")
    return np.clip(arr, 0.0, 1.0)


def _to_submission_size(rgb: np.ndarray, view: int) -> np.ndarray:
    """uint8 [1200, 1600, 3]: bilinear resize of a 4:3 render (Pillow, per float channel)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    W, H = SUBMISSION_SIZE
    # Integer downscales of 1600x1200 round each side on its own: allow a pixel of slack.
    if w < 1 or h < 1 or abs(h - w * H / W) > 1.0:
        raise SplatkitError(f"render of view {view} is {w}x{h}; SpaRe renders must be 4:3 "
                            f"({W}x{H} or a resized copy)")
    if (w, h) != (W, H):
        rgb = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c]))
                                   .resize((W, H), Image.BILINEAR)) for c in range(3)], axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o644 << 16  # readable files when unzipped on Unix
    info.compress_type = zipfile.ZIP_STORED  # PNG is already compressed
    return info


def write_submission(renders: Mapping[int, Any], scene: SpareScene, out_dir: str | Path) -> Path:
    """Write ``out_dir/<scene>.zip`` holding ``<scene>/<challenge name>.png`` for every test view.

    ``renders`` maps each test view id to a float [H, W, 3] image in [0, 1] (uint8 accepted) of any
    4:3 size; each is resized to 1600x1200. Every test view must be there and nothing else. The
    zip is written atomically; the path is returned.
    """
    if not isinstance(scene, SpareScene):
        raise SplatkitError(f"expected a SpareScene, got {type(scene).__name__}")
    if not isinstance(renders, Mapping):
        raise SplatkitError(f"renders must map test view ids to images, got {type(renders).__name__}")
    by_id: dict[int, Any] = {}
    for k, img in renders.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise SplatkitError(f"render key {k!r} is not a view id (0-based integer)")
        by_id[int(k)] = img
    missing = [v for v in scene.test_views if v not in by_id]
    if missing:
        raise SplatkitError(f"scene {scene.name}: no render for test view(s) {missing} "
                            f"({', '.join(scene.image_name(v) for v in missing[:3])})")
    extra = sorted(set(by_id) - set(scene.test_views))
    if extra:
        raise SplatkitError(f"scene {scene.name}: render(s) for view(s) {extra} that are not test views "
                            f"(test views: {list(scene.test_views)})")
    pngs = [_png_bytes(_to_submission_size(_as_rgb01(by_id[v], v), v)) for v in scene.test_views]

    from splatkit.utils.atomic import atomic_path

    out = Path(out_dir) / f"{scene.name}.zip"
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name, data in zip(scene.submission_names, pngs):
                zf.writestr(_zip_entry(name), data)
    return out


def pack_submission(out_dir: str | Path, scenes: Sequence[SpareScene],
                    out_path: Optional[str | Path] = None) -> Path:
    """Merge the per-scene zips :func:`write_submission` wrote in ``out_dir`` into the one archive
    the challenge takes (scene folders at its root); default ``out_dir/submission.zip``.

    ``scenes`` are the ones submitted (a whole split, or only its DTU or Synthetic part, which the
    challenge also accepts); each zip must hold exactly that scene's test-view names.
    """
    from splatkit.utils.atomic import atomic_path

    out_dir = Path(out_dir)
    if not scenes:
        raise SplatkitError("no scenes to pack")
    names = [s.name for s in scenes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SplatkitError(f"scene(s) {dup} given more than once")
    absent = [s.name for s in scenes if not (out_dir / f"{s.name}.zip").is_file()]
    if absent:
        raise DataError(f"no submission zip for scene(s) {', '.join(absent)} (run write_submission first)",
                        out_dir)
    out = Path(out_path) if out_path is not None else out_dir / "submission.zip"
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w") as dst:
            for s in scenes:
                src_path = out_dir / f"{s.name}.zip"
                try:
                    with zipfile.ZipFile(src_path) as src:
                        have = sorted(src.namelist())
                        if have != sorted(s.submission_names):
                            raise DataError(f"holds {len(have)} entries, not scene {s.name}'s "
                                            f"{len(s.submission_names)} test-view renders", src_path)
                        for name in s.submission_names:
                            dst.writestr(_zip_entry(name), src.read(name))
                except zipfile.BadZipFile:
                    raise DataError("not a zip file", src_path) from None
    return out


__all__ = [
    "SpareScene", "read_spare_split", "spare_image_name", "spare_scene_dir", "spare_calibration_dir",
    "load_spare_scene", "spare_test_cameras", "write_submission", "pack_submission",
    "SUBMISSION_SIZE", "LIGHT", "DATASETS", "TRACK_INPUT_VIEWS",
]
