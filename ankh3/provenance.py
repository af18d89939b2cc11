"""Machine-independent names for the files a run reads, for its MLflow params.

A path inside the repository is logged relative to it (`data/pretrain/train.fasta.xz`); any other
path as its base name plus a content digest (`train.fasta@sha256:1a2b…`), so runs from two machines
compare by what they read, never by where it lay.
"""
from __future__ import annotations

import hashlib
import os

from ankh3.names import REPO_ROOT

_EDGE_BYTES = 1 << 20  # a digest reads the size and the first and last MiB: seconds even for large shards


def portable_path(path: str, root: str = REPO_ROOT) -> str:
    """`path` relative to `root` when it lies inside, else NAME@sha256:DIGEST12 of its contents."""
    full = os.path.abspath(path)
    inside = os.path.commonpath([full, os.path.abspath(root)]) == os.path.abspath(root)
    if inside:
        return os.path.relpath(full, root)
    return f"{os.path.basename(full.rstrip(os.sep))}@sha256:{content_digest(full)[:12]}"


def content_digest(path: str) -> str:
    """sha256 over (relative name, size, first and last MiB) of the file, or of every file below a directory."""
    digest = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    for name in files:
        size = os.path.getsize(name)
        digest.update(f"{os.path.relpath(name, path)}\0{size}\0".encode())
        with open(name, "rb") as f:
            digest.update(f.read(_EDGE_BYTES))
            if size > 2 * _EDGE_BYTES:
                f.seek(-_EDGE_BYTES, os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()


def portable_params(params: dict) -> dict:
    """The params with every absolute path that exists made portable (data, init_from, probe files)."""
    return {k: portable_path(v) if isinstance(v, str) and os.path.isabs(v) and os.path.exists(v) else v
            for k, v in params.items()}
