"""Table envs: the SwitchDec one-shot problem replayed from a :class:`~skipenv.tables.store.Table` (no model is
loaded; an episode costs microseconds instead of a forward pass).

- :class:`TableMenuEnv` — ``Discrete(N)``: pick one of the table's ``N`` named plans (a contextual bandit, as in
  routing benchmarks such as RouterBench).
- :class:`TableFactorialEnv` — ``MultiBinary(F)``: one bit per factor of the table's grammar; every one of the
  ``2**F`` actions is tabulated (a full factorial design, as NAS-Bench-201 tabulates every cell).

Both return the live env's observation of the document (stored at build time), reward the tabulated outcome with
the same :class:`~skipenv.envs.rewards.Reward` classes as the live env, and take the same ``formulation=`` wrappers
through :func:`skipenv.envs.registration.make_env` (so ``gym.make("SwitchDec-XSum-Table-v0")`` is wrapped in
:class:`~skipenv.envs.wrappers.ExpectedConstraint`, as ``SwitchDec-XSum-v1`` is). Documents are drawn from the
table's covered documents of ``split`` in a seeded permutation per pass (``reset(seed=...)``, as the live env).
An action outside the table raises :class:`~skipenv.tables.grammar.GrammarError`; nothing is ever computed live.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from ..envs.rewards import REWARD_MODES, Reward, make_reward
from .grammar import GrammarError
from .store import Table, TableError, TableOutcome

__all__ = ["TableMenuEnv", "TableFactorialEnv", "TABLE_SPECS", "register_table_envs", "load_table", "OBS_BOUND"]

OBS_BOUND = 100.0
_TABLES: dict = {}


def load_table(table: "Table | str | Path") -> Table:
    """A :class:`Table` from an object, a folder or a shipped name (``"xsum-v1"``); loaded once per process per
    folder and file state (a rebuilt table is reloaded).

    Raises:
        TableError: as :meth:`Table.load` (missing table: the message gives the build command).
    """
    if isinstance(table, Table):
        return table
    from .store import SHIPPED_TABLES, shipped_table_dir

    folder = shipped_table_dir(table) if isinstance(table, str) and table in SHIPPED_TABLES else Path(table)
    meta = folder / "meta.json"
    stamp = meta.stat().st_mtime_ns if meta.is_file() else None
    key = (str(folder.resolve()), stamp)
    if key not in _TABLES or stamp is None:
        _TABLES[key] = Table.load(folder)
    return _TABLES[key]


class _TableEnv(gym.Env):
    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, table: "Table | str" = "xsum-v1", *, split: str = "train", quality: str | None = None,
                 reward_mode: str = "lexicographic", tau: float | None = None, cost_weight: float | None = None,
                 reward: Reward | None = None, num_examples: int | None = None, expect: dict | None = None,
                 render_mode: str | None = None, skip_mode: str | None = None):
        super().__init__()
        from ..envs.quality import get_signal

        self.table = load_table(table)
        if expect:
            self.table.check_config(expect, what="this env id")
        if skip_mode is not None:  # a table replays the skip mode it was built under, never another
            from ..generators.bypass import check_skip_mode

            built = str(self.table.config.get("skip_mode", "identity"))
            if check_skip_mode(skip_mode) != built.split(":")[0]:
                raise TableError(f"the table at {self.table.folder} was built under skip_mode {built!r}, not "
                                 f"{skip_mode!r}: build a table with `skipenv table build` for skip_mode "
                                 f"{skip_mode!r}")
        defaults = self.table.config.get("env_defaults", {})
        if quality is None:
            quality = defaults.get("quality", self.table.signals[0])
        quality = get_signal(quality).name
        self.table.check_signal(quality)
        self.quality = quality
        if reward is not None:
            if not isinstance(reward, Reward) or tau is not None or cost_weight is not None:
                raise ValueError("reward= must be a skipenv Reward, and tau / cost_weight go into that object")
            self.reward = reward
        else:
            if reward_mode not in REWARD_MODES:
                raise ValueError(f"unknown reward_mode {reward_mode!r}; choose one of {REWARD_MODES}")
            if tau is None:
                tau = defaults["tau"] if quality == defaults.get("quality") and "tau" in defaults \
                    else get_signal(quality).default_tau
            self.reward = make_reward(reward_mode, tau=tau, cost_weight=0.5 if cost_weight is None else cost_weight)
        if not isinstance(split, str):
            raise ValueError(f"split must be a string ('train', 'test', 'all'), got {split!r}")
        rows = self.table.rows(split)
        if num_examples is not None:
            if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
                raise ValueError(f"num_examples must be an integer >= 1 or None, got {num_examples!r}")
            rows = rows[: int(num_examples)]
        self.split, self.rows = split, rows
        self.example_ids = [self.table.document_ids[r] for r in rows]
        self._by_id = {e: i for i, e in enumerate(self.example_ids)}
        c = self.table.columns
        # the env's rows in memory (a few MB): an episode then touches no file
        self._obs = np.clip(np.asarray(c["observations"][rows], dtype=np.float32), -OBS_BOUND, OBS_BOUND)
        self._q = np.asarray(c[f"quality.{quality}"][rows])
        self._qf = np.asarray(c[f"quality_full.{quality}"][rows])
        self._cols = {k: np.asarray(c[k][rows]) for k in ("cost", "flops", "flops_full", "flops_prefill",
                                                          "flops_decoding", "flops_observation", "num_generated")}
        # per-row Python lists: an episode indexes lists (~50 ns) instead of numpy scalars (~200 ns)
        self._rows_q, self._rows_qf = self._q.tolist(), self._qf.tolist()
        self._rows_cols = [self._cols[k].tolist() for k in ("cost", "flops", "flops_full", "flops_prefill",
                                                            "flops_decoding", "flops_observation", "num_generated")]
        self._num_plans = self.table.num_plans
        self._plan_json = [p.to_json() for p in self.table.plans]
        self._num_skipped = [p.num_skipped for p in self.table.plans]
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(self._obs.shape[1],), dtype=np.float32)
        self.render_mode = render_mode if render_mode in self.metadata["render_modes"] else None
        self._order = None
        self._cursor = 0
        self._row = None  # index into self.rows of the current document
        self._over = False
        self._last = None

    # ------------------------------------------------------------------ read-only views for learners
    @property
    def tau(self) -> float:
        """Tolerance of the constraint ``q >= q_full - tau`` of this env's reward."""
        return self.reward.tau

    @property
    def plan_names(self) -> list[str]:
        return list(self.table.plan_names)

    @property
    def plans(self):
        """The table's :class:`~skipenv.plan.SkipPlan` objects in grammar order."""
        return list(self.table.plans)

    @property
    def fingerprint(self) -> str:
        """The model fingerprint the table was built with."""
        return self.table.fingerprint

    @property
    def example_id(self) -> str | None:
        return None if self._row is None else self.example_ids[self._row]

    def outcome_arrays(self) -> dict[str, np.ndarray]:
        """This env's documents as arrays (read-only copies): ``observations`` ``[D, n]`` float32 (clipped as
        returned), ``quality`` / ``quality_full`` / ``cost`` ``[D, P]`` float64 (for the env's quality signal), and
        ``example_ids`` (``D`` strings) — what an oracle or an offline learner needs in one call."""
        out = {"observations": self._obs.copy(), "quality": self._q.copy(), "quality_full": self._qf.copy(),
               "cost": self._cols["cost"].copy(), "example_ids": list(self.example_ids)}
        return out

    def outcome(self, plan_index: int, example_id: str | None = None) -> TableOutcome:
        """The tabulated outcome of plan ``plan_index`` on ``example_id`` (default: the current document)."""
        if isinstance(plan_index, bool) or not isinstance(plan_index, (int, np.integer)) \
                or not 0 <= plan_index < self._num_plans:
            raise GrammarError(f"plan index must be an integer in [0, {self._num_plans}), got {plan_index!r}")
        return self._outcome(int(plan_index), example_id)

    def _outcome(self, p: int, example_id: str | None = None) -> TableOutcome:
        if example_id is None:
            if self._row is None:
                raise RuntimeError("no current document: call reset() first or pass example_id=")
            i = self._row
        else:
            if example_id not in self._by_id:
                raise TableError(f"document {example_id!r} is not among this env's {len(self.rows)} documents "
                                 f"(split {self.split!r} of the table)")
            i = self._by_id[example_id]
        c = self._rows_cols
        return TableOutcome(self.example_ids[i], p, self._rows_q[i][p], self._rows_qf[i][p], c[0][i][p], c[1][i][p],
                            c[2][i][p], c[3][i][p], c[4][i][p], c[5][i][p], c[6][i][p])

    def info_of(self, o: TableOutcome) -> dict[str, Any]:
        """The terminal ``info`` of an outcome: the live env's keys (``example_id``, ``quality``,
        ``quality_full``, ``cost``, ``flops_saved``, ``flops``, ``flops_full``, ``flops_breakdown`` — total,
        prefill, decoding, observation; the table keeps no per-candidate split —, ``plan`` JSON, ``num_skipped``,
        ``constraint_satisfied``, ``reward``, ``reward_vector`` in vector mode) plus ``plan_index`` and
        ``plan_name``. A fresh dict every call."""
        info = {"example_id": o.example_id, "quality": o.quality, "quality_full": o.quality_full, "cost": o.cost,
                "flops_saved": 1.0 - o.cost, "flops": o.flops, "flops_full": o.flops_full,
                "flops_breakdown": {"total": o.flops, "prefill": o.flops_prefill, "decoding": o.flops_decoding,
                                    "observation": o.flops_observation},
                "plan": self._plan_json[o.plan_index], "num_skipped": self._num_skipped[o.plan_index],
                "plan_index": o.plan_index, "plan_name": self.table.plan_names[o.plan_index]}
        info.update(self.reward.info(o))
        return info

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._order, self._cursor = None, 0
        if options:
            if not isinstance(options, dict) or set(options) - {"example_id", "index"} or len(options) > 1:
                raise ValueError(f"reset options must be {{'example_id': id}} or {{'index': i}}, got {options!r}")
            if "example_id" in options:
                if options["example_id"] not in self._by_id:
                    raise ValueError(f"reset option 'example_id' {options['example_id']!r} is not among this env's "
                                     f"documents (split {self.split!r}, {len(self.rows)} covered by the table)")
                self._row = self._by_id[options["example_id"]]
            else:
                i = options["index"]
                if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.rows):
                    raise ValueError(f"reset option 'index' must be an integer in [0, {len(self.rows)}), got {i!r}")
                self._row = int(i)
        else:
            if self._order is None or self._cursor >= len(self._order):
                self._order = self.np_random.permutation(len(self.rows))
                self._cursor = 0
            self._row = int(self._order[self._cursor])
            self._cursor += 1
        self._over, self._last = False, None
        return self._obs[self._row].copy(), {"example_id": self.example_ids[self._row]}

    def _plan_index(self, action) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, action):
        if self._row is None:
            raise RuntimeError("call reset() before step()")
        if self._over:
            raise RuntimeError("the episode is over (terminated); call reset() before step()")
        o = self._outcome(self._plan_index(action))
        self._over, self._last = True, o
        info = self.info_of(o)
        return self._obs[self._row].copy(), float(info["reward"]), True, False, info

    def render(self):
        if self.render_mode != "ansi" or self._row is None:
            return None
        o = self._last
        if o is None:
            return f"document {self.example_ids[self._row]}: waiting for the action (table, split {self.split})"
        return (f"document {o.example_id}: plan {self.table.plan_names[o.plan_index]!r}, quality {o.quality:.4f} "
                f"(full {o.quality_full:.4f}), cost {o.cost:.3f}, reward {self.reward(o):.3f}")


