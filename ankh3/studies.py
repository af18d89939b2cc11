"""Optuna study storage by URL: the one place that turns --storage (or OPTUNA_STORAGE) into a storage.

A URL is checked, and a database is connected to, before anything is written: a bad URL is one
StorageError line and leaves no file or folder behind.
"""
from __future__ import annotations

import os
import re

from ankh3.errors import UserError, one_line

FORMS = "give sqlite:///PATH, a database URL (postgresql://...) or journal:PATH"


class StorageError(UserError, ValueError):
    """An Optuna storage URL that cannot be used; the message says which forms work."""


def open_storage(url: str, **rdb_options):
    """An Optuna storage for a URL: journal:PATH -> a journal file, a database URL -> a connected RDBStorage.

    rdb_options go to optuna.storages.RDBStorage (e.g. heartbeat_interval); a journal takes none.
    """
    import optuna

    shown = f"--storage={public_url(url)}"
    if url.startswith("journal:"):
        path = os.path.abspath(url[len("journal:"):])
        _require_folder(shown, path)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise StorageError(f"{shown}: {FORMS}")
    database = _parse(url, shown)
    if database is not None:
        _require_folder(shown, os.path.abspath(database))
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(url, **rdb_options)
    except ImportError as e:  # a dialect whose driver is not installed, e.g. mysql:// without mysqlclient
        raise StorageError(f"{shown}: its database driver is not installed ({one_line(e)[:200]}); {FORMS}") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        why = one_line(getattr(e, "orig", None) or e)[:200]
        raise StorageError(f"{shown}: cannot open the database ({why}); is the server running and the URL right?") from None


def _parse(url: str, shown: str) -> str | None:
    """Checks the URL names a database SQLAlchemy knows; returns a SQLite file's path (None otherwise)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise StorageError(f"{shown}: not a database URL SQLAlchemy knows; {FORMS}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return parsed.database
    return None


def _require_folder(shown: str, path: str) -> None:
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise StorageError(f"{shown}: the folder {folder} does not exist; create it or give another path")


def public_url(url: str) -> str:
    """The storage URL without a password, for tags and logs."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)
