"""Where a replay-table row's time goes, and the staged prefix reuse of ``skipenv table build`` against the plain
per-plan path, side by side in one process (issue 21 item 3).

    OMP_NUM_THREADS=1 python benchmarks/bench_table_build.py                  # train document 100, both paths
    OMP_NUM_THREADS=1 python benchmarks/bench_table_build.py --docs 2 --split train --start 200

For each document the row (the observation and the 38 plans x 2 signals of ``xsum-v1``'s grammar) is computed by
:meth:`skipenv.tables.build.TableBuilder.compute_row` twice, in the same process and on the same warm model:

- ``plain``: ``staged=False``, the live env's path (each plan from the full model's stored prefix state:
  ``skipenv.generators.reuse``);
- ``staged``: ``staged=True``, the build's default (a plan that skips sublayers *and* drops tokens restarts from
  the stored computation of the plan that skips the same sublayers on the whole input:
  :class:`skipenv.generators.reuse.StagedStates`).

Before timing, the document's full output is generated once (it is the same for both paths and is cached on disk by
the evaluator), and both builders' outcome caches and prefix stores are emptied, so each timed row computes every
forward pass of the row. Times are this process's CPU seconds (``time.process_time``, one torch thread): on the
shared 2-core machine wall-clock times of the same work varied by 2x with the other developers' load. Printed: per plan, the reuse point ``(s, j)`` (common-prefix length with the full input and
first recomputed layer, see :func:`~skipenv.generators.reuse.plan_reuse_point`), the tokens recomputed, and the
seconds of each path; then seconds per document of both paths and the speed-up; and the largest |difference| of the
two rows' qualities (both signals) against the 1e-4 reuse tolerance.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed_row(builder, split: str, index: int, staged: bool):
    """``(row arrays, {plan index: seconds}, {plan index: reuse point}, {plan index: forward seconds}, seconds of
    the whole row, seconds in FLOPs counting)``: per plan, the first signal's outcome (the second signal's forward
    pass is memoised) and its model calls; a reuse point ``(s, j, N)``, ``"capture"`` (scored from the full model's
    state while keeping its staged state), or ``None`` (no state: from scratch, or no model call)."""
    import skipenv.generators.decoder_only as dec
    from skipenv.generators.reuse import plan_reuse_point

    for env in builder.envs.values():
        env.evaluator.outcomes.clear()
    builder._memo.clear()
    builder.generator.prefix_store.clear()
    builder.staged = staged
    current: dict = {"plan": None}
    points: dict = {}
    forward_s: dict = {}
    real_rf, real_cap = dec.reused_forward, dec.capture_staged_state

    def spy(generator, state, ids, plan, **kw):
        points[current["plan"]] = plan_reuse_point(
            state.ids, ids, plan.decoder_attention, plan.decoder_ffn, kw.get("num_logits", 1),
            state_attention=state.attention, state_ffn=state.ffn) + (len(ids),)
        t0 = time.process_time()
        out = real_rf(generator, state, ids, plan, **kw)
        forward_s[current["plan"]] = forward_s.get(current["plan"], 0.0) + time.process_time() - t0
        return out

    def spy_capture(generator, state, ids, plan, **kw):
        points[current["plan"]] = "capture"
        t0 = time.process_time()
        out = real_cap(generator, state, ids, plan, **kw)
        forward_s[current["plan"]] = forward_s.get(current["plan"], 0.0) + time.process_time() - t0
        return out

    per_plan: dict = {}
    signal = builder.config["signals"][0]
    ev = builder.envs[signal].evaluator
    real_outcome = ev.outcome
    index_of = {p: i for i, p in enumerate(builder.plans)}
    flops_s = [0.0]
    real_flops = builder.generator.flops

    def timed_flops(*a, **kw):
        t0 = time.process_time()
        out = real_flops(*a, **kw)
        flops_s[0] += time.process_time() - t0
        return out

    def timed_outcome(example, plan):
        current["plan"] = index_of[plan]
        t0 = time.process_time()
        out = real_outcome(example, plan)
        per_plan[index_of[plan]] = time.process_time() - t0
        return out

    dec.reused_forward, dec.capture_staged_state = spy, spy_capture
    ev.outcome = timed_outcome
    builder.generator.flops = timed_flops
    t0 = time.process_time()
    try:
        row = builder.compute_row(split, index)
    finally:
        dec.reused_forward, dec.capture_staged_state = real_rf, real_cap
        del ev.outcome
        del builder.generator.flops
    return row, per_plan, points, forward_s, time.process_time() - t0, flops_s[0]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="train")
    p.add_argument("--start", type=int, default=100, help="index of the first document in the split")
    p.add_argument("--docs", type=int, default=1)
    args = p.parse_args(argv)
    from skipenv.tables.build import TableBuilder, table_config

    with tempfile.TemporaryDirectory() as tmp:
        builder = TableBuilder(table_config(), work_dir=tmp)
        names = builder.grammar.plan_names
        totals = {"plain": [], "staged": []}
        worst = 0.0
        for index in range(args.start, args.start + args.docs):
            ex = builder.examples(args.split)[index]
            for env in builder.envs.values():
                env.evaluator.full_output(ex)
            rows, times, pts, fwd, fl = {}, {}, {}, {}, {}
            for mode in ("plain", "staged"):
                rows[mode], times[mode], pts[mode], fwd[mode], total, fl[mode] = _timed_row(
                    builder, args.split, index, mode == "staged")
                totals[mode].append(total)
            for s in builder.config["signals"]:
                for q in ("quality", "quality_full"):
                    worst = max(worst, float(np.max(np.abs(rows["plain"][f"{q}.{s}"] - rows["staged"][f"{q}.{s}"]))))
            for k in ("cost", "flops", "num_generated"):
                if not np.array_equal(rows["plain"][k], rows["staged"][k]):
                    raise SystemExit(f"column {k} differs between the two paths on {ex.id}")
            n_in = len(builder.envs[builder.config["signals"][0]].evaluator.prompt(ex).input_ids)
            print(f"\n## {args.split} document {index} ({ex.id}, {n_in} input tokens): CPU seconds per plan (this process, one torch thread; the first "
                  f"signal's outcome; the second signal reuses its forward pass). (s, j, N): the plan's N processed "
                  f"ids + target, the first s taken from the state through layers < j (j = 30: every layer)\n")
            print("| plan | plain (s, j, N) | plain model CPU s | plain CPU s | staged (s, j, N) | staged model CPU s | staged CPU s |")
            print("|---|---|---|---|---|---|---|")
            for i, name in enumerate(names):
                print(f"| {name} | {pts['plain'].get(i)} | {fwd['plain'].get(i, 0):.3f} | {times['plain'][i]:.3f} | "
                      f"{pts['staged'].get(i)} | {fwd['staged'].get(i, 0):.3f} | {times['staged'][i]:.3f} |")
            print(f"| (sum over plans) | | {sum(fwd['plain'].values()):.2f} | {sum(times['plain'].values()):.2f} | "
                  f"| {sum(fwd['staged'].values()):.2f} | {sum(times['staged'].values()):.2f} |")
            print(f"| (whole row: observation, full output from disk, both signals) | | | {totals['plain'][-1]:.2f} "
                  f"| | | {totals['staged'][-1]:.2f} |")
            print(f"\nFLOPs counting (generator.flops) inside the row: plain {fl['plain']:.2f} s, "
                  f"staged {fl['staged']:.2f} s")
        a, b = float(np.mean(totals["plain"])), float(np.mean(totals["staged"]))
        print(f"\n| path | CPU seconds per document (mean of {args.docs}) |\n|---|---|")
        print(f"| plain (per-plan prefix reuse, the live env's) | {a:.2f} |")
        print(f"| staged (the build's default) | {b:.2f} |")
        print(f"\nspeed-up {a / b:.2f}x; largest |quality difference| between the paths {worst:.2e} "
              f"(tolerance 1e-4); cost, FLOPs and output lengths equal")


if __name__ == "__main__":
    main()
