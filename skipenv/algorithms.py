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
           "ConstrainedPG", "PGConfig"]


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

    Use ``agent(obs)`` as a deterministic policy (skip where ``p > 0.5``) for :mod:`skipenv.benchmark`.
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
