"""Policies: what chooses a skip plan for an input, and how those policies are trained.

Modules (imports go one way, ``spec`` is the front door):

- :mod:`.baselines` - fixed policies (skip nothing, lead-K, random, every-other, static plans) and ``SB3Policy``;
- :mod:`.pg` - the repository's policy-gradient agents (``GroupPG``, ``ConstrainedPG``, ``BernoulliPolicy``);
- :mod:`.sb3` - stable-baselines3 construction (``make_sb3``) and monitor curves;
- :mod:`.learners` - the ``LEARNERS`` registry and ``train_learner``;
- :mod:`.warm_start` - behaviour cloning from the probe's menu policy or the oracle;
- :mod:`.deploy` - ``PolicyGenerator``: a trained policy run on raw text;
- :mod:`.spec` - ``load_policy``: one string (a baseline spec or a saved policy's path) -> a policy.

``from skipenv.policies import load_policy`` (and the other names of :mod:`.spec`) is the public entry point.
"""
from .spec import (POLICY_HELP, POLICY_SPECS, STOCHASTIC_KINDS, action_probability, check_policy_spec,
                   is_stochastic, load_policy, sample_action)

__all__ = ["POLICY_HELP", "POLICY_SPECS", "STOCHASTIC_KINDS", "action_probability", "check_policy_spec",
           "is_stochastic", "load_policy", "sample_action"]
