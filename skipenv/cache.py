"""Caches that keep RL affordable on a CPU.

- :class:`DiskCache`: JSON records under the cache folder (``SKIPENV_CACHE``, default ``~/.cache/skipenv``),
  one file per key, written atomically (temporary file + ``os.replace``) so concurrent writers never leave a
  half-written file; an unreadable / corrupt file is treated as a miss, deleted and recomputed.
- :class:`LRU`: a small in-memory least-recently-used map for (example, plan) results.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

__all__ = ["cache_root", "DiskCache", "LRU"]


def cache_root() -> Path:
    """The skipenv cache folder (see :func:`skipenv.assets.cache_dir`)."""
    from .assets import cache_dir

    return cache_dir()


class DiskCache:
    """A folder of JSON records keyed by strings.

    Args:
        namespace: sub-folder name, e.g. ``"full_outputs/<model-fingerprint>/<task>"``.
        root: cache root (default :func:`cache_root`).
    """

    def __init__(self, namespace: str, root: Path | str | None = None):
        self.dir = Path(root or cache_root()) / namespace
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.dir / f"{digest}.json"

    def get(self, key: str) -> Any | None:
        """The stored value, or ``None`` if absent or corrupt (a corrupt file is removed)."""
        path = self._path(key)
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            if record.get("key") != key:
                raise ValueError("key mismatch")
            return record["value"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) atomically."""
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": key, "value": value}, f)
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value


class LRU:
    """In-memory least-recently-used cache with at most ``maxsize`` entries (``maxsize=0`` disables it)."""

    def __init__(self, maxsize: int = 4096):
        self.maxsize = maxsize
        self._data: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key):
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return None

    def put(self, key, value) -> None:
        if self.maxsize <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
