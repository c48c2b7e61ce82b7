"""Validation as a benchmark (issue 21, item 5): policies TRAINED on the replay table, scored on the table and on the
live env for the same test documents; Kendall tau between the two rankings.

    OMP_NUM_THREADS=1 python benchmarks/validate_tables.py --episodes 2000 --out /tmp/validate
    OMP_NUM_THREADS=1 python benchmarks/validate_tables.py --docs 6 --learners eps-greedy rloo --episodes 300

Policies: each learner of ``--learners`` (:data:`skipenv.tables.learners.LEARNERS`, default seven, among them
``ppo-default-v1``, the SB3 default snippet on ``SwitchDec-XSum-Table-v1``'s encoding) trained from scratch for
``--episodes`` episodes on the table's train documents (seed ``--seed``), plus two static references (skip nothing,
and the best single plan of the grammar at mean loss <= tau on the train documents). Each deterministic policy picks
one plan per test document (its first ``--docs`` covered test documents).

Scores per policy (test documents, ``SwitchDec-XSum-v1``'s probability signal and tau 0.01): mean FLOPs saved
(fraction of the full forward, observation included), mean quality loss (``quality_full - quality``) and the mean
per-input lexicographic reward; once from the table's rows and once live — the embedded SmolLM2 through a fresh
:class:`~skipenv.envs.evaluator.Evaluator` of the table's configuration (prefix reuse included, as when the table
was built), one ``outcome`` per distinct (document, plan). The best table-trained policy (highest table FLOPs saved
at mean loss <= tau, else highest reward) is also run end to end through ``gym.make("SwitchDec-XSum-v1",
split="test")`` (reset by ``example_id``, its plan as the live env's 68-bit action) and its episode ``info`` is
compared with the table. Prints the table, the largest |table - live| and the Kendall tau
(``scipy.stats.kendalltau``) of the two rankings by each score.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_LEARNERS = ("ppo-default-v1", "ppo", "a2c", "dqn", "rloo", "eps-greedy", "lints")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default="xsum-v1")
    p.add_argument("--learners", nargs="+", default=list(DEFAULT_LEARNERS))
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", type=int, default=36, help="first N covered test documents")
    p.add_argument("--out", default=None, help="folder for policies.json (the plans) and scores.json")
    a = p.parse_args(argv)

    import torch
    from scipy.stats import kendalltau

    import skipenv  # noqa: F401
    from skipenv.envs.rewards import lexicographic_reward
    from skipenv.tables.envs import load_table
    from skipenv.tables.learners import LEARNERS, train_learner_on_table

    torch.set_num_threads(1)
    bad = [n for n in a.learners if n not in LEARNERS]
    if bad:
        p.error(f"unknown learners {bad}; choose from {sorted(LEARNERS)}")
    t = load_table(a.table)
    cfg = t.config
    signal = cfg["env_defaults"].get("quality", t.signals[0])
    tau = float(cfg["env_defaults"].get("tau", 0.01))
    test_rows = t.rows("test")[: a.docs]
    ids = [t.document_ids[r] for r in test_rows]
    q = np.asarray(t.columns[f"quality.{signal}"])
    qf = np.asarray(t.columns[f"quality_full.{signal}"])
    cost = np.asarray(t.columns["cost"])
    tr = t.rows("train")
    tr_loss, tr_saved = (qf[tr] - q[tr]).mean(0), (1 - cost[tr]).mean(0)
    ok = np.flatnonzero(tr_loss <= tau)
    best_static = int(ok[np.argmax(tr_saved[ok])])

    policies = {"skip nothing": np.zeros(len(ids), int),
                f"static (train's best within tau): {t.plan_names[best_static]}": np.full(len(ids), best_static)}
    t0 = time.perf_counter()
    for name in a.learners:
        res = train_learner_on_table(name, t, episodes=a.episodes, seed=a.seed, checkpoints=1)
        by = dict(zip(res["test_ids"], res["plans"].tolist()))
        policies[f"{name} (trained on the table, seed {a.seed})"] = np.array([by[e] for e in ids])
        print(f"  trained {name}: {res['seconds']:.0f} s", flush=True)
    train_s = time.perf_counter() - t0

    def table_scores(choice):
        r = [test_rows[d] for d in range(len(ids))]
        qq = np.array([q[r[d], c] for d, c in enumerate(choice)])
        ff = np.array([qf[r[d], c] for d, c in enumerate(choice)])
        cc = np.array([cost[r[d], c] for d, c in enumerate(choice)])
        rew = [lexicographic_reward(x, y, z, tau) for x, y, z in zip(qq, ff, cc)]
        return np.array([float(np.mean(1 - cc)), float(np.mean(ff - qq)), float(np.mean(rew))]), (qq, ff, cc)

    # live
    from skipenv.envs.evaluator import Evaluator
    from skipenv.envs.switchdec import shared_generator
    from skipenv.tables.store import table_fingerprint
    from skipenv.tasks import make_task

    gen = shared_generator(cfg["model"])
    t.check_fingerprint(table_fingerprint(gen))
    task = make_task(cfg["task"], source=cfg["task_source"], max_input_tokens=cfg["max_input_tokens"])
    ev = Evaluator(gen, task, quality=signal, token_segments=cfg["token_segments"],
                   max_new_tokens=cfg["max_new_tokens"], observation=cfg["observation"])
    by_id = {ex.id: ex for ex in task.examples("test")}
    cache = {}
    t1 = time.perf_counter()

    def live_scores(choice):
        vals = []
        for d, c in enumerate(choice):
            key = (ids[d], int(c))
            if key not in cache:
                o = ev.outcome(by_id[ids[d]], t.plans[int(c)])
                cache[key] = (o.quality, o.quality_full, o.cost)
            vals.append(cache[key])
        qq, ff, cc = (np.array(v) for v in zip(*vals))
        rew = [lexicographic_reward(x, y, z, tau) for x, y, z in zip(qq, ff, cc)]
        return np.array([float(np.mean(1 - cc)), float(np.mean(ff - qq)), float(np.mean(rew))])

    results = {}
    for name, choice in policies.items():
        results[name] = (table_scores(choice)[0], live_scores(choice))
        print(f"  live: {name}: {len(cache)} distinct outcomes so far, {time.perf_counter() - t1:.0f} s", flush=True)
    live_s = time.perf_counter() - t1

    # the best table-trained policy, end to end through the live env
    trained = [n for n in policies if "trained on the table" in n]
    within = [n for n in trained if results[n][0][1] <= tau]
    best = max(within, key=lambda n: results[n][0][0]) if within else max(trained, key=lambda n: results[n][0][2])
    live_env = skipenv.make("SwitchDec-XSum-v1", evaluator=ev, split="test")
    env_diff = 0.0
    ep_saved, ep_loss = [], []
    for d, c in enumerate(policies[best]):
        live_env.reset(options={"example_id": ids[d]})
        *_, info = live_env.step(live_env.unwrapped.plan_to_action(t.plans[int(c)]))
        r = test_rows[d]
        env_diff = max(env_diff, abs(info["quality"] - q[r, c]), abs(info["quality_full"] - qf[r, c]),
                       abs(info["cost"] - cost[r, c]))
        ep_saved.append(info["flops_saved"])
        ep_loss.append(info["quality_full"] - info["quality"])

    print(f"\n## {len(policies)} policies on the first {len(ids)} test documents of {t.folder} ({signal}, tau {tau:g}); "
          f"learners trained {a.episodes} episodes on the table's {len(tr)} train documents ({train_s:.0f} s); "
          f"live: {len(cache)} distinct (document, plan) outcomes in {live_s:.0f} s\n")
    print("| policy | saved table | saved live | loss table | loss live | reward table | reward live |")
    print("|---|---|---|---|---|---|---|")
    diff = 0.0
    for name, (tb, lv) in results.items():
        diff = max(diff, float(np.abs(tb - lv).max()))
        print(f"| {name} | {tb[0]:.4f} | {lv[0]:.4f} | {tb[1]:.5f} | {lv[1]:.5f} | {tb[2]:.4f} | {lv[2]:.4f} |")
    print(f"\nlargest |table - live| over every cell: {diff:.2e}")
    for k, what in enumerate(("FLOPs saved", "mean loss", "reward")):
        kt = kendalltau([v[0][k] for v in results.values()], [v[1][k] for v in results.values()])
        print(f"Kendall tau of the rankings by {what}: {kt.statistic:.4f} (p = {kt.pvalue:.2g}, {len(results)} "
              f"policies)")
    tb = results[best][0]
    print(f"\nbest table-trained policy: {best}; through gym.make('SwitchDec-XSum-v1', split='test'): FLOPs saved "
          f"{np.mean(ep_saved):.4f} (table {tb[0]:.4f}), mean loss {np.mean(ep_loss):.5f} (table {tb[1]:.5f}); "
          f"largest |info - table| over quality, quality_full, cost: {env_diff:.2e}")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scores.json").write_text(json.dumps({n: {"table": v[0].tolist(), "live": v[1].tolist()}
                                                     for n, v in results.items()}, indent=1))
        (out / "policies.json").write_text(json.dumps({n: v.tolist() for n, v in policies.items()}, indent=1))
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
