"""Evaluating policies: the harness and leaderboard (:mod:`.harness`), their plots (:mod:`.plots`) and the one
statistics module of every report (:mod:`.stats`: bootstrap CIs, IQM, markdown tables, rliable comparisons).

Dependency direction: ``evaluation`` uses ``envs`` and ``policies``; nothing below imports it.
"""
