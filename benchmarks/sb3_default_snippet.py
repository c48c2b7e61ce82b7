"""The two lines a new user writes first, ``PPO("MlpPolicy", gym.make(ID, **kwargs)).learn(N)`` with SB3's DEFAULT
hyperparameters, at several seeds and env variants; each final deterministic policy is scored on the test documents
(issue 21, "must not collapse").

    OMP_NUM_THREADS=1 python benchmarks/sb3_default_snippet.py --seeds 5 --timesteps 16384
    OMP_NUM_THREADS=1 python benchmarks/sb3_default_snippet.py --variants v0 v1 --seeds 5
    OMP_NUM_THREADS=1 python benchmarks/sb3_default_snippet.py --variant 'mine={"formulation_kwargs": {"lam_max": 20}}'

A variant is ``name=JSON``: an env id (key ``"id"``, default ``SwitchDec-XSum-Table-v0``) and the ``gym.make``
kwargs. The model is exactly ``PPO("MlpPolicy", env, seed=seed, device="cpu")`` (SB3's defaults: ``n_steps=2048``,
``batch_size=64``, ``n_epochs=10``, ``learning_rate=3e-4``, initial policy 0.5 per bit for ``MultiBinary``, a
unit Gaussian for ``Box``). Training runs on the id's default split (train); the deterministic policy
(``model.predict(obs, deterministic=True)``) is then stepped once on every covered test document
(``split="test"``, reset by index), and the table reports, per variant: FLOPs saved (fraction of the full forward,
observation included; skip nothing saves -0.029), mean quality loss (``quality_full - quality``, probability units;
tau 0.01), how many seeds end at "skip nothing" on every test document, how many are within tau, and the Lagrange
multiplier's value at the end of each quarter of training (mean over seeds).
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

#: the variants measured for issue 21 (docs/table_learners.md)
VARIANTS = {
    "v0": {"id": "SwitchDec-XSum-Table-v0"},
    "v1": {"id": "SwitchDec-XSum-Table-v1"},
}


def run_one(spec: dict, seed: int, timesteps: int) -> dict:
    """Train the snippet once; returns the test scores and the multiplier per quarter of training."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    import skipenv  # noqa: F401  (registers the ids)

    torch.set_num_threads(1)
    kw = {k: v for k, v in spec.items() if k != "id"}
    env_id = spec.get("id", "SwitchDec-XSum-Table-v0")
    env = gym.make(env_id, **kw)
    lams, losses = [], []

    class _Log(gym.Wrapper):
        def step(self, action):
            out = super().step(action)
            info = out[4]
            lams.append(float(info.get("lagrange_multiplier", 0.0)))
            losses.append(float(info["quality_full"] - info["quality"]))
            return out

    t0 = time.perf_counter()
    model = PPO("MlpPolicy", _Log(env), seed=seed, device="cpu")
    model.learn(timesteps)
    secs = time.perf_counter() - t0
    test = gym.make(env_id, **{**kw, "split": "test"})
    n = len(test.unwrapped.example_ids)
    saved, loss, plans = [], [], []
    for i in range(n):
        obs, _ = test.reset(options={"index": i})
        a, _ = model.predict(obs, deterministic=True)
        *_, info = test.step(a)
        saved.append(info["flops_saved"])
        loss.append(info["quality_full"] - info["quality"])
        plans.append(info["plan_index"])
    q = np.array_split(np.asarray(lams), 4)
    ql = np.array_split(np.asarray(losses), 4)
    return {"saved": float(np.mean(saved)), "loss": float(np.mean(loss)), "plans": plans,
            "lam_quarters": [float(x[-1]) if len(x) else 0.0 for x in q],
            "train_loss_quarters": [float(x.mean()) if len(x) else 0.0 for x in ql], "seconds": secs,
            "tau": float(test.unwrapped.tau)}


def _job(args):
    name, spec, seed, timesteps = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return name, seed, run_one(spec, seed, timesteps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"named variants: {sorted(VARIANTS)}")
    p.add_argument("--variant", action="append", default=[], help="an extra variant, name=JSON")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    p.add_argument("--timesteps", type=int, default=16384)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", help="also write every run's result to this file")
    a = p.parse_args(argv)
    specs = {}
    for n in a.variants:
        if n not in VARIANTS:
            p.error(f"unknown variant {n!r}; choose from {sorted(VARIANTS)} or pass --variant name=JSON")
        specs[n] = VARIANTS[n]
    for v in a.variant:
        name, _, js = v.partition("=")
        try:
            specs[name] = json.loads(js)
        except json.JSONDecodeError as e:
            p.error(f"--variant {v!r}: not name=JSON ({e})")
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    jobs = [(n, s, seed, a.timesteps) for n, s in specs.items() for seed in seeds]
    t0 = time.perf_counter()
    res = {}
    if a.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(a.workers) as pool:
            for n, seed, r in pool.imap_unordered(_job, jobs):
                res[n, seed] = r
                print(f"  {n} seed {seed}: saved {r['saved']:.3f} loss {r['loss']:.4f} lam {r['lam_quarters']} "
                      f"({r['seconds']:.0f} s)", flush=True)
    else:
        for j in jobs:
            n, seed, r = _job(j)
            res[n, seed] = r
            print(f"  {n} seed {seed}: saved {r['saved']:.3f} loss {r['loss']:.4f} lam {r['lam_quarters']} "
                  f"({r['seconds']:.0f} s)", flush=True)
    print(f"\n## PPO('MlpPolicy', gym.make(id, **kwargs)).learn({a.timesteps}), SB3 defaults, {a.seeds} seeds; "
          f"deterministic policy on the test documents\n")
    print("| variant | kwargs | FLOPs saved (mean over seeds) | mean loss | seeds at skip nothing | seeds within tau "
          "| multiplier after each quarter | train loss per quarter | s / run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, spec in specs.items():
        rs = [res[n, s] for s in seeds]
        nothing = sum(all(pl == 0 for pl in r["plans"]) for r in rs)
        within = sum(r["loss"] <= r["tau"] + 1e-12 for r in rs)
        lam = np.mean([r["lam_quarters"] for r in rs], 0)
        tl = np.mean([r["train_loss_quarters"] for r in rs], 0)
        print(f"| {n} | `{json.dumps(spec)}` | {np.mean([r['saved'] for r in rs]):.3f} "
              f"(min {min(r['saved'] for r in rs):.3f}) | {np.mean([r['loss'] for r in rs]):.4f} "
              f"(max {max(r['loss'] for r in rs):.4f}) | {nothing}/{a.seeds} | {within}/{a.seeds} | "
              f"{', '.join(f'{x:.1f}' for x in lam)} | {', '.join(f'{x:.3f}' for x in tl)} | "
              f"{np.mean([r['seconds'] for r in rs]):.0f} |")
    print(f"\nwall {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({f"{n}/{s}": r for (n, s), r in res.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
