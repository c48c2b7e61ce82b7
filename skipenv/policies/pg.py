"""Learning agents written here (readable, single-file style), importable by the notebooks and ``agents/``.

:class:`ConstrainedPG` — a BlockDrop-style one-step policy gradient for the one-shot env: a factorised Bernoulli
policy over all action bits (an MLP from the observation to one logit per bit), REINFORCE with a mean baseline,
and one of two constraint handlers working on the ``(quality, cost)`` pair that the env reports in
``info`` (``reward_mode="vector"`` puts it in ``info["reward_vector"]``; ``quality`` / ``quality_full`` / ``cost``
are always there):

- :class:`LagrangianHandler` — minimise ``E[cost] + λ·E[quality loss]`` with the multiplier updated by dual
  ascent on the mean constraint ``E[q_full − q] ≤ tau``: ``λ ← max(0, λ + η·(E[q_full − q] − tau))``.
- :class:`DynamicBarrierHandler` — the dynamic-barrier lexicographic update of Gong, Liu & Liu, "Automatic and
  harmless regularization with constrained and lexicographic optimization: a dynamic barrier gradient descent
  approach" (NeurIPS 2021): step along ``−(∇cost + λ∇ℓ)`` with
  ``λ = max((φ − ⟨∇cost, ∇ℓ⟩) / ‖∇ℓ‖², 0)``, ``ℓ`` the quality loss and ``φ = α·(E[ℓ] − tau)``: while the constraint
  is violated the step must decrease ``ℓ`` at rate ``φ``; once it holds, cost is minimised as long as it does not
  increase ``ℓ`` faster than the slack allows.

Both gradients are REINFORCE estimates with their own mean baselines.

:class:`GroupPG` — a group-baseline policy gradient for the one-shot env and any scalar-reward formulation
(:mod:`skipenv.envs.wrappers`): for each sampled document it draws ``G`` plans from the same factorised Bernoulli
policy, runs each through the env's public ``reset(options={"index": i})`` / ``step``, and weights each plan's
log-probability by its leave-one-out advantage ``A_k = r_k − mean_{j≠k} r_j`` (RLOO: Kool, van Hoof & Welling,
"Buy 4 REINFORCE samples, get a baseline for free!", ICLR 2019 workshop; Ahmadian et al., "Back to basics:
revisiting REINFORCE style optimization for learning from human feedback in LLMs", ACL 2024), optionally divided
by the group's standard deviation (GRPO: Shao et al., "DeepSeekMath", arXiv 2402.03300, 2024). Comparing plans on
the *same* document removes the document's difficulty from the advantage — the reason per-document baselines help
here, where rewards vary far more between documents than between plans.

Why this module is long: ConstrainedPG and GroupPG share the Bernoulli policy, its save format and the
constraint handlers; splitting them would duplicate that shared core (``policies/pg.py`` is their planned home).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

__all__ = ["BernoulliPolicy", "LagrangianHandler", "DynamicBarrierHandler", "dynamic_barrier_lambda",
           "ConstrainedPG", "PGConfig", "group_advantages", "GroupPG", "GroupPGConfig", "load_agent"]


class BernoulliPolicy(nn.Module):
    """Factorised Bernoulli policy: observation ``[B, obs_dim]`` → skip logits ``[B, n]``.

    LayerNorm on the input (observations are raw hidden states), one hidden layer, and an output bias initialised to
    ``logit(init_skip_prob)`` so training starts near "skip little" (plans that keep quality).
    """

    def __init__(self, obs_dim: int, n: int, hidden: int = 64, init_skip_prob: float = 0.02):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(obs_dim), nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, n))
        with torch.no_grad():
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.fill_(float(np.log(init_skip_prob / (1 - init_skip_prob))))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Bernoulli:
        return torch.distributions.Bernoulli(logits=self(obs))


def dynamic_barrier_lambda(grad_cost: torch.Tensor, grad_loss: torch.Tensor, phi: float) -> float:
    """``λ = max((φ − ⟨∇cost, ∇ℓ⟩) / ‖∇ℓ‖², 0)`` (Gong, Liu & Liu 2021, eq. for the dynamic barrier); 0 if
    ``∇ℓ = 0``. Gradients are flat vectors of equal shape."""
    denom = float(grad_loss.dot(grad_loss))
    if denom == 0.0:
        return 0.0
    return max((phi - float(grad_cost.dot(grad_loss))) / denom, 0.0)


@dataclass
class LagrangianHandler:
    """Dual ascent on the mean quality constraint. ``lam`` is the multiplier, ``lr`` its step size."""

    tau: float
    lam: float = 1.0
    lr: float = 0.5

    def update(self, mean_quality_loss: float) -> float:
        """``λ ← max(0, λ + lr·(E[ℓ] − tau))``; rises while violated, falls while satisfied. Returns λ."""
        self.lam = max(0.0, self.lam + self.lr * (mean_quality_loss - self.tau))
        return self.lam


@dataclass
class DynamicBarrierHandler:
    """Dynamic barrier (see module docstring); ``alpha`` scales the required descent ``φ = α·(E[ℓ] − tau)``."""

    tau: float
    alpha: float = 1.0
    lam: float = 0.0

    def combine(self, grad_cost: torch.Tensor, grad_loss: torch.Tensor, mean_quality_loss: float) -> torch.Tensor:
        """The update direction ``∇cost + λ∇ℓ`` (to be *descended*), setting ``self.lam``."""
        self.lam = dynamic_barrier_lambda(grad_cost, grad_loss, self.alpha * (mean_quality_loss - self.tau))
        return grad_cost + self.lam * grad_loss


@dataclass
class PGConfig:
    """Hyper-parameters of :class:`ConstrainedPG` (defaults tuned for a few hundred episodes on the CPU)."""

    handler: str = "lagrangian"  # or "barrier"
    batch_size: int = 16
    lr: float = 3e-3
    hidden: int = 64
    init_skip_prob: float = 0.02
    lagrangian_lr: float = 0.5
    barrier_alpha: float = 1.0
    entropy_coef: float = 1e-3
    tau: float | None = None  # default: the env's tau


class ConstrainedPG:
    """REINFORCE with a Bernoulli policy and a constraint handler, for :class:`~skipenv.envs.SwitchDecEnv`.

    Quality loss per episode: ``ℓ = q_full − q`` (0 when the plan matches the full model); cost: the env's
    ``info["cost"]``. The constraint is on the mean: ``E[ℓ] ≤ tau``.

    Use ``agent(obs)`` as a deterministic policy (skip where ``p > 0.5``) for :mod:`skipenv.evaluation.harness`.
    """

    def __init__(self, env, config: PGConfig | None = None, seed: int = 0, device: str = "cpu"):
        self.env, self.config = env, config or PGConfig()
        if self.config.handler not in ("lagrangian", "barrier"):
            raise ValueError(f"handler must be 'lagrangian' or 'barrier', got {self.config.handler!r}")
        self.tau = float(env.tau if self.config.tau is None else self.config.tau)
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.policy = BernoulliPolicy(env.observation_space.shape[0], env.action_space.n, self.config.hidden,
                                      self.config.init_skip_prob).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.config.lr)
        self.handler = (LagrangianHandler(self.tau, lr=self.config.lagrangian_lr) if self.config.handler == "lagrangian"
                        else DynamicBarrierHandler(self.tau, alpha=self.config.barrier_alpha))
        self.name = f"constrained-pg-{self.config.handler}"
        self.seed = seed
        self.history: list[dict] = []

    def __call__(self, observation) -> np.ndarray:
        with torch.no_grad():
            logits = self.policy(torch.as_tensor(observation, dtype=torch.float32, device=self.device)[None])[0]
        return (logits > 0).to(torch.int8).cpu().numpy()

    def _flat_grad(self, loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, list(self.policy.parameters()), retain_graph=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, self.policy.parameters())])

    def _apply(self, flat: torch.Tensor) -> None:
        i = 0
        for p in self.policy.parameters():
            n = p.numel()
            p.grad = flat[i: i + n].view_as(p).clone()
            i += n
        self.optimizer.step()

    def learn(self, total_timesteps: int, progress_bar: bool = True) -> pd.DataFrame:
        """Train for ``total_timesteps`` episodes (one step each) in batches; returns the per-episode history
        (``timestep, reward, quality, quality_full, cost, lam``)."""
        env, cfg = self.env, self.config
        steps = 0
        obs, _ = env.reset(seed=self.seed)
        bar = tqdm(total=total_timesteps, desc=self.name, disable=not progress_bar, leave=False)
        while steps < total_timesteps:
            batch_obs, actions, qloss, cost = [], [], [], []
            for _ in range(min(cfg.batch_size, total_timesteps - steps)):
                o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
                with torch.no_grad():
                    a = self.policy.distribution(o[None]).sample()[0]
                _, reward, _, _, info = env.step(a.to(torch.int8).cpu().numpy())
                batch_obs.append(o)
                actions.append(a)
                qloss.append(info["quality_full"] - info["quality"])
                cost.append(info["cost"])
                steps += 1
                self.history.append({"timestep": steps, "reward": reward, "quality": info["quality"],
                                     "quality_full": info["quality_full"], "cost": info["cost"],
                                     "constraint_satisfied": info["constraint_satisfied"],
                                     "lam": float(self.handler.lam)})
                obs, _ = env.reset()
                bar.update(1)
            O, A = torch.stack(batch_obs), torch.stack(actions)
            ql = torch.tensor(qloss, dtype=torch.float32, device=self.device)
            c = torch.tensor(cost, dtype=torch.float32, device=self.device)
            dist = self.policy.distribution(O)
            logp = dist.log_prob(A).sum(-1)
            entropy = dist.entropy().sum(-1).mean()
            # REINFORCE surrogates (gradients of E[cost] and E[ℓ]) with mean baselines
            surrogate_cost = ((c - c.mean()) * logp).mean()
            surrogate_loss = ((ql - ql.mean()) * logp).mean()
            mean_ql = float(ql.mean())
            self.optimizer.zero_grad()
            if isinstance(self.handler, LagrangianHandler):
                lam = self.handler.update(mean_ql)
                total = surrogate_cost + lam * surrogate_loss - cfg.entropy_coef * entropy
                g = self._flat_grad(total)
            else:
                g_cost = self._flat_grad(surrogate_cost)
                g_loss = self._flat_grad(surrogate_loss)
                g = self.handler.combine(g_cost, g_loss, mean_ql) - cfg.entropy_coef * self._flat_grad(entropy)
            self._apply(g)
            bar.set_postfix(lam=f"{self.handler.lam:.2f}", cost=f"{float(c.mean()):.2f}", ql=f"{mean_ql:.3f}")
        bar.close()
        return pd.DataFrame(self.history)

    def save(self, path: str | Path) -> None:
        """Save weights and config (``path`` is a ``.pt`` file; a ``.json`` with the config is written beside it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.policy.state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps({"config": asdict(self.config), "seed": self.seed,
                                                         "tau": self.tau}, indent=2))

    @classmethod
    def load(cls, path: str | Path, env) -> "ConstrainedPG":
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        agent = cls(env, PGConfig(**meta["config"]), seed=meta["seed"])
        agent.policy.load_state_dict(torch.load(path, map_location=agent.device))
        return agent


