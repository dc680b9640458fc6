"""Long computations as pieces, each saved as it finishes.

The driver's task iterations (`experiments.training`,
`experiments.baselines`: a checkpoint each), an SLBO learning curve's
stages (`experiments.slbo_curve`: the curve file and a checkpoint each),
the SLBO runs that measure A* (`experiments.astar`: the A* cache each)
and the (member, task) adaptations of an evaluation or a study
(`experiments.evaluate`, `experiments.study`: the result file each, through
`adapt_each`) are sequences of pieces run by one loop, `run_each`. The
caller saves each piece as it finishes, so that Ctrl-C (or a killed
session) loses at most the piece under way and the same command resumes
with the pieces not saved; each caller refuses a saved computation of
other settings before it runs anything. `Pieces` writes a line per piece
with the share done and an ETA; `adaptation_key` is the one key
convention of the adaptations.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional, Tuple, TypeVar

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
  the rate is timed from the end of the first piece of work (units > 0)
  finished in this process, so compilation (in the first such piece, or
  before it) and pieces finished in earlier sessions do not distort it.

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
    if self._t0 is None and units > 0:
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


class Labelled:
  """`pieces` whose lines start with `label` (a study's arm, say): the
  same count, share and ETA."""

  def __init__(self, pieces: Pieces, label: str):
    self.pieces, self.label = pieces, label

  def skip(self, units: float) -> None:
    self.pieces.skip(units)

  def finished(self, units: float, message: str,
               seconds: Optional[float] = None) -> None:
    self.pieces.finished(units, self.label + message, seconds)


Piece = TypeVar('Piece')


def run_each(todo: Iterable[Piece], compute: Callable[[Piece], Any],
             save: Callable[[Piece, Any, float], str], progress,
             units: Callable[[Piece], float] = lambda piece: 1.0,
             before_first: Optional[Callable[[Piece], None]] = None,
             throttle_s: float = 0.0) -> int:
  """The loop of every resumable computation. For each piece of `todo`, in
  order:

    out = compute(piece)            timed (`before_first(piece)`, a
                                    compilation say, runs untimed before
                                    the first piece);
    line = save(piece, out, seconds)  writes what the piece produced (a
                                    result file, a checkpoint) and returns
                                    the piece's line;
    progress.finished(units(piece), line, seconds)
                                    the line with the share done and an
                                    ETA (`Pieces`, `Labelled`), which
                                    raises `StopRun` after its stop_after-th
                                    piece;
    sleep `throttle_s` seconds      (a test hook: time to interrupt).

  `todo` is read lazily, one piece at a time. Returns the number of pieces
  run. Raises what `compute`, `save` or `progress` raise; everything saved
  before stays saved.
  """
  count = 0
  for piece in todo:
    if count == 0 and before_first is not None:
      before_first(piece)
    t0 = time.time()
    out = compute(piece)
    seconds = time.time() - t0
    line = save(piece, out, seconds)
    count += 1
    progress.finished(units(piece), line, seconds)
    if throttle_s > 0:
      time.sleep(throttle_s)
  return count


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


def compile_logged(fn: Callable, args: tuple, log: Callable[[str], None],
                   what: str):
  """`jax.jit(fn)` lowered at `args` and compiled ahead of the first piece
  (Ctrl-C not held up: `compile_polling`), between the lines 'compiling
  the <what>' and 'compiled in <seconds>s'. Returns the compiled program."""
  t0 = time.time()
  log(f'compiling the {what}')
  compiled = compile_polling(jax.jit(fn).lower(*args))
  log(f'compiled in {time.time() - t0:.1f}s')
  return compiled


def adapt_each(todo: Iterable[Tuple[int, int]], adapt: Callable,
               member_state: Callable[[int], Any], task: Callable[[int], Any],
               key: Callable[[int, int], jax.Array],
               save: Callable[[int, int, Any, float], str], progress,
               log: Callable[[str], None],
               units: Callable[[int, int], float] = lambda m, i: 1.0,
               throttle_s: float = 0.0) -> int:
  """`run_each` over (member, task) pieces: `adapt(member_state(m),
  task(i), key(m, i))` for each (m, i) of `todo`, by one program compiled
  before the first piece (its compile time logged); `save(m, i, out,
  seconds)` writes the piece and returns its line, reported through
  `progress` with `units(m, i)`. A member's state is built once for its
  run of consecutive pieces. Ctrl-C is not held up by a running piece
  (`wait`). Returns the number of pieces run.
  """
  compiled, states = [], {}

  def state_of(m):
    if m not in states:
      states.clear()
      states[m] = member_state(m)
    return states[m]

  def compile_adaptation(piece):
    m, i = piece
    compiled.append(compile_logged(adapt, (state_of(m), task(i), key(m, i)),
                                   log, 'adaptation program'))

  def compute(piece):
    m, i = piece
    return wait(compiled[0](state_of(m), task(i), key(m, i)))

  return run_each(todo, compute, lambda piece, out, s: save(*piece, out, s),
                  progress, units=lambda piece: units(*piece),
                  before_first=compile_adaptation, throttle_s=throttle_s)
