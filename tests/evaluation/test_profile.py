"""``skipenv profile`` (skipenv.evaluation.profile): every one-bit plan on a tiny random Llama saved with
``save_pretrained`` and 2 local documents — quality numbers against ``env.outcome`` of independently built plans,
FLOPs saved against ``FlopCounterMode`` on the plain HF model (per-module counts of the full generation, and a
generation without the segment's tokens), resume after a kill, refusal of rows of another configuration or model, and
bad input rejected in one line before the model loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skipenv import SkipPlan
from skipenv.cli import main as cli_main
from skipenv.envs.cache import IdentityMismatchError
from skipenv.evaluation.profile import ROW_COLUMNS, run_profile

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for _tiny_local
from _tiny_local import documents  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

K = 4
TAU = 0.01


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile_docs") / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in documents(2)))
    return str(path)


def _kwargs(model_dir, data_file, **extra):
    """v1's quality (probability) and tau (0.01) over the tiny model and the 2 documents (split "all")."""
    return {"model": model_dir, "task_source": data_file, "max_new_tokens": 4, "max_input_tokens": 96,
            "token_segments": K, "disk_cache": False, **extra}


def _bare_env(model_dir, data_file):
    import gymnasium as gym

    return gym.make("SwitchDec-XSum-v1", formulation="per_input", split="all",
                    **_kwargs(model_dir, data_file)).unwrapped


def _one_bit(spec, label):
    stack_family, _, index = label.rpartition(".")
    key = {"decoder.attention": "attention", "decoder.ffn": "ffn", "tokens": "tokens"}[stack_family]
    return SkipPlan.from_skips(spec, **{key: [int(index)]})


