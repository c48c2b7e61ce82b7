"""Screen candidate defaults of ``SwitchDec-XSum-v0`` with the learnability probe: which quality signal, observation
kind and tolerance give a contextual policy the largest held-out advantage over the best static policy?

One pass per document scores every plan of the probe's default menu (:func:`skipenv.policies.menu.default_menu`) once,
teacher-forced on the full model's output, and reads *both* teacher-forced quality signals off that one forward
pass — ``agreement`` (argmax = full token) and ``probability`` (mean probability of the full model's tokens) — plus
every candidate observation kind (:mod:`skipenv.envs.observations`). Then, for every (signal, observation, tau), it runs
:func:`skipenv.evaluation.probe.analyse` (fit on the train documents, judged on the test documents) and prints:

- ``r2`` — the best held-out R² over the menu plans of the predicted quality loss (0 = no better than the mean);
- ``per-input gain`` — probe policy minus the best static plan, lexicographic reward (paired bootstrap 95 % CI);
- ``expected gain at equal quality`` — FLOPs points the probe policy saves over the static mixture at the probe's
  own test quality (fitted on the test documents, which favours the static side), with its CI;
- ``oracle headroom`` — the expected-constraint oracle minus the static mixture (what any policy could reach);

and a variance decomposition of the quality loss (document / plan / interaction shares; split-half correlation of a
document's mean loss over two disjoint halves of the plans = how consistent "fragility" is).

Observation kinds that cost more than the env's first layer are charged: their extra FLOPs are added to every
plan's cost (as the env does with ``observation=``). Results: ``screen.csv``, ``variance.csv``, ``screen.md``.

    python benchmarks/choose_defaults.py --train-docs 40 --test-docs 20 --out runs/choose_defaults

The per-document results are cached in ``--out`` (``train.pkl`` / ``test.pkl``), so a larger run resumes where a
smaller one stopped (the cached documents must have the requested ``--kinds``).
"""

from __future__ import annotations

import argparse
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import skipenv
from skipenv import metrics
from skipenv.envs.quality import mean_probability
from skipenv.envs.observations import (check_observation_kind, extra_observation_flops, observation_features,
                                  passthrough_columns)
from skipenv.evaluation.stats import markdown_table
from skipenv.evaluation.probe import ProbeTable, analyse
from skipenv.policies.menu import default_menu

KINDS = ("pooled", "segments", "layer:4", "layer:15", "attention:2", "attention:4", "attention:8")
TAUS = {"agreement": (0.05, 0.1, 0.15), "probability": (0.01, 0.02, 0.04)}


def parse_report(spec: str, kinds) -> tuple[str, str, float]:
    """``(signal, kind, tau)`` of a ``--report`` entry ``SIGNAL:KIND:TAU`` (e.g. ``probability:layer:4:0.02``).

    Raises:
        ValueError: a malformed entry, a signal other than those screened (:data:`TAUS`), a kind not in ``kinds``
            (its features are not collected) or a tau that is not a finite number >= 0.
    """
    signal, _, rest = spec.partition(":")
    kind, _, tau = rest.rpartition(":")
    if signal not in TAUS:
        raise ValueError(f"--report {spec!r}: the signal must be one of {sorted(TAUS)} (form SIGNAL:KIND:TAU, e.g. "
                         f"probability:layer:4:0.02)")
    try:
        kind = check_kinds([kind])[0]
    except ValueError as e:
        raise ValueError(f"--report {spec!r}: {e} (form SIGNAL:KIND:TAU)") from None
    if kind not in kinds:
        raise ValueError(f"--report {spec!r}: observation kind {kind!r} is not among --kinds {list(kinds)}")
    try:
        value = float(tau)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"--report {spec!r}: tau {tau!r} must be a finite number >= 0 (form SIGNAL:KIND:TAU)")
    return signal, kind, value


def check_kinds(kinds) -> list[str]:
    """The ``--kinds`` in canonical spelling, checked before any model loads (``layer:04`` → ``layer:4``).

    Raises:
        ValueError: an unknown kind (:func:`skipenv.envs.observations.parse_observation_kind`) or one given twice.
    """
    from skipenv.envs.observations import parse_observation_kind

    out = []
    for kind in kinds:
        name, m = parse_observation_kind(kind)
        out.append(name if name in ("pooled", "segments") else f"{name}:{m}")
    dupes = sorted({k for k in out if out.count(k) > 1})
    if dupes:
        raise ValueError(f"--kinds lists {dupes} more than once")
    return out


