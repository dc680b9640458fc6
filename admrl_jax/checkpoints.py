"""Checkpoints of a run's state (`experiments.checkpoints.Manager`: orbax,
saved atomically, each leaf's SHA-256 verified on restore), for the Python
API (`admrl_jax.agents`). The implementation still lives in experiments/,
with the scripts' error types; moving it here is open work."""
from experiments.checkpoints import (CorruptCheckpoint, Manager,  # noqa: F401
                                     StepNotFound)
