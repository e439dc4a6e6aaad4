"""Finding Hugging Face weights strictly offline: a local folder or the local hub cache, never the
network. Shared by the monocular depth models (:mod:`splatkit.priors.depth_sources`) and the
diffusion repair model (:mod:`splatkit.priors.repair.diffusion`), so both read the cache the same
way and say the same thing when weights are missing."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from splatkit.errors import SplatkitError

# "org/name" as the hub spells repo ids; a path such as "./a/b" or "~/x/y" is never one.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not name.startswith((".", "~"))


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved from the environment the way huggingface_hub does."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def cached_snapshot(repo_id: str, marker: str = "config.json") -> Optional[Path]:
    """The snapshot folder of ``repo_id`` in the HF cache (layout ``models--org--name/refs/main``,
    ``snapshots/<commit>/``): the one ``refs/main`` names, else the newest holding ``marker``
    (``config.json`` for a model, ``model_index.json`` for a diffusers pipeline)."""
    base = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snaps = base / "snapshots"
    if not snaps.is_dir():
        return None
    ref = base / "refs" / "main"
    if ref.is_file():
        cand = snaps / ref.read_text().strip()
        if (cand / marker).is_file():
            return cand
    cands = [d for d in snaps.iterdir() if (d / marker).is_file()]
    return max(cands, key=lambda d: d.stat().st_mtime) if cands else None


def download_hint(repo: str) -> str:
    """How to get ``repo`` onto a machine without internet, in one line."""
    return (f"on a machine with internet run `hf download {repo}` (older huggingface_hub: "
            f"`huggingface-cli download {repo}`) and copy its Hugging Face cache "
            f"({hf_hub_cache()}) here, or pass the path of a folder saved with save_pretrained")


def not_available(what: str, name: str, repo: Optional[str], why: str, how: Optional[str] = None) -> SplatkitError:
    """The one-line error for weights that cannot be found: ``what`` names the kind of model
    ("depth model"), ``repo`` the repo id to download (None: ``how`` says what to pass instead)."""
    if how is None:
        how = download_hint(repo) if repo is not None else "pass a Hugging Face repo id present in the local cache or a saved folder"
    return SplatkitError(f"{what} {name!r} is not available ({why}); no weights can be downloaded "
                         f"at run time: {how}")
