"""Optuna study storage by URL: the one place that turns --storage (or OPTUNA_STORAGE) into a storage."""
from __future__ import annotations

import os
import re

from ankh3.errors import UserError


class StorageError(UserError, ValueError):
    """An Optuna storage URL that cannot be used; the message says which forms work."""


def open_storage(url: str):
    """An Optuna storage for a URL: journal:PATH -> a journal file, anything with :// -> an RDB URL."""
    import optuna

    if url.startswith("journal:"):
        path = os.path.abspath(url[len("journal:"):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise StorageError(f"--storage={url}: give sqlite:///PATH, a database URL (postgresql://...) or journal:PATH")
    return url


def public_url(url: str) -> str:
    """The storage URL without a password, for tags and logs."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)