def check_cached(rows: list[dict], example_ids: list[str], cache: Path) -> None:
    """Refuse a cache written for other documents (e.g. another dataset order or ``--split``): its rows would be
    paired with the wrong example ids.

    Raises:
        ValueError: a cached row whose example id differs from the document at its position.
    """
    for i, (row, ex_id) in enumerate(zip(rows, example_ids)):
        if row["example_id"] != ex_id:
            raise ValueError(f"{cache} row {i} is example {row['example_id']!r} but document {i} is now {ex_id!r}: "
                             f"the cache was written for other documents; delete it or pick another --out")


def collect(split: str, n: int, kinds, cache: Path) -> list[dict]:
    """Per document: the menu's agreement / probability / cost and every kind's features (cached in ``cache``;
    kinds missing from cached documents are computed and added)."""
    rows = pickle.loads(cache.read_bytes()) if cache.exists() else []
    env = skipenv.make("SwitchDec-XSum-v0", split=split, num_examples=n)
    base = env.unwrapped
    g, k = base.generator, base.plan_spec.token_segments
    for kind in kinds:  # m above the model's layers fails here, before any document is run
        check_observation_kind(kind, g)
    check_cached(rows, [str(ex.id) for ex in base.examples[:n]], cache)
    menu = default_menu(base.plan_spec)
    base.prefetch(base.examples[:n])
    for i, ex in enumerate(tqdm(base.examples[:n], desc=f"screen {split}")):
        if i < len(rows):
            missing = [kind for kind in kinds if kind not in rows[i]["features"]]
            if missing:  # a cache written with other --kinds
                prompt, full = base.prompt(ex), base.full_output(ex)
                flops_full = g.flops(None, prompt, full.num_generated).total
                for kind in missing:
                    rows[i]["features"][kind] = observation_features(g, prompt, kind, token_segments=k,
                                                                     max_input_tokens=base.task.max_input_tokens)
                    rows[i]["extra_cost"][kind] = extra_observation_flops(g, prompt, kind) / flops_full
                cache.write_bytes(pickle.dumps(rows))
            continue
        prompt, full = base.prompt(ex), base.full_output(ex)
        flops_full = g.flops(None, prompt, full.num_generated).total
        plans = {}
        for name, plan in menu.items():
            s = g.score([prompt], [list(full.tokens)], None if plan.is_empty else plan)[0]
            plans[name] = {"agreement": float(metrics.agreement(s.argmax.tolist(), list(full.tokens))),
                           "probability": mean_probability(s.logprobs),
                           "cost": g.flops(plan, prompt, full.num_generated, observation=True).total / flops_full}
        feats = {kind: observation_features(g, prompt, kind, token_segments=k,
                                            max_input_tokens=base.task.max_input_tokens) for kind in kinds}
        extra = {kind: extra_observation_flops(g, prompt, kind) / flops_full for kind in kinds}
        rows.append({"example_id": str(ex.id), "plans": plans, "features": feats, "extra_cost": extra,
                     "probability_full": plans[next(n for n, p in menu.items() if p.is_empty)]["probability"]})
        cache.write_bytes(pickle.dumps(rows))
    env.close()
    return rows


def table(data, signal: str, kind: str, menu_names) -> tuple[ProbeTable, pd.DataFrame]:
    rows, obs, feats = [], [], []
    for split, docs in data.items():
        for i, d in enumerate(docs):
            q_full = 1.0 if signal == "agreement" else d["probability_full"]
            for name in menu_names:
                p = d["plans"][name]
                q = q_full if name == menu_names[0] else p[signal]
                cost = p["cost"] + d["extra_cost"][kind]
                rows.append({"split": split, "doc": i, "example_id": d["example_id"], "plan": name, "quality": q,
                             "quality_full": q_full, "cost": cost, "flops_saved": 1 - cost, "flops_full": 0,
                             "reward": 0.0})
            obs.append({"split": split, "doc": i, "example_id": d["example_id"], "obs_0": 0.0})
            feats.append({"split": split, "doc": i,
                          **{f"f_{j}": float(v) for j, v in enumerate(d["features"][kind])}})
    t = ProbeTable(pd.DataFrame(rows), pd.DataFrame(obs), list(menu_names), menu_names[0],
                   {"splits": ["train", "test"]})
    return t, pd.DataFrame(feats)


