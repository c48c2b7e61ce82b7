"""Bad classification files (issue 23): a label column that is not two classes is refused with one clear error."""

from __future__ import annotations

import pandas as pd
import pytest

from skipenv.tasks import DataFileError, make_task


def test_a_rating_scale_is_not_two_classes(tmp_path):
    """Ratings 0-5 under the default label map: 0 / 1 would be read as negative / positive and 2-5 dropped — a
    silently wrong task; refused, naming the values and the fix."""
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"text": [f"review {i}" for i in range(12)], "label": [0, 1, 2, 3, 4, 5] * 2}).to_csv(path,
                                                                                                       index=False)
    task = make_task("rotten_tomatoes", source=path, label_column="label")
    with pytest.raises(DataFileError, match=r"more than two classes \(6 values: 0, 1, 2, 3, 4, 5\).*label_map="):
        task.examples("all")
    # the same file mapped to two classes is accepted, every row kept
    task = make_task("rotten_tomatoes", source=path, label_column="label",
                     label_map={0: "negative", 1: "negative", 2: "negative", 3: "positive", 4: "positive",
                                5: "positive"})
    assert [e.label for e in task.examples("all")] == ["negative"] * 3 + ["positive"] * 3 + \
        ["negative"] * 3 + ["positive"] * 3


def test_one_extra_class_is_dropped_and_counted_not_refused(tmp_path):
    path = tmp_path / "three.jsonl"
    pd.DataFrame({"text": ["good", "bad", "plot"], "label": ["fresh", "rotten", "plot"]}).to_json(
        path, orient="records", lines=True)
    task = make_task("rotten_tomatoes", source=path, label_column="label")
    with pytest.warns(UserWarning, match="'plot' \\(1 rows\\)"):
        assert [e.label for e in task.examples("all")] == ["positive", "negative"]
