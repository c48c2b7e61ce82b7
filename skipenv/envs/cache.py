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
  model and process; a cheap watch checked on every call recomputes it after any weight edit), the key of every
  cache of derived model computation; :func:`model_identity` / :func:`check_identity`: the metadata a derived table
  stores and the check that refuses it (:class:`IdentityMismatchError`) for another model or configuration.

Why this module is long: the disk cache and the model identity are one contract (a disk entry is valid only under
the identity that keyed it, and the identity's watch decides when the in-memory caches drop), so they are read and
tested together; the identity half (fingerprint, watch, scope, metadata check) is the candidate to split out.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import operator
import os
import tempfile
import threading
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

__all__ = ["cache_root", "DiskCache", "LRU", "CacheWarning", "model_fingerprint", "model_identity", "check_identity",
           "identity_scope", "identity_token", "IdentityMismatchError", "value_checksum"]


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

    def clear(self) -> None:
        """Drop every entry (the hit / miss counts stay)."""
        with self._lock:
            self._data.clear()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ---------------------------------------------------------------------------------------------------------------
# model identity
#
# Two levels (docs/guarantees.md; costs from ``benchmarks/bench_identity.py``):
#
# 1. a *watch* of the model, checked on every call that reads or fills a cache: for every module, the objects in
#    its ``_parameters`` / ``_buffers`` / ``_modules`` dicts (a new Parameter, buffer or submodule is a new object,
#    or a new key); for every tensor, PyTorch's in-place version counter (``load_state_dict``, ``mul_``, ``copy_``,
#    ``w[0, 0] = x`` under ``no_grad`` all bump it) and its data pointer (``w.data = ...``, ``model.half()``,
#    ``.to(device)`` and ``torch.utils.swap_tensors`` do not bump the counter but move the data); and the bytes of
#    up to 4 sampled elements per tensor (the first and evenly spaced ones), which catches whole-tensor writes
#    that bypass the version counter (``w.data.mul_(2)``, writes through ``w.numpy()``). The watch holds a
#    reference to every watched tensor and its storage, so no address or object id can be reused while it lives.
# 2. the *fingerprint*: BLAKE2b of the config and of every byte of the state dict, recomputed only when the watch
#    sees a change (about 1 s per 500 MB of weights).

_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[_Watch, tuple[str, int]]]" = weakref.WeakKeyDictionary()
_EPOCHS = itertools.count(1)
_FP_LOCK = threading.RLock()
_TRUSTED = threading.local()  # id(model) -> (model, fingerprint) inside identity_scope blocks of this thread

#: elements sampled per tensor by the watch (the first and evenly spaced ones; more cost cold cache lines per check)
SAMPLED_ELEMENTS = 4


class IdentityMismatchError(RuntimeError):
    """Stored derived results (a table, a cache) were made by another model or configuration than the one in use."""


class _Watch:
    """What :func:`model_fingerprint` compares on every call to decide whether the digest must be recomputed. The
    comparisons run as ``map`` / list equality in C (about 10x cheaper than a Python loop over 1,000 slots)."""

    __slots__ = ("dicts", "sizes", "slot_dicts", "slot_keys", "slot_objects", "tensors", "versions",
                 "ptr_tensors", "ptrs", "storages", "views", "sample")

    def __init__(self, model):
        import torch

        # no reference to the model or its modules: the watch is the value of a WeakKeyDictionary keyed by the model
        self.dicts = []  # each module's _parameters, _buffers, _modules dict (the objects)
        self.slot_dicts, self.slot_keys, self.slot_objects = [], [], []  # every tensor / submodule slot
        self.tensors, self.ptr_tensors, self.storages = [], [], []
        views: dict = {}
        seen: set[int] = set()
        for mod in model.modules():
            self.dicts += [mod._parameters, mod._buffers, mod._modules]
            for d in (mod._parameters, mod._buffers, mod._modules):
                for key, obj in d.items():
                    self.slot_dicts.append(d)
                    self.slot_keys.append(key)
                    self.slot_objects.append(obj)
                    if not isinstance(obj, torch.Tensor) or id(obj) in seen:
                        continue
                    seen.add(id(obj))
                    self.tensors.append(obj)
                    if _data_ptr(obj) is not None:
                        self.ptr_tensors.append(obj)
                    try:
                        self.storages.append(obj.untyped_storage())  # keeps the address in use while watched
                    except (RuntimeError, NotImplementedError, TypeError):  # subclasses without a storage
                        pass
                    view = _sample_view(obj)
                    if view is not None:  # grouped by kind (NumPy / torch), dtype and device
                        key = (type(view), str(view.dtype), str(getattr(view, "device", "cpu")))
                        views.setdefault(key, []).append(view)
        self.sizes = list(map(len, self.dicts))
        self.versions = list(map(_VERSION, self.tensors))
        self.ptrs = list(map(_PTR, self.ptr_tensors))
        self.views = list(views.values())
        with torch.no_grad():
            self.sample = [self._read(vs) for vs in self.views]

    @staticmethod
    def _read(views):
        import numpy as np
        import torch

        if isinstance(views[0], np.ndarray):
            return np.concatenate(views)  # a copy
        return torch.cat(views)  # a copy (integers: NaN compares equal to itself)

    @staticmethod
    def _same(a, b) -> bool:
        import numpy as np
        import torch

        return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) else bool(torch.equal(a, b))

    def unchanged(self) -> bool:
        """True if no slot of a module (the tensor / submodule object under its name, and the number of slots),
        version counter, data pointer or sampled element changed."""
        import torch

        if list(map(len, self.dicts)) != self.sizes:  # a slot added or removed
            return False
        if not all(map(operator.is_, map(dict.get, self.slot_dicts, self.slot_keys), self.slot_objects)):
            return False
        if list(map(_VERSION, self.tensors)) != self.versions or list(map(_PTR, self.ptr_tensors)) != self.ptrs:
            return False
        with torch.no_grad():
            for vs, before in zip(self.views, self.sample):
                if not self._same(self._read(vs), before):
                    return False
        return True


