"""The library's error types that scripts map to exit statuses (kept free
of JAX so that a script can name them before JAX is imported)."""
from __future__ import annotations


class CheckpointError(RuntimeError):
  """An unreadable checkpoint or run record (the scripts report it in one
  line, exit status 1, and leave the files alone)."""


class CorruptCheckpoint(CheckpointError):
  """A checkpoint that does not read, or whose leaves differ from the
  digests saved with it; the message is one line naming the step and its
  directory. Attributes: step, path (the step directory), detail."""

  def __init__(self, step: int, path: str, detail: str):
    super().__init__(f'checkpoint {step} ({path}) is corrupt or unreadable: '
                     f'{detail}')
    self.step, self.path, self.detail = step, path, detail


class IncompatibleCheckpoint(CorruptCheckpoint):
  """A checkpoint that reads, but holds a state of another layout than the
  one it is restored as: leaves missing, unexpected or of other shapes (a
  state written by another version of admrl_jax, or with other networks
  or sizes). The message is one line naming the step, its directory and
  the first leaves that differ. Attributes: step, path, detail."""

  def __init__(self, step: int, path: str, detail: str):
    CheckpointError.__init__(  # pylint: disable=non-parent-init-called
        self, f'checkpoint {step} ({path}) holds a state of another layout '
        f'than the one restored: {detail}')
    self.step, self.path, self.detail = step, path, detail


class StepNotFound(ValueError):
  """A step that has no checkpoint; the message lists those that have one
  (the scripts treat it as a bad flag value, exit status 2). Attributes:
  step, steps (the saved steps, ascending)."""

  def __init__(self, step, directory: str, steps):
    super().__init__(f'no checkpoint of step {step} in {directory}; '
                     f'{describe_steps(steps)}')
    self.step, self.steps = step, list(steps)


def describe_steps(steps) -> str:
  """'saved steps: 1, 2, 3' (or 'no checkpoint saved yet')."""
  steps = sorted(steps)
  if not steps:
    return 'no checkpoint saved yet'
  return f'saved step{"s" if len(steps) > 1 else ""}: ' + ', '.join(
      map(str, steps))
