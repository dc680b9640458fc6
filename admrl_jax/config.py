"""Hyperparameters as frozen dataclasses (static arguments of jitted code).

Defaults are the paper's values (Lin et al. 2020, arXiv:2006.08875, Appendix C)
or the authors' code's (github.com/LinZichuan/AdMRL) unless stated.
"""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Batched real collection.

  Attributes:
    n_envs: parallel environments.
    n_steps: control steps per environment per call; None for the family's
      horizon. n_envs × n_steps samples per call (the authors' code: 10 000
      per SLBO stage, e.g. 50 × 200).
    ou_theta, ou_sigma: Ornstein–Uhlenbeck exploration noise,
      x ← x − θ·x + σ·N(0, I), reset to 0 at every episode start.
  """
  n_envs: int = 50
  n_steps: Optional[int] = None
  ou_theta: float = 0.15
  ou_sigma: float = 0.3

  def __post_init__(self):
    if self.n_envs < 1:
      raise ValueError(f'n_envs must be >= 1, got {self.n_envs}')
    if self.n_steps is not None and self.n_steps < 1:
      raise ValueError(f'n_steps must be >= 1, got {self.n_steps}')
    if not 0.0 <= self.ou_theta <= 1.0:
      raise ValueError(f'ou_theta must be in [0, 1], got {self.ou_theta}')
    if self.ou_sigma < 0.0:
      raise ValueError(f'ou_sigma must be >= 0, got {self.ou_sigma}')