# ---------------------------------------------------------------------------------------------- group baseline
def group_advantages(rewards, *, scale_by_std: bool = False, eps: float = 1e-8) -> np.ndarray:
    """Leave-one-out (RLOO) advantages of groups of episodes that share a document.

    ``A[b, k] = r[b, k] − mean_{j≠k} r[b, j]`` (Kool et al. 2019; Ahmadian et al. 2024), which equals
    ``G/(G−1)·(r[b, k] − mean_j r[b, j])``; with ``scale_by_std`` divided by ``std_j r[b, j] + eps`` (the sample
    standard deviation, ``ddof=1``, of the group — GRPO's normalisation, Shao et al. 2024; GRPO subtracts the group
    mean including the episode itself, which differs only by the constant factor ``G/(G−1)``).

    Args:
        rewards: ``[B, G]`` rewards (B groups of G >= 2 episodes each).
        scale_by_std: divide by the group's standard deviation (a group of equal rewards gets 0).
        eps: added to the standard deviation.

    Returns:
        ``[B, G]`` float64 advantages.

    Raises:
        ValueError: not a 2-D array with ``G >= 2``, or non-finite rewards.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"rewards must have shape [groups, G] with G >= 2 episodes per group, got {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("rewards must be finite")
    g = r.shape[1]
    adv = r - (r.sum(1, keepdims=True) - r) / (g - 1)
    if scale_by_std:
        adv = adv / (r.std(1, ddof=1, keepdims=True) + eps)
    return adv


@dataclass
class GroupPGConfig:
    """Hyper-parameters of :class:`GroupPG` (defaults: a few hundred episodes on the CPU).

    ``group_size`` plans per document (G), ``groups_per_update`` documents per gradient step (so one update uses
    ``G × groups_per_update`` episodes), ``scale_by_std`` selects GRPO's scaling of the RLOO advantage.

    Raises:
        ValueError: ``group_size`` not an integer ``>= 2``, ``groups_per_update`` / ``hidden`` not integers ``>= 1``,
            ``lr`` not a finite number ``> 0``, ``init_skip_prob`` outside (0, 1) (its logit initialises the output
            bias: 0 or 1 gave an infinite bias, above 1 a NaN one), ``entropy_coef`` not a finite number ``>= 0``,
            ``scale_by_std`` not a bool.
    """

    group_size: int = 4
    groups_per_update: int = 4
    lr: float = 3e-3
    hidden: int = 64
    init_skip_prob: float = 0.02
    entropy_coef: float = 1e-3
    scale_by_std: bool = False

    def __post_init__(self):
        def integer(v) -> bool:
            return not isinstance(v, bool) and isinstance(v, (int, np.integer))

        def number(v) -> bool:
            return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v)

        problems = []
        if not integer(self.group_size) or self.group_size < 2:
            problems.append(f"group_size must be an integer >= 2 (the leave-one-out baseline needs another plan), "
                            f"got {self.group_size!r}")
        for name in ("groups_per_update", "hidden"):
            v = getattr(self, name)
            if not integer(v) or v < 1:
                problems.append(f"{name} must be an integer >= 1, got {v!r}")
        if not number(self.lr) or self.lr <= 0:
            problems.append(f"lr must be a finite number > 0, got {self.lr!r}")
        if not number(self.init_skip_prob) or not 0 < self.init_skip_prob < 1:
            problems.append(f"init_skip_prob must lie strictly between 0 and 1, got {self.init_skip_prob!r}")
        if not number(self.entropy_coef) or self.entropy_coef < 0:
            problems.append(f"entropy_coef must be a finite number >= 0, got {self.entropy_coef!r}")
        if not isinstance(self.scale_by_std, (bool, np.bool_)):
            problems.append(f"scale_by_std must be True (GRPO) or False (RLOO), got {self.scale_by_std!r}")
        if problems:
            raise ValueError("GroupPGConfig: " + "; ".join(problems))


def _find_wrapper(env, cls):
    """The first wrapper of type ``cls`` in ``env``'s wrapper chain, or None."""
    import gymnasium as gym

    e = env
    while True:
        if isinstance(e, cls):
            return e
        if not isinstance(e, gym.Wrapper):
            return None
        e = e.env