_DOC = """
    Args:
        table: a :class:`~skipenv.tables.store.Table`, a table folder, or a shipped table's name (default
            ``"xsum-v1"``, the package's table of ``SwitchDec-XSum-v1``'s configuration).
        split: the table's covered documents of this split (``"train"``, ``"test"``, ``"all"``).
        quality: one of the table's quality signals (default: the table's source id's, ``"probability"``).
        reward_mode, tau, cost_weight, reward: as the live env (:class:`~skipenv.envs.switchdec.SwitchDecEnv`);
            ``tau`` defaults to the source id's (0.01 for ``SwitchDec-XSum-v1``) when ``quality`` is its signal,
            else the signal's default.
        num_examples: the first ``num_examples`` of the split's covered documents only.
        expect: configuration entries the table must have (the registered ids pass the task, token segments,
            observation kind and source id), checked at construction.
        render_mode: ``"ansi"`` or ``None``.
        skip_mode: the skip mode the caller means (``"identity"``, ``"mean"``, ``"linear"``); a table built under
            another mode is refused (``None``: the table's own).

    ``gym.make`` also takes ``formulation`` / ``formulation_kwargs`` (:func:`skipenv.envs.registration.make_env`).

    Raises:
        TableError: a missing / corrupt table, another configuration than ``expect`` or ``skip_mode``, a signal or
            split the table
            does not hold. GrammarError (a ``ValueError``): an action outside the table. ValueError: a bad argument
            or reset option. RuntimeError: ``step`` before ``reset`` or after the episode ended.
"""