_VERSION = operator.attrgetter("_version")
_PTR = operator.methodcaller("data_ptr")


def _data_ptr(t) -> int | None:
    try:
        return int(t.data_ptr())
    except (RuntimeError, NotImplementedError):  # meta / sparse / subclass tensors: the object identity decides
        return None


_INT_OF_SIZE: dict = {}


def _sample_view(t):
    """A view of up to :data:`SAMPLED_ELEMENTS` elements of a dense contiguous tensor (the first and evenly spaced
    ones), reinterpreted as integers of the same width (so NaN compares equal to itself): a NumPy array for a CPU
    tensor (concatenating NumPy views is ~5x cheaper than ``torch.cat``), else a tensor; ``None`` for tensors it
    cannot view (sparse, meta, non-contiguous, 16-byte elements)."""
    import torch

    if not _INT_OF_SIZE:
        _INT_OF_SIZE.update({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64})
    try:
        if t.layout != torch.strided or t.is_meta or not t.is_contiguous() or t.numel() == 0 \
                or t.element_size() not in _INT_OF_SIZE:
            return None
        flat = t.detach().reshape(-1).view(_INT_OF_SIZE[t.element_size()])
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    n = flat.numel()
    step = max(1, (n - 1) // (SAMPLED_ELEMENTS - 1))
    view = flat[::step][:SAMPLED_ELEMENTS]
    if view.device.type == "cpu":
        try:
            return view.numpy()
        except (RuntimeError, TypeError):
            return view
    return view


def _digest(generator) -> str:
    import torch

    model = generator.model
    cfg = {k: v for k, v in generator.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t = t.detach()
            h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.numel():
                h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def model_fingerprint(generator) -> str:
    """The model identity every skipenv cache of derived model computation is keyed by: a stable id (16 hex chars),
    BLAKE2b over the config (without the folder it was loaded from or the transformers version) and over the bytes,
    dtype and shape of *every* tensor of the state dict, in name order. Identical on every machine for identical
    weights, config and dtype; any changed weight changes it.

    The digest is computed once per model per process (about 1 s per 500 MB of weights) and remembered together
    with a watch of the model (see the comment above: module slots, tensor objects, version counters, data
    pointers, 4 sampled elements per tensor) that is compared on every call (0.4-1 ms for the embedded
    SmolLM2-135M's 274 tensors on a busy 2-core CPU, ``benchmarks/bench_identity.py``); the digest is recomputed when the watch sees a
    change. So ``load_state_dict``, in-place ops, ``w.data = ...``, a replaced Parameter, buffer or submodule,
    a dtype or device change all give the new fingerprint on the next call. Not covered: an in-place write that
    bypasses PyTorch's version counter (through ``.data``, ``.numpy()``, DLPack) and changes none of the sampled
    elements of a tensor; edits of the config object or of module code / hooks after the first call; non-persistent
    buffers are watched (:func:`identity_token` changes) but not digested (see docs/guarantees.md). Inside :func:`identity_scope` the watch is not re-checked.

    Args:
        generator: a :class:`~skipenv.generators.SkippableGenerator` (anything with ``.model`` and ``.config``).

    Returns:
        16 lowercase hex characters.
    """
    return _identity(generator)[0]


def identity_token(generator) -> str:
    """``"<fingerprint>/<epoch>"``: the key of the in-memory caches (prefix store, evaluator memos). The epoch
    (a process-wide counter) changes whenever the watch sees *any* change, also one the digest does not cover (an
    in-place edit of a non-persistent buffer such as the rotary ``inv_freq``), so in-memory caches are dropped on
    every change the watch sees, while the disk namespace (the fingerprint) stays stable across processes."""
    digest, epoch = _identity(generator)
    return f"{digest}/{epoch}"


def _identity(generator) -> tuple[str, int]:
    """``(fingerprint, epoch)`` of the generator's model: the trusted value inside :func:`identity_scope`, the
    remembered one while the watch sees no change, else a new digest and epoch."""
    model = generator.model
    trusted = getattr(_TRUSTED, "models", None)
    if trusted:
        hit = trusted.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
    with _FP_LOCK:
        hit = _FINGERPRINTS.get(model)
        if hit is not None and hit[0].unchanged():
            return hit[1]
        watch = _Watch(model)  # before the digest: an edit made while it runs shows as a change next time
        identity = (_digest(generator), next(_EPOCHS))
        _FINGERPRINTS[model] = (watch, identity)
    return identity


@contextlib.contextmanager
def identity_scope(generator):
    """Check the model identity once and trust it for the rest of the block on this thread (nested calls that read
    caches then skip the per-call check). Yields the fingerprint. Use it only around code that does not edit the
    model's weights."""
    identity = _identity(generator)
    model = generator.model
    if not hasattr(_TRUSTED, "models"):
        _TRUSTED.models = {}
    previous = _TRUSTED.models.get(id(model))
    _TRUSTED.models[id(model)] = (model, identity)
    try:
        yield identity[0]
    finally:
        if previous is None:
            _TRUSTED.models.pop(id(model), None)
        else:
            _TRUSTED.models[id(model)] = previous


def model_identity(generator, config: Any = None) -> dict:
    """The identity metadata a table or cache of results derived from ``generator`` should store next to them (and
    compare with :func:`check_identity` before reusing them).

    Args:
        generator: the wrapped model.
        config: optional JSON-serialisable configuration the stored results depend on (env kwargs, table
            settings); stored as given and as a SHA-256 of its canonical JSON.

    Returns:
        ``{"model_fingerprint": str, "model_type": str, "dtype": str, "config": config, "config_sha256": str}``
        (``config`` / ``config_sha256`` only when ``config`` is given).
    """
    out = {"model_fingerprint": model_fingerprint(generator),
           "model_type": str(getattr(generator.config, "model_type", "")),
           "dtype": str(next(generator.model.parameters()).dtype).removeprefix("torch.")}
    if config is not None:
        out["config"] = config
        out["config_sha256"] = value_checksum(config)
    return out


def check_identity(stored: Any, generator, config: Any = None, *, what: str = "stored results",
                   fix: str = "delete them (or write them to another folder) and rerun") -> None:
    """Raise one clear error if ``stored`` (metadata written by :func:`model_identity`) was made by another model or
    configuration than ``generator`` / ``config``.

    Args:
        stored: the metadata read back (a mapping with ``model_fingerprint``, and ``config_sha256`` when ``config``
            is checked).
        generator: the wrapped model now in use.
        config: the configuration now in use (``None``: not compared).
        what: what the stored results are, the start of the message (e.g. ``"probe table runs/probe/outcomes.csv"``).
        fix: what the user should do, for the message.

    Raises:
        IdentityMismatchError: no / malformed metadata, another model fingerprint, or another configuration (the
            message names the differing fingerprint or configuration keys, and ``fix``).
    """
    if not isinstance(stored, dict) or not isinstance(stored.get("model_fingerprint"), str):
        raise IdentityMismatchError(f"{what}: no model identity stored with them (written by an older skipenv, or "
                                    f"edited), so they may come from another model; {fix}")
    current = model_fingerprint(generator)
    if stored["model_fingerprint"] != current:
        raise IdentityMismatchError(f"{what}: made by another model (fingerprint {stored['model_fingerprint']}; the "
                                    f"model in use is {current}: other weights, config or dtype); {fix}")
    if config is not None and stored.get("config_sha256") != value_checksum(config):
        old = stored.get("config")
        if isinstance(old, dict) and isinstance(config, dict):
            keys = sorted(k for k in set(old) | set(config) if old.get(k, _MISSING) != config.get(k, _MISSING))
            detail = "differing settings: " + ", ".join(f"{k} ({old.get(k, '<absent>')!r} -> "
                                                         f"{config.get(k, '<absent>')!r})" for k in keys[:6])
        else:
            detail = f"stored {old!r}, now {config!r}"
        raise IdentityMismatchError(f"{what}: made with another configuration ({detail}); {fix}")


_MISSING = object()
