"""Issue 19 leftover: ``QUALITY_SIGNALS`` is a :class:`~skipenv.util.registry.Registry`; a signal registered after
import is accepted by ``get_signal`` and listed by ``QUALITY_MODES`` / ``DEFAULT_TAU`` (read when used)."""

from __future__ import annotations

import copy
import pickle

import pytest

from skipenv.envs import quality as q
from skipenv.util.registry import Registry


def test_quality_signals_is_a_registry_with_the_same_names():
    assert isinstance(q.QUALITY_SIGNALS, Registry)
    assert list(q.QUALITY_SIGNALS) == ["agreement", "reference", "fidelity", "likelihood", "probability",
                                       "label_agreement", "label_probability"]
    assert q.QUALITY_MODES == tuple(q.QUALITY_SIGNALS) and len(q.QUALITY_MODES) == 7
    assert q.DEFAULT_TAU["rouge"] == q.DEFAULT_TAU["reference"] == q.ReferenceMetric.default_tau
    assert q.DEFAULT_TAU["probability"] == q.PROBABILITY_DEFAULT_TAU == 0.01
    with pytest.raises(ValueError, match="is registered already"):
        q.QUALITY_SIGNALS.register("agreement", q.Agreement)
    with pytest.raises(ValueError, match=r"unknown quality 'nope'; choose one of \('agreement'"):
        q.get_signal("nope")
    assert pickle.loads(pickle.dumps(q.QUALITY_MODES)) == tuple(q.QUALITY_SIGNALS)
    assert copy.deepcopy(q.DEFAULT_TAU) == dict(q.DEFAULT_TAU)
    with pytest.raises(TypeError, match="register a signal"):
        q.DEFAULT_TAU["agreement"] = 0.5


def test_a_signal_registered_later_is_accepted_and_listed(monkeypatch):
    class Halved(q.Agreement):
        name = "halved_agreement"
        default_tau = 0.25

    monkeypatch.setitem(q.QUALITY_SIGNALS, "halved_agreement", Halved)
    assert isinstance(q.get_signal("halved_agreement"), Halved)
    assert "halved_agreement" in q.QUALITY_MODES and q.QUALITY_MODES[-1] == "halved_agreement"
    assert q.DEFAULT_TAU["halved_agreement"] == 0.25
    monkeypatch.undo()
    assert "halved_agreement" not in q.QUALITY_MODES and "halved_agreement" not in q.DEFAULT_TAU

