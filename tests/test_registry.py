"""The one registry style (:mod:`skipenv.util.registry`, issue 19): duplicate and unknown names are clear errors,
the registry still reads as a dict, and the generator families (:data:`skipenv.generators.GENERATOR_CLASSES`)
dispatch through it, so a family registered from outside is what :func:`skipenv.generators.wrap` uses."""

from __future__ import annotations

import pickle

import pytest

from skipenv.util.registry import Registry, UnknownNameError


def test_register_and_read_like_a_dict():
    r = Registry("colour", {"red": 1})
    assert r.register("green", 2) == 2

    @r.register("blue")
    class Blue:
        pass

    assert r["blue"] is Blue and dict(r) == {"red": 1, "green": 2, "blue": Blue}
    assert sorted(r) == ["blue", "green", "red"] and "red" in r and r.get("nope") is None
    del r["green"]
    r["green"] = 3  # item assignment registers, so it is checked too
    assert r["green"] == 3
    again = pickle.loads(pickle.dumps(Registry("colour", {"red": 1})))
    assert type(again) is Registry and again.kind == "colour" and dict(again) == {"red": 1}


def test_duplicate_names_are_refused_by_every_route():
    r = Registry("colour", {"red": 1})
    for add in (lambda: r.register("red", 2), lambda: r.__setitem__("red", 2), lambda: r.update(red=2),
                lambda: r.update({"red": 2}), lambda: r.__ior__({"red": 2}), lambda: r.register("red")(object)):
        with pytest.raises(ValueError, match=r"colour 'red' is registered already \(as 1\)"):
            add()
    assert dict(r) == {"red": 1}  # nothing was replaced
    with pytest.raises(ValueError, match="registered already"):
        Registry("colour", {"red": 1}).update({"blue": 2, "red": 3})
    assert r.setdefault("red", 5) == 1 and r.setdefault("blue", 5) == 5


def test_unknown_and_bad_names():
    r = Registry("colour", {"red": 1, "blue": 2})
    with pytest.raises(UnknownNameError) as err:
        r["green"]
    assert str(err.value) == "unknown colour 'green'; registered: blue, red"
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="non-empty string"):
            r.register(bad, 1)
    with pytest.raises(ValueError, match="needs a kind"):
        Registry("")


def test_generator_families_dispatch_through_the_registry():
    from transformers import LlamaForCausalLM

    from skipenv.generators import GENERATOR_CLASSES, LlamaGenerator, UnsupportedModelError, wrap
    from skipenv.testing import ToyTokenizer, tiny_model

    assert isinstance(GENERATOR_CLASSES, Registry) and GENERATOR_CLASSES["LlamaForCausalLM"] is LlamaGenerator
    with pytest.raises(ValueError, match="architecture 'LlamaForCausalLM' is registered already"):
        GENERATOR_CLASSES.register("LlamaForCausalLM", LlamaGenerator)

    class MyLlamaForCausalLM(LlamaForCausalLM):  # a third-party architecture with Llama's layout
        pass

    base = tiny_model("llama", vocab_size=ToyTokenizer().vocab_size)
    model = MyLlamaForCausalLM(base.config)
    with pytest.raises(UnsupportedModelError, match="MyLlamaForCausalLM is not supported"):
        wrap(model, ToyTokenizer())
    GENERATOR_CLASSES.register("MyLlamaForCausalLM", LlamaGenerator)
    try:
        gen = wrap(model, ToyTokenizer())
        assert type(gen) is LlamaGenerator and gen.model is model
    finally:
        del GENERATOR_CLASSES["MyLlamaForCausalLM"]
    assert "MyLlamaForCausalLM" not in GENERATOR_CLASSES
