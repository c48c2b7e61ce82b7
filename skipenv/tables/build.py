"""Build a replay table with today's exact :class:`~skipenv.envs.evaluator.Evaluator`: every (document, plan)
outcome of a grammar, for each quality signal, plus each document's observation as the live env returns it.

The build is resumable after ``kill -9``: each document's row is written as one shard file in a work folder
(``$SKIPENV_CACHE/tables/<table key>/<split>-<index>.npz`` by default, keyed by the configuration, the model
fingerprint and the grammar), through a temporary file and ``os.replace``, so a half-written row is never read; a
shard that does not load (truncated, edited, another key) is computed again. The table folder is (re)written from
the complete shards at the end and every ``compact_every`` documents (atomically, see
:func:`skipenv.tables.store.write_table`), so an interrupted build leaves a usable table of the documents done.
A build whose shard folder is gone (another machine, a fresh clone) first turns the rows of the table already in
``out_dir`` into shards when that table has the same key, so a committed table is itself a checkpoint.

Signals: teacher-forced ones (``"probability"``, ``"agreement"``, ``"likelihood"``), whose cost does not depend on
the signal; the two default signals score the same target (the full output), so one forward pass per
(document, plan) gives both (a shared score memo between the two evaluators). Outcomes are computed pair by pair
with :meth:`Evaluator.outcome` (prefix reuse on, as in the live env), so a row equals what the live env's ``step``
computes for that (document, plan) within the 1e-4 reuse tolerance; by default with staged reuse
(:class:`~skipenv.generators.reuse.StagedStates`: a plan that skips sublayers and drops tokens restarts from the
stored state of the plan skipping the same sublayers on the whole input; 1.39x fewer CPU-seconds per row,
``benchmarks/bench_table_build.py``, docs/tables.md).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..generators.reuse import StagedStates
from .grammar import Grammar, default_grammar
from .store import FORMAT, FORMAT_VERSION, OUTCOME_COLUMNS, Table, TableError, table_fingerprint, write_table

__all__ = ["build_table", "table_config", "DEFAULT_SIGNALS", "DEFAULT_SPLITS", "TableBuilder", "shared_score_evaluators"]

DEFAULT_SIGNALS = ("probability", "agreement")
#: test documents first (an interrupted build covers the evaluation split first), then train
DEFAULT_SPLITS = ("test", "train")
_TEACHER_FORCED = ("probability", "agreement", "likelihood")


def table_config(env_id: str | None = "SwitchDec-XSum-v1", **overrides) -> dict:
    """The env configuration a table is built for: the registered kwargs of ``env_id`` (``gym.spec``) with
    ``overrides`` (``model``, ``task``, ``task_source``, ``max_input_tokens``, ``max_new_tokens``,
    ``token_segments``, ``segment_boundaries``, ``observation``, ``signals``, ``dtype``) applied. ``fingerprint``, the resolved budgets
    and the plan spec are filled in by :class:`TableBuilder` once the model is loaded.

    Raises:
        TableError: an unknown override, a generating signal, or an unknown id.
    """
    import gymnasium as gym

    # the ids are registered: importing any skipenv submodule runs skipenv/__init__.py first

    allowed = {"model", "task", "task_source", "max_input_tokens", "max_new_tokens", "token_segments", "observation",
               "signals", "dtype", "segment_boundaries", "skip_mode", "calibration_documents", "linear_rank"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TableError(f"unknown table configuration key(s) {unknown}; allowed: {sorted(allowed)}")
    kw: dict[str, Any] = {}
    if env_id is not None:
        try:
            kw = dict(gym.spec(env_id).kwargs)
        except gym.error.Error as e:
            raise TableError(f"unknown env id {env_id!r} ({e})") from None
    cfg = {"env_id": env_id, "model": "smollm2-135m-instruct", "task": kw.get("task", "xsum"),
           "task_source": kw.get("task_source", "embedded"), "max_input_tokens": kw.get("max_input_tokens"),
           "max_new_tokens": kw.get("max_new_tokens"), "token_segments": kw.get("token_segments", 8),
           "observation": kw.get("observation", "pooled"), "signals": list(DEFAULT_SIGNALS), "dtype": "float32",
           # the id's skip mode (v2: linear, with its calibration settings), never a silent identity
           "skip_mode": kw.get("skip_mode", "identity"), "segment_boundaries": kw.get("segment_boundaries", "tokens"),
           **{k: kw[k] for k in ("calibration_documents", "linear_rank") if kw.get(k) is not None},
           # the env defaults a table env takes from its source id (quality signal, tau, formulation)
           "env_defaults": {k: kw[k] for k in ("quality", "tau", "formulation") if k in kw}}
    for k, v in overrides.items():
        if v is not None:
            cfg[k] = list(v) if k == "signals" else v
    from ..tasks.units import check_segment_boundaries

    try:
        check_segment_boundaries(cfg["segment_boundaries"])
    except ValueError as e:
        raise TableError(str(e)) from None
    if cfg["segment_boundaries"] == "tokens":  # the default stays out of the config: earlier builds keep their key
        del cfg["segment_boundaries"]
    bad = [s for s in cfg["signals"] if s not in _TEACHER_FORCED]
    if bad or not cfg["signals"]:
        raise TableError(f"signals {cfg['signals']}: a table holds teacher-forced signals {list(_TEACHER_FORCED)} "
                         f"(one cost per plan); generating signals are not tabulated")
    return cfg


def skip_mode_kwargs(config: dict) -> dict:
    """The Evaluator kwargs of a table configuration's skip mode (``config["skip_mode"]`` is ``"identity"``, a mode
    name before the build, or ``"<mode>:<digest>"`` after it)."""
    mode = str(config.get("skip_mode", "identity")).split(":")[0]
    if mode == "identity":
        return {}
    return {"skip_mode": mode, **{k: config[k] for k in ("calibration_documents", "linear_rank")
                                  if config.get(k) is not None}}


def shared_score_evaluators(generator, task, signals, **evaluator_kwargs) -> tuple[dict, dict]:
    """One :class:`~skipenv.envs.evaluator.Evaluator` per quality signal over ``generator`` and ``task``, whose
    teacher-forced ``score`` calls are memoised across the signals: ``probability`` and ``agreement`` score the same
    target (the full output) under the same plan, so the second signal reuses the first one's forward pass (the same
    call with the same arguments returns the same ``ScoreOutput``). Returns ``(signal -> evaluator, memo)``; clear
    the memo between documents."""
    from ..envs.evaluator import Evaluator
    from ..envs.quality import get_signal

    memo: dict = {}

    class _SharedScores(Evaluator):
        def score(self, example, target_ids, plan):
            key = (example.id, tuple(int(t) for t in target_ids), plan)
            hit = memo.get(key)
            if hit is None:
                hit = memo[key] = super().score(example, target_ids, plan)
            return hit

    return {s: _SharedScores(generator, task, quality=get_signal(s), **evaluator_kwargs) for s in signals}, memo


def _key(config: dict, grammar: Grammar) -> str:
    import hashlib

    return hashlib.sha256(json.dumps({"config": config, "grammar": grammar.to_dict()}, sort_keys=True).encode()
                          ).hexdigest()[:16]


class TableBuilder:
    """Computes rows of a table in one process (a worker of :func:`build_table`, or the whole build).

    Loads the generator once and builds one :class:`~skipenv.envs.switchdec.SwitchDecEnv` per quality signal, all
    over that generator; the evaluators of signals that score the same target share a score memo (one forward pass
    per document and plan for ``probability`` + ``agreement``).

    Args:
        config: :func:`table_config`'s dict.
        grammar: the plans (default :func:`~skipenv.tables.grammar.default_grammar` of the model).
        work_dir: shard folder (default ``$SKIPENV_CACHE/tables/<key>``).
        threads: torch threads in this process (default: leave torch's setting).
        staged: score the plans that skip sublayers and drop tokens from the stored state of the plan that skips the
            same sublayers on the whole input (:class:`~skipenv.generators.reuse.StagedStates`; decoder-only
            models; default ``True``). The same outcomes within the 1e-4 reuse tolerance; measured
            in ``benchmarks/bench_table_build.py`` (docs/tables.md). ``False``: the live env's per-plan path.
    """

    def __init__(self, config: dict, grammar: Grammar | dict | None = None, work_dir=None,
                 threads: int | None = None, staged: bool = True):
        from ..envs.switchdec import SwitchDecEnv, shared_generator
        from ..tasks import make_task

        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))
        config = dict(config)
        self.generator = shared_generator(config["model"], "cpu", config["dtype"])
        kw = {} if config.get("max_input_tokens") is None else {"max_input_tokens": int(config["max_input_tokens"])}
        self.task = make_task(config["task"], source=config["task_source"], **kw)
        evaluators, self._memo = shared_score_evaluators(
            self.generator, self.task, config["signals"], token_segments=int(config["token_segments"]),
            max_new_tokens=config.get("max_new_tokens"), observation=config["observation"],
            segment_boundaries=config.get("segment_boundaries", "tokens"), **skip_mode_kwargs(config))
        self.envs = {s: SwitchDecEnv(self.task, evaluator=ev, split="all") for s, ev in evaluators.items()}
        first = self.envs[config["signals"][0]]
        config.update(fingerprint=table_fingerprint(self.generator), max_input_tokens=self.task.max_input_tokens,
                      max_new_tokens=first.max_new_tokens, observation=first.observation_kind)
        if first.evaluator.skip_mode != "identity":  # the mode and the digest of its calibration statistics
            config["skip_mode"] = first.evaluator.skip_mode_tag
        self.config = config
        self.spec = first.plan_spec
        if grammar is None:
            grammar = default_grammar(self.spec)
        elif isinstance(grammar, dict):
            grammar = Grammar.from_dict(grammar)
        self.grammar = grammar
        self.plans = grammar.plans(self.spec)
        self.key = _key(config, grammar)
        if work_dir is None:
            from ..assets import cache_dir

            work_dir = cache_dir() / "tables" / self.key
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._examples = {}
        self.staged = bool(staged)

    # ------------------------------------------------------------------ documents
    def examples(self, split: str) -> list:
        """The task's examples of ``split`` (memoised; ``[]`` for a split the task leaves empty)."""
        if split not in self._examples:
            if split not in ("train", "validation", "test", "all"):
                raise TableError(f"unknown split {split!r}; use train, validation, test or all")
            try:
                self._examples[split] = list(self.task.examples(split))
            except ValueError:  # the task has no example in that split
                self._examples[split] = []
        return self._examples[split]

    def documents(self, splits: Sequence[str] = DEFAULT_SPLITS, limit: int | None = None) -> list[tuple[str, int]]:
        """``(split, index in split)`` of the documents to tabulate, in table order (``limit`` per split)."""
        out = []
        for s in splits:
            n = len(self.examples(s)) if limit is None else min(int(limit), len(self.examples(s)))
            out += [(s, i) for i in range(n)]
        return out

    def shard_path(self, split: str, index: int) -> Path:
        return self.work_dir / f"{split}-{index:05d}.npz"

    def read_shard(self, split: str, index: int) -> dict | None:
        """The shard's arrays, or ``None`` if it is missing or unreadable / of another table (then recomputed)."""
        path = self.shard_path(split, index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            meta = json.loads(str(d.pop("meta")))
            ex = self.examples(split)[index]
            ok = meta.get("key") == self.key and meta.get("example_id") == ex.id \
                and all(d[f"quality.{s}"].shape == (len(self.plans),) for s in self.config["signals"])
        except Exception as e:  # noqa: BLE001 - any unreadable shard is recomputed
            warnings.warn(f"table shard {path} is unreadable ({type(e).__name__}: {e}); computing it again",
                          RuntimeWarning, stacklevel=2)
            return None
        if not ok:
            warnings.warn(f"table shard {path} belongs to another table or document; computing it again",
                          RuntimeWarning, stacklevel=2)
            return None
        d["example_id"] = ex.id
        return d

    def compute_row(self, split: str, index: int) -> dict:
        """Compute one document's row (observation and every plan's outcome) and write its shard atomically."""
        ex = self.examples(split)[index]
        signals = self.config["signals"]
        arrays: dict[str, np.ndarray] = {}
        cost = None
        for s in signals:
            env = self.envs[s]
            if s == signals[0]:
                obs, _ = env.reset(options={"example_id": ex.id}) if ex.id in env._by_id else (None, None)
                if obs is None:
                    raise TableError(f"document {ex.id!r} is not in the task's examples")
                arrays["observations"] = np.asarray(obs, dtype=np.float32)
            # pair by pair, as the live env's step computes an outcome (batched scoring would agree only within
            # 1e-4 and buys little on a CPU: README "Speed"); with staged reuse, the plans that keep every token
            # first, so each plan that also drops tokens finds the state of its sublayer skips (docs/tables.md)
            order = sorted(range(len(self.plans)), key=lambda i: any(self.plans[i].tokens))
            outs_by = {}
            previous = getattr(self.generator, "staged_states", None)
            store = getattr(self.generator, "prefix_store", None)
            admit = None if store is None else store.admit_after
            if self.staged and hasattr(self.generator, "staged_states") and store is not None:
                self.generator.staged_states = StagedStates()
                store.admit_after = 1  # the first sublayer plan already runs from (and keeps) a state
            try:
                for i in order:
                    outs_by[i] = env.evaluator.outcome(ex, self.plans[i])
            finally:
                if hasattr(self.generator, "staged_states"):
                    self.generator.staged_states = previous
                if store is not None:
                    store.admit_after = admit
            outs = [outs_by[i] for i in range(len(self.plans))]
            arrays[f"quality.{s}"] = np.array([o.quality for o in outs], dtype=np.float64)
            arrays[f"quality_full.{s}"] = np.array([o.quality_full for o in outs], dtype=np.float64)
            c = {"cost": [o.cost for o in outs], "flops": [o.flops for o in outs],
                 "flops_full": [o.flops_full for o in outs],
                 "flops_prefill": [o.flops_breakdown["prefill"] for o in outs],
                 "flops_decoding": [o.flops_breakdown["decoding"] for o in outs],
                 "flops_observation": [o.flops_breakdown["observation"] for o in outs],
                 "num_generated": [o.num_generated for o in outs]}
            if cost is None:
                cost = c
            elif c != cost:
                raise TableError(f"signals {signals} give different costs on {ex.id!r}; tabulate them separately")
        for k, dtype in OUTCOME_COLUMNS.items():
            arrays[k] = np.array(cost[k], dtype=dtype)
        self._memo.clear()
        self.write_shard(split, index, arrays)
        return dict(arrays, example_id=ex.id)

    def write_shard(self, split: str, index: int, arrays: dict) -> None:
        """Write one document's row atomically (temporary file, fsync, ``os.replace``)."""
        ex = self.examples(split)[index]
        path = self.shard_path(split, index)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        meta = json.dumps({"key": self.key, "example_id": ex.id, "split": split, "index": index})
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(meta), **{k: v for k, v in arrays.items() if k != "example_id"})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def seed_from_table(self, out_dir) -> int:
        """Write shards for the rows of an existing table in ``out_dir`` built with this builder's key (a
        committed table then resumes on a machine without the shard folder); returns how many were written.
        A table that does not load (corrupt) or has another key contributes nothing."""
        try:
            t = Table.load(out_dir)
        except TableError:
            return 0
        if t.meta.get("key") != self.key:
            return 0
        pos = {}
        for split in set(t.document_splits):
            pos.update({(split, ex.id): i for i, ex in enumerate(self.examples(split))})
        n = 0
        for r, (ex_id, split) in enumerate(zip(t.document_ids, t.document_splits)):
            i = pos.get((split, ex_id))
            if i is None or self.shard_path(split, i).is_file():
                continue
            self.write_shard(split, i, {k: np.array(v[r]) for k, v in t.columns.items()})
            n += 1
        return n

    # ------------------------------------------------------------------ the table folder
    def compact(self, out_dir, documents: Sequence[tuple[str, int]], *, extra_meta: dict | None = None) -> Table:
        """Write the table folder from the complete shards of ``documents`` (others are left out; coverage says
        how many per split) and return it loaded.

        Raises:
            TableError: no document has a complete shard yet.
        """
        rows, ids, splits = [], [], []
        total: dict[str, int] = {}
        for split, i in documents:
            total[split] = total.get(split, 0) + 1
            d = self.read_shard(split, i)
            if d is not None:
                rows.append(d)
                ids.append(d["example_id"])
                splits.append(split)
        if not rows:
            raise TableError("no document of the table is computed yet; run `skipenv table build` first")
        names = ["observations"] + [f"{p}.{s}" for s in self.config["signals"] for p in ("quality", "quality_full")] \
            + list(OUTCOME_COLUMNS)
        arrays = {n: np.stack([r[n] for r in rows]) for n in names}
        coverage = {s: {"covered": splits.count(s), "requested": n, "in_split": len(self.examples(s))}
                    for s, n in total.items()}
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": self.key, "config": self.config,
                "plan_spec": {"model_type": self.spec.model_type, "num_encoder_layers": self.spec.num_encoder_layers,
                              "num_decoder_layers": self.spec.num_decoder_layers,
                              "token_segments": self.spec.token_segments},
                "grammar": self.grammar.to_dict(), "plan_names": self.grammar.plan_names,
                "documents": {"ids": ids, "splits": splits}, "coverage": coverage,
                "observation_size": int(arrays["observations"].shape[1]), **(extra_meta or {})}
        from .. import __version__

        meta["skipenv_version"] = __version__
        write_table(Path(out_dir), meta, arrays)
        return Table.load(out_dir)


