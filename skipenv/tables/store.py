"""On-disk format of a replay table: one folder of columnar ``.npy`` files (memory-mapped on load) and a
``meta.json`` that holds the configuration, the model fingerprint, the plan grammar, the document ids, the coverage
and a SHA-256 checksum of every column file.

Layout of a table folder (``D`` covered documents, ``P`` plans, ``n`` observation features)::

    meta.json                          configuration, fingerprint, grammar, documents, columns (+ checksums)
    observations.npy                   [D, n] float32   the live env's observation of each document
    quality.<signal>.npy               [D, P] float64   quality of each (document, plan) per quality signal
    quality_full.<signal>.npy          [D, P] float64   the full model's quality (same for every plan)
    cost.npy                           [D, P] float64   FLOPs(plan, observation included) / FLOPs(full model)
    flops.npy, flops_full.npy          [D, P] int64     FLOPs of the plan run + observation; of the full model
    flops_prefill.npy, flops_decoding.npy, flops_observation.npy   [D, P] int64   the FLOPs breakdown
    num_generated.npy                  [D, P] int64     output tokens the cost was computed for

Rows follow ``meta["documents"]`` (test documents first, then train, each in the task's order); only documents
whose every plan was computed are in a table (``meta["coverage"]`` counts them per split).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from ..plan import PlanSpec
from .grammar import Grammar

__all__ = ["Table", "TableError", "TableOutcome", "FORMAT", "FORMAT_VERSION", "OUTCOME_COLUMNS", "table_fingerprint",
           "shipped_table_dir", "SHIPPED_TABLES", "write_table", "file_sha256"]

FORMAT = "skipenv-replay-table"
FORMAT_VERSION = 1
#: plan-outcome columns shared by every quality signal (``[D, P]`` each)
OUTCOME_COLUMNS = {"cost": "float64", "flops": "int64", "flops_full": "int64", "flops_prefill": "int64",
                   "flops_decoding": "int64", "flops_observation": "int64", "num_generated": "int64"}
#: tables shipped as package data: name -> folder under ``skipenv/tables/data``
SHIPPED_TABLES = {"xsum-v1": "xsum-v1"}


class TableError(ValueError):
    """A table that cannot be used as asked: missing, corrupt, of another model / configuration, or asked for a
    plan, signal or split it does not hold. The message names the mismatch and the fix."""


def table_fingerprint(generator) -> str:
    """The model identity a table records and checks: :func:`skipenv.envs.cache.model_fingerprint` (the one call
    site in :mod:`skipenv.tables`, so a stricter fingerprint applies to tables by changing that function)."""
    from ..envs.cache import model_fingerprint

    return model_fingerprint(generator)


def shipped_table_dir(name: str = "xsum-v1") -> Path:
    """Folder of a table shipped with the package (``skipenv/tables/data/<name>``; it may not exist yet).

    Raises:
        TableError: an unknown name (the message lists the shipped ones).
    """
    if name not in SHIPPED_TABLES:
        raise TableError(f"no shipped table named {name!r}; shipped: {sorted(SHIPPED_TABLES)} (or pass a folder)")
    return Path(__file__).resolve().parent / "data" / SHIPPED_TABLES[name]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TableOutcome(NamedTuple):
    """One tabulated (document, plan) outcome under one quality signal: what a
    :class:`~skipenv.envs.rewards.Reward` and the formulation wrappers read (``quality``, ``quality_full``,
    ``cost``), with the FLOPs breakdown. Fields as :class:`skipenv.envs.evaluator.Outcome` (FLOPs in
    multiply-adds x 2, cost a fraction); ``plan_index`` indexes the table's grammar."""

    example_id: str
    plan_index: int
    quality: float
    quality_full: float
    cost: float
    flops: int
    flops_full: int
    flops_prefill: int
    flops_decoding: int
    flops_observation: int
    num_generated: int

    @property
    def flops_saved(self) -> float:
        return 1.0 - self.cost


def _columns(signals) -> dict[str, str]:
    cols = {"observations": "float32"}
    for s in signals:
        cols[f"quality.{s}"] = "float64"
        cols[f"quality_full.{s}"] = "float64"
    cols.update(OUTCOME_COLUMNS)
    return cols