def _flop_counts(model, ids, m):
    """FlopCounterMode of the plain HF model's greedy generation of exactly ``m`` tokens (KV cache): total and per
    module."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        out = model.generate(torch.tensor([ids]), max_new_tokens=m, min_new_tokens=m, do_sample=False)
    assert out.shape[1] == len(ids) + m
    return fc.get_total_flops(), {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}


def test_profile_numbers_equal_outcomes_and_flop_counter(tiny_model_dir, data_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "prof"
    argv = ["profile", "--model", tiny_model_dir, "--split", "all", "--docs", "2", "--out", str(out),
            "--no-progress", "--env-kwargs", json.dumps({k: v for k, v in _kwargs(tiny_model_dir, data_file).items()
                                                         if k != "model"})]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    rows = pd.read_csv(out / "profile.csv", dtype={"example_id": str}, float_precision="round_trip")
    assert tuple(rows.columns) == ROW_COLUMNS
    env = _bare_env(tiny_model_dir, data_file)
    spec = env.plan_spec
    labels = spec.action_labels()
    assert len(labels) == 2 * 4 + K and len(rows) == 2 * len(labels)
    # the printed table: sorted by family then index (the action's order), one row per candidate
    table_labels = [line.split("|")[1].strip() for line in printed.splitlines() if line.startswith("| decoder.")
                    or line.startswith("| tokens.")]
    assert table_labels == labels

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    losses = []
    for doc in range(2):
        ex = env.examples[doc]
        prompt = env.prompt(ex)
        for label in labels:
            row = rows[(rows["doc"] == doc) & (rows["candidate"] == label)]
            assert len(row) == 1 and row["example_id"].iloc[0] == ex.id and row["mode"].iloc[0] == "identity"
            row = row.iloc[0]
            o = env.outcome(_one_bit(spec, label), ex)  # the env's own outcome of the one-bit plan
            # (the profile's full-model references come from the batched prefetch: equal within float32 round-off)
            assert (row["quality"], row["quality_full"]) == pytest.approx((o.quality, o.quality_full), abs=1e-6)
            assert row["loss"] == pytest.approx(o.quality_full - o.quality, abs=1e-6)
            assert bool(row["within_tau"]) == (o.quality >= o.quality_full - TAU - 1e-9)
            losses.append(row["loss"])
            m = int(row["num_generated"])
            assert m == len(env.full_output(ex).tokens)  # probability: teacher-forced on the full output
            # analytic model: the plan's prefill + decoding FLOPs without the observation, against the full run
            analytic = 1 - env.generator.flops(_one_bit(spec, label), prompt, m).total / \
                env.generator.flops(None, prompt, m).total
            assert row["flops_saved"] == pytest.approx(analytic, rel=1e-12)
            assert row["cost"] == pytest.approx(o.cost, rel=1e-12)
        # FlopCounterMode on the plain HF model: the sublayer's module FLOPs in the full generation, and the
        # generation of the prompt without a segment's tokens
        total, per_module = _flop_counts(hf, list(prompt.input_ids), m)
        for label in labels:
            saved = rows[(rows["doc"] == doc) & (rows["candidate"] == label)]["flops_saved"].iloc[0]
            kind, _, index = label.rpartition(".")
            if kind == "tokens":
                if doc:
                    continue  # one document's token segments suffice (a generation each)
                s, e = prompt.segment_bounds(K)[int(index)]
                assert e > s
                ids = list(prompt.input_ids[:s]) + list(prompt.input_ids[e:])
                want = 1 - _flop_counts(hf, ids, m)[0] / total
            else:
                module = "self_attn" if kind.endswith("attention") else "mlp"
                want = per_module[f"LlamaForCausalLM.model.layers.{index}.{module}"] / total
            assert saved == pytest.approx(want, rel=1e-3), label
    assert np.ptp(losses) > 1e-3  # the candidates differ, so a mix-up of plans or documents would show
    summary = pd.read_csv(out / "summary.csv")
    one = summary[summary["candidate"] == "decoder.ffn.2"].iloc[0]
    mine = rows[rows["candidate"] == "decoder.ffn.2"]
    assert one["loss_median"] == pytest.approx(np.median(mine["loss"]))
    assert one["loss_q90"] == pytest.approx(np.quantile(mine["loss"], 0.9))
    assert one["within_tau"] == pytest.approx(mine["within_tau"].mean())
    assert (out / "profile.png").stat().st_size > 1000


def test_resume_after_a_kill_gives_the_same_csv(tiny_model_dir, data_file, tmp_path, monkeypatch):
    from skipenv.envs.switchdec import SwitchDecEnv

    kw = dict(env_kwargs=_kwargs(tiny_model_dir, data_file), split="all", num_docs=2, progress=False,
              families=("attention", "tokens"))
    whole = run_profile(out_dir=tmp_path / "whole", **kw)
    assert whole.computed == len(whole.rows) == 16

    real, calls = SwitchDecEnv.outcome, [0]

    def dies_after_7(self, plan, example=None):
        calls[0] += 1
        if calls[0] > 7:
            raise KeyboardInterrupt  # the kill
        return real(self, plan, example)

    monkeypatch.setattr(SwitchDecEnv, "outcome", dies_after_7)
    with pytest.raises(KeyboardInterrupt):
        run_profile(out_dir=tmp_path / "cut", **kw)
    monkeypatch.setattr(SwitchDecEnv, "outcome", real)
    path = tmp_path / "cut" / "profile.csv"
    assert len(pd.read_csv(path)) == 7
    with open(path, "a") as f:
        f.write("all,1,doc001,identity,decoder.att")  # a row cut off mid-write
    again = run_profile(out_dir=tmp_path / "cut", **kw)
    assert again.computed == 16 - 7
    assert path.read_text() == (tmp_path / "whole" / "profile.csv").read_text()
    assert run_profile(out_dir=tmp_path / "cut", **kw).computed == 0  # nothing left to do


def test_rows_of_another_configuration_or_model_are_refused(tiny_model_dir, data_file, tmp_path, monkeypatch):
    from skipenv.testing import tiny_generator

    kw = dict(split="all", num_docs=2, progress=False, families=("ffn",))
    run_profile(out_dir=tmp_path / "p", env_kwargs=_kwargs(tiny_model_dir, data_file), **kw)
    before = (tmp_path / "p" / "profile.csv").read_text()
    import skipenv.envs.switchdec as switchdec

    loaded = switchdec.shared_generator
    monkeypatch.setattr(switchdec, "shared_generator", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(IdentityMismatchError, match=r"another configuration .*tau"):
        run_profile(out_dir=tmp_path / "p", env_kwargs=_kwargs(tiny_model_dir, data_file, tau=0.05), **kw)
    monkeypatch.setattr(switchdec, "shared_generator", loaded)
    # the same path, other weights: refused after the model loads, by its fingerprint
    other = tiny_generator("llama", _tokenizer(tiny_model_dir), seed=1, initializer_range=0.5)
    other.model.save_pretrained(str(tmp_path / "m2"))
    _tokenizer(tiny_model_dir).save_pretrained(str(tmp_path / "m2"))
    import shutil

    copied = tmp_path / "model_copy"
    shutil.copytree(tiny_model_dir, copied)
    run_profile(out_dir=tmp_path / "q", env_kwargs=_kwargs(str(copied), data_file), **kw)
    shutil.rmtree(copied)
    shutil.copytree(tmp_path / "m2", copied)
    with pytest.raises(IdentityMismatchError, match="made by another model"):
        run_profile(out_dir=tmp_path / "q", env_kwargs=_kwargs(str(copied), data_file), **kw)
    assert (tmp_path / "p" / "profile.csv").read_text() == before
    # rows without their profile.json are refused too
    (tmp_path / "p" / "profile.json").unlink()
    with pytest.raises(IdentityMismatchError, match="no readable profile.json"):
        run_profile(out_dir=tmp_path / "p", env_kwargs=_kwargs(tiny_model_dir, data_file), **kw)


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("argv, code, message", [
    (["--candidates", "attention,mlp"], 2, "unknown candidate kind(s) ['mlp']"),
    (["--docs", "0"], 2, "expected an integer >= 1"),
    (["--split", "dev"], 2, "invalid choice: 'dev'"),
    (["--env-kwargs", '{"tokens": 4}'], 1, "env kwarg(s) ['tokens'] not taken by SwitchDec-XSum-v1"),
    (["--env-kwargs", '{"tau": -1}'], 1, "tau"),
    (["--env-kwargs", '{"split": "test"}'], 1, "use --split"),
    (["--skip-modes", "identity,identity"], 2, "given more than once"),
    (["--env", "SwitchDec-Nope-v0"], 1, "SwitchDec-Nope"),
])
def test_bad_input_is_one_line_before_the_model_loads(argv, code, message, tmp_path, monkeypatch, capsys):
    import skipenv.envs.switchdec as switchdec
    import skipenv.loading as loading

    monkeypatch.setattr(switchdec, "shared_generator", lambda *a, **k: pytest.fail("the model loaded"))
    monkeypatch.setattr(loading, "load_generator", lambda *a, **k: pytest.fail("the model loaded"))
    try:
        got = cli_main(["profile", "--out", str(tmp_path / "p"), *argv])
    except SystemExit as e:  # argparse: usage line + one error line
        got = e.code
    err = capsys.readouterr().err
    assert got == code and message in err, err
    assert "Traceback" not in err and not (tmp_path / "p").exists()
    if code == 1:
        assert len(err.strip().splitlines()) == 2 and err.startswith("skipenv profile: error: ")  # + the hint line


def test_skip_modes_need_an_env_that_takes_skip_mode(tmp_path, monkeypatch, capsys):
    """A mode other than identity: refused in one line when the installed env has no skip_mode kwarg; when it has
    one, the profile passes skip_mode only for the modes other than identity (the env then checks the value)."""
    import skipenv.envs.switchdec as switchdec
    from skipenv.evaluation import profile

    monkeypatch.setattr(switchdec, "shared_generator", lambda *a, **k: pytest.fail("the model loaded"))
    has_modes = "skip_mode" in profile._accepted_kwargs(switchdec.SwitchDecEnv)
    if not has_modes:
        assert cli_main(["profile", "--out", str(tmp_path / "p"), "--skip-modes", "identity,mean"]) == 1
        assert "has no skip_mode kwarg" in capsys.readouterr().err
    made = []

    class Built(Exception):
        pass

    class Closed:
        def close(self):
            pass

    def fake_make(env_id, **kw):
        made.append(kw)
        if len(made) == 2:
            raise Built
        return Closed()

    import gymnasium as gym

    monkeypatch.setattr(gym, "make", fake_make)
    monkeypatch.setattr(profile, "_accepted_kwargs", lambda cls: {"skip_mode", "model", "tau"})
    with pytest.raises(Built):
        run_profile(skip_modes=("identity", "mean"), out_dir=tmp_path / "q", progress=False)
    assert "skip_mode" not in made[0] and made[1]["skip_mode"] == "mean"
    assert made[0]["split"] == made[1]["split"] == "train"  # the train split by default
    # an id that registers a calibrated mode (v2: linear, rank 64, 16 calibration documents): its identity rows
    # really are identity (the registered mode and its settings overridden), its mean rows drop the linear rank
    made.clear()
    with pytest.raises(Built):
        run_profile(env_id="SwitchDec-XSum-v2", skip_modes=("identity", "mean"), out_dir=tmp_path / "v2",
                    progress=False)
    assert {k: made[0][k] for k in ("skip_mode", "linear_rank", "calibration_documents")} == \
        {"skip_mode": "identity", "linear_rank": None, "calibration_documents": None}
    assert made[1]["skip_mode"] == "mean" and made[1]["linear_rank"] is None
    assert "calibration_documents" not in made[1]  # mean keeps v2's 16 calibration documents


def test_calibration_documents_are_never_profiled(tiny_model_dir, data_file, tmp_path, monkeypatch):
    """A calibrated skip mode's bypasses were fitted on its calibration documents (``Evaluator.calibration_ids``);
    the profile leaves them out for every mode, so each mode is measured on the same out-of-sample documents. The
    calibration is stood in for by the property (the bypass machinery has its own tests): document 0 is reserved,
    so the one profiled document is document 1."""
    from skipenv.envs.evaluator import Evaluator

    ids = [ex.id for ex in _bare_env(tiny_model_dir, data_file).examples]
    monkeypatch.setattr(Evaluator, "calibration_ids", property(lambda self: (ids[0],)))
    res = run_profile(env_kwargs=_kwargs(tiny_model_dir, data_file), split="all", num_docs=1, progress=False,
                      families=("tokens",), out_dir=tmp_path / "p")
    assert set(res.rows["example_id"]) == {ids[1]} and set(res.rows["doc"]) == {0}


@pytest.mark.parametrize("damage, message", [
    ("duplicate", "more than once"),
    ("garbage", "missing values"),
    ("empty", "cannot be read as a profile CSV"),
])
def test_damaged_rows_are_refused_in_one_line(tiny_model_dir, data_file, tmp_path, damage, message):
    """A row appended twice (two processes on one folder) would weigh a document twice in the summary; a garbled
    line or an empty file (a kill before the header) must name the file and the fix, not pandas' words."""
    from skipenv.evaluation.profile import ROWS_CSV

    kw = dict(env_kwargs=_kwargs(tiny_model_dir, data_file), split="all", num_docs=1, progress=False,
              families=("tokens",), out_dir=tmp_path / "p")
    run_profile(**kw)
    path = tmp_path / "p" / ROWS_CSV
    lines = path.read_text().splitlines(keepends=True)
    path.write_text({"duplicate": "".join(lines + lines[1:2]), "garbage": "".join(lines) + "garbage,,,\n",
                     "empty": ""}[damage])
    with pytest.raises(ValueError, match=message) as e:
        run_profile(**kw)
    assert str(path) in str(e.value) and "delete it" in str(e.value)
