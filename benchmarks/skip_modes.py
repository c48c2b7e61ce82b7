"""Skip modes on the embedded SmolLM2: each of the 60 one-sublayer plans (30 attention, 30 FFN) under each skip
mode (``identity``, ``mean``, ``linear``), on XSum train documents that are not calibration documents, with
``SwitchDec-XSum-v1``'s configuration (probability signal, tau 0.01, 8 token segments).

Per (mode, sublayer) it reports:

- ``saved``: FLOPs saved by the bit, as a fraction of the full model's FLOPs: ``cost(skip nothing) − cost(plan)``
  (mean over documents; the observation's FLOPs are in both costs, so they cancel; a bypass's FLOPs are charged);
- ``mean loss`` / ``median loss``: ``q_full − q`` of the probability signal over documents;
- ``within tau``: share of documents with ``q >= q_full − tau``.

Then per mode: how many of the 60 bits are within tau on >= 50 % of the documents (issue 22's target: >= 15).
The calibration is :mod:`skipenv.envs.skip_modes`' (the first ``--calibration-documents`` train documents); the
evaluation documents are the next ``--documents`` train documents. Resumable: rows already in
``--out``/skip_modes.csv are not recomputed. Writes ``skip_modes.csv`` (one row per mode, document and plan) and
``skip_modes.md`` into ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/skip_modes.py --documents 12 --modes identity mean linear --out runs/skip_modes
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's skipenv, not another install

FIELDS = ["mode", "rank", "document", "candidate", "quality", "quality_full", "cost", "cost_nothing", "flops"]


def _tag(mode: str, rank: int | None) -> str:
    return f"linear-r{rank}" if mode == "linear" else mode


def summarize(rows: list[dict], tau: float) -> tuple[list[dict], list[dict]]:
    """Per (mode, candidate) statistics and per-mode counts of bits within tau on >= 50 % of the documents."""
    by: dict = {}
    for r in rows:
        by.setdefault((r["mode_tag"], r["candidate"]), []).append(r)
    table = []
    for (tag, cand), rs in sorted(by.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):
        loss = np.array([float(r["quality_full"]) - float(r["quality"]) for r in rs])
        saved = np.array([float(r["cost_nothing"]) - float(r["cost"]) for r in rs])
        table.append({"mode": tag, "candidate": cand, "documents": len(rs), "saved": float(saved.mean()),
                      "mean_loss": float(loss.mean()), "median_loss": float(np.median(loss)),
                      "within_tau": float((loss <= tau + 1e-12).mean())})
    counts = []
    for tag in sorted({t["mode"] for t in table}, key=_mode_order):
        ts = [t for t in table if t["mode"] == tag]
        ok = [t for t in ts if t["within_tau"] >= 0.5]
        counts.append({"mode": tag, "bits": len(ts), "bits within tau on >= 50 % of documents": len(ok),
                       "attention bits": sum(t["candidate"].startswith("attention") for t in ok),
                       "FFN bits": sum(t["candidate"].startswith("ffn") for t in ok),
                       "median over bits of mean loss": float(np.median([t["mean_loss"] for t in ts])),
                       "mean saved per bit": float(np.mean([t["saved"] for t in ts]))})
    return table, counts


def _mode_order(tag: str):
    return (("identity", "mean", "linear").index(tag.split("-")[0]), tag)


def _order(cand: str):
    kind, i = cand.rsplit(".", 1)
    return (kind != "attention", int(i))


def _markdown(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def _wide(table: list[dict], tags: list[str]) -> str:
    """One row per candidate, the modes side by side: saved / mean loss / median loss / share within tau."""
    by = {(t["mode"], t["candidate"]): t for t in table}
    cands = sorted({t["candidate"] for t in table}, key=_order)
    cols = ["bit"] + [f"saved {m}" for m in tags] + [f"mean loss {m}" for m in tags] + \
        [f"median loss {m}" for m in tags] + [f"within tau {m}" for m in tags]
    rows = []
    for c in cands:
        r = {"bit": c}
        for m in tags:
            t = by.get((m, c))
            for key, name in (("saved", "saved"), ("mean_loss", "mean loss"), ("median_loss", "median loss"),
                              ("within_tau", "within tau")):
                r[f"{name} {m}"] = "" if t is None else (f"{100 * t[key]:.2f} %" if key == "saved" else
                                                         f"{100 * t[key]:.0f} %" if key == "within_tau" else
                                                         f"{t[key]:.4f}")
        rows.append(r)
    return _markdown(rows, cols)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-id", default="SwitchDec-XSum-v1")
    p.add_argument("--documents", type=int, default=12, help="evaluation train documents (after the calibration ones)")
    p.add_argument("--calibration-documents", type=int, default=None, help="default: the env's (16)")
    p.add_argument("--modes", nargs="+", default=["identity", "mean", "linear"])
    p.add_argument("--ranks", nargs="+", type=int, default=[None], help="linear ranks (default: the env's)")
    p.add_argument("--out", default="runs/skip_modes")
    p.add_argument("--summary-only", action="store_true",
                   help="only summarize the CSVs already in --out (no model runs)")
    args = p.parse_args(argv)

    import gymnasium as gym

    import skipenv  # noqa: F401 - registers the ids
    from skipenv.envs import Evaluator
    from skipenv.envs.registration import env_tau
    from skipenv.envs.skip_modes import DEFAULT_CALIBRATION_DOCUMENTS, DEFAULT_LINEAR_RANK
    from skipenv.envs.switchdec import shared_generator
    from skipenv.generators.bypass import check_skip_mode
    from skipenv.plan import SkipPlan
    from skipenv.tasks import make_task

    modes = [check_skip_mode(m) for m in args.modes]
    kw = dict(gym.spec(args.env_id).kwargs)
    tau = float(env_tau(args.env_id, {}))
    n_cal = args.calibration_documents or DEFAULT_CALIBRATION_DOCUMENTS
    gen = shared_generator("smollm2-135m-instruct")
    task = make_task(kw.get("task", "xsum"), source=kw.get("task_source", "embedded"),
                     **({"max_input_tokens": kw["max_input_tokens"]} if kw.get("max_input_tokens") else {}))
    docs = task.examples("train")[n_cal: n_cal + args.documents]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    L = gen.num_decoder_layers
    cands = [("attention", i) for i in range(L)] + [("ffn", i) for i in range(L)]
    for mode in [] if args.summary_only else modes:
        ranks = [r or DEFAULT_LINEAR_RANK for r in args.ranks] if mode == "linear" else [None]
        for rank in ranks:
            path = out / f"skip_modes_{_tag(mode, rank)}.csv"  # one file per mode: modes may run in parallel
            done = set()
            if path.is_file():
                with path.open() as f:
                    done = {(r["mode"], r["rank"], r["document"], r["candidate"]) for r in csv.DictReader(f)}
            new = not path.is_file()
            f = path.open("a", newline="")
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            extra = {} if mode == "identity" else {"calibration_documents": n_cal}
            if mode == "linear":
                extra["linear_rank"] = rank
            t0 = time.perf_counter()
            ev = Evaluator(gen, task, quality=kw.get("quality", "agreement"),
                           token_segments=int(kw.get("token_segments", 8)), skip_mode=mode, **extra)
            print(f"{_tag(mode, rank)}: evaluator ready in {time.perf_counter() - t0:.0f} s", flush=True)
            if ev.bypasses is not None and mode == "linear":
                r2 = {}
                for rep in ev.bypasses.report.values():
                    for k, v in rep["heldout_r2"].items():
                        r2.setdefault(k, []).append(v)
                print("held-out R² of the linear fit per rank (median over the 60 sublayers): " +
                      ", ".join(f"{k}: {np.median(v):.3f}" for k, v in r2.items()), flush=True)
            assert not set(ev.calibration_ids) & {d.id for d in docs}
            nothing = SkipPlan.from_skips(ev.spec)
            for k, ex in enumerate(docs):
                t1 = time.perf_counter()
                base = ev.outcome(ex, nothing)
                n = 0
                for kind, i in cands:
                    key = (mode, str(rank or ""), ex.id, f"{kind}.{i}")
                    if key in done:
                        continue
                    plan = SkipPlan.from_skips(ev.spec, **{kind: [i]})
                    o = ev.outcome(ex, plan)
                    w.writerow({"mode": mode, "rank": rank or "", "document": ex.id, "candidate": f"{kind}.{i}",
                                "quality": f"{o.quality:.8f}", "quality_full": f"{o.quality_full:.8f}",
                                "cost": f"{o.cost:.8f}", "cost_nothing": f"{base.cost:.8f}", "flops": o.flops})
                    n += 1
                f.flush()
                print(f"{_tag(mode, rank)}: document {k + 1}/{len(docs)} ({n} plans, "
                      f"{time.perf_counter() - t1:.0f} s)", flush=True)
            f.close()
    rows = []
    for path in sorted(out.glob("skip_modes_*.csv")):
        with path.open() as f:
            rows += [dict(r, mode_tag=_tag(r["mode"], int(r["rank"]) if r["rank"] else None))
                     for r in csv.DictReader(f) if r["document"] in {d.id for d in docs}]
    # only documents every mode has all 60 plans of (a run cut short reports what it completed)
    per = {}
    for r in rows:
        per.setdefault((r["mode_tag"], r["document"]), set()).add(r["candidate"])
    tags = sorted({r["mode_tag"] for r in rows}, key=_mode_order)
    complete = [d.id for d in docs if all(len(per.get((t, d.id), ())) == len(cands) for t in tags)]
    rows = [r for r in rows if r["document"] in set(complete)]
    if not rows:
        print("no document is complete under every mode yet")
        return 1
    table, counts = summarize(rows, tau)
    md = [f"# Skip modes on {args.env_id} (tau {tau}, {len(complete)} train documents complete under every mode, "
          f"{n_cal} calibration documents)",
          "", _markdown(counts, list(counts[0])), "", _wide(table, tags)]
    (out / "skip_modes.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
