"""``skipenv table build | info | validate``: build a replay table, describe it, recompute a sample live.

Wired into ``skipenv`` by one line of :mod:`skipenv.cli` (``configure_parser(parser)`` adds the three
sub-commands; ``main(args)`` runs one and returns the exit code).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cli.args import finite_float, nonnegative_int, positive_int

__all__ = ["configure_parser", "main", "validate_table", "info_text"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``build``, ``info`` and ``validate`` sub-commands to the ``skipenv table`` parser."""
    sub = parser.add_subparsers(dest="table_command", metavar="ACTION", help="build, info or validate")
    sub.required = True
    b = sub.add_parser("build", help="compute (or resume) a replay table with the exact evaluator",
                       description="Compute every (document, plan) outcome of a grammar with the live evaluator; "
                                   "resumable after kill -9 (rerun the same command).")
    b.add_argument("out", nargs="?", default="xsum-v1",
                   help="table folder, or the name of a shipped table (xsum-v1: the package's data folder)")
    b.add_argument("--env-id", default="SwitchDec-XSum-v1", help="configuration source (gym.spec kwargs)")
    b.add_argument("--model", default=None, help="model name or folder (default: the embedded SmolLM2)")
    b.add_argument("--task-source", default=None, help="'embedded' or a data file")
    b.add_argument("--max-input-tokens", type=positive_int, default=None,
                   help="token budget of the formatted input (default: the id's, else the task's)")
    b.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="generation budget of the full output (default: the task's)")
    b.add_argument("--token-segments", type=positive_int, default=None, help="K document segments (default: 8)")
    b.add_argument("--signals", default=None, help="comma-separated teacher-forced quality signals "
                                                   "(default probability,agreement)")
    b.add_argument("--grammar", default=None, help="a grammar JSON file ({'factors': [...], 'extras': [...]}; "
                                                   "default: skipenv.tables.grammar.default_grammar)")
    b.add_argument("--splits", default="test,train", help="comma-separated, in table order")
    b.add_argument("--limit", type=positive_int, default=None, help="documents per split (default all)")
    b.add_argument("--max-documents", type=nonnegative_int, default=None,
                   help="compute at most this many new documents in this run (resume later); 0: only rewrite "
                        "the table folder from the finished shards")
    b.add_argument("--no-staged-reuse", dest="staged", action="store_false",
                   help="score every plan from the full model's state only, as the live env does (default: a plan "
                        "that skips sublayers and drops tokens restarts from the state of the plan skipping the "
                        "same sublayers; the same outcomes within 1e-4, docs/tables.md)")
    b.add_argument("--workers", type=positive_int, default=1, help="processes (each loads the model)")
    b.add_argument("--threads", type=positive_int, default=None, help="torch threads per worker")
    b.add_argument("--work-dir", default=None, help="shard folder (default $SKIPENV_CACHE/tables/<key>)")
    b.add_argument("--compact-every", type=positive_int, default=10,
                   help="rewrite the table folder every N finished documents")
    i = sub.add_parser("info", help="configuration, coverage, size and per-plan means of a table")
    i.add_argument("table", nargs="?", default="xsum-v1", help="table folder or shipped table name")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    v = sub.add_parser("validate", help="recompute a random sample of (document, plan) pairs live and compare",
                       description="Exit status 1 when any sampled pair differs beyond the tolerance.")
    v.add_argument("table", nargs="?", default="xsum-v1", help="table folder or shipped table name")
    v.add_argument("--samples", type=positive_int, default=200, help="(document, plan) pairs")
    v.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the sample")
    v.add_argument("--tolerance", type=finite_float, default=1e-4,
                   help="max |difference| of a quality (the prefix-reuse / batching exactness bound)")
    v.add_argument("--model", default=None, help="model to validate against (default: the table's)")


def _table_path(name_or_path: str):
    from .store import SHIPPED_TABLES, shipped_table_dir

    return shipped_table_dir(name_or_path) if name_or_path in SHIPPED_TABLES else name_or_path


