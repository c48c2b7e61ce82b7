"""Token units that follow the text: ``segment_boundaries="tokens"`` vs ``"sentences"`` under the learnability probe
(:mod:`skipenv.probe`) on one env configuration (default ``SwitchDec-XSum-v1``: embedded SmolLM2, probability
signal, tau 0.01).

For each unit kind it runs :func:`skipenv.probe.run_probe` (default menu: skip nothing, drop the last 1–4 of the 8
segments, drop segment 3, drop segment 5, skip attention 6; the same documents for both kinds; each table cached
under ``--out``) and reports, on the test documents (expected constraint, FLOPs points = percentage points of the
full model's FLOPs):

- ``static front @ tau``: the best static mixture of menu plans fitted on the *test* documents at mean loss tau
  (:func:`skipenv.policies.menu.mixture_lp`) — the most a static policy saves at that quality;
- ``oracle``: the expected-constraint oracle (:func:`skipenv.policies.menu.expected_oracle`, per-document plan choices at
  mean loss <= tau) and its ``headroom`` over the static front (equal quality: both at mean loss <= tau);
- ``probe gain``: the probe policy's FLOPs saved minus the static front at the probe's own test loss (equal
  quality), and its ``share`` of the headroom (gain / headroom);
- ``R² best`` / ``R² mean``: held-out R² of the predicted per-plan quality loss over the menu's non-empty plans.

    OMP_NUM_THREADS=1 python benchmarks/segments.py --train-docs 60 --test-docs 30 --out runs/segments

Writes ``segments.md`` and ``segments.csv`` into ``--out``; re-running re-analyses the cached tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's skipenv, not another install
sys.path.insert(1, str(Path(__file__).resolve().parent))  # the sibling benchmark whose summary this one shares

from v2_defaults import probe_metrics  # noqa: E402  (one summary of a probe run for both benchmarks)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-id", default="SwitchDec-XSum-v1")
    p.add_argument("--train-docs", type=int, default=60)
    p.add_argument("--test-docs", type=int, default=30)
    p.add_argument("--kinds", nargs="+", default=["tokens", "sentences"])
    p.add_argument("--out", default="runs/segments")
    args = p.parse_args(argv)

    import pandas as pd

    from skipenv.envs.registration import env_tau
    from skipenv.evaluation.stats import markdown_table
    from skipenv.probe import run_probe
    from skipenv.tasks.units import check_segment_boundaries

    kinds = [check_segment_boundaries(k) for k in args.kinds]
    tau = float(env_tau(args.env_id, {}))
    rows = []
    for kind in kinds:
        t0 = time.perf_counter()
        table, report = run_probe(args.env_id, env_kwargs={"segment_boundaries": kind}, num_train=args.train_docs,
                                  num_test=args.test_docs, out_dir=args.out, learning_curve=[])
        rows.append({"segment_boundaries": kind, **probe_metrics(table, report, tau)})
        print(f"{kind}: {time.perf_counter() - t0:.0f} s ({report.folder})", flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "segments.csv", index=False)
    text = (f"# {args.env_id}: tokens vs sentences, {args.train_docs} train / {args.test_docs} test documents, "
            f"tau = {tau}\n\n" + markdown_table(df.round(4)) + "\n")
    (out / "segments.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