class GroupPG:
    """Group-baseline policy gradient (RLOO, or GRPO-style with ``scale_by_std``) for one-step episodes.

    Training loop (:meth:`learn`): documents are visited in a seeded random order; for document ``i`` the agent
    resets the env ``G`` times with ``options={"index": i}``, samples one plan per episode from the factorised
    Bernoulli policy ``π(a | o) = Π_b p_b^{a_b} (1 − p_b)^{1 − a_b}`` (:class:`BernoulliPolicy`), and steps it. After
    ``groups_per_update`` documents it takes one Adam step on
    ``−mean(A · log π(a | o)) − entropy_coef · mean(H[π(· | o)])`` with the group advantages
    :func:`group_advantages`.

    Formulations: the reward is whatever the (wrapped) env returns, so any scalar-reward formulation works:

    - per-input (the bare env): the lexicographic reward;
    - :class:`~skipenv.envs.wrappers.BudgetConditioned`: the first reset of a group draws the tolerance, the other
      ``G − 1`` resets pass it back as ``options["tau"]``, so every episode of a group has the same document *and*
      tau (and the same observation);
    - :class:`~skipenv.envs.wrappers.ExpectedConstraint`: its multiplier ``λ`` is updated as episodes stream, so it
      can change inside a group; the group's rewards are then put on the group's first multiplier ``λ_0`` before the
      advantage, ``r_k + (λ_k − λ_0)·v_k`` (``λ_k`` and the violation ``v_k`` from ``info["lagrange_multiplier"]`` /
      ``info["constraint_violation"]``), so plans are compared under one objective.

    Use ``agent(obs)`` or ``agent.predict(obs)`` as a policy (deterministic: skip where ``p > 0.5``).

    Args:
        env: a one-shot env (``MultiBinary`` actions, 1-D observation; one step per episode), possibly wrapped;
            ``env.unwrapped.examples`` lists the documents.
        config: :class:`GroupPGConfig`.
        seed: seeds the initial weights, the document order, the plan samples and the env (first ``reset``).
        device: torch device of the policy.

    Raises:
        ValueError: ``group_size < 2``, ``groups_per_update < 1``, or an env without a ``MultiBinary`` action space
            and a 1-D observation space.
    """

    algorithm = "group-pg"

    def __init__(self, env, config: GroupPGConfig | None = None, seed: int = 0, device: str = "cpu", *,
                 obs_dim: int | None = None, n: int | None = None):
        from gymnasium import spaces

        self.env, self.config = env, config or GroupPGConfig()
        cfg = self.config
        if int(cfg.group_size) < 2:
            raise ValueError(f"group_size must be >= 2 (the leave-one-out baseline needs another plan), got "
                             f"{cfg.group_size}")
        if int(cfg.groups_per_update) < 1:
            raise ValueError(f"groups_per_update must be >= 1, got {cfg.groups_per_update}")
        if env is not None:
            if not isinstance(env.action_space, spaces.MultiBinary) or len(env.observation_space.shape) != 1:
                raise ValueError(f"GroupPG needs a one-shot env (MultiBinary actions, 1-D observations), got "
                                 f"{env.action_space} / {env.observation_space}; use the id without '-Layerwise'")
            obs_dim, n = int(env.observation_space.shape[0]), int(env.action_space.n)
        elif obs_dim is None or n is None:
            raise ValueError("give an env, or obs_dim and n")
        self.obs_dim, self.n, self.seed = int(obs_dim), int(n), int(seed)
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = BernoulliPolicy(self.obs_dim, self.n, cfg.hidden, cfg.init_skip_prob).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.name = "grpo" if cfg.scale_by_std else "rloo"
        self.history: list[dict] = []
        self._started = False

    # -- acting
    def _obs(self, observation) -> torch.Tensor:
        o = torch.as_tensor(np.asarray(observation, dtype=np.float32), device=self.device)
        if o.shape[-1] != self.obs_dim:
            raise ValueError(f"observation has {o.shape[-1]} features, the policy expects {self.obs_dim}: use the "
                             f"env (and formulation) the agent was trained with")
        return o

    def predict(self, observation, deterministic: bool = True):
        """SB3-style ``(action, None)``: ``int8`` action ``[n]`` (or ``[B, n]`` for a batch ``[B, obs_dim]``);
        deterministic = skip where the probability exceeds 0.5, else a sample."""
        o = self._obs(observation)
        batch = o.ndim == 2
        with torch.no_grad():
            logits = self.policy(o if batch else o[None])
            if deterministic:
                a = logits > 0
            else:
                a = torch.bernoulli(torch.sigmoid(logits).cpu(), generator=self.generator).bool()
        a = a.to(torch.int8).cpu().numpy()
        return (a if batch else a[0]), None

    def __call__(self, observation) -> np.ndarray:
        return self.predict(observation, deterministic=True)[0]

    # -- training
    def _sample(self, o: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            probs = torch.sigmoid(self.policy(o[None]))[0].cpu()
        return torch.bernoulli(probs, generator=self.generator)

    def learn(self, total_timesteps: int, progress_bar: bool = True) -> pd.DataFrame:
        """Train for ``total_timesteps`` episodes (rounded down to whole groups; at least one group); returns the
        per-episode history (``timestep, update, document, reward, advantage, quality, quality_full, cost,
        constraint_satisfied`` and ``tau`` / ``lagrange_multiplier`` under those formulations).

        Raises:
            ValueError: ``total_timesteps`` below the group size, or an env whose episodes last more than one step.
        """
        from ..envs.wrappers import BudgetConditioned

        env, cfg, G = self.env, self.config, int(self.config.group_size)
        if total_timesteps < G:
            raise ValueError(f"total_timesteps ({total_timesteps}) must be >= group_size ({G})")
        budget = _find_wrapper(env, BudgetConditioned) is not None
        u = env.unwrapped  # a live env lists its documents in .examples, a table env in .example_ids
        n_docs = len(u.examples if hasattr(u, "examples") else u.example_ids)
        if not self._started:
            env.reset(seed=self.seed)  # seeds the env and its wrappers (e.g. the tolerance draws)
            self._started = True
        order, cursor = self.rng.permutation(n_docs), 0
        steps, n_groups = 0, total_timesteps // G
        bar = tqdm(total=n_groups * G, desc=self.name, unit="episode", disable=not progress_bar, leave=False)
        update = len({h["update"] for h in self.history})
        while steps < n_groups * G:
            obs_b, act_b, rew_b, rows = [], [], [], []
            for _ in range(cfg.groups_per_update):
                if steps >= n_groups * G:
                    break
                if cursor >= n_docs:
                    order, cursor = self.rng.permutation(n_docs), 0
                doc = int(order[cursor])
                cursor += 1
                options: dict = {"index": doc}
                group_obs, group_act, group_rew, group_rows = [], [], [], []
                for k in range(G):
                    obs, reset_info = env.reset(options=options)
                    if k == 0 and budget:  # the whole group uses the tolerance drawn on its first reset
                        options = {"index": doc, "tau": reset_info["tau"]}
                    o = self._obs(obs)
                    a = self._sample(o)
                    _, reward, terminated, truncated, info = env.step(a.to(torch.int8).numpy())
                    if not (terminated or truncated):
                        raise ValueError("GroupPG needs one-step episodes (the one-shot SwitchDec env); this env's "
                                         "episode did not end after one step")
                    steps += 1
                    group_obs.append(o)
                    group_act.append(a)
                    group_rew.append(float(reward))
                    group_rows.append({"timestep": len(self.history) + len(rows) + len(group_rows) + 1,
                                       "update": update, "document": doc, "reward": float(reward),
                                       **{key: info[key] for key in ("quality", "quality_full", "cost",
                                                                     "constraint_satisfied", "tau",
                                                                     "lagrange_multiplier") if key in info},
                                       "_violation": info.get("constraint_violation")})
                    bar.update(1)
                lams = [r.get("lagrange_multiplier") for r in group_rows]
                if all(v is not None for v in lams) and all(r["_violation"] is not None for r in group_rows):
                    # put the group on its first multiplier: r_k + (lam_k - lam_0) * v_k
                    group_rew = [r + (lam - lams[0]) * row["_violation"]
                                 for r, lam, row in zip(group_rew, lams, group_rows)]
                obs_b += group_obs
                act_b += group_act
                rew_b.append(group_rew)
                rows += group_rows
            adv = group_advantages(np.array(rew_b), scale_by_std=cfg.scale_by_std).ravel()
            for row, a_k in zip(rows, adv):
                row.pop("_violation")
                row["advantage"] = float(a_k)
            self.history += rows
            O, A = torch.stack(obs_b), torch.stack(act_b).to(self.device)
            At = torch.as_tensor(adv, dtype=torch.float32, device=self.device)
            dist = self.policy.distribution(O)
            logp = dist.log_prob(A).sum(-1)
            loss = -(At * logp).mean() - cfg.entropy_coef * dist.entropy().sum(-1).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            update += 1
            bar.set_postfix(reward=f"{np.mean(rew_b):.3f}", skip_rate=f"{float(A.mean()):.3f}", refresh=False)
        bar.close()
        return pd.DataFrame(self.history)

    # -- persistence
    def save(self, path: str | Path) -> None:
        """Save the weights (``path``, a ``.pt`` file) and, beside it, a ``.json`` with ``algorithm``, config, seed
        and the observation / action sizes (enough to rebuild the policy without an env)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.policy.state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps(
            {"algorithm": self.algorithm, "config": asdict(self.config), "seed": self.seed, "obs_dim": self.obs_dim,
             "n": self.n, "name": self.name}, indent=2))

    @classmethod
    def load(cls, path: str | Path, env=None, device: str = "cpu") -> "GroupPG":
        """Rebuild a saved agent (``env`` is needed only to continue training).

        Raises:
            FileNotFoundError: ``path`` or its ``.json`` is missing.
            ValueError: the file was not saved by :class:`GroupPG`, or ``env`` has other sizes than the saved
                policy.
        """
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta.get("algorithm") != cls.algorithm:
            raise ValueError(f"{path} was not saved by GroupPG (algorithm {meta.get('algorithm')!r}); load it with "
                             f"skipenv.policies.pg.load_agent or skipenv.policies.load_policy")
        if env is not None and (env.observation_space.shape[0] != meta["obs_dim"] or env.action_space.n != meta["n"]):
            raise ValueError(f"{path} was trained for observations of {meta['obs_dim']} features and {meta['n']} "
                             f"action bits, this env has {env.observation_space.shape[0]} and {env.action_space.n}: "
                             f"use the env kwargs and formulation it was trained with")
        agent = cls(env, GroupPGConfig(**meta["config"]), seed=meta["seed"], device=device, obs_dim=meta["obs_dim"],
                    n=meta["n"])
        agent.policy.load_state_dict(torch.load(path, map_location=agent.device))
        agent.name = meta.get("name", agent.name)
        return agent


def load_agent(path: str | Path, env=None, device: str = "cpu"):
    """Load a repository agent's ``policy.pt``: a :class:`GroupPG` when its ``.json`` says so, else a
    :class:`ConstrainedPG` (which needs ``env``).

    Raises:
        FileNotFoundError: the ``.pt`` or its ``.json`` is missing.
        ValueError: a ConstrainedPG file without ``env``; a ``.json`` that is not the agent's config, a ``.pt`` that
            is not a saved state dict (corrupt, truncated) or whose weights do not fit the config or ``env`` (the
            message names the file; the library's error is chained).
    """
    import pickle

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"{path} and {meta_path.name} beside it are needed (written by the agent's save())")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e}); it must be the config written by the agent's save()")
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object (the agent's config), got {type(meta).__name__}")
    try:
        if meta.get("algorithm") == GroupPG.algorithm:
            return GroupPG.load(path, env, device=device)
        if env is None:
            raise ValueError(f"{path} is a ConstrainedPG policy: pass the env to load it")
        return ConstrainedPG.load(path, env)
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"cannot load the agent saved in {path} / {meta_path.name}: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]} (a corrupt or truncated file, weights of another "
                         f"env or agent, or a config written by another version); re-save it with the agent's "
                         f"save()") from e
