"""Shared fixtures: families and compiled programs are built once per session.

JAX's persistent compilation cache is on, in a directory of its own for the
session (unless ADMRL_JAX_CACHE_DIR is set): the scripts the tests run as
subprocesses inherit it, so a program that several of them compile (the
driver's task iteration, the evaluation's adaptation) is compiled once.
"""
import os
import shutil
import signal
import tempfile
import warnings

import pytest

from admrl_jax import envs
from experiments import common

warnings.filterwarnings('ignore', message='.*Brax System.*')

# The scripts that a test interrupts with SIGINT must see Ctrl-C as users
# do, even when this session inherited an ignored SIGINT (a shell's
# background job has one, and subprocesses keep it): handle it again, so
# that they start with the default disposition.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)

_SESSION_CACHE = None
if 'ADMRL_JAX_CACHE_DIR' not in os.environ:
  _SESSION_CACHE = tempfile.mkdtemp(prefix='admrl_jax_cache_')
  os.environ['ADMRL_JAX_CACHE_DIR'] = _SESSION_CACHE
common.enable_compilation_cache()
# A* values the tests' evaluations cache stay out of the user's home.
if 'ADMRL_JAX_ASTAR_CACHE' not in os.environ:
  os.environ['ADMRL_JAX_ASTAR_CACHE'] = os.path.join(
      _SESSION_CACHE or tempfile.mkdtemp(prefix='admrl_jax_astar_'),
      'astar_cache.json')


# The README's test command spreads the test files over every core
# (pytest-xdist, --dist=loadfile: a module's fixtures are built once, by the
# worker that runs the module). The longest files start first, so that the
# last one to finish is a short one. (xdist would otherwise hand out the
# files with the most tests first, whatever their length: a run of this suite
# started test_driver_resume.py, 160 s, after 860 s.)
LONGEST_FIRST = ('test_study.py', 'test_baseline_runs.py',
                 'test_baseline_study.py', 'test_admrl.py', 'test_envs.py',
                 'test_driver.py', 'test_evaluation.py',
                 'test_driver_resume.py', 'test_distributed.py',
                 'test_task_gradient.py', 'test_sharding.py',
                 'test_networks.py', 'test_slbo_curve.py', 'test_slbo.py',
                 'test_readme.py')


# The end-to-end files (scripts run as subprocesses, several compiled
# programs each): marked `slow`, so that `pytest -m "not slow"` is the fast
# tier of the edit-test loop. The full suite (README, CI) runs them all.
SLOW_FILES = ('test_driver.py', 'test_driver_resume.py', 'test_study.py',
              'test_evaluation.py', 'test_sharding.py', 'test_slbo_curve.py',
              'test_interrupt.py', 'test_baseline_runs.py',
              'test_baseline_study.py', 'test_distributed.py')


@pytest.fixture(autouse=True)
def x64_stays_as_it_was():
  """Reading an x64 run (`config_io.read_run`, as `driver_runs.final_state`
  does) turns x64 on for the whole process, as a script needs; in a test
  worker that would change the dtypes of every later test of that worker
  (PEARL's collection then mixed float64 observations with float32
  networks). Each test leaves the flag as it found it."""
  import jax  # pylint: disable=g-import-not-at-top
  before = bool(jax.config.jax_enable_x64)
  yield
  if bool(jax.config.jax_enable_x64) != before:
    jax.config.update('jax_enable_x64', before)


def pytest_configure(config):
  if hasattr(config.option, 'loadscopereorder'):
    config.option.loadscopereorder = False  # keep LONGEST_FIRST's order


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
  for item in items:
    if item.path.name in SLOW_FILES:
      item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _SESSION_CACHE is not None:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope='session')
def families():
  """name -> family, built lazily and cached for the session."""
  cache = {}

  def get(name, **overrides):
    key = (name, tuple(sorted(overrides.items())))
    if key not in cache:
      cache[key] = envs.make(name, **overrides)
    return cache[key]

  return get