def variance(data, signal: str, menu_names) -> dict:
    docs = data["train"] + data["test"]
    q_full = np.array([1.0 if signal == "agreement" else d["probability_full"] for d in docs])
    L = q_full[:, None] - np.array([[d["plans"][n][signal] for n in menu_names[1:]] for d in docs])
    g, doc, plan = L.mean(), L.mean(1, keepdims=True) - L.mean(), L.mean(0, keepdims=True) - L.mean()
    inter, tot = L - g - doc - plan, ((L - L.mean()) ** 2).sum()
    return {"signal": signal, "documents": len(docs), "document_share": float((doc ** 2).sum() * L.shape[1] / tot),
            "plan_share": float((plan ** 2).sum() * L.shape[0] / tot), "interaction_share": float((inter ** 2).sum() / tot),
            "split_half_fragility_corr": float(np.corrcoef(L[:, ::2].mean(1), L[:, 1::2].mean(1))[0, 1])}


def ci(df, contextual, static_prefix, metric, scale):
    r = df[(df.contextual == contextual) & df.static.str.startswith(static_prefix) & (df.metric == metric)]
    if r.empty:
        return "n/a"
    r = r.iloc[0]
    return f"{r['diff'] * scale:+.1f} [{r.ci_low * scale:+.1f}, {r.ci_high * scale:+.1f}]"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return v


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-docs", type=positive_int, default=40)
    ap.add_argument("--test-docs", type=positive_int, default=20)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--out", default="runs/choose_defaults")
    ap.add_argument("--report", nargs="*", default=[], metavar="SIGNAL:KIND:TAU",
                    help="also write the probe's full report (report_<...>.md) and Pareto plot for these "
                         "configurations, e.g. probability:layer:4:0.02")
    args = ap.parse_args(argv)
    try:  # checked before the model loads and the screen runs (it can take hours)
        args.kinds = check_kinds(args.kinds)
        reports = [(spec, *parse_report(spec, args.kinds)) for spec in args.report]
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {split: collect(split, n, args.kinds, out / f"{split}.pkl")[:n]
            for split, n in (("train", args.train_docs), ("test", args.test_docs))}
    env = skipenv.make("SwitchDec-XSum-v0", num_examples=1)
    names = list(default_menu(env.unwrapped.plan_spec))
    K = env.unwrapped.plan_spec.token_segments
    env.close()
    res = []
    warnings.filterwarnings("ignore", category=UserWarning)
    for signal, taus in TAUS.items():
        for kind in args.kinds:
            t, F = table(data, signal, kind, names)
            for tau in taus:
                rep = analyse(t, tau, passthrough=passthrough_columns(kind, K), learning_curve=[], features=F)
                d = rep.differences
                res.append({"signal": signal, "observation": kind, "tau": tau,
                            "r2": float(np.nanmax(rep.prediction.test_r2_quality)),
                            "per-input gain (reward pts)": ci(d, "probe (per-input)", "best static (per-input)",
                                                              "reward", 100),
                            "expected gain at equal quality (FLOPs pts)": ci(d, "probe (expected)",
                                                                             "static mixture at", "flops_saved", 100),
                            "oracle headroom (FLOPs pts)": ci(d, "oracle (expected)", "best static mixture",
                                                              "flops_saved", 100)})
                print(json.dumps(res[-1]), flush=True)
    screen = pd.DataFrame(res)
    var = pd.DataFrame([variance(data, s, names) for s in TAUS])
    screen.to_csv(out / "screen.csv", index=False)
    var.to_csv(out / "variance.csv", index=False)
    md = markdown_table(screen, ".2f") + "\n\n" + markdown_table(var, ".2f") + "\n"
    (out / "screen.md").write_text(md)
    print(md)
    from skipenv.evaluation.probe import plot_probe

    for spec, signal, kind, tau in reports:
        t, F = table(data, signal, kind, names)
        rep = analyse(t, tau, passthrough=passthrough_columns(kind, K), features=F)
        tag = spec.replace(":", "_")
        (out / f"report_{tag}.md").write_text(rep.to_markdown())
        plot_probe(rep, out / f"pareto_{tag}.png", title=f"{signal}, observation {kind}, tau {tau}")
        print(f"### {spec}\n" + rep.to_markdown())


if __name__ == "__main__":
    main()
