"""Apply a skip policy to text of one's own: :class:`PolicyGenerator` (the API of ``skipenv generate``).

>>> from skipenv.policies.deploy import PolicyGenerator
>>> pg = PolicyGenerator("runs/ppo-xsum/policy.zip")          # or "lead:4", "skip-nothing", a policy.pt
>>> r = pg.generate("The council said the new bridge ...", compare=True)
>>> r.text, r.plan_words, r.flops_saved, r.time_s, r.full_text, r.full_time_s

The text is wrapped in a task :class:`~skipenv.tasks.Example` and formatted with the task's own prompt
(:meth:`Task.format`), exactly as the environment formats dataset documents, so the policy sees the same kind of
observation it was trained on: the pooled first-layer hidden states of the full input and the input / document
lengths (the one-shot env's observation). The policy's plan then runs on the frozen generator.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..envs.registration import DEFAULT_ENV_ID

__all__ = ["PolicyGenerator", "GenerationResult", "describe_plan", "read_documents"]

#: observation features are clipped like the env's (``skipenv.envs.switchdec.OBS_BOUND``)
_OBS_BOUND = 100.0


def _ranges(idx: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2, 5"``."""
    out, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def describe_plan(plan) -> str:
    """A plan in words, e.g. ``"skips attention in decoder layers 3, 7-9; FFN in decoder layer 28; document
    segments 5-8 of 8 (the document's tail)"``, or ``"skips nothing (the full model)"``."""
    spec = plan.spec
    on = lambda flags: [i for i, f in enumerate(flags) if f]  # noqa: E731
    parts = []
    for kind, stacks in (("attention", (("encoder", plan.encoder_attention), ("decoder", plan.decoder_attention))),
                         ("FFN", (("encoder", plan.encoder_ffn), ("decoder", plan.decoder_ffn)))):
        where = []
        for stack, flags in stacks:
            idx = on(flags)
            if idx:
                where.append(f"{stack} layer{'s' if len(idx) > 1 else ''} {_ranges(idx)}")
        if where:
            parts.append(f"{kind} in " + " and ".join(where))
    seg = on(plan.tokens)
    if seg:
        k = spec.token_segments
        tail = seg == list(range(k - len(seg), k))
        parts.append(f"document segment{'s' if len(seg) > 1 else ''} {_ranges([s + 1 for s in seg])} of {k}"
                     + (" (the document's tail)" if tail else ""))
    if not parts:
        return "skips nothing (the full model)"
    return "skips " + "; ".join(parts)


