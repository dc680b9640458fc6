"""Phase progress lines and their ETA (no JAX: events are fed by hand)."""
import math

from admrl_jax.meta import admrl
from admrl_jax.meta.admrl import PhaseEvent
from experiments.progress import Progress


def _event(task, phase, stage=0, n_stages=2, gap=math.nan):
  return PhaseEvent(task_index=task, phase=phase, stage=stage,
                    n_stages=n_stages, first=task == 0, virtual_return=1.5,
                    model_loss=0.25, gap=gap)


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def _config():
  # zero-shot 4 units, a stage 2 + 1 units, the task update 1 unit.
  return admrl.AdMRLConfig(n_tasks=3, n_slbo=2, n_slbo_first=3,
                           slbo=admrl.slbo_lib.SLBOConfig(n_zeroshot=4,
                                                          n_inner=2))


def test_work_units_of_a_task_iteration():
  progress = Progress(_config(), 1, 'vmap', lambda line: None)
  assert progress.task_units(0) == 3 * 3  # first task: stages only
  assert progress.task_units(1) == 4 + 2 * 3 + 1


def test_vmap_reports_a_phase_once_all_lanes_reached_it_with_an_eta():
  lines, clock = [], _Clock()
  progress = Progress(_config(), 3, 'vmap', lines.append, clock)
  clock.t = 100.0  # compile + stage 1 of task 1
  for _ in range(3):
    progress(_event(0, 'stage', 1, 3))
  assert len(lines) == 1 and lines[0].startswith(
      'task 1/3, stage 1/3 (3 member(s)): virtual return 1.5, model loss 0.25')
  assert 'ETA' not in lines[0]  # nothing timed yet (compile excluded)
  clock.t = 103.0  # stage 2 (3 units) took 3 s: 1 unit/s
  for _ in range(3):
    progress(_event(0, 'stage', 2, 3))
  # Remaining: stage 3 (3) + task 2 (11) + task 3 (11) = 25 units.
  assert lines[-1].endswith('ETA 25s'), lines[-1]
  clock.t = 106.0
  for _ in range(3):
    progress(_event(0, 'stage', 3, 3))
  progress(_event(1, 'task_update', gap=2.0))  # one lane only: no line
  assert len(lines) == 3


def test_map_reports_every_member_and_counts_their_work():
  lines, clock = [], _Clock()
  progress = Progress(_config(), 2, 'map', lines.append, clock)
  progress.start(1, 3)  # resumed after task 1: 2 tasks × 2 members left
  clock.t = 50.0
  progress(_event(1, 'zero_shot'))
  clock.t = 54.0
  progress(_event(1, 'stage', 1))
  # The work left is 2 × 11 × 2 = 44 units from start(1, 3), less the
  # zero-shot (4) and the stage (3): 37 units at 3 units in 4 s.
  assert lines[1].endswith(f'ETA {37 * 4 / 3:.0f}s'), lines[1]
  progress(_event(1, 'zero_shot'))  # the second member
  assert lines[0].startswith('task 2/3, zero-shot (member 1/2)')
  assert lines[2].startswith('task 2/3, zero-shot (member 2/2)')
  # 3 + 4 units in 4 s; 44 − 4 − 3 − 4 = 33 units left.
  assert lines[2].endswith(f'ETA {33 * 4 / 7:.0f}s'), lines[2]
  progress(_event(2, 'task_update', gap=2.5))
  assert 'gap 2.5' in lines[-1]


# ------------------------------------------- the estimate before a run starts
def test_a_bare_driver_run_first_says_what_it_will_do_and_how_long(tmp_path):
  """`python -m experiments.run` (paper-size halfcheetah_highdim): the
  first line, before anything is compiled or written, names the work and an
  estimate labelled as such; the FLOP count behind it, at CPU_FLOPS,
  reproduces the benchmark's measured VirtualTraining iteration."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from experiments import progress, training  # pylint: disable=g-import-not-at-top
  from experiments import run as driver  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():  # the defaults: a bare command
    family, config, alphas, seeds, record = driver.resolve_settings()
  assert family.name == 'halfcheetah_highdim' and record['preset'] == 'paper'

  class Stop(Exception):
    pass

  lines = []

  def log(message):
    lines.append(message)
    raise Stop  # stop at the first line

  workdir = str(tmp_path / 'run')
  with pytest.raises(Stop):
    training.train(family, config, alphas, seeds, record, workdir, log)
  assert not os.path.exists(workdir)
  [line] = lines
  s = config.slbo
  iterations = (config.n_slbo_first * s.n_inner + (config.n_tasks - 1) * (
      s.n_zeroshot + config.n_slbo * s.n_inner))
  hours = iterations * progress.virtual_iteration_flops(
      family, config) / progress.CPU_FLOPS / 3600
  assert line.startswith('halfcheetah_highdim: about to run task iterations '
                         f'1..{config.n_tasks} of {config.n_tasks}'), line
  assert f'{iterations} VirtualTraining iterations' in line, line
  assert f'estimated {hours:.1f} h on a CPU' in line, line
  assert 'measured ETA follows the first task iteration' in line
  # The estimate says what it leaves out (a quick run compiles for minutes).
  assert 'compilation and real collection not included' in line
  # A resumed run counts only what is left; a finished one says so.
  assert '21..20' not in progress.plan(family, config, 1, 20)
  assert 'about to run task iterations 20..20' in progress.plan(
      family, config, 2, 19)
  # The rate reproduces benchmarks/virtual_training.py's measurement.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, 'benchmarks', 'results',
                         'virtual_training.json')) as f:
    bench = json.load(f)
  hopper, hopper_config, *_ = training.resolve(env=bench['meta']['env'])
  seconds = progress.virtual_iteration_flops(
      hopper, hopper_config) / progress.CPU_FLOPS
  assert seconds == pytest.approx(bench['virtual_training_iteration_s'],
                                  rel=0.05)