# ---------------------------------------------------------------------------------------------- the parallel build
_WORKER: dict = {}


def _init_worker(config, grammar, work_dir, threads, staged=True):
    _WORKER["b"] = TableBuilder(config, grammar, work_dir, threads=threads, staged=staged)


def _work(item):
    split, i = item
    _WORKER["b"].compute_row(split, i)
    return item


def build_table(out_dir, *, config: dict | None = None, grammar: Grammar | dict | None = None,
                splits: Sequence[str] = DEFAULT_SPLITS, limit: int | None = None, workers: int = 1,
                threads: int | None = None, work_dir=None, compact_every: int = 25, progress: bool = True,
                max_documents: int | None = None, staged: bool = True) -> Table:
    """Build (or resume) the table of ``config`` x ``grammar`` on the documents of ``splits`` into ``out_dir``.

    Args:
        out_dir: the table folder written (atomically replaced).
        config: :func:`table_config` (default: ``SwitchDec-XSum-v1``'s).
        grammar: the plans (default: :func:`~skipenv.tables.grammar.default_grammar`).
        splits: splits in table order (default test, then train).
        limit: documents per split (default all).
        workers: processes computing rows (each loads the model; ``1`` = this process).
        threads: torch threads per worker.
        work_dir: shard folder (default ``$SKIPENV_CACHE/tables/<key>``).
        compact_every: rewrite the table folder every this many finished documents (and at the end).
        progress: a tqdm bar with ETA.
        max_documents: stop after computing this many new documents (a time-boxed build step; resume later);
            ``0`` only rewrites ``out_dir`` from the finished shards (e.g. of a build of another split into a
            scratch folder: the shards are shared through ``work_dir``).
        staged: staged prefix reuse (:class:`TableBuilder`'s ``staged``; default on).

    Returns:
        The written :class:`~skipenv.tables.store.Table`.

    Raises:
        TableError: ``out_dir`` holds a table of another configuration, model or grammar (the message names the
            differing entry; delete the folder or pick another), or a bad configuration.
    """
    from tqdm import tqdm

    config = config if config is not None else table_config()
    t0 = time.perf_counter()
    b = TableBuilder(config, grammar, work_dir, threads=threads, staged=staged)
    out_dir = Path(out_dir)
    if (out_dir / "meta.json").is_file():
        try:
            old = json.loads((out_dir / "meta.json").read_text())
        except ValueError:
            old = {}
        if old.get("key") not in (None, b.key):
            oc = old.get("config", {})
            diff = {k: (oc.get(k), v) for k, v in b.config.items() if oc.get(k) != v}
            if old.get("grammar") != b.grammar.to_dict():
                diff["grammar"] = ("(other)", "(this build's)")
            raise TableError(f"{out_dir} holds a table of another configuration "
                             f"({'; '.join(f'{k}: {a!r} there, {c!r} here' for k, (a, c) in sorted(diff.items()))}); "
                             f"delete that folder or build into another one")
    docs = b.documents(splits, limit)
    seeded = b.seed_from_table(out_dir)
    if seeded and progress:
        print(f"{seeded} rows taken from the existing table at {out_dir} (same key {b.key})")
    todo = [d for d in docs if b.read_shard(*d) is None]
    for stale in b.work_dir.glob("*.tmp-*"):  # a killed writer's temporary file: never read, removed
        stale.unlink(missing_ok=True)
    if max_documents is not None:
        todo = todo[: int(max_documents)]
    bar = tqdm(total=len(docs), initial=len(docs) - len([d for d in docs if not b.shard_path(*d).is_file()]),
               desc="table rows", unit="document", disable=not progress, smoothing=0.1)
    extra = {"build": {"work_dir": str(b.work_dir), "key": b.key}}
    done = 0

    def finished():
        nonlocal done
        done += 1
        bar.update(1)
        if compact_every and done % compact_every == 0:
            b.compact(out_dir, docs, extra_meta=extra)

    if workers <= 1 or len(todo) <= 1:
        for d in todo:
            b.compute_row(*d)
            finished()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(int(workers), mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(config, b.grammar.to_dict(), str(b.work_dir), threads, staged)) as pool:
            for f in as_completed([pool.submit(_work, d) for d in todo]):
                f.result()
                finished()
    bar.close()
    table = b.compact(out_dir, docs, extra_meta=extra)
    if progress:
        print(f"table {out_dir}: {table.num_documents} documents x {table.num_plans} plans "
              f"({time.perf_counter() - t0:.0f} s)")
    return table