@dataclass
class GenerationResult:
    """One document generated under a policy's plan (and, with ``compare``, by the full model).

    Attributes:
        document_id: ``id`` given, or the first 16 hex digits of the text's sha1.
        text: the output under the plan, as the task keeps and scores it (:meth:`Task.post_process`: e.g. the first
            sentence of a summary; the stop rule generates one token past it).
        plan_words: the plan in words (:func:`describe_plan`); ``plan``: its JSON; ``action``: the policy's action.
        num_skipped: skipped sublayers + token segments.
        flops: analytic FLOPs of the plan's run, observation (first layer) included.
        flops_full: analytic FLOPs of the full model: for its own output length with ``compare``, else for the
            same number of generated tokens as the plan's run.
        flops_saved: ``1 − flops / flops_full`` (fraction); ``flops_speedup``: ``flops_full / flops`` (the
            FLOPs-predicted speed-up).
        time_s: wall-clock seconds of the plan's run (observation + policy + generation).
        full_text, full_time_s: the full model's output (post-processed like ``text``) and seconds (``None``
            without ``compare``).
        raw_text, full_raw_text: the generated text before post-processing (``full_raw_text``: ``None`` without
            ``compare``).
        speedup: measured ``full_time_s / time_s`` (``None`` without ``compare``).
        truncated: the document was cut to the input budget (``max_input_tokens``).
    """

    document_id: str
    policy: str
    text: str
    plan_words: str
    plan: str
    action: list[int]
    num_skipped: int
    num_generated: int
    flops: int
    flops_full: int
    flops_saved: float
    flops_speedup: float
    time_s: float
    truncated: bool
    full_text: str | None = None
    full_time_s: float | None = None
    full_num_generated: int | None = None
    speedup: float | None = None
    raw_text: str | None = None
    full_raw_text: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A human-readable block (what ``skipenv generate`` prints)."""
        lines = [f"document {self.document_id}" + (" (truncated to the input budget)" if self.truncated else ""),
                 f"policy   {self.policy}: {self.plan_words}",
                 f"FLOPs    {self.flops:,} vs {self.flops_full:,} full: {self.flops_saved:.1%} saved "
                 f"(predicted speed-up {self.flops_speedup:.2f}x)",
                 f"time     {self.time_s:.3f} s" + (f" vs {self.full_time_s:.3f} s full: measured speed-up "
                                                      f"{self.speedup:.2f}x" if self.full_time_s is not None else ""),
                 f"output   {self.text!r}"]
        if self.full_text is not None:
            lines.append(f"full     {self.full_text!r}")
        return "\n".join(lines)


def read_documents(*, text: str | None = None, file: str | Path | None = None, jsonl: str | Path | None = None,
                   text_key: str = "document") -> list[dict]:
    """Documents from exactly one source, as dicts with ``document`` and optional ``id`` / ``question``.

    Args:
        text: one document.
        file: a UTF-8 text file holding one document.
        jsonl: one JSON object per line with a ``text_key`` field (default ``document``; ``text`` is accepted too).

    Raises:
        ValueError: none or several sources given; a JSONL line that is not a JSON object, lacks the text field or
            holds a non-string text / question (names the line).
        FileNotFoundError: a missing file.
    """
    given = [x is not None for x in (text, file, jsonl)]
    if sum(given) != 1:
        raise ValueError("give exactly one of text=, file=, jsonl= (--text, --file, --jsonl)")
    if text is not None:
        return [{"document": text}]
    if file is not None:
        p = Path(file)
        if not p.is_file():
            raise FileNotFoundError(f"document file {str(p)!r} does not exist")
        return [{"document": p.read_text(encoding="utf-8"), "id": p.stem}]
    p = Path(jsonl)
    if not p.is_file():
        raise FileNotFoundError(f"JSONL file {str(p)!r} does not exist")
    docs = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{p}:{n}: not valid JSON ({e}); each line must be an object such as "
                             f"{{\"{text_key}\": \"text ...\"}}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{p}:{n}: expected a JSON object such as {{\"{text_key}\": \"text ...\"}}, got a JSON "
                             f"{type(row).__name__}")
        key = text_key if text_key in row else ("text" if "text" in row else None)
        if key is None:
            raise ValueError(f"{p}:{n}: no {text_key!r} (or 'text') field; fields present: {sorted(row)}")
        if not isinstance(row[key], str):
            raise ValueError(f"{p}:{n}: the {key!r} field must be a string of text, got {type(row[key]).__name__} "
                             f"{row[key]!r:.40}")
        if "question" in row and not isinstance(row["question"], str):
            raise ValueError(f"{p}:{n}: the 'question' field must be a string, got {type(row['question']).__name__}")
        docs.append({"document": row[key], **({"id": str(row["id"])} if "id" in row else {}),
                     **({"question": row["question"]} if "question" in row else {})})
    return docs


class PolicyGenerator:
    """A frozen generator that runs each input under the plan a policy chooses for it.

    Args:
        policy: a baseline spec (``"lead:4"``, ``"skip-nothing"``, ...), the path of an SB3 ``policy.zip`` or a
            repository agent's ``policy.pt`` (see :func:`skipenv.policies.load_policy`), or a policy object
            (callable ``observation -> action``).
        env_id: the env the policy was trained for; its generator, task (prompt, budget) and action layout are
            used. Default ``SwitchDec-XSum-v0``.
        env_kwargs: further ``gym.make`` kwargs, the same the policy was trained with (e.g.
            ``{"max_input_tokens": 256}``).
        device: torch device of the generator and the policy.

    Raises:
        as :func:`skipenv.policies.load_policy` and ``gym.make``.
    """

    def __init__(self, policy="skip-nothing", env_id: str = DEFAULT_ENV_ID, env_kwargs: dict | None = None,
                 device: str = "cpu"):
        import gymnasium as gym

        import skipenv  # noqa: F401  (registers the ids)

        from .spec import load_policy

        if env_kwargs is not None and not isinstance(env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a dict of gym.make kwargs such as {{'max_input_tokens': 256}}, got "
                             f"{type(env_kwargs).__name__} {env_kwargs!r}")
        if isinstance(policy, (str, Path)) and str(policy).partition(":")[0] == "oracle":
            raise ValueError("the oracle policy picks each plan by scoring it against the dataset example's full-model "
                             "output; raw text has no such example, so it cannot choose a plan here. Use it with "
                             "skipenv leaderboard or skipenv dataset, or pass a trained policy or a static baseline")
        kwargs = {"device": device, **(env_kwargs or {})}
        kwargs.setdefault("num_examples", 1)  # the env only lends its generator, task and action layout
        self.env = gym.make(env_id, **kwargs).unwrapped
        self.env_id = env_id
        if isinstance(policy, (str, Path)):
            spec = str(policy)
            calib = None
            if spec.startswith("calibrated"):
                calib_kwargs = {**kwargs, "split": "train", "num_examples": 16}
                calib = gym.make(env_id, **calib_kwargs).unwrapped
            self.policy = load_policy(spec, self.env, calibration_env=calib, device=device)
            self.policy_name = spec if not spec.endswith((".zip", ".pt")) else self.policy.name
        else:
            self.policy, self.policy_name = policy, getattr(policy, "name", type(policy).__name__)
        self.generator, self.task = self.env.generator, self.env.task
        self._warm = False
        #: generation budget: the env's ``max_new_tokens`` kwarg, else the task's
        self.max_new_tokens = int(self.env.spec.kwargs.get("max_new_tokens") or self.task.max_new_tokens)

    # ------------------------------------------------------------------ pieces
    def example(self, document: str, *, id: str | None = None, question: str | None = None):
        """A task :class:`~skipenv.tasks.Example` for raw text (no reference: it is not scored)."""
        from ..tasks import Example

        if not document or not document.strip():
            raise ValueError("the document is empty; give some text")
        if self.task.kind == "qa" and not question:
            raise ValueError(f"task {self.task.name!r} is question answering: give a question too")
        ex_id = id or hashlib.sha1(document.encode("utf-8")).hexdigest()[:16]
        return Example(id=ex_id, document=document, reference="", question=question)

    def prompt(self, example):
        """The formatted input (:meth:`Task.format` with the env's budget), a :class:`~skipenv.PromptInput`."""
        return self.task.format(example, self.generator.tokenizer,
                                encoder_decoder=self.generator.num_encoder_layers > 0,
                                max_input_tokens=self.env.max_input_tokens)

    def observation(self, prompt) -> np.ndarray:
        """The one-shot env's observation for ``prompt``: pooled first-layer hidden states ``[d]`` (clipped to
        ±100), input length / ``max_input_tokens``, document length / ``max_input_tokens``; float32, ``[d + 2]``."""
        h = np.clip(self.generator.observe([prompt])[0].numpy().astype(np.float32), -_OBS_BOUND, _OBS_BOUND)
        m = self.env.max_input_tokens
        return np.concatenate([h, np.array([len(prompt) / m, prompt.num_document_tokens / m], np.float32)])

    def _run(self, prompt, plan):
        t0 = time.perf_counter()
        out = self.generator.generate([prompt], plan, max_new_tokens=self.max_new_tokens,
                                      stop=self.task.output_complete)
        return out, time.perf_counter() - t0

    # ------------------------------------------------------------------ API
    def generate(self, document: str, *, compare: bool = False, id: str | None = None,
                 question: str | None = None) -> GenerationResult:
        """Generate for one document under the policy's plan (and with the full model if ``compare``).

        Wall time of the plan's run counts the observation (first layer over the full input), the policy's forward
        pass and the generation; the full model's counts its generation. Both run greedy decoding with the task's
        stop rule and ``max_new_tokens``. The first call also runs one untimed prefill (a warm-up).

        Raises:
            ValueError: an empty document, a QA task without ``question``, a plan that removes every token.
        """
        import torch

        ex = self.example(document, id=id, question=question)
        prompt = self.prompt(ex)
        with torch.inference_mode():
            if not self._warm:  # first call: one untimed prefill, so one-off start-up costs bias neither time
                self.generator.generate([prompt], None, max_new_tokens=1)
                self._warm = True
            t0 = time.perf_counter()
            obs = self.observation(prompt)
            action = np.asarray(self.policy(obs)).astype(np.int8)
            plan = self.env.action_to_plan(action)
            t_policy = time.perf_counter() - t0
            out, t_gen = self._run(prompt, plan)
            full = self._run(prompt, None) if compare else None
        n = out.num_generated[0]
        flops = self.generator.flops(plan, prompt, n, observation=True).total
        n_full = full[0].num_generated[0] if full else n
        flops_full = self.generator.flops(None, prompt, n_full).total
        r = GenerationResult(
            document_id=ex.id, policy=self.policy_name, text=self.task.post_process(out.texts[0]),
            raw_text=out.texts[0], plan_words=describe_plan(plan),
            plan=plan.to_json(), action=action.tolist(), num_skipped=int(plan.num_skipped), num_generated=int(n),
            flops=int(flops), flops_full=int(flops_full), flops_saved=float(1 - flops / flops_full),
            flops_speedup=float(flops_full / flops), time_s=t_policy + t_gen,
            truncated=bool(prompt.extra.get("truncated", False)))
        if full:
            r.full_text, r.full_time_s, r.full_num_generated = (self.task.post_process(full[0].texts[0]), full[1],
                                                                int(n_full))
            r.full_raw_text = full[0].texts[0]
            r.speedup = r.full_time_s / r.time_s
        return r

    def generate_many(self, documents: Iterable[dict | str], *, compare: bool = False) -> list[GenerationResult]:
        """:meth:`generate` for each document (a string or a dict with ``document`` and optional ``id`` /
        ``question``), one at a time (so the times are per document)."""
        out = []
        for d in documents:
            d = {"document": d} if isinstance(d, str) else d
            out.append(self.generate(d["document"], compare=compare, id=d.get("id"), question=d.get("question")))
        return out
