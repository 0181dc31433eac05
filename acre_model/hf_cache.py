"""Models already in the local Hugging Face hub cache, by hub id: `org/name` or `org/name@revision`.

The layout is the one `huggingface_hub` writes (read here without it, and offline: nothing is ever
downloaded):

    $HF_HUB_CACHE/models--{org}--{name}/refs/{branch or tag}   a file holding a commit hash
    $HF_HUB_CACHE/models--{org}--{name}/snapshots/{commit}/    the files (links into blobs/)

The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, as huggingface_hub
resolves it (including its legacy `HUGGINGFACE_HUB_CACHE` and `XDG_CACHE_HOME`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ModelLoadError

# `org/name` (or a bare legacy `name`), each part as the hub allows it, then an optional `@revision`:
# a branch, a tag or a commit hash (branches may hold slashes, e.g. refs/pr/1).
HUB_ID = re.compile(r"^(?P<repo>[\w.-]+(?:/[\w.-]+)?)(?:@(?P<rev>[\w./-]+))?$")


def hub_cache_dir() -> Path:
    """The hub cache folder: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    env = os.environ.get
    hub = env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    home = env("HF_HOME") or Path(env("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def parse_hub_id(name: str) -> tuple[str, str] | None:
    """`org/name[@revision]` -> (repo id, revision; "main" when none is given), or None if not a hub id."""
    m = HUB_ID.match(name)
    if m is None or ".." in name.split("@", 1)[-1].split("/"):  # a revision never climbs out of refs/
        return None
    return m["repo"], m["rev"] or "main"


def repo_folder(repo_id: str) -> Path:
    """Where the cache keeps `repo_id` (whether or not it is there)."""
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def find_snapshot(name: str) -> Path | None:
    """The cached snapshot folder of hub id `name`; None when `name` is no hub id or is not cached.

    A cached model without the asked revision is an error that lists the revisions that are cached.
    """
    parsed = parse_hub_id(name)
    if parsed is None:
        return None
    repo_id, revision = parsed
    repo = repo_folder(repo_id)
    if not repo.is_dir():
        return None
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision  # a ref, or a commit hash itself
    snapshot = repo / "snapshots" / commit
    if snapshot.is_dir():
        return snapshot
    refs = sorted(p.relative_to(repo / "refs").as_posix() for p in (repo / "refs").rglob("*") if p.is_file())
    commits = sorted(p.name for p in (repo / "snapshots").glob("*") if p.is_dir())
    raise ModelLoadError(f"{name}: revision {revision!r} is not in the Hugging Face cache at {repo} "
                         f"(cached refs: {', '.join(refs) or 'none'}; snapshots: {', '.join(commits) or 'none'})")
