"""SwitchDec-DisflQA-v2 on the embedded data (issue 23): the shipped span head belongs to the embedded SmolLM2 and
its full model beats the best cheap heuristic on the test rows by the margin docs/tasks.md states."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

#: docs/tasks.md, "SwitchDec-DisflQA-v2": full model minus the best heuristic on the 69 test rows (measured
#: +0.133: 0.284 vs 0.152), asserted with slack
DISFLQA_V2_TEST_MARGIN = 0.05


@pytest.mark.slow
@pytest.mark.assets
def test_disflqa_v2_full_model_beats_the_best_heuristic():
    """All 69 test rows (one forward pass each; the full-output disk cache makes reruns cheap)."""
    import skipenv

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from task_baselines import capitalised_run, first_words, overlap_sentence

    env = skipenv.make("SwitchDec-DisflQA-v2", split="test").unwrapped
    task, ev = env.task, env.evaluator
    assert len(env.examples) == 69 and task.load_span_head().fingerprint == ev.fingerprint
    full = np.mean([ev.full_output(ex).target_score for ex in env.examples])
    heuristics = []
    for pick in (lambda s, q: s, lambda s, q: first_words(s), capitalised_run):
        heuristics.append(np.mean([task.score(pick(overlap_sentence(ex.document, ex.question), ex.question), ex)
                                   for ex in env.examples]))
    assert full - max(heuristics) >= DISFLQA_V2_TEST_MARGIN, (full, heuristics)
    env.close()
