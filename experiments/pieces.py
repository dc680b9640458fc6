"""Long computations as named pieces, each saved as it finishes.

An evaluation (`experiments.evaluate`) and a study (`experiments.study`)
adapt every (member, task) pair of a trained run, one piece at a time: the
caller saves each piece's result as it finishes, so that Ctrl-C (or a killed
session) loses at most the piece under way and the same command resumes.
This module holds what they share: the progress lines with an ETA
(`Pieces`), the adaptation key of a piece (`adaptation_key`, the one
convention of both) and the loop that compiles the adaptation once and runs
it piece by piece (`adapt_each`).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional, Tuple

import jax

from experiments.common import compile_polling
from experiments.common import wait
from experiments.progress import format_seconds


class StopRun(Exception):
  """`Pieces(stop_after=n)` finished its n-th piece (--stop_after_pieces)."""


class Pieces:
  """Counts finished pieces and writes one line per piece with the share of
  the whole computation done and an ETA.

  The work of a piece is given in units (VirtualTraining iterations, say);
  the rate is timed from the first piece finished in this process, so
  compilation and pieces finished in earlier sessions do not distort it.

  Args:
    total_units: the whole computation's work, resumed pieces included.
    log: writes one line.
    scope: the word the lines use for the whole ('study', 'evaluation').
    stop_after: optional: raise `StopRun` once this many pieces finished
      in this process.
    clock: seconds, for tests.
  """

  def __init__(self, total_units: float, log: Callable[[str], None],
               scope: str = 'study', stop_after: Optional[int] = None,
               clock: Callable[[], float] = time.time):
    self.total = total_units
    self.done = 0.0
    self.log = log
    self.scope = scope
    self.stop_after = stop_after
    self.clock = clock
    self.count = 0
    self._t0 = None
    self._units0 = 0.0

  def skip(self, units: float) -> None:
    """Work already finished (resumed pieces)."""
    self.done += units

  def eta_seconds(self) -> Optional[float]:
    """Seconds left at the rate since the first piece of this process;
    None before a rate is known."""
    if self._t0 is None or self.done <= self._units0:
      return None
    rate = (self.clock() - self._t0) / (self.done - self._units0)
    return rate * max(self.total - self.done, 0.0)

  def finished(self, units: float, message: str,
               seconds: Optional[float] = None) -> None:
    """A piece of `units` finished: its line.

    `seconds`, the piece's own run time (compilation excluded), gives an
    estimate after the first piece, before a rate between pieces exists.

    Raises:
      StopRun: the `stop_after`-th piece of this process finished.
    """
    self.done += units
    self.count += 1
    if self._t0 is None:
      self._t0, self._units0 = self.clock(), self.done
    eta = self.eta_seconds()
    left = max(self.total - self.done, 0.0)
    if left <= 0:
      eta = ''                          # the last piece: nothing to estimate
    elif eta is not None:
      eta = f', {self.scope} ETA {format_seconds(eta)}'
    elif seconds is not None and units > 0 and left > 0:
      eta = (f', {self.scope} estimate '
             f'{format_seconds(seconds / units * left)}')
    else:
      eta = ''
    self.log(f'{message} [{100 * self.done / max(self.total, 1):.0f}% of the '
             f'{self.scope}{eta}]')
    if self.stop_after is not None and self.count >= self.stop_after:
      raise StopRun()


def adaptation_key(base_seed: int, member_seed: int,
                   task_index: int) -> jax.Array:
  """The key of one adaptation piece: fold_in(fold_in(key(base_seed),
  member_seed), task_index).

  Keyed by the member's training seed and the task's index in the whole
  evaluation set — not by the member's position or the order the pieces
  run in — so that a resumed or reordered evaluation draws the same
  samples, and two methods trained with the same seeds are evaluated with
  the same keys (paired comparisons). Members that differ only in α share
  their seed's keys.
  """
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(base_seed),
                                               member_seed), task_index)


def adapt_each(todo: Iterable[Tuple[int, int]], adapt: Callable,
               member_state: Callable[[int], Any], task: Callable[[int], Any],
               key: Callable[[int, int], jax.Array],
               done: Callable[[int, int, Any, float], None],
               log: Callable[[str], None], throttle_s: float = 0.0) -> None:
  """Runs `adapt(member_state(m), task(i), key(m, i))` for each (m, i) of
  `todo` in order, by one program compiled before the first piece (its
  compile time logged), and calls `done(m, i, out, seconds)` after each —
  which saves the piece and reports it (`Pieces.finished`, which may stop
  the loop with `StopRun`), then sleeps `throttle_s` seconds (a test hook:
  time to interrupt between pieces). A member's state is built once for
  its run of consecutive pieces. Ctrl-C is not held up by a running piece
  (`wait`).
  """
  compiled, states = None, {}
  for m, i in todo:
    if m not in states:
      states = {m: member_state(m)}
    psi, piece_key = task(i), key(m, i)
    if compiled is None:
      t0 = time.time()
      log('compiling the adaptation program')
      compiled = compile_polling(jax.jit(adapt).lower(states[m], psi,
                                                      piece_key))
      log(f'compiled in {time.time() - t0:.1f}s')
    t0 = time.time()
    out = wait(compiled(states[m], psi, piece_key))
    done(m, i, out, time.time() - t0)
    if throttle_s > 0:
      time.sleep(throttle_s)
