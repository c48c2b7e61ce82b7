"""The default SB3 snippet on the LIVE env, one seed, logged episode by episode (issue 21; ~1 episode/s, so run it
in the background):

    OMP_NUM_THREADS=1 nohup python benchmarks/sb3_default_snippet_live.py --timesteps 4096 --out /tmp/snippet-live \
        --kwargs '{"skip_threshold": 2.6}' > /tmp/snippet-live.log 2>&1 &

Trains exactly ``PPO("MlpPolicy", gym.make(ID, **kwargs), seed=seed, device="cpu").learn(N)`` (SB3's defaults)
on ``--id`` (default ``SwitchDec-XSum-v1``, the live env: embedded SmolLM2-135M-Instruct, XSum train split),
appending every training episode to ``OUT/episodes.csv`` (episode, reward, Lagrange multiplier, quality loss
``quality_full - quality`` in probability units, FLOPs saved as a fraction, number of skipped factors), so a run
stopped early still shows what it did; prints a summary every 256 episodes. At the end it saves ``OUT/policy.zip``
and steps the deterministic policy once on each of the first ``--test-docs`` test documents (in the task's order:
the shipped table's covered test documents are the first 36), printing FLOPs saved, mean loss and how many
documents are "skip nothing". ``--table-id`` names the table id whose test documents to use for the order
(default: the first ``--test-docs`` of the live test split).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--id", default="SwitchDec-XSum-v1")
    p.add_argument("--kwargs", default="{}", help="gym.make kwargs as JSON")
    p.add_argument("--timesteps", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-docs", type=int, default=36)
    p.add_argument("--out", default="/tmp/snippet-live")
    a = p.parse_args(argv)
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    import skipenv  # noqa: F401

    torch.set_num_threads(1)
    kw = json.loads(a.kwargs)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / "episodes.csv", "w", newline="")
    w = csv.writer(f)
    w.writerow(["episode", "seconds", "reward", "lam", "loss", "flops_saved", "num_skipped"])
    t0 = time.perf_counter()
    rows = []

    class _Log(gym.Wrapper):
        def step(self, action):
            obs, r, term, trunc, info = super().step(action)
            row = [len(rows), round(time.perf_counter() - t0, 2), float(r), float(info.get("lagrange_multiplier", 0)),
                   float(info["quality_full"] - info["quality"]), float(info["flops_saved"]),
                   int(info.get("num_skipped", -1))]
            rows.append(row)
            w.writerow(row)
            f.flush()
            if len(rows) % 256 == 0:
                R = np.asarray(rows[-256:])
                print(f"episodes {len(rows)}: {R[-1, 1]:.0f} s, mean reward {R[:, 2].mean():.3f}, multiplier "
                      f"{R[-1, 3]:.2f}, mean loss {R[:, 4].mean():.4f}, mean saved {R[:, 5].mean():.3f}, mean skipped "
                      f"{R[:, 6].mean():.2f}", flush=True)
            return obs, r, term, trunc, info

    env = gym.make(a.id, **kw)
    print(f"{a.id} {kw}: action space {env.action_space}", flush=True)
    model = PPO("MlpPolicy", _Log(env), seed=a.seed, device="cpu")
    model.learn(a.timesteps)
    model.save(out / "policy.zip")
    print(f"trained {a.timesteps} episodes in {time.perf_counter() - t0:.0f} s", flush=True)
    test = gym.make(a.id, **{**kw, "split": "test"})
    saved, loss, nothing = [], [], 0
    for i in range(a.test_docs):
        obs, _ = test.reset(options={"index": i})
        act, _ = model.predict(obs, deterministic=True)
        *_, info = test.step(act)
        saved.append(info["flops_saved"])
        loss.append(info["quality_full"] - info["quality"])
        nothing += int(info["num_skipped"] == 0)
    print(f"deterministic policy on the first {a.test_docs} test documents: FLOPs saved {np.mean(saved):.4f}, mean "
          f"loss {np.mean(loss):.4f}, skip nothing on {nothing}/{a.test_docs}", flush=True)
    (out / "result.json").write_text(json.dumps({"id": a.id, "kwargs": kw, "timesteps": a.timesteps,
                                                 "saved": float(np.mean(saved)), "loss": float(np.mean(loss)),
                                                 "skip_nothing_docs": nothing, "test_docs": a.test_docs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
