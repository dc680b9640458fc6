"""experiments.pieces: progress lines, the adaptation key, the piece loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pieces


class Clock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_lines_estimate_then_measure_the_rate_and_stop_on_request():
  lines, clock = [], Clock()
  progress = pieces.Pieces(10, lines.append, scope='evaluation',
                           stop_after=3, clock=clock)
  progress.skip(2)                     # resumed: 2 of 10 units saved
  clock.now += 50                      # compilation: not in the rate
  progress.finished(2, 'first', seconds=4.0)
  # No rate yet: the first piece's own time, 2 s per unit × 6 units left.
  assert lines[-1] == 'first [40% of the evaluation, evaluation estimate 12s]'
  clock.now += 3
  progress.finished(1, 'second')
  # Rate since the first piece: 3 s per unit × 5 units left.
  assert lines[-1] == 'second [50% of the evaluation, evaluation ETA 15s]'
  clock.now += 9
  with pytest.raises(pieces.StopRun):
    progress.finished(2, 'third')      # the 3rd piece of this process
  # 12 s over 3 units since the first piece × 3 units left.
  assert lines[-1] == 'third [70% of the evaluation, evaluation ETA 12s]'
  assert progress.count == 3 and progress.done == 7


def test_a_piece_without_work_does_not_start_the_rate_clock():
  # slbo_curve's first piece evaluates before training (no units); the
  # stage program compiles inside the next piece, which must not enter
  # the rate.
  lines, clock = [], Clock()
  progress = pieces.Pieces(3, lines.append, scope='curve', clock=clock)
  progress.finished(0, 'before training')
  clock.now += 40                      # the first stage, compiling
  progress.finished(1, 'stage 1', seconds=40.0)
  clock.now += 2
  progress.finished(1, 'stage 2')
  assert lines == ['before training [0% of the curve]',
                   'stage 1 [33% of the curve, curve estimate 1.3 min]',
                   'stage 2 [67% of the curve, curve ETA 2s]']


def test_the_adaptation_key_is_the_members_seed_and_the_tasks_index():
  key = pieces.adaptation_key(7777, 3, 5)
  want = jax.random.fold_in(jax.random.fold_in(jax.random.key(7777), 3), 5)
  np.testing.assert_array_equal(jax.random.key_data(key),
                                jax.random.key_data(want))
  others = [pieces.adaptation_key(7777, 5, 3), pieces.adaptation_key(7778, 3, 5)]
  for other in others:
    assert not np.array_equal(jax.random.key_data(other),
                              jax.random.key_data(key))


def test_run_each_computes_saves_and_reports_each_piece_in_order():
  events, lines, clock = [], [], Clock()
  progress = pieces.Pieces(6, lines.append, scope='run', stop_after=2,
                           clock=clock)

  def compute(piece):
    events.append(('compute', piece))
    return piece * 10

  def save(piece, out, seconds):
    events.append(('save', piece, out))
    assert seconds >= 0
    return f'piece {piece} -> {out}'

  with pytest.raises(pieces.StopRun):
    pieces.run_each(iter([1, 2, 3]), compute, save, progress,
                    units=lambda piece: float(piece),
                    before_first=lambda piece: events.append(('first', piece)))
  # The piece after the stop is never computed; both before it are saved.
  assert events == [('first', 1), ('compute', 1), ('save', 1, 10),
                    ('compute', 2), ('save', 2, 20)]
  assert [line.split(' [')[0] for line in lines] == ['piece 1 -> 10',
                                                     'piece 2 -> 20']
  assert lines[1].startswith('piece 2 -> 20 [50% of the run')
  # Nothing to run: nothing compiled, nothing reported.
  assert pieces.run_each([], compute, save, progress,
                         before_first=lambda piece: events.append('x')) == 0
  assert events[-1] == ('save', 2, 20)


def test_a_labelled_progress_shares_the_count_and_prefixes_its_lines():
  lines = []
  progress = pieces.Pieces(4, lines.append, scope='study')
  labelled = pieces.Labelled(progress, 'admrl: ')
  labelled.skip(1)
  labelled.finished(1, 'task 2/4 done')
  progress.finished(2, 'evaluated')
  assert lines == ['admrl: task 2/4 done [50% of the study]',
                   'evaluated [100% of the study]']


def test_adapt_each_runs_every_piece_in_order_with_one_compiled_program():
  traces, built, done = [], [], []

  def adapt(state, psi, key):
    traces.append(1)                   # once per trace, not per call
    return state * psi + jax.random.uniform(key)

  def member_state(m):
    built.append(m)
    return jnp.float32(m + 1)

  def save(m, i, out, seconds):
    done.append((m, i, float(out), seconds))
    return f'member {m}, task {i}'

  tasks = np.array([0.5, 2.0, 4.0], np.float32)
  todo = [(0, 2), (0, 0), (1, 1)]
  lines, reported = [], []
  progress = pieces.Pieces(6, reported.append, scope='evaluation')
  assert pieces.adapt_each(
      todo, adapt, member_state, lambda i: tasks[i],
      lambda m, i: pieces.adaptation_key(0, 10 + m, i), save, progress,
      lines.append, units=lambda m, i: 2.0) == 3
  assert len(traces) == 1 and built == [0, 1]
  assert [(m, i) for m, i, _, _ in done] == todo
  for m, i, out, seconds in done:
    noise = float(jax.random.uniform(pieces.adaptation_key(0, 10 + m, i)))
    np.testing.assert_allclose(out, (m + 1) * tasks[i] + noise, rtol=1e-6)
    assert seconds >= 0
  assert lines[0] == 'compiling the adaptation program'
  assert lines[1].startswith('compiled in ')
  assert reported[-1] == 'member 1, task 1 [100% of the evaluation]'
