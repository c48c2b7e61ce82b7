"""Training throughput (env steps/s) of Ray RLlib PPO with 1 and 2 env runners vs the SB3 single-process path.

Same env, same PPO batch (``--batch`` env steps per update, 10 epochs), same number of env steps. Throughput is the
steady state of training (sampling + updates): for RLlib the env steps of iterations 2… divided by their seconds
(iteration 1 warms the runners' envs); for SB3 one warm-up rollout is run first, then ``learn`` is timed. Start-up
(Ray, env runners loading the generator) is reported separately.

Envs: ``tiny`` — a random-weight 4-layer Llama (hidden size 32) with the SmolLM2 tokenizer on made-up documents (a
step costs milliseconds: measures the framework's overhead); ``smollm2`` — the embedded SmolLM2-135M-Instruct on
XSum train documents with warm full-model references (prefetched into ``SKIPENV_CACHE`` first).

Usage::

    python benchmarks/bench_rllib.py --envs tiny smollm2     # ~5 min on a 2-core CPU; needs the ray extra
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def env_kwargs(which: str, folder: Path) -> dict:
    if which == "tiny":
        from _tiny_local import tiny_env_kwargs, write_tiny_assets

        model, data = write_tiny_assets(folder, num_documents=30)
        kw = tiny_env_kwargs(model, data)
        kw.pop("split")
        return kw
    return {"max_input_tokens": 256, "max_new_tokens": 16}


def sb3_throughput(env_id: str, kw: dict, steps: int, batch: int, examples: int) -> dict:
    import gymnasium as gym

    import skipenv  # noqa: F401
    from skipenv.policies.sb3 import make_sb3

    t0 = time.perf_counter()
    env = gym.make(env_id, split="train", num_examples=examples, **kw).unwrapped
    if hasattr(env, "prefetch"):  # warm full-model references (the env method, or its evaluator's in older trees)
        env.prefetch(progress=False)
    else:
        env.evaluator.prefetch(env.examples, progress=False)
    model = make_sb3("ppo", env, n_steps=batch, batch_size=min(32, batch))
    setup = time.perf_counter() - t0
    model.learn(total_timesteps=batch)  # warm-up rollout (observations of every document computed once)
    t = time.perf_counter()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    dt = time.perf_counter() - t
    return {"setup_s": setup, "env_steps": steps, "seconds": dt, "env_steps_per_s": steps / dt}


def rllib_throughput(env_id: str, kw: dict, steps: int, batch: int, examples: int, runners: int, out: Path) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, str(ROOT / "agents" / "rllib_ppo.py"), "--env", env_id, "--out", str(out),
           "--num-env-runners", str(runners), "--total-timesteps", str(steps + batch), "--train-batch-size",
           str(batch), "--train-examples", str(examples), "--eval-examples", "1", "--no-progress",
           "--env-kwargs", json.dumps(kw)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    total = time.perf_counter() - t0
    prog = pd.read_csv(out / "progress.csv")
    steady = prog.iloc[1:]
    n = int(steady["env_steps"].iloc[-1] - prog["env_steps"].iloc[0])
    dt = float(steady["seconds"].sum())
    return {"setup_s": total - float(prog["seconds"].sum()), "env_steps": n, "seconds": dt,
            "env_steps_per_s": n / dt}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    p.add_argument("--steps", type=int, nargs="+", default=None, help="timed env steps per env (default tiny 256, "
                   "smollm2 64)")
    p.add_argument("--batch", type=int, default=32, help="env steps per PPO update")
    p.add_argument("--examples", type=int, default=16, help="training documents")
    p.add_argument("--runners", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, which in enumerate(args.envs):
            steps = (args.steps[i] if args.steps else {"tiny": 256, "smollm2": 64}[which])
            kw = env_kwargs(which, Path(tmp) / which)
            r = sb3_throughput("SwitchDec-XSum-v0", kw, steps, args.batch, args.examples)
            rows.append({"env": which, "path": "SB3 PPO, 1 process", **r})
            print(rows[-1], flush=True)
            for n in args.runners:
                r = rllib_throughput("SwitchDec-XSum-v0", kw, steps, args.batch, args.examples, n,
                                     Path(tmp) / f"{which}-rllib{n}")
                rows.append({"env": which, "path": f"RLlib PPO, {n} env runner{'s' if n > 1 else ''}", **r})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    print()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    from skipenv.evaluation.stats import markdown_table

    print()
    print(markdown_table(df[["env", "path", "env_steps", "seconds", "env_steps_per_s", "setup_s"]], ".1f"))


if __name__ == "__main__":
    main()
