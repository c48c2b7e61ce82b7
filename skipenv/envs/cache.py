"""Caches that keep RL affordable on a CPU, and the identities they key on.

- :class:`DiskCache`: JSON records under the cache folder (``SKIPENV_CACHE``, default ``~/.cache/skipenv``), one
  file per key, written atomically (temporary file + ``os.replace``) so concurrent writers never leave a
  half-written file. Every record stores a SHA-256 checksum of its value; a record that is unreadable, has the
  wrong key or checksum, or fails the caller's schema check is dropped with a :class:`CacheWarning` and recomputed.
  A folder removed while the process runs is recreated; a cache that cannot be written (read-only folder, disk
  full, a folder in an entry's place) keeps values in memory (one warning); a cache path that is a regular file
  is an error.
- :class:`LRU`: a small in-memory least-recently-used map for (example, plan) outcomes.
- :func:`model_fingerprint`: a digest of the config and *all* weights of a generator's model (computed once per
  model and process, recomputed if a weight was modified in place).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

__all__ = ["cache_root", "DiskCache", "LRU", "CacheWarning", "model_fingerprint", "value_checksum"]


class CacheWarning(UserWarning):
    """A cache entry was dropped and recomputed, or the disk cache fell back to memory."""


def cache_root() -> Path:
    """The skipenv cache folder (see :func:`skipenv.assets.cache_dir`); a folder that cannot be created (read-only
    parent, disk full, ...) is still returned (the :class:`DiskCache` on it then keeps values in memory).

    Raises:
        skipenv.assets.CacheLocationError: ``$SKIPENV_CACHE`` (or the default folder) is a regular file or lies
            under one — one line naming it.
    """
    from ..assets import CACHE_ENV, CacheLocationError, cache_dir

    try:
        return cache_dir()
    except CacheLocationError as e:
        if e.__cause__ is None or isinstance(e.__cause__, (FileExistsError, NotADirectoryError)):
            raise  # a regular file where the cache folder should be: one line naming it
        # cannot be created (read-only parent, disk full ...): DiskCache falls back to memory with one warning
        configured = os.environ.get(CACHE_ENV)
        if configured:
            return Path(configured).expanduser()
        xdg = os.environ.get("XDG_CACHE_HOME")
        return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "skipenv"


def value_checksum(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value`` (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_WARNED_READONLY: set[str] = set()


class DiskCache:
    """A folder of JSON records keyed by strings.

    Args:
        namespace: sub-folder name, e.g. ``"full/<model-fingerprint>"``.
        root: cache root (default :func:`cache_root`, i.e. ``$SKIPENV_CACHE``).
        validate: optional schema check of a stored value: returns ``None`` if the value is acceptable, else a
            short reason; a value with a reason is dropped (with a :class:`CacheWarning`) and recomputed.

    Raises:
        skipenv.assets.CacheLocationError: the cache root (or the namespace folder) is or lies under a regular file.
    """

    def __init__(self, namespace: str, root: Path | str | None = None,
                 validate: Callable[[Any], str | None] | None = None):
        from ..assets import CacheLocationError

        base = Path(root) if root is not None else cache_root()
        if base.exists() and not base.is_dir():
            raise CacheLocationError(
                f"the skipenv cache folder {base} is a regular file; point SKIPENV_CACHE at a folder (or unset it)"
            ) from None
        self.dir = base / namespace
        self.validate = validate
        self._memory: dict[str, Any] | None = None  # set when the folder cannot be written
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise CacheLocationError(f"cache path {self.dir} (or a folder above it) is a regular file: remove it or "
                                     f"point SKIPENV_CACHE at a folder") from None
        except OSError as e:
            self._fall_back_to_memory(e)

    @property
    def in_memory(self) -> bool:
        """True once the cache keeps values in memory because its folder cannot be written."""
        return self._memory is not None

    def _fall_back_to_memory(self, err: OSError) -> None:
        if self._memory is None:
            self._memory = {}
        where = str(self.dir.parent)
        if where not in _WARNED_READONLY:
            _WARNED_READONLY.add(where)
            warnings.warn(f"skipenv cache folder {self.dir} cannot be written ({type(err).__name__}: {err}); "
                          f"keeping cached values in memory for this process (set SKIPENV_CACHE to a writable "
                          f"folder to keep them across runs)", CacheWarning, stacklevel=3)

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.dir / f"{digest}.json"

    def _drop(self, path: Path, reason: str) -> None:
        warnings.warn(f"dropping cache entry {path} ({reason}); it is recomputed", CacheWarning, stacklevel=3)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass

    def get(self, key: str, validate: Callable[[Any], str | None] | None = None) -> Any | None:
        """The stored value, or ``None`` if absent or bad (a bad entry is removed with a warning).

        Args:
            key: the key.
            validate: schema check for this read (default: the one given at construction).
        """
        validate = validate if validate is not None else self.validate
        if self._memory is not None and key in self._memory:
            return self._memory[key]
        path = self._path(key)
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError:
            return None
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: absurdly nested
            self._drop(path, f"unreadable: {type(e).__name__}")
            return None
        if not isinstance(record, dict) or record.get("key") != key or "value" not in record:
            self._drop(path, "not a record of this key")
            return None
        value = record["value"]
        if record.get("sha256") != value_checksum(value):
            self._drop(path, "checksum mismatch: the stored value was changed")
            return None
        if validate is not None:
            reason = validate(value)
            if reason is not None:
                self._drop(path, f"bad value: {reason}")
                return None
        return value

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) atomically, with its checksum."""
        if self._memory is not None:
            self._memory[key] = value
            return
        record = {"key": key, "value": value, "sha256": value_checksum(value)}
        for attempt in (0, 1):
            try:
                fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".json")
            except FileNotFoundError:  # folder removed while running: recreate once
                if attempt == 0:
                    try:
                        self.dir.mkdir(parents=True, exist_ok=True)
                        continue
                    except OSError as e:
                        self._fall_back_to_memory(e)
                else:
                    self._fall_back_to_memory(FileNotFoundError(str(self.dir)))
                self._memory[key] = value
                return
            except OSError as e:  # read-only folder, disk full ...
                self._fall_back_to_memory(e)
                self._memory[key] = value
                return
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(record, f)
                os.replace(tmp, self._path(key))
            except OSError as e:  # disk full, a folder in the entry's place ...: keep values in memory
                Path(tmp).unlink(missing_ok=True)
                self._fall_back_to_memory(e)
                self._memory[key] = value
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value


