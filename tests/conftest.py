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

# The suite's time is mostly XLA compiling (a task iteration takes 10-60 s
# on 2 cores): the tests, and the scripts they start (which inherit the
# variable), compile at XLA's backend optimisation level 0. XLA's HLO
# passes and the programs' semantics are the same; LLVM optimises the
# generated machine code less, so an lq smoke task iteration compiles ~30%
# faster and the last bits of rounding differ (as they do on the GPUs the
# runs are meant for, which the tests never compile for either). A fresh
# clone's CI run took 16 min this way against 21-22 min at the default
# level (docs/benchmarks.md).
# An XLA_FLAGS that names a level of its own is left as it is.
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()

from admrl_jax import envs  # pylint: disable=g-import-not-at-top
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
              'test_baseline_study.py', 'test_distributed.py',
              'test_agents.py', 'test_user_networks.py')

# Tests of the other files that compile a whole task iteration, a Brax
# environment or a learning run (12 s or more each on the 2-core CPU, as
# `--durations=0` measured them): `slow` too, so that the fast tier stays
# under five minutes. Every parametrisation of a named test is slow.
SLOW_TESTS = {
    'test_admrl.py': (
        'test_task_iterations_on_hopper2d',
        'test_a_batch_of_one_is_the_same_computation_up_to_rounding',
        'test_task_iteration_embeds_in_the_callers_jit_vmap',
        'test_nan_in_real_batches_leaves_the_run_finite',
        'test_phases_driven_from_the_host_are_the_task_iteration',
        'test_hessians_are_selectable_in_algorithm_1',
        'test_mb_cem_measures_gaps_and_chooses_from_them',
        'test_zero_shot_is_the_task_iterations_theta_hat'),
    'test_envs.py': (
        'test_default_pipeline_observation_is_a_markov_state',
        'test_cheetah_calibration_measures_random_policy_states',
        'test_finite_difference_velocity_is_the_simulators'),
    'test_task_gradient.py': (
        'test_per_dimension_and_adjoint_agree_on_brax_data',
        'test_default_estimator_points_uphill_at_the_operating_point',
        'test_sampled_task_gradient_on_lq_pathwise',
        'test_sampled_task_gradient_on_lq_reinforce',
        'test_per_sample_normalization_is_the_per_episode_gradient_over_t'),
    # The documentation's snippets, run as written (the checks of the
    # snippet finder stay fast).
    'test_readme.py': ('test_snippet_runs_and_computes_what_it_says',),
    'test_rollout.py': ('test_shapes_and_episode_structure_brax',),
    'test_networks.py': ('test_own_networks_admrl_task_iteration',
                         'test_builtin_ensemble_from_the_driver_flag',
                         'test_own_networks_slbo_stage'),
    'test_slbo.py': ('test_slbo_closes_95_percent_of_the_lq_gap',
                     'test_virtual_rollouts_can_start_from_real_data'),
    'test_lq.py': ('test_lq_highdim_task_gradient_ground_truth',),
    'test_estimators.py': (
        'test_reinforce_hessian_surrogate_hvp_dense_and_eq7',
        'test_reinforce_hessian_converges_to_the_exact_hessian'),
    'test_viewer.py': ('test_a_hopper2d_episode_renders_every_frame',),
    'test_maml.py': ('test_maml_improves_the_post_update_return_on_lq',),
    'test_trpo.py': ('test_value_fit_is_per_minibatch_adam_on_the_layers',),
}


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
    if (item.path.name in SLOW_FILES or item.originalname
        in SLOW_TESTS.get(item.path.name, ())):
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
