"""PPO from scratch on ``SwitchDec-XSum-v2`` (issue 22's last target): does it leave "skip nothing" on the test
documents within the main job's budget (~400-700 episodes)?

One seed, live (embedded SmolLM2, XSum train split minus the 16 calibration documents), ``PPO("MlpPolicy", env)``
with SB3's default hyperparameters except the rollout length: SB3's ``n_steps=2048`` performs no update before
episode 2,048, so ``--n-steps`` (default 64, with ``batch_size=32``: what ``skipenv train --algo ppo`` uses) gives
the budget updates. No warm start. Every training episode is appended to ``OUT/episodes.csv`` (episode, seconds,
reward, Lagrange multiplier, quality loss ``quality_full - quality`` in probability units, FLOPs saved fraction,
skipped factors); at the end the deterministic policy is stepped once on each of the first ``--test-docs`` test
documents: FLOPs saved, mean loss, documents on which it skips nothing (``OUT/result.json``).

    OMP_NUM_THREADS=1 nohup python benchmarks/v2_ppo.py --timesteps 512 --test-docs 24 --out runs/v2_ppo \
        > runs/v2_ppo.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's skipenv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--id", default="SwitchDec-XSum-v2")
    p.add_argument("--kwargs", default="{}", help="further gym.make kwargs as JSON")
    p.add_argument("--timesteps", type=int, default=512)
    p.add_argument("--n-steps", type=int, default=64, help="PPO rollout length (SB3's default is 2048)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-docs", type=int, default=24)
    p.add_argument("--out", default="runs/v2_ppo")
    p.add_argument("--eval-only", action="store_true", help="evaluate OUT/policy.zip on the test documents only")
    a = p.parse_args(argv)
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    import skipenv  # noqa: F401

    torch.set_num_threads(1)
    kw = json.loads(a.kwargs)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ("eval_only.csv" if a.eval_only else "episodes.csv"), "w", newline="")
    w = csv.writer(f)
    w.writerow(["episode", "seconds", "reward", "lam", "loss", "flops_saved", "num_skipped"])
    t0, rows = time.perf_counter(), []

    class _Log(gym.Wrapper):
        def step(self, action):
            obs, r, term, trunc, info = super().step(action)
            row = [len(rows), round(time.perf_counter() - t0, 2), float(r), float(info.get("lagrange_multiplier", 0)),
                   float(info["quality_full"] - info["quality"]), float(info["flops_saved"]),
                   int(info.get("num_skipped", -1))]
            rows.append(row)
            w.writerow(row)
            f.flush()
            if len(rows) % 64 == 0:
                R = np.asarray(rows[-64:])
                print(f"episodes {len(rows)}: {R[-1, 1]:.0f} s, mean reward {R[:, 2].mean():.3f}, multiplier "
                      f"{R[-1, 3]:.2f}, mean loss {R[:, 4].mean():.4f}, mean saved {R[:, 5].mean():.4f}, mean "
                      f"skipped {R[:, 6].mean():.2f}", flush=True)
            return obs, r, term, trunc, info

    if a.eval_only:  # the policy and episodes of an earlier run in --out
        f.close()
        model = PPO.load(out / "policy.zip", device="cpu")
        with open(out / "episodes.csv") as g:
            rows = [[float(x) for x in r] for r in list(csv.reader(g))[1:]]
    else:
        env = gym.make(a.id, **kw)
        print(f"{a.id} {kw}: action space {env.action_space}", flush=True)
        model = PPO("MlpPolicy", _Log(env), seed=a.seed, device="cpu", n_steps=a.n_steps, batch_size=a.batch_size)
        model.learn(a.timesteps)
        model.save(out / "policy.zip")
        print(f"trained {len(rows)} episodes in {time.perf_counter() - t0:.0f} s", flush=True)
    # the test documents: the first --test-docs of the test split (num_examples applies to the train split only)
    test = gym.make(a.id, **{**{k: v for k, v in kw.items() if k != "num_examples"}, "split": "test",
                             "num_examples": a.test_docs})
    saved, loss, nothing, skipped = [], [], 0, []
    for i in range(a.test_docs):
        obs, _ = test.reset(options={"index": i})
        act, _ = model.predict(obs, deterministic=True)
        *_, info = test.step(act)
        saved.append(info["flops_saved"])
        loss.append(info["quality_full"] - info["quality"])
        nothing += int(info["num_skipped"] == 0)
        skipped.append(int(info["num_skipped"]))
    res = {"id": a.id, "kwargs": kw, "episodes": len(rows), "n_steps": a.n_steps, "batch_size": a.batch_size,
           "seed": a.seed, "test_docs": a.test_docs, "saved": float(np.mean(saved)), "loss": float(np.mean(loss)),
           "skip_nothing_docs": nothing, "mean_skipped": float(np.mean(skipped)),
           "multiplier_path": [rows[i][3] for i in range(0, len(rows), 32)] + [rows[-1][3]],
           "train_episodes_with_a_skip": float(np.mean([r[6] > 0 for r in rows])),
           "train_mean_loss": float(np.mean([r[4] for r in rows])), "seconds": time.perf_counter() - t0}
    print(f"deterministic policy on the first {a.test_docs} test documents: FLOPs saved {res['saved']:.4f}, mean "
          f"loss {res['loss']:.4f}, skip nothing on {nothing}/{a.test_docs}, mean skipped factors "
          f"{res['mean_skipped']:.2f}", flush=True)
    (out / "result.json").write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