class LRU:
    """In-memory least-recently-used cache with at most ``maxsize`` entries (``maxsize=0`` disables it).

    Thread-safe (one lock around the ordered dict)."""

    def __init__(self, maxsize: int = 4096):
        self.maxsize = int(maxsize)
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ---------------------------------------------------------------------------------------------------------------
# model identity

_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[int, str]]" = weakref.WeakKeyDictionary()
_FP_LOCK = threading.Lock()


def _weights_version(model) -> int:
    """Sum of the in-place modification counters of every tensor (changes when any weight is edited in place)."""
    return sum(int(t._version) for t in model.state_dict(keep_vars=True).values())


def model_fingerprint(generator) -> str:
    """A stable id (16 hex chars) of the wrapped model: BLAKE2b over its config (without the folder it was loaded
    from or the transformers version) and over the bytes, dtype and shape of *every* tensor of its state dict, in
    name order. Identical on every machine for identical weights and dtype; any changed weight changes it.

    Computed once per model per process (about 1 s per 500 MB of weights) and remembered; recomputed when a weight
    was modified in place since (PyTorch's per-tensor version counters).
    """
    import torch

    model = generator.model
    version = _weights_version(model)
    with _FP_LOCK:
        hit = _FINGERPRINTS.get(model)
        if hit is not None and hit[0] == version:
            return hit[1]
    cfg = {k: v for k, v in generator.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach()
            h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    digest = h.hexdigest()
    with _FP_LOCK:
        _FINGERPRINTS[model] = (version, digest)
    return digest
