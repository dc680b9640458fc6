"""Flag-free helpers shared by the experiment scripts."""
from __future__ import annotations


class UsageError(ValueError):
  """A bad flag value: reported in one line, exit status 2."""


def parse_floats(text: str, what: str) -> list[float]:
  """'1, 2.5,3' -> [1.0, 2.5, 3.0]; a clear error for empty or malformed lists."""
  items = [item.strip() for item in text.split(',')]
  if not text.strip() or any(not item for item in items):
    raise UsageError(f'--{what}: expected a comma-separated list of numbers, '
                     f'got {text!r}')
  try:
    return [float(item) for item in items]
  except ValueError:
    raise UsageError(f'--{what}: not a number in {text!r}') from None
