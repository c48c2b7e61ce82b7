"""Exact replay tables (issue 21): precomputed (document, plan) outcomes of the live evaluator, replayed by
Gymnasium envs at thousands of episodes per second instead of about one.

- :mod:`.grammar` — :class:`~skipenv.tables.grammar.Grammar`: the plans a table holds (a factorial design of
  ``F`` factors plus named extras); :func:`~skipenv.tables.grammar.default_grammar` (38 plans on SmolLM2).
- :mod:`.store` — :class:`~skipenv.tables.store.Table`: the on-disk format (``meta.json`` + memory-mapped ``.npy``
  columns with SHA-256 checksums) and its checks (configuration, model fingerprint, signal, split).
- :mod:`.build` — :func:`~skipenv.tables.build.build_table`: the resumable, parallel builder
  (``skipenv table build``).
- :mod:`.envs` — :class:`~skipenv.tables.envs.TableMenuEnv` (``Discrete(N)``) and
  :class:`~skipenv.tables.envs.TableFactorialEnv` (``MultiBinary(F)``), registered as
  ``SwitchDec-XSum-MenuTable-v0`` and ``SwitchDec-XSum-Table-v0`` on the shipped table ``xsum-v1``;
  ``SwitchDec-XSum-Table-v1`` is ``-v0`` with real-valued skip scores (``skip_threshold=2.0``,
  :class:`~skipenv.envs.wrappers.ThresholdActions`), on which SB3's default PPO does not collapse.
- :mod:`.cli` — ``skipenv table build | info | validate``.

Usage and the shipped table's coverage: docs/tables.md.
"""

from .envs import TableFactorialEnv, TableMenuEnv, load_table, register_table_envs
from .grammar import Grammar, GrammarError, default_grammar
from .store import Table, TableError, TableOutcome

__all__ = ["Table", "TableError", "TableOutcome", "Grammar", "GrammarError", "default_grammar", "TableMenuEnv",
           "TableFactorialEnv", "load_table", "register_table_envs"]
