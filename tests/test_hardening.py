"""Hardening: inputs a hostile user or a careful RL researcher tries, found after the pipeline, generator and
newcomer work was merged — each test is one kind of defect that was found, on a tiny random-weight Llama with the
embedded SmolLM2 tokenizer and real XSum rows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from skipenv.envs import SwitchDecEnv, SwitchDecLayerwiseEnv
from skipenv.envs.cache import CacheWarning
from skipenv.testing import tiny_generator

pytestmark = pytest.mark.assets  # the embedded tokenizer and XSum rows


@pytest.fixture(scope="module")
def generator(smollm2_tokenizer):
    return tiny_generator("llama", smollm2_tokenizer)


KW = {"num_examples": 2, "max_new_tokens": 6, "max_input_tokens": 96, "disk_cache": False}


def make(generator, cls=SwitchDecEnv, **kw):
    return cls("xsum", generator=generator, **{**KW, **kw})


# ---------------------------------------------------------------------------------------------------------------
# cache folder that cannot be created


def test_uncreatable_cache_folder_falls_back_to_memory(generator, tmp_path, monkeypatch):
    """``SKIPENV_CACHE`` names a folder that cannot be created (read-only parent) and the data is a local file: the
    env still works, keeping full outputs in memory with one warning (``skipenv.assets.cache_dir`` raises
    ``AssetError`` for it)."""
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"id": "a", "document": "The council approved a new park on Monday.",
                                "summary": "Council approves park."}) + "\n")
    target = tmp_path / "read-only" / "cache"
    original_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "read-only")):
            raise PermissionError(13, "Permission denied", str(self))
        return original_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setenv("SKIPENV_CACHE", str(target))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        env = make(generator, disk_cache=True, task_source=str(data), split="all")
        env.reset(seed=0)
        _, reward, *_ = env.step(np.zeros(env.action_space.n, dtype=np.int8))
    assert np.isfinite(reward) and env.evaluator.disk.in_memory
    assert len([w for w in seen if issubclass(w.category, CacheWarning)]) == 1
    assert not target.exists()


# ---------------------------------------------------------------------------------------------------------------
# command line: a bad input is one line on stderr and a non-zero exit code, never a traceback, and is caught
# before the model or the data load (these cases return in well under a second of work)

BAD_CLI = [
    (["train", "--total-timesteps", "-5"], 2, "--total-timesteps"),
    (["train", "--train-examples", "x"], 2, "--train-examples"),
    (["train", "--env", "NoSuch-v0"], 1, "NoSuch"),
    (["leaderboard", "skip-nothing", "--episodes", "0"], 2, "--episodes"),
    (["leaderboard", "skip-nothing", "--env-kwargs", "[1]"], 2, "JSON object"),
    (["leaderboard", "skip-nothing", "--env-kwargs", "{bad"], 2, "JSON"),
    (["leaderboard", "skip-nothing", "lead:abc"], 1, "lead:abc"),
    (["leaderboard", "lead:"], 1, "lead:"),
    (["leaderboard", "random:2"], 1, "random:2"),
    (["leaderboard", "calibrated:-1"], 1, "calibrated:-1"),
    (["leaderboard", "oracle:x"], 1, "oracle:x"),
    (["leaderboard", "every-other:heads"], 1, "every-other:heads"),
    (["leaderboard", "sb3:ppo"], 1, "sb3:ppo"),
    (["leaderboard", "ppo:/nonexistent"], 1, "ppo:/nonexistent"),
    (["leaderboard", "lead:4", "skip-nothing", "lead:4"], 1, "more than once"),
    (["leaderboard", "skip-nothing", "--env", "NoSuch-v0"], 1, "NoSuch"),
    (["probe", "--train-docs", "0"], 2, "--train-docs"),
    (["probe", "--observations", "nosuch"], 1, "nosuch"),
    (["probe", "--env-kwargs", '{"num_examples": 3}'], 1, "num_examples"),
    (["probe", "--env-kwargs", '{"tau": 0.5}'], 1, "--tau"),
    (["probe", "--env-kwargs", '{"quality": "reference"}'], 1, "--quality"),
]


@pytest.mark.parametrize("argv,code,named", BAD_CLI, ids=[" ".join(a) for a, _, _ in BAD_CLI])
def test_cli_bad_input_is_one_line_without_traceback(argv, code, named, tmp_path, capsys, monkeypatch):
    from skipenv import cli

    monkeypatch.delenv("SKIPENV_TRACEBACK", raising=False)
    try:
        rc = cli.main([*argv, "--out", str(tmp_path / "out")])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and named in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_keeps_the_traceback_of_a_bug(monkeypatch):
    """Only errors caused by the input or the machine become one line; a programming error keeps its traceback."""
    from skipenv import cli

    def broken(args):
        raise AttributeError("a bug")

    monkeypatch.setitem(cli.SUBCOMMANDS, "download", cli.Subcommand(lambda p: None, broken, "broken"))
    with pytest.raises(AttributeError, match="a bug"):
        cli.main(["download"])


def test_unknown_device_names_the_device():
    from skipenv.loading import resolve_device

    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


# ---------------------------------------------------------------------------------------------------------------
# formulation wrappers: every argument checked (a NaN lam_max used to make every later reward NaN)

BAD_MULTIPLIER = [
    ({"lam_max": float("nan"), "lam_init": 0.5}, "lam_max"), ({"lam_max": None}, "lam_max"),
    ({"update_every": 2.5}, "update_every"), ({"update_every": "8"}, "update_every"),
    ({"update_every": True}, "update_every"), ({"tau": "0.1"}, "tau"), ({"tau": True}, "tau"),
    ({"lr": float("inf")}, "lr"), ({"lam_init": -1.0}, "lam_init"),
]


@pytest.mark.parametrize("kw,named", BAD_MULTIPLIER, ids=[repr(k) for k, _ in BAD_MULTIPLIER])
def test_lagrange_multiplier_arguments_are_checked(kw, named):
    from skipenv.envs.rewards import LagrangeMultiplier

    with pytest.raises(ValueError, match=named):
        LagrangeMultiplier(**{"tau": 0.1, **kw})


def test_expected_constraint_rewards_stay_finite_with_a_large_lam_max(generator):
    from skipenv.envs.wrappers import ExpectedConstraint

    with pytest.raises(ValueError, match="lam_max must be a finite number"):  # issue 20: inf gave -inf / NaN rewards
        ExpectedConstraint(make(generator), tau=0.0, lam_max=float("inf"))
    w = ExpectedConstraint(make(generator), tau=0.0, lam_max=1e6, lam_init=1.0, update_every=1, lr=1.0)
    w.reset(seed=0)
    for _ in range(3):
        w.reset()
        _, reward, *_, info = w.step(np.ones(w.action_space.n, dtype=np.int8))  # skip everything: big loss
        assert np.isfinite(reward) and reward == pytest.approx(
            (1 - info["cost"]) - info["lagrange_multiplier"] * info["constraint_violation"])


@pytest.mark.parametrize("bad", [3, "multiplier"])
def test_expected_constraint_refuses_a_non_multiplier(bad, generator):
    from skipenv.envs.wrappers import ExpectedConstraint

    with pytest.raises(ValueError, match="LagrangeMultiplier"):
        ExpectedConstraint(make(generator), tau=0.1, multiplier=bad)


@pytest.mark.parametrize("tau_range", [(0, 0.1, 0.2), 0.1, "ab", (float("nan"), 1), (0.2, 0.1), (-0.1, 0.1),
                                       (0, float("inf")), (True, 0.2)], ids=repr)
def test_budget_conditioned_bad_tau_range(tau_range, generator):
    from skipenv.envs.wrappers import BudgetConditioned

    with pytest.raises(ValueError, match="tau_range"):
        BudgetConditioned(make(generator), tau_range=tau_range)


@pytest.mark.parametrize("options,named", [({"tau": "abc"}, "options\\['tau'\\]"), ({"tau": True}, "options"),
                                           ({"tau": [0.1]}, "options"), ({"tau": float("nan")}, "options"),
                                           ({"tau": 0.5}, "outside tau_range"), ([1], "dict")], ids=repr)
def test_budget_conditioned_bad_reset_options(options, named, generator):
    from skipenv.envs.wrappers import BudgetConditioned

    w = BudgetConditioned(make(generator), tau_range=(0.0, 0.3))
    with pytest.raises(ValueError, match=named):
        w.reset(seed=0, options=options)
    obs, info = w.reset(seed=0, options={"tau": 0.2, "index": 1})  # a good tau next to an env option
    assert obs[-1] == np.float32(0.2) and info["tau"] == 0.2 and w.unwrapped.example is w.unwrapped.examples[1]


# ---------------------------------------------------------------------------------------------------------------
# data files


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_data_file_with_utf8_byte_order_mark(suffix, tmp_path):
    """A UTF-8 file with a byte-order mark (as Windows editors save it) reads like the same file without one, for
    every text format (pandas already dropped it for CSV; JSON and JSON Lines refused the file)."""
    from skipenv.tasks import make_task

    row = {"id": "a", "document": "Café owners welcomed the new park.", "summary": "Park welcomed."}
    text = {".jsonl": json.dumps(row, ensure_ascii=False) + "\n", ".json": json.dumps([row], ensure_ascii=False),
            ".csv": "id,document,summary\na,Café owners welcomed the new park.,Park welcomed.\n"}[suffix]
    plain, bom = tmp_path / f"plain{suffix}", tmp_path / f"bom{suffix}"
    plain.write_bytes(text.encode("utf-8"))
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    read = [[(e.id, e.document, e.reference) for e in make_task("xsum", source=str(f)).examples("all")]
            for f in (plain, bom)]
    assert read[0] == read[1] == [("a", row["document"], row["summary"])]


# ---------------------------------------------------------------------------------------------------------------
# disk cache: a failing write or an odd entry never stops the run


@pytest.fixture(scope="module")
def task():
    from skipenv.tasks import make_task

    return make_task("xsum", max_input_tokens=96)


def _write_failure(kind, evaluator, example, monkeypatch):
    import skipenv.envs.cache as cache_module

    if kind == "disk full":
        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(cache_module.json, "dump", full)
    else:  # a folder sits where the entry's file goes
        evaluator.disk._path(evaluator._disk_key(example)).mkdir(parents=True)


@pytest.mark.parametrize("kind", ["disk full", "folder at the entry path"])
def test_failed_cache_write_falls_back_to_memory(kind, generator, task, tmp_path, monkeypatch):
    from skipenv.envs import Evaluator

    reference = Evaluator(generator, task, max_new_tokens=4, disk_cache=False)
    ev = Evaluator(generator, task, max_new_tokens=4, cache_root=tmp_path)
    a, b = task.examples("train")[:2]
    _write_failure(kind, ev, a, monkeypatch)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outs = [ev.full_output(x) for x in (a, b, a)]
    assert outs == [reference.full_output(x) for x in (a, b, a)]
    assert ev.disk.in_memory and not [p for p in tmp_path.rglob("*.json") if p.is_file()]
    assert any("in memory" in str(w.message) for w in seen if issubclass(w.category, CacheWarning))


def test_absurdly_nested_cache_entry_is_dropped(generator, task, tmp_path):
    from skipenv.envs import Evaluator

    ex = task.examples("train")[0]
    good = Evaluator(generator, task, max_new_tokens=4, cache_root=tmp_path).full_output(ex)
    (entry,) = tmp_path.rglob("*.json")
    entry.write_text("[" * 100_000)  # json raises RecursionError, not ValueError
    with pytest.warns(CacheWarning, match="unreadable: RecursionError"):
        again = Evaluator(generator, task, max_new_tokens=4, cache_root=tmp_path).full_output(ex)
    assert again == good and json.loads(entry.read_text())["value"]["tokens"] == list(good.tokens)


# ---------------------------------------------------------------------------------------------------------------
# constructor arguments the earlier table missed

MORE_BAD_KWARGS = [
    ({"task": 123}, "task must be"), ({"task": None}, "task must be"), ({"task_source": ""}, "task_source"),
    ({"cost_weight": 2.0}, "cost_weight"), ({"cost_weight": 2.0, "reward_mode": "vector"}, "cost_weight"),
    ({"token_segments": 0, "candidates": ("tokens",)}, "no action bits"),
]


@pytest.mark.parametrize("kw,match", MORE_BAD_KWARGS, ids=[repr(k) for k, _ in MORE_BAD_KWARGS])
def test_more_bad_constructor_arguments_are_named(kw, match, generator):
    task = kw.pop("task", "xsum")
    with pytest.raises(ValueError, match=match):
        SwitchDecEnv(task, generator=generator, **{**KW, **kw})


def test_lam_with_the_lexicographic_reward_is_refused(generator):
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="reward_mode='weighted'"):
        make(generator, lam=0.5)


# ---------------------------------------------------------------------------------------------------------------
# episode records: tampered files are refused by name; a replay env with other settings does not validate


@pytest.fixture(scope="module")
def record(generator):
    from skipenv.envs.records import EpisodeRecord

    env = make(generator, tau=0.3)
    env.reset(options={"index": 1})
    info = env.step(np.ones(env.action_space.n, dtype=np.int8))[4]
    return EpisodeRecord.from_step(env, info, env_id="SwitchDec-XSum-v0", env_kwargs={**KW, "tau": 0.3})


TAMPERED = [("foo", 1, "unknown fields"), ("reward", "1.0", "reward"), ("reward", float("nan"), "reward"),
            ("cost", True, "cost"), ("env_kwargs", [1], "env_kwargs"), ("skipenv_version", None, "skipenv_version"),
            ("example_id", 5, "example_id")]


@pytest.mark.parametrize("field,value,named", TAMPERED, ids=[f"{f}={v!r}" for f, v, _ in TAMPERED])
def test_tampered_record_json_is_refused_by_name(field, value, named, record):
    from skipenv.envs.records import EpisodeRecord

    d = json.loads(record.to_json())
    d[field] = value
    with pytest.raises(ValueError, match=named):
        EpisodeRecord.from_json(json.dumps(d))
    with pytest.raises(ValueError, match="JSON object"):
        EpisodeRecord.from_json("[1, 2]")


@pytest.mark.parametrize("kw,note", [({}, "tau"), ({"tau": 0.3, "quality": "fidelity"}, "quality"),
                                     ({"tau": 0.3, "layer_block": 2}, "layer_block"),
                                     ({"tau": 0.3, "token_segments": 4}, "token_segments"),
                                     ({"tau": 0.3, "split": "all"}, "split")], ids=repr)
def test_record_does_not_validate_in_an_env_with_other_settings(kw, note, record, generator):
    """Skipping everything scores the same under several settings, so the numbers alone used to validate."""
    from skipenv.envs.records import validate

    assert validate(record, env=make(generator, tau=0.3))
    if "token_segments" in kw:  # the plan itself no longer fits: a named PlanError
        from skipenv.plan import PlanError

        with pytest.raises(PlanError):
            validate(record, env=make(generator, **kw))
        return
    result = validate(record, env=make(generator, **kw))
    assert not result and any(note in n for n in result.notes), result.notes


def test_record_of_another_task_or_env_class_does_not_validate(record, generator):
    import dataclasses

    from skipenv.envs.records import validate

    result = validate(dataclasses.replace(record, env_id="SwitchDec-DisflQA-v0"), env=make(generator, tau=0.3))
    assert not result and any("task differs" in n for n in result.notes)
    overridden = dataclasses.replace(record, env_id="SwitchDec-DisflQA-v0", env_kwargs={**record.env_kwargs,
                                                                                      "task": "xsum"})
    assert validate(overridden, env=make(generator, tau=0.3))  # gym.make(id, task=...) overrode the id's task
    result = validate(dataclasses.replace(record, env_id="SwitchDec-XSum-Layerwise-v0"),
                      env=make(generator, tau=0.3))
    assert not result and any("SwitchDecLayerwiseEnv" in n for n in result.notes)


def test_rows_dropped_from_a_local_file_are_reported(tmp_path):
    """7 of 10 QA rows without a usable answer were left out with no word; the counts sat in ``load_stats``."""
    from skipenv.tasks import make_task

    answers = ["Paris", "", None, ["Paris", "paris"], [], {"text": ["Paris"]}, {"text": []}, 42, [None], [""]]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"id": str(i), "passage": "Paris is the capital of France.",
                                          "question": "What is the capital of France?", "answer": a})
                              for i, a in enumerate(answers)))
    task = make_task("disflqa", source=str(path))
    with pytest.warns(UserWarning, match=r"qa.jsonl: 7 of 10 rows dropped \(all: .*\)"):
        exs = task.examples("all")
    assert [tuple(e.answers) for e in exs] == [("Paris",), ("Paris", "paris"), ("Paris",)]
    assert task.load_stats["all"]["rows"] - task.load_stats["all"]["kept"] == 7


def test_embedded_data_drops_stay_quiet():
    """The embedded XSum drops one empty row by design: no warning on every env creation."""
    from skipenv.tasks import make_task

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_task("xsum").examples("train")


@pytest.mark.parametrize("text", ["😀😀", "...", "!!! ???", "👍"])
def test_rouge_of_identical_texts_without_word_tokens_is_one(text):
    """The docstring promised 1.0 for identical non-empty texts in any script; emoji / punctuation-only texts
    scored 0.0 (no tokens). Different token-less texts still score 0."""
    from skipenv import metrics

    assert metrics.rouge(text, text) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert metrics.rouge(text, "😢")["rougeL"] == 0.0
    assert metrics.rouge("   ", "   ")["rougeL"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# probe menus


def test_probe_plan_with_a_reversed_range_is_refused():
    from skipenv.plan import PlanSpec
    from skipenv.evaluation.probe import parse_plan

    spec = PlanSpec(model_type="llama", num_encoder_layers=0, num_decoder_layers=4, token_segments=8)
    assert parse_plan("x:tokens=1-3", spec)[1] == parse_plan("x:tokens=1,2,3", spec)[1]
    with pytest.raises(ValueError, match="empty range '3-1'.*1-3"):
        parse_plan("x:tokens=3-1", spec)  # was a plan that skips nothing


def test_probe_menu_with_a_repeated_name_is_refused(generator, tmp_path):
    from skipenv.envs.registration import sharing
    from skipenv.evaluation.probe import run_probe

    with sharing(generator=generator), pytest.raises(ValueError, match=r"\['a'\] given more than once"):
        run_probe(env_kwargs={"max_new_tokens": 4, "max_input_tokens": 96, "disk_cache": False},
                  menu=["a:tokens=1", "a:tokens=2"], num_train=2, num_test=2, out_dir=tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------------------------
# property-based fuzzing of the wrappers and of record files: documented exceptions only, finite rewards

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=3), st.lists(st.floats(0, 1), max_size=3))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(kw=st.fixed_dictionaries({}, optional={"tau": scalars, "lr": scalars, "update_every": scalars,
                                              "lam_init": scalars, "lam_max": scalars}),
       tau_range=st.one_of(scalars, st.tuples(scalars, scalars)),
       options=st.one_of(st.none(), st.dictionaries(st.sampled_from(["tau", "index"]), scalars, max_size=2)))
def test_fuzz_formulations(generator, kw, tau_range, options):
    from skipenv.envs.wrappers import BudgetConditioned, ExpectedConstraint

    action = np.ones(16, dtype=np.int8)
    try:
        w = ExpectedConstraint(make(generator), **{"tau": 0.1, "update_every": 1, **kw})
    except ValueError:
        pass
    else:
        for _ in range(3):
            w.reset(seed=0)
            assert np.isfinite(w.step(action)[1])
    try:
        b = BudgetConditioned(make(generator), tau_range=tau_range)
    except ValueError:
        return
    try:
        obs, _ = b.reset(seed=0, options=options)
    except ValueError:
        return
    assert b.observation_space.contains(obs) and np.isfinite(b.step(action)[1])


record_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(st.text(max_size=3), inner,
                                                                              max_size=3)), max_leaves=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.dictionaries(st.sampled_from(["env_id", "split", "example_id", "plan", "reward", "quality",
                                              "quality_full", "cost", "model_fingerprint", "skipenv_version",
                                              "env_kwargs", "extra"]), record_values, max_size=3))
def test_fuzz_record_files(record, edits):
    from skipenv.envs.records import EpisodeRecord

    d = {**json.loads(record.to_json()), **edits}
    try:
        text = json.dumps(d)
    except ValueError:
        return
    try:
        again = EpisodeRecord.from_json(text)
    except ValueError:
        return
    assert all(isinstance(getattr(again, k), float) or isinstance(getattr(again, k), int)
               for k in ("reward", "quality", "quality_full", "cost"))


# ---------------------------------------------------------------------------------------------------------------
# sharing(): objects reach envs built in the block's thread only; elsewhere the env says it loads its own model


def test_env_built_outside_the_sharing_thread_warns(generator, monkeypatch):
    import threading

    from skipenv.envs.registration import SHARING_ENV, sharing

    monkeypatch.delenv(SHARING_ENV, raising=False)
    seen: dict = {}

    def build_in_thread():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:  # a model that cannot load: the warning comes before the load
                SwitchDecEnv("xsum", model="/no/such/model", **KW)
            except Exception as e:  # noqa: BLE001
                seen["error"] = type(e).__name__
        seen["warnings"] = [str(x.message) for x in w if "sharing()" in str(x.message)]

    with sharing(generator=generator):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert make_plain(generator=None).generator is generator  # same thread: shared, no warning
        t = threading.Thread(target=build_in_thread)
        t.start()
        t.join()
    assert len(seen["warnings"]) == 1 and "'/no/such/model'" in seen["warnings"][0], seen
    import os

    assert SHARING_ENV not in os.environ  # closed again


def test_env_in_a_process_started_inside_sharing_warns(generator, monkeypatch):
    from skipenv.envs.registration import SHARING_ENV

    monkeypatch.setenv(SHARING_ENV, "1")  # what a spawned worker inherits
    with pytest.warns(UserWarning, match="sharing"), pytest.raises(Exception):
        SwitchDecEnv("xsum", model="/no/such/model", **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(generator)  # a generator of its own: nothing to warn about


def make_plain(**kw):
    return SwitchDecEnv("xsum", **{**KW, **kw})


# ---------------------------------------------------------------------------------------------------------------
# a generator whose hidden states hold NaN (float16 overflow, corrupt weights)


@pytest.mark.parametrize("cls,layer", [(SwitchDecEnv, 0), (SwitchDecLayerwiseEnv, 2)], ids=["one-shot", "layerwise"])
def test_non_finite_hidden_states_are_an_error_not_an_observation(cls, layer, smollm2_tokenizer):
    """A NaN weight gave NaN observations outside the observation space while the agreement quality reported 1.0."""
    import torch

    g = tiny_generator("llama", smollm2_tokenizer, seed=3)
    with torch.no_grad():
        g.model.model.layers[layer].self_attn.q_proj.weight[0, 0] = float("nan")
    env = make(g, cls)
    with pytest.raises(RuntimeError, match="not finite.*float32"):
        env.reset(seed=0)
        for _ in range(layer + 2):  # layerwise: the NaN shows once layer `layer` has run
            env.step(0)
