"""Hardening leftovers (outside tester): a ``gym.make`` kwarg no env takes, Mix weights that are not numbers or
near the float limit, a Mix ``quality=``, ``linear_rank`` above the hidden size, calibration kwargs on a table id.
Every case is refused with one error naming the problem and the fix, before any model loads."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import skipenv  # noqa: F401 - registers the ids
import skipenv.envs.switchdec as switchdec
from skipenv.envs.registration import SPECS, UnknownEnvKwargError, env_class_keywords, env_class_of
from skipenv.tables.envs import TABLE_SPECS

pytestmark = pytest.mark.hardening


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the bad kwarg should have been refused before")

    monkeypatch.setattr(switchdec, "shared_generator", refuse)


def _constructor_keywords(cls) -> set[str]:
    """The keyword names an env class's constructor chain accepts, collected independently of skipenv's reader:
    ``__init__`` code objects' argument names along the MRO while an ``__init__`` takes ``**kwargs``."""
    assert cls.__init__ is not object.__init__
    names = set()
    for c in cls.__mro__:
        init = c.__dict__.get("__init__")
        if init is None:
            continue
        code = init.__code__
        n = code.co_argcount + code.co_kwonlyargcount
        names |= set(code.co_varnames[1:n])
        if not code.co_flags & 0x08:  # CO_VARKEYWORDS
            break
        if "kwargs_forwarded_to" in c.__dict__:  # the Mix env hands **kwargs to its member envs
            return names | _constructor_keywords(c.kwargs_forwarded_to)
    return names


@pytest.mark.parametrize("env_id", sorted(SPECS) + sorted(TABLE_SPECS))
def test_unknown_gym_make_kwarg_names_it_and_the_accepted_ones(env_id, no_model_load):
    """Every registered id (live, layerwise, Mix, table): the unknown name, a close accepted name, and the accepted
    names (the env constructor's, read independently here, plus make_env's formulation arguments)."""
    cls = env_class_of(env_id)
    expected = _constructor_keywords(cls) | {"formulation", "formulation_kwargs", "skip_threshold"}
    assert env_class_keywords(cls) == expected
    with pytest.raises(UnknownEnvKwargError) as e:
        gym.make(env_id, bogus=1)
    msg = str(e.value)
    assert "takes no keyword argument 'bogus'" in msg and cls.__name__ in msg
    listed = set(msg.split("; it takes ")[1].split(" was raised")[0].split(", "))
    assert listed == expected
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)  # old callers catching either still do
    with pytest.raises(UnknownEnvKwargError, match="did you mean 'num_examples'"):
        gym.make(env_id, num_exmaples=2)


@pytest.mark.parametrize("kw", [{"calibration_documents": 3}, {"linear_rank": 8}, {"token_segments": 4}])
def test_live_env_settings_on_a_table_id_say_where_they_belong(kw):
    """A replay-table env replays the outcomes of the settings its table was built with; a live env's setting is
    refused naming the live id (it was a raw TypeError from the constructor)."""
    name = next(iter(kw))
    with pytest.raises(UnknownEnvKwargError, match=rf"'{name}'.*settings of the live SwitchDec envs "
                                                   rf"\(e\.g\. SwitchDec-XSum-v1\)"):
        gym.make("SwitchDec-XSum-Table-v0", **kw)


@pytest.mark.parametrize("weights, why", [(["1", "2", "3"], "'1' is a str, not a number"),
                                          ([1.0, True, 1.0], "True is a bool, not a number"),
                                          ([1.0, float("nan"), 1.0], "finite numbers >= 0"),
                                          ([1.0, -1.0, 1.0], "finite numbers >= 0"),
                                          ([0.0, 0.0, 0.0], "positive sum"),
                                          ([1.0, 2.0], "weights must be 3"),
                                          ("123", "weights must be 3"),
                                          (5, "weights must be 3")])
def test_mix_weights_that_are_not_numbers(weights, why, no_model_load):
    with pytest.raises(ValueError, match=rf"weights must be 3 finite numbers >= 0 with a positive sum.*") as e:
        gym.make("SwitchDec-Mix-v0", weights=weights)
    assert why in str(e.value)


def test_mix_weights_near_the_float_limit_are_normalised():
    """1e308 each: the naive sum overflows to inf (probabilities 0, numpy's error at the first reset); scaled by the
    largest weight first they are the uniform draw, and [1e308, 0, 1e308] is half / 0 / half."""
    from skipenv.envs.mix import _check_weights

    tasks = ("xsum", "rotten_tomatoes_scored", "disflqa_span")
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.sum([1e308] * 3))  # the failure this guards against
    np.testing.assert_allclose(_check_weights([1e308] * 3, tasks), [1 / 3] * 3)
    np.testing.assert_allclose(_check_weights([1e308, 0, 1e308], tasks), [0.5, 0.0, 0.5])
    np.testing.assert_allclose(_check_weights([1, 2, 5], tasks), [1 / 8, 2 / 8, 5 / 8])
    np.testing.assert_allclose(_check_weights(None, tasks), [1 / 3] * 3)


def test_mix_quality_error_lists_only_the_mix_tasks(no_model_load):
    with pytest.raises(ValueError, match="fixed per task") as e:
        gym.make("SwitchDec-Mix-v0", tasks=["xsum"], quality="reference")
    msg = str(e.value)
    assert "{'xsum': 'agreement'}" in msg
    assert "cnndm" not in msg and "sst2" not in msg and "rotten_tomatoes" not in msg


def test_linear_rank_above_the_hidden_size_is_refused(smollm2_tokenizer, xsum_task, tmp_path):
    """The tiny model's hidden size d: rank d + 1 is refused before any calibration (it was silently the full
    map)."""
    from skipenv.envs.evaluator import Evaluator
    from skipenv.generators.bypass import SkipModeError
    from skipenv.testing import tiny_generator

    gen = tiny_generator("llama", smollm2_tokenizer)
    d = gen.hidden_size
    with pytest.raises(SkipModeError, match=rf"linear_rank {d + 1} exceeds the hidden size {d} of this model "
                                            rf"\(LlamaForCausalLM\).*pass linear_rank <= {d}"):
        Evaluator(gen, xsum_task, cache_root=tmp_path, skip_mode="linear", calibration_documents=2,
                  linear_rank=d + 1, max_new_tokens=2)
    assert not any(tmp_path.rglob("*.pt"))  # nothing was calibrated
    # (a rank <= d calibrates: tests/envs/test_skip_modes_env.py, rank 4 in an Evaluator;
    # tests/generators/test_skip_modes.py, rank 32 and the full map)
