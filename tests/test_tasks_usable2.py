"""Issue 23, second round: bad task input never becomes a silent zero, the repaired QA task (span answers), the
mixed-traffic env ``SwitchDec-Mix-v0``, and (slow, embedded model) each embedded task's full model beating its
trivial baseline by the margin docs/tasks.md states."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skipenv.tasks import DataFileError, make_task

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ bad task input
def test_label_map_to_a_third_class_is_refused(tmp_path):
    """A label word other than positive / negative would score 0.0 on every row of its class: refused at make."""
    with pytest.raises(ValueError, match=r"label_map must map raw label values to 'positive' or 'negative'.*"
                                         r"'neutral'"):
        make_task("rotten_tomatoes", label_map={0: "negative", 1: "positive", 2: "neutral"})


def test_three_class_file_drops_and_counts_the_third_class(tmp_path):
    path = tmp_path / "reviews.jsonl"
    rows = [{"text": "Great fun.", "label": "pos"}, {"text": "Awful.", "label": "neg"},
            {"text": "It is a film.", "label": "neutral"}, {"text": "Fine.", "label": "neutral"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = make_task("rotten_tomatoes", source=path, label_column="label")
    with pytest.warns(UserWarning, match=r"'neutral' \(2 rows\)"):
        exs = task.examples("all")
    assert [e.label for e in exs] == ["positive", "negative"]
    assert task.load_stats["all"] == {"rows": 4, "dropped_unlabeled": 2, "kept": 2}
    # only one class left after the mapping: a clear error, not an env whose every label is the same
    pd.DataFrame({"text": ["a", "b"], "label": ["neutral", "pos"]}).to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(DataFileError, match="needs both labels"):
        make_task("rotten_tomatoes", source=tmp_path / "one.csv", label_column="label").examples("all")