class TableMenuEnv(_TableEnv):
    __doc__ = """Contextual-bandit table env: ``Discrete(N)``, action ``i`` = the table's plan ``i``
    (``env.plan_names[i]``). One step per episode; observation ``Box(-100, 100, [n], float32)`` = the live env's.
""" + _DOC

    def __init__(self, table="xsum-v1", **kwargs):
        super().__init__(table, **kwargs)
        self.action_space = gym.spaces.Discrete(self.table.num_plans)

    def _plan_index(self, action) -> int:
        a = action.item() if isinstance(action, np.ndarray) and action.shape in ((), (1,)) else action
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)) or not 0 <= a < self._num_plans:
            raise GrammarError(f"action {action!r} is outside the table: the menu holds plans 0 .. "
                               f"{self.table.num_plans - 1} (env.plan_names); a table env never computes a plan live")
        return int(a)


class TableFactorialEnv(_TableEnv):
    __doc__ = """Factorial table env: ``MultiBinary(F)``, bit ``i`` = skip factor ``i`` of the grammar
    (``env.factor_names``); every one of the ``2**F`` actions is a tabulated plan (plan index = the bits read as a
    binary number, bit 0 first). The grammar's extra plans are reachable from :class:`TableMenuEnv` only.
""" + _DOC

    def __init__(self, table="xsum-v1", **kwargs):
        super().__init__(table, **kwargs)
        g = self.table.grammar
        if not g.num_factors:
            raise TableError(f"the table at {self.table.folder} has no factors (a menu-only grammar); use "
                             f"TableMenuEnv")
        self.action_space = gym.spaces.MultiBinary(g.num_factors)
        self._weights = 1 << np.arange(g.num_factors, dtype=np.int64)
        # fast path: the bytes of every valid action in the common dtypes -> plan index (one dict lookup)
        self._by_bytes = {}
        for dt in (np.int8, np.int32, np.int64, np.float32, np.float64, np.bool_):
            for c in range(g.num_factorial):
                a = np.array([c >> i & 1 for i in range(g.num_factors)], dtype=dt)
                self._by_bytes[(a.dtype.char, a.tobytes())] = c

    @property
    def factor_names(self) -> list[str]:
        return [n for n, _ in self.table.grammar.factors]

    def _plan_index(self, action) -> int:
        if type(action) is np.ndarray and action.ndim == 1 and action.flags.c_contiguous:
            hit = self._by_bytes.get((action.dtype.char, action.tobytes()))
            if hit is not None:
                return hit
        a = np.asarray(action)
        if a.shape != self._weights.shape or a.dtype.kind not in "biuf" or not ((a == 0) | (a == 1)).all():
            raise GrammarError(f"action {np.asarray(action).tolist()!r} is outside the table: expected "
                               f"{len(self._weights)} bits of 0 / 1 (factors {self.factor_names}); a table env "
                               f"never computes a plan live")
        return int(a.astype(np.int64) @ self._weights)

    def plan_to_action(self, plan_index: int) -> np.ndarray:
        """The action of a factorial plan index (:meth:`Grammar.index_action`)."""
        return self.table.grammar.index_action(plan_index)


