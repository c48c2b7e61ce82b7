"""The shared episode machinery of all SwitchDec environments: formatting, observations, full-model references,
running a plan, quality, cost and reward — with the caches that make it affordable on a CPU.

Quality signals (``quality=``):

- ``"agreement"`` — teacher-forced agreement with the full model's greedy output: the fraction of output
  positions at which the plan's argmax equals the full model's token (one forward pass, no generation;
  ``quality_full = 1``). Cost is computed as if generating the full model's number of tokens.
- ``"rouge"`` (alias ``"reference"``) — generate under the plan and score the output against the dataset
  reference with the task metric: ROUGE-L F for summarization, SQuAD F1 for QA, accuracy for classification.
- ``"fidelity"`` — generate under the plan and score the output against the *full model's output* with the task
  metric (``quality_full = 1``).
- ``"likelihood"`` — ``exp(mean log p(reference | plan) − mean log p(reference | full))`` clipped to [0, 1]:
  the teacher-forced likelihood of the reference relative to the full model (one forward pass).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

import numpy as np
import torch

from ..cache import LRU, DiskCache
from ..generators import SkippableGenerator
from ..inputs import PromptInput
from ..plan import SkipPlan
from ..rewards import REWARD_MODES, constraint_satisfied, lexicographic_reward, weighted_reward
from .. import metrics

__all__ = ["EpisodeEvaluator", "QUALITY_MODES", "DEFAULT_TAU"]

QUALITY_MODES = ("agreement", "rouge", "fidelity", "likelihood")

#: Default tolerance per quality signal (absolute, in the quality's unit). Chosen from measurements on the
#: embedded SmolLM2 / XSum (see README "Choosing tau"): agreement of the full model with itself is 1.0 and
#: skipping the single most redundant attention sublayer keeps ~0.9, so 0.1 admits a few sublayer / token skips
#: per input; ROUGE-L against references is noisy (±0.02 between equally good summaries), so 0.02.
DEFAULT_TAU = {"agreement": 0.10, "rouge": 0.02, "fidelity": 0.10, "likelihood": 0.10}


def model_fingerprint(generator: SkippableGenerator) -> str:
    """A short stable id of the wrapped model (16 hex chars): its config (without the folder it was loaded from or
    the transformers version) and a checksum of the first weights — the same on every machine for the same model."""
    cfg = {k: v for k, v in generator.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    with torch.no_grad():
        p = next(iter(generator.model.parameters()))
        check = float(p.detach().float().reshape(-1)[:4096].double().sum())
    return hashlib.sha1(f"{json.dumps(cfg, sort_keys=True, default=str)}|{check:.6e}".encode()).hexdigest()[:16]


class EpisodeEvaluator:
    """Runs plans on examples of one task with one generator and turns them into (quality, cost, reward, info).

    Args:
        generator: the wrapped frozen model.
        task: a :class:`skipenv.tasks.Task`.
        quality: one of :data:`QUALITY_MODES`.
        reward_mode: ``"lexicographic"`` | ``"weighted"`` | ``"vector"`` (vector = lexicographic scalar plus
            ``info["reward_vector"] = (quality, cost)``).
        tau: quality tolerance; ``None`` = :data:`DEFAULT_TAU` of the quality signal.
        lam: weight of the cost in ``weighted`` mode.
        token_segments: ``K`` document segments.
        max_new_tokens: generation budget (default: the task's).
        disk_cache: keep full-model references on disk (``SKIPENV_CACHE``).
        lru_size: entries of the in-memory (example, plan) → result cache.
        record_time: put wall-clock seconds in ``info["time_s"]`` (off by default: makes infos irreproducible).

    Raises:
        ValueError: unknown quality or reward mode, or a negative ``tau``.
    """

    def __init__(self, generator: SkippableGenerator, task, *, quality: str = "agreement",
                 reward_mode: str = "lexicographic", tau: float | None = None, lam: float = 0.5,
                 token_segments: int = 8, max_new_tokens: int | None = None, disk_cache: bool = True,
                 lru_size: int = 4096, record_time: bool = False):
        if quality == "reference":
            quality = "rouge"
        if quality not in QUALITY_MODES:
            raise ValueError(f"unknown quality {quality!r}; choose one of {QUALITY_MODES}")
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown reward_mode {reward_mode!r}; choose one of {REWARD_MODES}")
        self.tau = DEFAULT_TAU[quality] if tau is None else float(tau)
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.generator, self.task, self.quality = generator, task, quality
        self.reward_mode, self.lam = reward_mode, float(lam)
        self.spec = generator.plan_spec(token_segments)
        self.max_new_tokens = int(max_new_tokens or task.max_new_tokens)
        self.record_time = record_time
        self.fingerprint = model_fingerprint(generator)
        task_key = hashlib.sha1(f"{task.name}|{task.describe_source()}|{task.max_input_tokens}".encode()).hexdigest()[:12]
        ns = f"full/{self.fingerprint}/{task.name}-{task_key}-new{self.max_new_tokens}-r2"  # r2: stop rule
        self.disk = DiskCache(ns) if disk_cache else None
        self._prompts: dict[str, PromptInput] = {}
        self._observations: dict[str, np.ndarray] = {}
        self._full: dict[str, dict] = {}
        self.results = LRU(lru_size)

    # ------------------------------------------------------------------ per-example, plan-independent
    def prompt(self, example) -> PromptInput:
        """The formatted input of ``example`` (memoised)."""
        p = self._prompts.get(example.id)
        if p is None:
            p = self.task.format(example, self.generator.tokenizer,
                                 encoder_decoder=self.generator.num_encoder_layers > 0)
            self._prompts[example.id] = p
        return p

    def observation_features(self, example) -> np.ndarray:
        """Pooled first-layer hidden states ``[d]`` (float32, memoised) of the full input."""
        obs = self._observations.get(example.id)
        if obs is None:
            obs = self.generator.observe([self.prompt(example)])[0].numpy().astype(np.float32)
            self._observations[example.id] = obs
        return obs

    def full_reference(self, example) -> dict:
        """The full model's greedy output for ``example`` and its quality, from memory / disk or computed once.

        Returns:
            dict with ``tokens`` (list[int]), ``text``, ``num_generated``, ``prompt_length``,
            ``quality_reference`` (task metric vs the dataset reference), ``reference_logprob`` (mean
            log-probability of the tokenised reference, nats/token; ``None`` until a ``likelihood`` evaluator
            needs it).
        """
        ref = self._full.get(example.id)
        if ref is not None:
            return ref

        def compute() -> dict:
            out = self.generator.generate([self.prompt(example)], None, max_new_tokens=self.max_new_tokens,
                                          stop=self.task.output_complete)
            return self._make_reference(example, out.tokens[0], out.texts[0], out.prompt_lengths[0])

        key = self._disk_key(example)
        ref = self.disk.get_or_compute(key, compute) if self.disk is not None else compute()
        self._full[example.id] = ref
        return ref

    def prefetch(self, examples, batch_size: int = 8, progress: bool = True) -> int:
        """Compute the missing full-model references of ``examples`` in batches (documents of similar length
        together, left-padded), store them on disk, and return how many were computed.

        Batched greedy decoding is several times faster per document on a CPU than one document at a time.
        Results equal the one-at-a-time references up to float round-off (a near-tie between two tokens can in
        rare cases resolve differently); they are cached, so every later episode sees the same reference.
        """
        from tqdm import tqdm

        todo = []
        for ex in examples:
            if ex.id in self._full:
                continue
            cached = self.disk.get(self._disk_key(ex)) if self.disk is not None else None
            if cached is None:
                todo.append(ex)
            else:
                self._full[ex.id] = cached
        todo.sort(key=lambda ex: len(self.prompt(ex)))
        bar = tqdm(total=len(todo), desc="full-model references", disable=not progress or not todo, leave=False)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i: i + batch_size]
            out = self.generator.generate([self.prompt(ex) for ex in chunk], None, max_new_tokens=self.max_new_tokens,
                                          stop=self.task.output_complete)
            for j, ex in enumerate(chunk):
                self._store_reference(ex, out.tokens[j], out.texts[j], out.prompt_lengths[j])
            bar.update(len(chunk))
        bar.close()
        return len(todo)

    def _disk_key(self, example) -> str:
        return json.dumps([example.id, self.generator.eos_token_id])

    def _make_reference(self, example, tokens, text, prompt_length) -> dict:
        return {
            "tokens": list(tokens), "text": text, "num_generated": len(tokens), "prompt_length": prompt_length,
            "quality_reference": float(self.task.score(text, example)),
            # one extra forward pass, only needed by quality="likelihood" (filled in lazily otherwise)
            "reference_logprob": self._reference_logprob(example, None) if self.quality == "likelihood" else None,
        }

    def _store_reference(self, example, tokens, text, prompt_length) -> dict:
        ref = self._make_reference(example, tokens, text, prompt_length)
        if self.disk is not None:
            self.disk.put(self._disk_key(example), ref)
        self._full[example.id] = ref
        return ref

    def _reference_ids(self, example) -> list[int]:
        ids = self.generator.tokenizer(example.reference, add_special_tokens=False)["input_ids"]
        eos = self.generator.eos_token_id
        return list(ids) + ([eos] if eos is not None else [])

    def _reference_logprob(self, example, plan: SkipPlan | None) -> float:
        s = self.generator.score([self.prompt(example)], [self._reference_ids(example)], plan)[0]
        return float(s.logprobs.mean()) if len(s.logprobs) else 0.0

    # ------------------------------------------------------------------ plans
    def evaluate(self, example, plan: SkipPlan) -> dict[str, Any]:
        """Run ``plan`` on ``example`` and return the step ``info`` (reward included under ``"reward"``).

        Raises:
            PlanError: a plan for another model / segment count.
        """
        plan.check(self.spec)
        key = (example.id, plan)
        hit = self.results.get(key)
        if hit is not None:
            return dict(hit)
        t0 = time.perf_counter()
        prompt = self.prompt(example)
        full = self.full_reference(example)
        text = None
        if self.quality == "agreement":
            if plan.is_empty:
                q = 1.0
            else:
                s = self.generator.score([prompt], [full["tokens"]], plan)[0]
                q = metrics.agreement(s.argmax.tolist(), full["tokens"])
            q_full, n_gen = 1.0, full["num_generated"]
        elif self.quality == "likelihood":
            if full.get("reference_logprob") is None:  # reference cached by an evaluator of another quality
                full["reference_logprob"] = self._reference_logprob(example, None)
                if self.disk is not None:
                    self.disk.put(self._disk_key(example), full)
            lp = full["reference_logprob"] if plan.is_empty else self._reference_logprob(example, plan)
            q = float(min(1.0, np.exp(lp - full["reference_logprob"])))
            q_full, n_gen = 1.0, full["num_generated"]
        else:
            if plan.is_empty:
                text, n_gen = full["text"], full["num_generated"]
            else:
                out = self.generator.generate([prompt], plan, max_new_tokens=self.max_new_tokens,
                                          stop=self.task.output_complete)
                text, n_gen = out.texts[0], out.num_generated[0]
            if self.quality == "rouge":
                q, q_full = float(self.task.score(text, example)), full["quality_reference"]
            else:
                q_full = 1.0
                if text == full["text"]:  # identical output: fidelity 1 even where the metric sees no words
                    q = 1.0
                else:
                    as_reference = dataclasses.replace(example, reference=full["text"],
                                                       label=self.task.post_process(full["text"]))
                    q = float(self.task.score(text, as_reference))
        flops = self.generator.flops(plan, prompt, n_gen, observation=True)
        flops_full = self.generator.flops(None, prompt, full["num_generated"]).total
        cost = flops.total / flops_full
        ok = constraint_satisfied(q, q_full, self.tau)
        if self.reward_mode == "weighted":
            reward = weighted_reward(q, cost, self.lam)
        else:
            reward = lexicographic_reward(q, q_full, cost, self.tau)
        info: dict[str, Any] = {
            "example_id": example.id,
            "quality": float(q),
            "quality_full": float(q_full),
            "constraint_satisfied": bool(ok),
            "cost": float(cost),
            "flops_saved": float(1.0 - cost),
            "flops": int(flops.total),
            "flops_full": int(flops_full),
            "flops_breakdown": flops.to_dict(),
            "plan": plan.to_json(),
            "num_skipped": plan.num_skipped,
            "reward": float(reward),
        }
        if text is not None:
            info["text"] = text
        if self.reward_mode == "vector":
            info["reward_vector"] = (float(q), float(cost))
        if self.record_time:
            info["time_s"] = time.perf_counter() - t0
        self.results.put(key, info)
        return dict(info)
