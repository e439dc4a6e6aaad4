"""The published sparse-view protocols, read from the split files in ``data/splits/``.

The ids live in data files rather than code so that the numbers a benchmark reports can be traced
to one reviewed file (``data/splits/dtu.json``, ``data/splits/llff.json``); this module only applies
the rules those files state.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from splatkit.errors import SplatkitError
from splatkit.resources import splits_dir
from splatkit.utils.jsonfile import read_json_object

SPLITS_DIR = splits_dir()


@dataclass(frozen=True)
class DTUProtocol:
    num_views: int
    test_scans: tuple[int, ...]
    train_ids: tuple[int, ...]  # in the protocol's order; k views = the first k
    excluded_ids: tuple[int, ...]
    view_counts: tuple[int, ...]
    downscale: int
    image_size: tuple[int, int]
    light: int

    def train_views(self, k: int) -> list[int]:
        """The first ``k`` ids of the protocol's order. Counts other than the published ones (3, 6,
        9) are made the same way, with a warning (GaussianObject's 4 views, for example), so that
        their figures are never mistaken for the protocol's."""
        if not 1 <= k <= len(self.train_ids):
            raise SplatkitError(f"the DTU protocol orders {len(self.train_ids)} training views "
                                f"(published counts: {', '.join(map(str, self.view_counts))}); cannot train on {k}")
        if k not in self.view_counts:
            import warnings

            warnings.warn(f"{k} training views is not one of the DTU protocol's published counts "
                          f"({', '.join(map(str, self.view_counts))}): using the first {k} of its ordered "
                          f"training ids ({', '.join(map(str, self.train_ids[:k]))})", stacklevel=2)
        return list(self.train_ids[:k])

    def test_views(self) -> list[int]:
        """Every id that is neither a (9-view) training id nor excluded: 25 views."""
        skip = set(self.train_ids) | set(self.excluded_ids)
        return [i for i in range(self.num_views) if i not in skip]


@dataclass(frozen=True)
class LLFFProtocol:
    scenes: tuple[str, ...]
    test_every: int
    view_counts: tuple[int, ...]
    downscale: int

    def split(self, num_images: int, k: int) -> tuple[list[int], list[int]]:
        """``(train, test)`` positions (0-based, images sorted by name) for ``k`` training views."""
        if num_images < 2:
            raise SplatkitError(f"the LLFF protocol needs at least 2 images, got {num_images}")
        test = list(range(0, num_images, self.test_every))
        rest = [i for i in range(num_images) if i not in set(test)]
        if not 1 <= k <= len(rest):
            raise SplatkitError(f"cannot train on {k} views: {len(rest)} images are left after holding out "
                                f"every {self.test_every}th")
        # RegNeRF: idx_sub = [round(i) for i in np.linspace(0, len(i_train) - 1, k)], Python round.
        if k == 1:
            picks = [0]
        else:
            step = (len(rest) - 1) / (k - 1)
            picks = [round(j * step) for j in range(k)]
        return [rest[p] for p in picks], test


def _ints(raw: dict, key: str, path: Path) -> tuple[int, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise SplatkitError(f"split file: {key} must be a list of integers", path)
    return tuple(value)


@lru_cache(maxsize=None)
def dtu_protocol(path: Path = SPLITS_DIR / "dtu.json") -> DTUProtocol:
    raw = read_json_object(path, "split file")
    size = _ints(raw, "image_size", path)
    return DTUProtocol(num_views=int(raw["num_views"]), test_scans=_ints(raw, "test_scans", path),
                       train_ids=_ints(raw, "train_ids", path), excluded_ids=_ints(raw, "excluded_ids", path),
                       view_counts=_ints(raw, "view_counts", path), downscale=int(raw["downscale"]),
                       image_size=(size[0], size[1]), light=int(raw["light"]))


@lru_cache(maxsize=None)
def llff_protocol(path: Path = SPLITS_DIR / "llff.json") -> LLFFProtocol:
    raw = read_json_object(path, "split file")
    scenes = raw.get("scenes")
    if not isinstance(scenes, list) or not all(isinstance(s, str) for s in scenes):
        raise SplatkitError("split file: scenes must be a list of names", path)
    return LLFFProtocol(scenes=tuple(scenes), test_every=int(raw["test_every"]),
                        view_counts=_ints(raw, "view_counts", path), downscale=int(raw["downscale"]))