def write_table(folder: Path, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a table folder atomically: every file goes into a sibling temporary folder, which then replaces
    ``folder`` (a reader sees the old table or the new one, never a mix). ``meta`` gets ``columns`` (file, dtype,
    shape, SHA-256 of each array file) added.

    Raises:
        TableError: an array missing from / extra to the signals' columns, or of the wrong dtype / row count.
    """
    folder = Path(folder)
    want = _columns(meta["config"]["signals"])
    if set(arrays) != set(want):
        raise TableError(f"table arrays {sorted(arrays)} differ from the expected columns {sorted(want)}")
    n_docs = len(meta["documents"]["ids"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir()
    columns = {}
    for name, dtype in want.items():
        a = np.ascontiguousarray(arrays[name])
        if a.dtype != np.dtype(dtype) or a.shape[0] != n_docs:
            raise TableError(f"column {name!r}: dtype {a.dtype} / {a.shape[0]} rows, expected {dtype} / {n_docs}")
        path = tmp / f"{name}.npy"
        np.save(path, a, allow_pickle=False)
        columns[name] = {"file": path.name, "dtype": dtype, "shape": list(a.shape), "sha256": file_sha256(path)}
    meta = dict(meta, columns=columns)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        import shutil

        shutil.rmtree(old)
    return folder


class Table:
    """A loaded replay table (read-only; columns memory-mapped).

    Build one with ``skipenv table build`` (:func:`skipenv.tables.build.build_table`); load it with
    :meth:`load`. Attributes: ``meta`` (the ``meta.json`` dict), ``config`` (the env configuration: model and
    fingerprint, task, source, budgets, token segments, observation kind, quality signals, skip mode),
    ``grammar`` (:class:`~skipenv.tables.grammar.Grammar`), ``spec`` (:class:`~skipenv.plan.PlanSpec`),
    ``document_ids`` / ``document_splits`` (row order), ``columns`` (name -> ``np.memmap``).
    """

    def __init__(self, folder: Path, meta: dict, columns: dict[str, np.ndarray]):
        self.folder, self.meta, self.columns = Path(folder), meta, columns
        self.config: dict = meta["config"]
        self.config.setdefault("segment_boundaries", "tokens")  # tables built before the kwarg: equal token runs
        self.grammar = Grammar.from_dict(meta["grammar"])
        self.spec = PlanSpec(**meta["plan_spec"])
        self.document_ids: list[str] = list(meta["documents"]["ids"])
        self.document_splits: list[str] = list(meta["documents"]["splits"])
        self.plans = self.grammar.plans(self.spec)
        self.plan_names = self.grammar.plan_names
        self._row = {i: r for r, i in enumerate(self.document_ids)}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, folder, *, verify: bool = True) -> "Table":
        """Load the table in ``folder`` (a path, or the name of a shipped table such as ``"xsum-v1"``).

        Args:
            folder: the table folder (holding ``meta.json``) or a shipped table's name.
            verify: check every column file's SHA-256 against ``meta.json`` (about 10 ms per 5 MB).

        Raises:
            TableError: the folder or ``meta.json`` is missing (the message gives the build command), the format
                is unknown, a column file is missing, truncated or edited (checksum), or its dtype / shape differ
                from ``meta.json``.
        """
        if isinstance(folder, str) and folder in SHIPPED_TABLES:
            folder = shipped_table_dir(folder)
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise TableError(f"no replay table at {folder} (no meta.json). Build it with `skipenv table build "
                             f"{folder}` (see docs/tables.md), or pass table=<folder> of an existing table")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise TableError(f"{meta_path} is not readable JSON ({e}); the table is corrupt: rebuild it with "
                             f"`skipenv table build {folder}`") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TableError(f"{meta_path} is not a skipenv replay table (format {meta.get('format')!r} if "
                             f"isinstance(meta, dict) else meta!r)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise TableError(f"{folder}: table format version {meta.get('format_version')!r}, this skipenv reads "
                             f"{FORMAT_VERSION}; rebuild it with `skipenv table build {folder}`")
        try:
            want = _columns(meta["config"]["signals"])
            entries = meta["columns"]
            n_docs = len(meta["documents"]["ids"])
        except (KeyError, TypeError) as e:
            raise TableError(f"{meta_path} lacks {e}; the table is corrupt: rebuild it") from None
        if set(entries) != set(want):
            raise TableError(f"{folder}: columns {sorted(entries)} differ from the expected {sorted(want)}")
        columns = {}
        for name, entry in entries.items():
            path = folder / entry["file"]
            if not path.is_file():
                raise TableError(f"{folder}: column file {entry['file']} is missing; the table is incomplete: "
                                 f"restore it (git checkout) or rebuild with `skipenv table build {folder}`")
            if verify and file_sha256(path) != entry["sha256"]:
                raise TableError(f"{folder}: {entry['file']} does not match its checksum in meta.json (the file was "
                                 f"truncated or edited); restore it (git checkout) or rebuild with `skipenv table "
                                 f"build {folder}`")
            try:
                a = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise TableError(f"{folder}: {entry['file']} is not a readable .npy file ({e}); rebuild the "
                                 f"table") from None
            if str(a.dtype) != entry["dtype"] or list(a.shape) != entry["shape"] or a.shape[0] != n_docs:
                raise TableError(f"{folder}: {entry['file']} has dtype {a.dtype} shape {a.shape}, meta.json says "
                                 f"{entry['dtype']} {entry['shape']} for {n_docs} documents; rebuild the table")
            columns[name] = a
        return cls(folder, meta, columns)

    # ------------------------------------------------------------------ identity checks
    @property
    def fingerprint(self) -> str:
        return self.config["fingerprint"]

    @property
    def signals(self) -> list[str]:
        return list(self.config["signals"])

    def check_config(self, expected: Mapping[str, Any], what: str = "the env") -> None:
        """Raise unless every key of ``expected`` equals the table's configuration value.

        Raises:
            TableError: naming each differing key with both values, and the fix.
        """
        diff = {k: (self.config.get(k), v) for k, v in expected.items() if self.config.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: table {a!r} vs {what} {b!r}" for k, (a, b) in sorted(diff.items()))
            raise TableError(f"the table at {self.folder} was built for another configuration ({lines}). Rebuild "
                             f"it for this configuration with `skipenv table build` (see docs/tables.md), or use "
                             f"the configuration it holds")

    def check_fingerprint(self, fingerprint: str) -> None:
        """Raise unless ``fingerprint`` (of a loaded generator, :func:`table_fingerprint`) is the table's.

        Raises:
            TableError: another model (or edited weights) than the table was built with.
        """
        if fingerprint != self.fingerprint:
            raise TableError(f"the table at {self.folder} was built with model fingerprint {self.fingerprint}, but "
                             f"this model's is {fingerprint} (other weights, dtype or config): its outcomes do not "
                             f"hold for this model. Rebuild the table with this model (`skipenv table build --model "
                             f"...`)")

    def check_signal(self, signal: str) -> str:
        """``signal`` if the table holds it.

        Raises:
            TableError: a signal the table was not built with (names the held ones).
        """
        if signal not in self.signals:
            raise TableError(f"the table at {self.folder} holds quality signals {self.signals}, not {signal!r}; "
                             f"pass quality= one of them, or build a table with --signals {signal}")
        return signal

    # ------------------------------------------------------------------ access
    @property
    def num_documents(self) -> int:
        return len(self.document_ids)

    @property
    def num_plans(self) -> int:
        return self.grammar.num_plans

    def rows(self, split: str) -> np.ndarray:
        """Row indices (``int64``) of the covered documents of ``split`` (``"all"``: every row).

        Raises:
            TableError: the table covers no document of that split.
        """
        if split == "all":
            return np.arange(self.num_documents)
        rows = np.array([r for r, s in enumerate(self.document_splits) if s == split], dtype=np.int64)
        if not len(rows):
            held = sorted(set(self.document_splits))
            raise TableError(f"the table at {self.folder} covers no document of split {split!r} (it covers {held}); "
                             f"pass split= one of them, or extend the build (`skipenv table build --splits ...`)")
        return rows

    def row_of(self, example_id: str) -> int:
        """Row of a document id.

        Raises:
            TableError: the id is not in the table (e.g. a document the build has not reached yet).
        """
        r = self._row.get(example_id)
        if r is None:
            raise TableError(f"document {example_id!r} is not in the table at {self.folder} ({self.num_documents} "
                             f"documents covered; {self.meta.get('coverage')})")
        return r

    def outcome(self, row: int, plan_index: int, signal: str) -> TableOutcome:
        """The tabulated outcome of plan ``plan_index`` on document ``row`` under ``signal``."""
        c = self.columns
        return TableOutcome(self.document_ids[row], int(plan_index), float(c[f"quality.{signal}"][row, plan_index]),
                            float(c[f"quality_full.{signal}"][row, plan_index]), float(c["cost"][row, plan_index]),
                            int(c["flops"][row, plan_index]), int(c["flops_full"][row, plan_index]),
                            int(c["flops_prefill"][row, plan_index]), int(c["flops_decoding"][row, plan_index]),
                            int(c["flops_observation"][row, plan_index]), int(c["num_generated"][row, plan_index]))

    def size_bytes(self) -> int:
        return sum((self.folder / e["file"]).stat().st_size for e in self.meta["columns"].values()) + \
            (self.folder / "meta.json").stat().st_size

    def __repr__(self) -> str:
        return f"Table({str(self.folder)!r}, {self.num_documents} documents x {self.num_plans} plans)"