def info_text(table, as_json: bool = False) -> str:
    """A readable (or JSON) summary of a :class:`~skipenv.tables.store.Table`: configuration, coverage, size,
    and per-plan means (quality loss per signal, FLOPs saved) over the covered documents."""
    import numpy as np

    cost = np.asarray(table.columns["cost"])
    plans = []
    for p, name in enumerate(table.plan_names):
        row = {"plan": name, "flops_saved": float(1 - cost[:, p].mean())}
        for s in table.signals:
            loss = np.asarray(table.columns[f"quality_full.{s}"][:, p]) - np.asarray(table.columns[f"quality.{s}"][:, p])
            row[f"loss_{s}"] = float(loss.mean())
        plans.append(row)
    summary = {"folder": str(table.folder), "config": table.config, "coverage": table.meta.get("coverage"),
               "documents": table.num_documents, "plans": table.num_plans, "size_bytes": table.size_bytes(),
               "per_plan_means": plans}
    if as_json:
        return json.dumps(summary, indent=1)
    lines = [f"table {table.folder}: {table.num_documents} documents x {table.num_plans} plans, "
             f"{table.size_bytes() / 1e6:.2f} MB",
             "configuration: " + json.dumps(table.config, sort_keys=True),
             "coverage: " + ", ".join(f"{s} {c['covered']} of {c['in_split']}"
                                      for s, c in (table.meta.get("coverage") or {}).items())]
    head = f"{'plan':<72} {'saved':>7} " + " ".join(f"{'loss ' + s:>17}" for s in table.signals)
    lines += ["per-plan means over the covered documents (saved = 1 - mean cost; loss = quality_full - quality):",
              head]
    for r in plans:
        lines.append(f"{r['plan']:<72} {r['flops_saved']:7.4f} " +
                     " ".join(f"{r[f'loss_{s}']:17.5f}" for s in table.signals))
    return "\n".join(lines)


