"""Choosing ``SwitchDec-XSum-v2`` (issue 22 item 4): the learnability probe for the unit kinds {sentences, tokens}
x skip modes {identity, linear}, with the token-only menu and with the menu plus sublayer plans.

Configuration: ``SwitchDec-XSum-v1`` (embedded SmolLM2-135M-Instruct, probability signal, tau 0.01, expected
constraint, 8 units) with ``segment_boundaries=KIND`` and ``skip_mode=MODE`` (linear: rank 64, 16 calibration
documents, :data:`skipenv.envs.skip_modes.DEFAULT_LINEAR_RANK`). Documents: the first ``--train-docs`` train
documents that are *not* calibration documents (the linear env's ``env.examples``; the identity env is given the
same ids) and the first ``--test-docs`` test documents, the same for every configuration.

Menus:

- token-only: :func:`skipenv.policies.menu.default_menu` without its attention plan (skip nothing, drop the last
  1-4 of 8 units, drop unit 3, drop unit 5);
- with sublayer plans: the token-only menu plus :data:`SUBLAYER_PLANS`, groups of the one-sublayer bits that measure
  best under the linear mode in docs/skip_modes.md (12 train documents): FFN 29 (loss 0.001 linear), attention
  4, 5, 6, 8 (each <= 0.009 linear), alone and combined with a unit drop.

Sharing (exact): a plan without a sublayer skip never applies a bypass, so its outcome does not depend on the skip
mode; it is evaluated once per unit kind (in the identity env) and used for both modes. The script checks this on
its first two documents (one token plan evaluated under the linear mode too, equality of every outcome field and
of the observation) and stops if it fails.

Per configuration and menu, on the test documents (FLOPs points = percentage points of the full model's FLOPs,
expected constraint): the static front at tau (best static mixture fitted on the test documents), the expected
oracle and its headroom over the front, the probe policy (ridge regressions fitted on the train documents) and its
gain over the front at its own test loss (equal quality) with the paired bootstrap 95 % CI of
:func:`skipenv.evaluation.probe.analyse` (probe minus best static mixture, expected-constraint rows of
``differences``), and the held-out R² of the predicted per-plan quality loss.

    OMP_NUM_THREADS=1 nohup python benchmarks/v2_defaults.py --kind sentences --out runs/v2_defaults &
    OMP_NUM_THREADS=1 nohup python benchmarks/v2_defaults.py --kind tokens --modes linear --out runs/v2_defaults &
    OMP_NUM_THREADS=1 python benchmarks/v2_defaults.py --summary-only --out runs/v2_defaults

Each evaluation process appends one document's rows at a time to ``rows_<kind>.csv`` (resumable after a kill: a
document is written whole or not at all); ``--summary-only`` analyses the documents complete in both kinds and
writes ``v2_defaults.md`` / ``v2_defaults.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's skipenv, not another install

ENV_ID = "SwitchDec-XSum-v1"
MODES = ("identity", "linear")
#: name -> plan text (:func:`skipenv.policies.menu.parse_plan`), units 0-based of 8
SUBLAYER_PLANS = {
    "ffn 29": "ffn=29",
    "attention 4,5,6,8": "attention=4,5,6,8",
    "drop last 1 + ffn 29": "tokens=7;ffn=29",
    "drop last 2 + attention 4,5,6,8 + ffn 29": "tokens=6,7;attention=4,5,6,8;ffn=29",
}
FIELDS = ("quality", "quality_full", "cost", "flops_saved", "flops_full", "reward")


def token_menu(spec) -> dict:
    """The token-only menu: :func:`default_menu` without its sublayer plan."""
    from skipenv.policies.menu import default_menu

    return {k: p for k, p in default_menu(spec).items() if not any(p.encoder_attention + p.encoder_ffn + p.decoder_attention + p.decoder_ffn)}


def sublayer_menu(spec) -> dict:
    from skipenv.policies.menu import parse_plan

    return {name: parse_plan(text, spec)[1] for name, text in SUBLAYER_PLANS.items()}


def _order(n_train: int, n_test: int) -> list[tuple[str, int]]:
    """Documents interleaved so that any prefix holds the two splits in proportion (a cut run is still usable)."""
    keys = [((i + 0.5) / n_train, "train", i) for i in range(n_train)] + \
        [((j + 0.5) / n_test, "test", j) for j in range(n_test)]
    return [(s, i) for _, s, i in sorted(keys)]


def _step(env, example_id: str, action) -> tuple[np.ndarray, dict, float]:
    obs, _ = env.reset(options={"example_id": example_id})
    _, reward, _, _, info = env.step(action)
    return np.asarray(obs, float).ravel(), info, float(reward)


def evaluate(kind: str, n_train: int, n_test: int, out: Path, modes=MODES) -> None:
    import gymnasium as gym

    import skipenv  # noqa: F401  (registers the ids)
    from skipenv.envs.skip_modes import DEFAULT_CALIBRATION_DOCUMENTS

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"rows_{kind}.csv"
    done = set()
    if path.exists():
        with path.open() as f:
            done = {(r["split"], int(r["doc"])) for r in csv.DictReader(f)}

    def make(mode: str, split: str, n: int):
        return gym.make(ENV_ID, formulation="per_input", segment_boundaries=kind, skip_mode=mode, split=split,
                        num_examples=n)

    envs, ids = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        lin = make("linear", split, n)
        ids[split] = [ex.id for ex in lin.unwrapped.examples[:n]]
        if len(ids[split]) < n:
            raise SystemExit(f"only {len(ids[split])} {split} documents")
        ident = make("identity", split, n + (DEFAULT_CALIBRATION_DOCUMENTS if split == "train" else 0))
        envs[split] = {"linear": lin, "identity": ident}
    spec = envs["train"]["identity"].unwrapped.plan_spec
    tokens, subl = token_menu(spec), sublayer_menu(spec)
    act = {name: envs["train"]["identity"].unwrapped.plan_to_action(p) for name, p in {**tokens, **subl}.items()}
    header = ["split", "doc", "example_id", "plan", "mode", *FIELDS, "obs"]
    new = not path.exists()
    f = path.open("a", newline="")
    w = csv.writer(f)
    if new:
        w.writerow(header)
        f.flush()
    todo = [(s, i) for s, i in _order(n_train, n_test) if (s, i) not in done]
    print(f"{kind}: {len(done)} documents done, {len(todo)} to go; {len(tokens)} shared + "
          f"{len(subl)} x {len(modes)} sublayer evaluations per document", flush=True)
    t0, checked = time.perf_counter(), 0
    for k, (split, i) in enumerate(todo):
        ex_id = ids[split][i]
        rows, obs = [], None
        for name in tokens:
            o, info, r = _step(envs[split]["identity"], ex_id, act[name])
            obs = o if obs is None else obs
            rows.append([split, i, ex_id, name, "shared", *(info[c] if c != "reward" else r for c in FIELDS)])
        if checked < 2:  # the sharing is exact: a token plan under the linear mode gives the same outcome
            name = list(tokens)[1]
            o, info, r = _step(envs[split]["linear"], ex_id, act[name])
            ref = next(row for row in rows if row[3] == name)
            got = [info[c] if c != "reward" else r for c in FIELDS]
            if got != ref[5:] or not np.array_equal(o, obs):
                raise SystemExit(f"sharing is not exact on {ex_id} / {name}: identity {ref[5:]} vs linear {got}")
            checked += 1
        for mode in modes:
            for name in subl:
                _, info, r = _step(envs[split][mode], ex_id, act[name])
                rows.append([split, i, ex_id, name, mode, *(info[c] if c != "reward" else r for c in FIELDS)])
        ob = json.dumps([float(v) for v in obs])
        for row in rows:
            w.writerow([*row, ob])
        f.flush()
        el = time.perf_counter() - t0
        print(f"{kind} {split} {i}: {k + 1}/{len(todo)} documents, {el:.0f} s, "
              f"{el / (k + 1):.1f} s/document", flush=True)
    f.close()


def probe_metrics(table, report, tau: float) -> dict:
    """The probe's summary in FLOPs points on the test documents: static front at tau, oracle, headroom, the probe
    policy's saving, loss and gain at equal quality (with analyse's paired 95 % CI when present), its share of the
    headroom and the held-out R² (also used by benchmarks/segments.py)."""
    from skipenv.policies.menu import expected_oracle, mixture_lp

    te = table.matrices("test")
    loss, saved = te["loss"], te["saved"]

    def front(level: float) -> float:
        pi = mixture_lp(loss.mean(0), saved.mean(0), level)
        return float(pi @ saved.mean(0))

    oracle_w = expected_oracle(loss, saved, tau)
    oracle = float((oracle_w * saved).sum(1).mean())
    static = front(tau)
    w = report.weights["probe (expected)"]
    probe_saved, probe_loss = float((w * saved).sum(1).mean()), float((w * loss).sum(1).mean())
    gain = probe_saved - front(max(probe_loss, 0.0))
    headroom = oracle - static
    r2 = report.prediction["test_r2_quality"].to_numpy(float)
    out = {"static front @ tau (FLOPs pts)": 100 * static, "oracle (FLOPs pts)": 100 * oracle,
           "headroom (FLOPs pts)": 100 * headroom, "probe saved (FLOPs pts)": 100 * probe_saved,
           "probe mean loss": probe_loss, "probe gain at equal quality (FLOPs pts)": 100 * gain,
           "probe share of headroom": gain / headroom if headroom > 1e-12 else float("nan"),
           "R² best": float(np.nanmax(r2)) if np.isfinite(r2).any() else float("nan"),
           "R² mean": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan")}
    d = report.differences
    d = d[(d["contextual"] == "probe (expected)") & (d["metric"] == "flops_saved")
          & d["static"].str.contains("probe's test quality", regex=False)]
    if len(d):  # analyse's paired bootstrap 95 % CI of the gain at equal quality
        out["gain CI low (FLOPs pts)"] = 100 * float(d["ci_low"].iloc[0])
        out["gain CI high (FLOPs pts)"] = 100 * float(d["ci_high"].iloc[0])
    return out


def summary(out: Path, kinds: list[str]) -> None:
    import pandas as pd

    from skipenv.envs.registration import env_tau
    from skipenv.evaluation.probe import ProbeTable, analyse
    from skipenv.evaluation.stats import markdown_table
    from skipenv.envs.observations import passthrough_columns

    tau = float(env_tau(ENV_ID, {}))
    data = {k: pd.read_csv(out / f"rows_{k}.csv", float_precision="round_trip") for k in kinds}
    complete = None
    for k, df in data.items():  # documents whose every row is written (a document is written whole)
        docs = set(map(tuple, df[["split", "doc"]].drop_duplicates().to_numpy().tolist()))
        complete = docs if complete is None else complete & docs
    n = {s: sum(1 for c in complete if c[0] == s) for s in ("train", "test")}
    rows = []
    for kind, df in data.items():
        df = df[[tuple(x) in complete for x in df[["split", "doc"]].to_numpy().tolist()]].copy()
        shared = df[df["mode"] == "shared"]
        tok_names = list(dict.fromkeys(shared["plan"]))
        sub_names = list(SUBLAYER_PLANS)
        obs = df.drop_duplicates(["split", "doc"])[["split", "doc", "example_id", "obs"]]
        o = pd.DataFrame([json.loads(v) for v in obs["obs"]]).add_prefix("obs_")
        observations = pd.concat([obs[["split", "doc", "example_id"]].reset_index(drop=True), o], axis=1)
        for split in ("train", "test"):  # renumber documents 0..n-1 in split order
            m = observations["split"] == split
            order = {d: j for j, d in enumerate(sorted(observations.loc[m, "doc"]))}
            observations.loc[m, "doc"] = observations.loc[m, "doc"].map(order)
            mm = df["split"] == split
            df.loc[mm, "doc"] = df.loc[mm, "doc"].map(order)
        for mode in [m for m in MODES if (df["mode"] == m).any()]:
            for menu_name, names in (("token-only", tok_names), ("with sublayer plans", tok_names + sub_names)):
                part = df[(df["plan"].isin(names)) & df["mode"].isin(["shared", mode])]
                table = ProbeTable(part.drop(columns=["mode", "obs"]).reset_index(drop=True),
                                   observations.sort_values(["split", "doc"]).reset_index(drop=True), names,
                                   "skip nothing", {"splits": ["train", "test"]})
                report = analyse(table, tau, learning_curve=[], passthrough=passthrough_columns("pooled", 8))
                rows.append({"unit kind": kind, "skip mode": mode, "menu": menu_name, "plans": len(names),
                             **probe_metrics(table, report, tau)})
                if menu_name == "with sublayer plans":
                    te = table.matrices("test")
                    for j, nm in enumerate(names):
                        if nm in sub_names:
                            print(f"{kind} {mode} {nm}: test saved {100 * te['saved'][:, j].mean():.2f} pts, "
                                  f"loss {te['loss'][:, j].mean():.4f}, within tau "
                                  f"{(te['loss'][:, j] <= tau).mean():.2f}")
    res = pd.DataFrame(rows)
    res.to_csv(out / "v2_defaults.csv", index=False)
    cols = ["unit kind", "skip mode", "menu", "plans", "static front @ tau (FLOPs pts)", "oracle (FLOPs pts)",
            "headroom (FLOPs pts)", "probe saved (FLOPs pts)", "probe mean loss",
            "probe gain at equal quality (FLOPs pts)", "probe share of headroom", "R² best", "R² mean"]
    extra = [c for c in res.columns if c.startswith("gain CI")]
    text = (f"# {ENV_ID} candidates for v2: {n['train']} train / {n['test']} test documents, tau = {tau}\n\n"
            + markdown_table(res[cols].round(4)) + "\n\n" + (markdown_table(res[cols[:3] + extra].round(4)) + "\n"
                                                              if extra else ""))
    (out / "v2_defaults.md").write_text(text)
    print(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["sentences", "tokens"])
    p.add_argument("--train-docs", type=int, default=150)
    p.add_argument("--test-docs", type=int, default=60)
    p.add_argument("--out", default="runs/v2_defaults")
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--kinds", nargs="+", default=["sentences", "tokens"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="skip modes whose sublayer plans are evaluated (the token plans serve every mode)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.summary_only:
        summary(out, args.kinds)
        return 0
    if args.kind is None:
        p.error("--kind is required unless --summary-only")
    evaluate(args.kind, args.train_docs, args.test_docs, out, tuple(args.modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