# ---------------------------------------------------------------------------------------------- registration
#: what the table of each registered id must hold (checked at construction: a table rebuilt for another
#: configuration is refused rather than silently replayed)
_XSUM_V1_EXPECT = {"env_id": "SwitchDec-XSum-v1", "task": "xsum", "task_source": "embedded", "token_segments": 8,
                   "observation": "pooled", "model": "smollm2-135m-instruct", "skip_mode": "identity",
                   "segment_boundaries": "tokens"}
_FACTORIAL = "skipenv.tables.envs:TableFactorialEnv"
_MENU = "skipenv.tables.envs:TableMenuEnv"
#: id -> (env class, kwargs); the formulation is SwitchDec-XSum-v1's (expected constraint)
TABLE_SPECS = {
    "SwitchDec-XSum-Table-v0": (_FACTORIAL, {"table": "xsum-v1", "formulation": "expected",
                                             "expect": _XSUM_V1_EXPECT}),
    "SwitchDec-XSum-MenuTable-v0": (_MENU, {"table": "xsum-v1", "formulation": "expected",
                                            "expect": _XSUM_V1_EXPECT}),
    # issue 21: v0 with real-valued skip scores (ThresholdActions, skip where score > 2): SB3's default PPO starts
    # near "skip nothing" (each factor skipped with probability 0.023) instead of skipping half the factors, whose
    # losses pinned the Lagrange multiplier at its cap before PPO's first update (docs/table_learners.md)
    "SwitchDec-XSum-Table-v1": (_FACTORIAL, {"table": "xsum-v1", "formulation": "expected", "skip_threshold": 2.0,
                                             "expect": _XSUM_V1_EXPECT}),
}


def make_factorial(**kwargs) -> gym.Env:
    """Entry point of the factorial table ids: :func:`~skipenv.envs.registration.make_env` of
    :class:`TableFactorialEnv` (the formulation wrapper applied)."""
    from ..envs.registration import make_env

    return make_env(_FACTORIAL, **kwargs)


def make_menu(**kwargs) -> gym.Env:
    """Entry point of the menu table ids (as :func:`make_factorial`, for :class:`TableMenuEnv`)."""
    from ..envs.registration import make_env

    return make_env(_MENU, **kwargs)


make_factorial.env_class = _FACTORIAL  # read by skipenv.envs.registration.env_class_of (no env is built)
make_menu.env_class = _MENU


def register_table_envs() -> None:
    """Register the ids of :data:`TABLE_SPECS` (idempotent; no model or table is loaded until ``gym.make``)."""
    entry = {_FACTORIAL: "skipenv.tables.envs:make_factorial", _MENU: "skipenv.tables.envs:make_menu"}
    for env_id, (cls, kwargs) in TABLE_SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry[cls], kwargs=json.loads(json.dumps(kwargs)),
                         disable_env_checker=False)