def validate_table(table, *, samples: int = 200, seed: int = 0, tolerance: float = 1e-4, model: str | None = None,
                   progress: bool = True) -> dict:
    """Recompute ``samples`` random (document, plan) pairs of ``table`` live (a fresh
    :class:`~skipenv.envs.evaluator.Evaluator` per signal, pair by pair, on the configuration the table records;
    the signals share one teacher-forced forward pass per pair, :func:`~skipenv.tables.build.shared_score_evaluators`)
    and compare.

    A pair matches when every signal's quality and quality_full are within ``tolerance`` (default 1e-4, the
    exactness bound of prefix reuse and batched scoring, :mod:`skipenv.generators.reuse`) and cost, FLOPs, FLOPs
    breakdown, output length and the observation are equal (observation within 1e-5).

    Returns:
        ``{"checked", "mismatches": [...], "max_abs_quality_diff"}``.

    Raises:
        TableError: the model's fingerprint differs from the table's, or the skip mode's calibration statistics
            do (another calibration of the mode than the table was built under).
    """
    import numpy as np
    from tqdm import tqdm

    from ..envs.switchdec import SwitchDecEnv, shared_generator
    from .build import shared_score_evaluators, skip_mode_kwargs
    from ..tasks import make_task
    from .store import TableError, table_fingerprint

    cfg = table.config
    gen = shared_generator(model or cfg["model"], "cpu", cfg["dtype"])
    table.check_fingerprint(table_fingerprint(gen))
    task = make_task(cfg["task"], source=cfg["task_source"], max_input_tokens=int(cfg["max_input_tokens"]))
    evaluators, memo = shared_score_evaluators(gen, task, table.signals, token_segments=int(cfg["token_segments"]),
                                               max_new_tokens=int(cfg["max_new_tokens"]),
                                               observation=cfg["observation"],
                                               segment_boundaries=cfg.get("segment_boundaries", "tokens"),
                                               **skip_mode_kwargs(cfg))
    tag = next(iter(evaluators.values())).skip_mode_tag
    if tag != cfg.get("skip_mode", "identity"):
        raise TableError(f"the table was built under skip mode {cfg.get('skip_mode')!r} but this model and task "
                         f"calibrate to {tag!r}: rebuild the table")
    envs = {s: SwitchDecEnv(task, evaluator=ev, split="all") for s, ev in evaluators.items()}
    by_id = {ex.id: ex for ex in next(iter(envs.values())).examples}
    rng = np.random.default_rng(seed)
    n = min(samples, table.num_documents * table.num_plans)
    flat = rng.choice(table.num_documents * table.num_plans, size=n, replace=False)
    pairs = sorted((int(f) // table.num_plans, int(f) % table.num_plans) for f in flat)
    mismatches, max_diff, seen_obs = [], 0.0, set()
    for row, p in tqdm(pairs, desc="validate", unit="pair", disable=not progress):
        ex_id = table.document_ids[row]
        ex = by_id.get(ex_id)
        if ex is None:
            mismatches.append({"document": ex_id, "plan": table.plan_names[p], "problem": "document not in the task"})
            continue
        problems = []
        if row not in seen_obs:
            seen_obs.add(row)
            env = next(iter(envs.values()))
            obs, _ = env.reset(options={"example_id": ex_id})
            d = float(np.abs(obs - table.columns["observations"][row]).max())
            if d > 1e-5:
                problems.append(f"observation differs by {d:.3g}")
        for s, env in envs.items():
            o = env.outcome(table.plans[p], ex)
            t = table.outcome(row, p, s)
            for k in ("quality", "quality_full"):
                diff = abs(getattr(o, k) - getattr(t, k))
                max_diff = max(max_diff, diff)
                if diff > tolerance:
                    problems.append(f"{s} {k}: live {getattr(o, k):.6f}, table {getattr(t, k):.6f}")
            live = {"cost": o.cost, "flops": o.flops, "flops_full": o.flops_full,
                    "flops_prefill": o.flops_breakdown["prefill"], "flops_decoding": o.flops_breakdown["decoding"],
                    "flops_observation": o.flops_breakdown["observation"], "num_generated": o.num_generated}
            for k, v in live.items():
                if v != getattr(t, k):
                    problems.append(f"{k}: live {v}, table {getattr(t, k)}")
        memo.clear()
        if problems:
            mismatches.append({"document": ex_id, "plan": table.plan_names[p], "problem": "; ".join(problems)})
    return {"checked": len(pairs), "mismatches": mismatches, "max_abs_quality_diff": max_diff}


def main(args) -> int:
    """Run ``skipenv table <action>``; returns the exit code (validate: 1 on any mismatch)."""
    from .store import Table

    if args.table_command == "build":
        from .build import build_table, table_config
        from .grammar import Grammar

        cfg = table_config(args.env_id, model=args.model, task_source=args.task_source,
                           max_input_tokens=args.max_input_tokens, max_new_tokens=args.max_new_tokens,
                           token_segments=args.token_segments,
                           signals=None if args.signals is None else [s.strip() for s in args.signals.split(",")])
        grammar = None
        if args.grammar:
            with open(args.grammar) as f:
                grammar = Grammar.from_dict(json.load(f))
        table = build_table(_table_path(args.out), config=cfg, grammar=grammar,
                            splits=[s.strip() for s in args.splits.split(",") if s.strip()], limit=args.limit,
                            workers=args.workers, threads=args.threads, work_dir=args.work_dir,
                            compact_every=args.compact_every, max_documents=args.max_documents,
                            staged=args.staged)
        print(info_text(table).split("\n")[2])
        return 0
    table = Table.load(_table_path(args.table))
    if args.table_command == "info":
        print(info_text(table, as_json=args.json))
        return 0
    res = validate_table(table, samples=args.samples, seed=args.seed, tolerance=args.tolerance, model=args.model)
    for m in res["mismatches"]:
        print(f"MISMATCH {m['document']} / {m['plan']}: {m['problem']}")
    print(f"validated {res['checked']} (document, plan) pairs of {table.folder}: {len(res['mismatches'])} "
          f"mismatches (max |quality difference| {res['max_abs_quality_diff']:.2e}, tolerance {args.tolerance:g})")
    return 1 if res["mismatches"] else 0
