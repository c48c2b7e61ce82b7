"""benchmarks/choose_defaults.py argument handling: bad --kinds / --report entries fail before any model loads (the
screen runs for hours and read --report only at its end), and a per-document cache written for other documents or
other kinds is refused or completed instead of failing with a KeyError after the screen."""

from __future__ import annotations


import pytest


@pytest.fixture(scope="module")
def script():
    from _scripts import load_benchmark

    return load_benchmark("choose_defaults")


def test_report_and_kinds_parsed(script):
    kinds = script.check_kinds(["pooled", "layer:04", "attention:2"])
    assert kinds == ["pooled", "layer:4", "attention:2"]
    assert script.parse_report("probability:layer:4:0.02", kinds) == ("probability", "layer:4", 0.02)
    assert script.parse_report("agreement:layer:04:0.1", kinds) == ("agreement", "layer:4", 0.1)
    assert script.parse_report("agreement:pooled:0", kinds) == ("agreement", "pooled", 0.0)
    for spec, match in (("prob:pooled:0.02", "signal must be one of"), ("probability:pooled", "signal must be|kind"),
                        ("probability:segments:0.02", "not among --kinds"), ("probability:attn:2:0.02", "unknown"),
                        ("probability:pooled:x", "tau 'x'"), ("probability:pooled:-0.1", "tau"),
                        ("probability:pooled:nan", "tau"), ("", "signal")):
        with pytest.raises(ValueError, match=match):
            script.parse_report(spec, kinds)
    for bad in (["layer:0"], ["attn:2"], ["layer:4", "layer:04"]):
        with pytest.raises(ValueError):
            script.check_kinds(bad)


@pytest.mark.parametrize("argv", [["--kinds", "attention:0"], ["--report", "probability:layer:9:0.02"],
                                  ["--train-docs", "0"], ["--test-docs", "-3"]])
def test_main_refuses_bad_arguments_before_loading(script, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(script.skipenv, "make", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit) as e:
        script.main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert not (tmp_path / "out").exists()


def test_cache_of_other_documents_refused(script, tmp_path):
    rows = [{"example_id": "a"}, {"example_id": "b"}]
    script.check_cached(rows, ["a", "b", "c"], tmp_path / "train.pkl")  # a prefix of the documents: fine
    with pytest.raises(ValueError, match="row 1 is example 'b' but document 1 is now 'x'"):
        script.check_cached(rows, ["a", "x"], tmp_path / "train.pkl")


@pytest.mark.assets
def test_cache_with_fewer_kinds_is_completed(script, tiny_llama, tmp_path, monkeypatch):
    # a cache written with --kinds pooled, resumed with --kinds pooled layer:2: the missing kind is computed for
    # the cached documents (it raised a KeyError at the end of the screen), equal to a fresh run's features
    import numpy as np

    from skipenv.envs import SwitchDecEnv

    def make(env_id, split, num_examples):
        return SwitchDecEnv("xsum", generator=tiny_llama, split=split, num_examples=num_examples, max_new_tokens=3,
                            max_input_tokens=96, disk_cache=False)

    monkeypatch.setattr(script.skipenv, "make", make)
    cache = tmp_path / "train.pkl"
    first = script.collect("train", 2, ["pooled"], cache)
    assert [set(r["features"]) for r in first] == [{"pooled"}] * 2
    resumed = script.collect("train", 2, ["pooled", "layer:2"], cache)
    fresh = script.collect("train", 2, ["pooled", "layer:2"], tmp_path / "fresh.pkl")
    for a, b in zip(resumed, fresh, strict=True):
        assert a["example_id"] == b["example_id"]
        for kind in ("pooled", "layer:2"):
            np.testing.assert_allclose(a["features"][kind], b["features"][kind], atol=1e-5)
            assert a["extra_cost"][kind] == pytest.approx(b["extra_cost"][kind])
    assert script.pickle.loads(cache.read_bytes())[0]["features"].keys() == {"pooled", "layer:2"}
