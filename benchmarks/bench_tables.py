"""Replay tables (issue 21): speed of the table envs next to the live env, load time of a 1,000-document table, and
validation as a benchmark — policies scored on the table and on the live env for the same documents.

    OMP_NUM_THREADS=1 python benchmarks/bench_tables.py                       # all three parts, shipped table
    OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --parts speed,load    # no live policy evaluation
    OMP_NUM_THREADS=1 python benchmarks/bench_tables.py --parts validation --docs 3

Speed: episodes/s (reset + step, through ``gym.make``'s wrappers) of the live ``SwitchDec-XSum-v1`` (embedded
SmolLM2; a fresh evaluator; ``--live-episodes`` episodes, each a random plan of the table's grammar on the next
test document; full outputs read from the disk cache when present) and of the two table ids, with the default
formulation (expected constraint) and ``formulation="per_input"``, ``--table-episodes`` episodes each, one process.

Load: a synthetic table of the shipped table's shape (1,000 documents x 38 plans x 578 observation features) is
written to a temporary folder and loaded with and without checksum verification (median of 5).

Validation: on the first ``--docs`` covered test documents, the policies "skip nothing", every static plan of the
grammar, "random" (a uniform plan per document, seed 0) and the per-document oracle over the table (the plan of
highest per-input lexicographic reward at the table's tau) are scored twice — from the table and live (a fresh
:class:`~skipenv.envs.evaluator.Evaluator`, pair by pair) — by mean per-input lexicographic reward, mean FLOPs saved
and mean quality loss; the printed table shows both, their largest difference, and the Kendall tau
(``scipy.stats.kendalltau``) between the two rankings of the policies by mean reward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def speed(table_name: str, live_episodes: int, table_episodes: int) -> list[tuple[str, float, float, int]]:
    import gymnasium as gym

    import skipenv  # noqa: F401
    from skipenv.tables.envs import load_table

    rows = []
    t = load_table(table_name)
    for env_id, kw in (("SwitchDec-XSum-Table-v0", {}), ("SwitchDec-XSum-Table-v0", {"formulation": "per_input"}),
                       ("SwitchDec-XSum-MenuTable-v0", {}),
                       ("SwitchDec-XSum-MenuTable-v0", {"formulation": "per_input"})):
        env = gym.make(env_id, table=table_name, split="all", **kw)
        rng = np.random.default_rng(0)
        n_actions = 2 ** t.grammar.num_factors if "Menu" not in env_id else t.num_plans
        if "Menu" in env_id:
            actions = [int(a) for a in rng.integers(0, n_actions, 1024)]
        else:
            actions = [t.grammar.index_action(int(c)) for c in rng.integers(0, n_actions, 1024)]
        env.reset(seed=0)
        env.step(actions[0])
        t0, c0 = time.perf_counter(), time.process_time()
        for k in range(table_episodes):
            env.reset()
            env.step(actions[k & 1023])
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        rows.append((f"{env_id} ({kw.get('formulation', 'expected')})", table_episodes / dt, table_episodes / dc,
                     table_episodes))
    if live_episodes:
        from skipenv.envs.evaluator import Evaluator
        from skipenv.envs.switchdec import SwitchDecEnv, shared_generator
        from skipenv.tasks import make_task

        cfg = t.config
        gen = shared_generator(cfg["model"])
        task = make_task(cfg["task"], source=cfg["task_source"], max_input_tokens=cfg["max_input_tokens"])
        ev = Evaluator(gen, task, quality="probability", token_segments=cfg["token_segments"])
        import skipenv as sk

        live = sk.make("SwitchDec-XSum-v1", evaluator=ev, split="test")
        rng = np.random.default_rng(0)
        ids = [t.document_ids[r] for r in t.rows("test")][:live_episodes]
        plans = [t.plans[int(i)] for i in rng.integers(0, t.num_plans, live_episodes)]
        t0, c0 = time.perf_counter(), time.process_time()
        for ex_id, plan in zip(ids, plans):
            live.reset(options={"example_id": ex_id})
            live.step(live.unwrapped.plan_to_action(plan))
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        rows.insert(0, ("SwitchDec-XSum-v1 (live, expected)", live_episodes / dt, live_episodes / dc, live_episodes))
    return rows


def load_time() -> list[tuple[str, float]]:
    from skipenv.tables.store import FORMAT, FORMAT_VERSION, Table, write_table

    D, P, n = 1000, 38, 578
    rng = np.random.default_rng(0)
    src = Table.load("xsum-v1")
    meta = {k: v for k, v in src.meta.items() if k != "columns"}
    ids = [f"doc{i:05d}" for i in range(D)]
    meta = dict(meta, format=FORMAT, format_version=FORMAT_VERSION, documents={"ids": ids, "splits": ["train"] * D})
    arrays = {"observations": rng.normal(size=(D, n)).astype(np.float32)}
    for s in src.signals:
        arrays[f"quality.{s}"] = rng.random((D, P))
        arrays[f"quality_full.{s}"] = rng.random((D, P))
    for k in ("cost",):
        arrays[k] = rng.random((D, P))
    for k in ("flops", "flops_full", "flops_prefill", "flops_decoding", "flops_observation", "num_generated"):
        arrays[k] = rng.integers(0, 10 ** 9, (D, P))
    out = []
    with tempfile.TemporaryDirectory() as d:
        write_table(Path(d) / "t", meta, arrays)
        size = sum(f.stat().st_size for f in (Path(d) / "t").iterdir())
        for verify in (True, False):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                Table.load(Path(d) / "t", verify=verify)
                times.append(time.perf_counter() - t0)
            out.append((f"Table.load, 1,000 documents x 38 plans ({size / 1e6:.1f} MB), verify={verify}",
                        statistics.median(times)))
    return out


def validation(table_name: str, docs: int) -> None:
    from scipy.stats import kendalltau

    from skipenv.envs.evaluator import Evaluator
    from skipenv.envs.rewards import lexicographic_reward
    from skipenv.envs.switchdec import shared_generator
    from skipenv.tables.envs import load_table
    from skipenv.tables.store import table_fingerprint
    from skipenv.tasks import make_task

    t = load_table(table_name)
    cfg = t.config
    signal = cfg["env_defaults"].get("quality", t.signals[0])
    tau = float(cfg["env_defaults"].get("tau", 0.01))
    rows = t.rows("test")[:docs]
    ids = [t.document_ids[r] for r in rows]
    q = np.asarray(t.columns[f"quality.{signal}"])[rows]
    qf = np.asarray(t.columns[f"quality_full.{signal}"])[rows]
    cost = np.asarray(t.columns["cost"])[rows]
    reward = np.vectorize(lexicographic_reward)(q, qf, cost, tau)
    rng = np.random.default_rng(0)
    policies = {"skip nothing": np.zeros(len(rows), int)}
    for p, name in enumerate(t.plan_names[1:], start=1):
        policies[f"static: {name}"] = np.full(len(rows), p)
    policies["random (seed 0)"] = rng.integers(0, t.num_plans, len(rows))
    policies["oracle over the table"] = reward.argmax(1)

    gen = shared_generator(cfg["model"])
    t.check_fingerprint(table_fingerprint(gen))
    task = make_task(cfg["task"], source=cfg["task_source"], max_input_tokens=cfg["max_input_tokens"])
    ev = Evaluator(gen, task, quality=signal, token_segments=cfg["token_segments"], max_new_tokens=cfg["max_new_tokens"],
                   observation=cfg["observation"])
    by_id = {ex.id: ex for ex in task.examples("test")}
    live_cache: dict = {}
    t0 = time.perf_counter()

    def live(d, p):
        if (d, p) not in live_cache:
            o = ev.outcome(by_id[ids[d]], t.plans[p])
            live_cache[(d, p)] = (o.quality, o.quality_full, o.cost)
        return live_cache[(d, p)]

    results = []
    for name, choice in policies.items():
        tab = [(q[d, p], qf[d, p], cost[d, p]) for d, p in enumerate(choice)]
        liv = [live(d, int(p)) for d, p in enumerate(choice)]
        stats = []
        for vals in (tab, liv):
            r = np.mean([lexicographic_reward(a, b, c, tau) for a, b, c in vals])
            stats.append((r, np.mean([1 - c for _, _, c in vals]), np.mean([b - a for a, b, _ in vals])))
        results.append((name, *stats))
    live_s = time.perf_counter() - t0
    print(f"\n## Validation: {len(results)} policies on {len(rows)} test documents of {t.folder} "
          f"({signal}, tau {tau:g}, per-input lexicographic reward); live: {len(live_cache)} (document, plan) "
          f"outcomes in {live_s:.0f} s\n")
    print("| policy | reward table | reward live | saved table | saved live | loss table | loss live |")
    print("|---|---|---|---|---|---|---|")
    diff = 0.0
    for name, (rt, st, lt), (rl, sl, ll) in results:
        diff = max(diff, abs(rt - rl), abs(st - sl), abs(lt - ll))
        print(f"| {name} | {rt:.6f} | {rl:.6f} | {st:.4f} | {sl:.4f} | {lt:.6f} | {ll:.6f} |")
    tau_k = kendalltau([r[1][0] for r in results], [r[2][0] for r in results])
    print(f"\nlargest |table - live| over every cell: {diff:.2e}; Kendall tau of the two rankings by mean reward: "
          f"{tau_k.statistic:.4f} (p = {tau_k.pvalue:.2g}, {len(results)} policies)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", default="xsum-v1")
    ap.add_argument("--parts", default="speed,load,validation")
    ap.add_argument("--live-episodes", type=int, default=3)
    ap.add_argument("--table-episodes", type=int, default=20000)
    ap.add_argument("--docs", type=int, default=3, help="test documents of the validation part")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    if "speed" in parts:
        rows = speed(args.table, args.live_episodes, args.table_episodes)
        print("\n## Episodes per second (one process, one thread)\n\n| env | episodes / wall-clock s | episodes / CPU s "
              "(this process's CPU time: what one core gives when the machine is shared) | episodes timed |\n"
              "|---|---|---|---|")
        for name, eps, eps_cpu, n in rows:
            print(f"| {name} | {eps:,.2f} | {eps_cpu:,.2f} | {n} |")
    if "load" in parts:
        print("\n## Load time (median of 5)\n\n| what | seconds |\n|---|---|")
        for name, s in load_time():
            print(f"| {name} | {s:.4f} |")
    if "validation" in parts:
        validation(args.table, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
