"""``skipenv generate``: apply a policy to your own text (:class:`skipenv.policies.deploy.PolicyGenerator`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .args import DEFAULT_ENV_ID, ENV_FROM_RUN_HELP, DefaultEnv, check_device, check_env_kwargs, check_policy_file, \
    env_for_policies, json_object, output_file

__all__ = ["configure_parser", "main"]


def configure_parser(p) -> None:
    """Arguments of ``skipenv generate``."""
    from ..policies import POLICY_HELP

    p.add_argument("--policy", required=True, help=POLICY_HELP)
    p.add_argument("--env", default=DefaultEnv(DEFAULT_ENV_ID),
                   help="the env id the policy was trained for" + ENV_FROM_RUN_HELP)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="one document, given inline")
    src.add_argument("--file", help="a UTF-8 text file holding one document")
    src.add_argument("--jsonl", help="one JSON object per line with a 'document' (or 'text') field")
    p.add_argument("--question", default=None, help="the question, for question-answering envs (with --text/--file)")
    p.add_argument("--compare", action="store_true", help="also run the full model and show both outputs and times")
    p.add_argument("--out", type=output_file, default=None,
                   help="write one JSON line per document to this file (default: print only)")
    p.add_argument("--device", default="cpu", help="torch device of the generator and the policy")
    p.add_argument("--env-kwargs", type=json_object, default={},
                   help='gym.make kwargs the policy was trained with, as JSON, e.g. \'{"max_input_tokens": 256}\'')


def main(args) -> int:
    """Run ``skipenv generate`` with parsed ``args``; returns the exit code (1 on bad input, with the reason)."""
    import sys

    from ..policies.deploy import PolicyGenerator, read_documents

    try:  # everything that can be checked without the model first
        docs = read_documents(text=args.text, file=args.file, jsonl=args.jsonl)
        if args.question:
            for d in docs:
                d.setdefault("question", args.question)
        check_policy_file(args.policy)
        check_device(args.device)
        env_id = env_for_policies(args.env, [args.policy], "generate")
        check_env_kwargs(env_id, args.env_kwargs)
        pg = PolicyGenerator(args.policy, env_id=env_id, env_kwargs=args.env_kwargs, device=args.device)
        results = []
        for d in docs:
            r = pg.generate(d["document"], compare=args.compare, id=d.get("id"), question=d.get("question"))
            print(r.format() + "\n", flush=True)
            results.append(r)
    except (ValueError, FileNotFoundError) as e:
        print(f"skipenv generate: {e}", file=sys.stderr)
        return 1
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in results), encoding="utf-8")
        print(f"saved: {out}")
    if len(results) > 1:
        saved = np.mean([r.flops_saved for r in results])
        line = f"{len(results)} documents: mean FLOPs saved {saved:.1%}, total {sum(r.time_s for r in results):.2f} s"
        if args.compare:
            line += f" vs {sum(r.full_time_s for r in results):.2f} s full"
        print(line)
    return 0
