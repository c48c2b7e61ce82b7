"""Adversarial checks of what SwitchDec-XSum-v1 brought: the main job's argument checks, the ids' registered
defaults under overrides, and the probe / benchmark defaults (tiny models only)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kwargs, match", [
    # 1-3 menu documents: the probe policy behind the static baselines needs >= 4 (failed after loading the model)
    (dict(env_id="SwitchDec-XSum-v0", static_examples=1), "needs >= 4 train documents"),
    (dict(env_id="SwitchDec-XSum-v0", static_examples=3), "needs >= 4 train documents"),
    (dict(env_id="SwitchDec-XSum-v0", train_examples=2), "min\\(static_examples, train_examples\\) = 2"),
    (dict(algo="ppo", static_examples=2), "needs >= 4 train documents"),
    (dict(total_timesteps=0), "total_timesteps must be an integer >= 1"),
    (dict(train_examples=0, static_examples=0, algo="ppo"), "train_examples must be an integer >= 1"),
    (dict(test_examples=0), "test_examples must be an integer >= 1"),
    (dict(test_examples=2.5), "test_examples must be an integer >= 1"),
])
def test_main_job_refuses_menu_and_size_arguments_before_loading(kwargs, match, tmp_path):
    from skipenv.train import run_main_job

    with pytest.raises(ValueError, match=match):
        run_main_job(tmp_path / "never", model="no-such-model-is-loaded", progress_bar=False, **kwargs)
    assert not (tmp_path / "never").exists()
