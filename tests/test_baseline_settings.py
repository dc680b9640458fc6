"""The meta-RL baselines' driver settings (experiments/baselines.py,
presets.baseline_preset, config_io): their configs round-trip through
config.json strictly, every field refuses a bad value before anything is
written, and the study's baseline arms share the AdMRL arms' family. No
training here (tests/test_baseline_runs.py runs them end to end)."""
import dataclasses
import json
import os
import re

import pytest

from admrl_jax import config_io
from driver_runs import config_fields
from admrl_jax import fileio
from experiments import baselines
from experiments import presets
from experiments import study_design
from experiments.common import UsageError


def _json_round_trip(config):
  text = json.dumps(fileio.to_jsonable(dataclasses.asdict(config)))
  return config_io.config_from_dict(
      json.loads(text), config_io.default_config(
          'maml' if hasattr(config, 'outer') else 'pearl'), strict=True)


@pytest.mark.parametrize('algo', baselines.ALGOS)
@pytest.mark.parametrize('preset', presets.NAMES)
def test_configs_round_trip_through_json_strictly(algo, preset):
  config, _, n_iterations = presets.baseline_preset('hopper2d', preset, algo)
  assert _json_round_trip(config) == config
  assert n_iterations == presets.BASELINE_ITERATIONS[preset]
  # A key that is not a field, nested or not, is refused by its dotted name.
  values = fileio.to_jsonable(dataclasses.asdict(config))
  values['bogus'] = 1
  with pytest.raises(ValueError, match='bogus'):
    config_io.config_from_dict(values, config_io.default_config(algo),
                               strict=True)
  if algo == 'maml':
    values = {'outer': {'max_kll': 0.1}}
    with pytest.raises(ValueError, match=re.escape('outer.max_kll')):
      config_io.config_from_dict(values, config_io.default_config(algo),
                                 strict=True)


def test_the_driver_and_the_run_records_name_the_same_baselines():
  assert baselines.ALGOS == config_io.BASELINE_ALGOS
  for algo in baselines.ALGOS:
    assert study_design.is_baseline(algo)


def test_a_baseline_record_is_read_as_its_own_config(tmp_path):
  """config_io.read_run rebuilds a baseline's run record (strictly) only
  when asked: the Python API's `admrl_jax.load` reads AdMRL runs."""
  _, config, _, _, record = baselines.resolve('lq', 'pearl', 'smoke')
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(record, f)
  assert config_io.algo_of(record) == 'pearl'
  _, rebuilt = config_io.read_run(str(tmp_path), baselines=True)
  assert rebuilt == config.config
  with pytest.raises(ValueError, match='holds a pearl run'):
    config_io.read_run(str(tmp_path))


def test_a_baseline_run_record_reruns_as_it_was(tmp_path):
  """--config=<a baseline run's config.json> (without --algo) resolves that
  baseline with the recorded config and iterations; --set applies on top."""
  from experiments import training  # pylint: disable=g-import-not-at-top
  _, config, _, _, record = baselines.resolve(
      'lq', 'maml', 'smoke', ntasks=7, sets={'inner_lr': '0.05'})
  path = tmp_path / 'config.json'
  path.write_text(json.dumps(record))
  _, again, alphas, _, record_again = training.resolve(
      'lq', algo=None, preset='smoke', config_file=str(path))
  assert again == config and alphas == [None]
  assert record_again == record
  _, edited, _, _, _ = training.resolve(
      'lq', algo=None, preset='smoke', config_file=str(path),
      sets={'outer.max_kl': '0.02'})
  assert edited.config.outer.max_kl == 0.02 and edited.n_iterations == 7
  # The file of another algorithm is refused by its fields.
  with pytest.raises(UsageError, match='meta_batch_size'):
    training.resolve('lq', algo='pearl', preset='smoke',
                     config_file=str(path))


def test_presets_keep_the_admrl_presets_horizon():
  """A study compares methods on one family: each baseline preset has the
  horizon of the AdMRL preset of its name."""
  for env in ('lq', 'hopper2d'):
    for name in presets.NAMES:
      _, admrl_overrides, _ = presets.preset(env, name)
      for algo in baselines.ALGOS:
        _, overrides, _ = presets.baseline_preset(env, name, algo)
        assert overrides == admrl_overrides


_WRONG_TYPE = {int: '1.5', float: 'abc', bool: 'maybe', tuple: '16,x',
               str: 'bogus'}


@pytest.mark.parametrize('algo', baselines.ALGOS)
def test_every_field_refuses_a_bad_value_naming_it(algo):
  """Every field of MAMLConfig / PEARLConfig (nested) refuses a value of
  the wrong type, and every int field a negative one, while the run's
  settings are resolved — before the driver writes anything — with the
  dotted field named."""
  config, _, _ = presets.baseline_preset('lq', 'smoke', algo)
  cases = []
  for name, hint in config_fields(config):
    base, _ = presets.field_type(hint)
    cases.append((name, _WRONG_TYPE[base]))
    if base is int:
      cases.append((name, '-1'))
  assert len(cases) > 25
  for name, text in cases:
    with pytest.raises(UsageError, match=re.escape(name)):
      baselines.resolve('lq', algo, 'smoke', sets={name: text})
  # The presets themselves are valid.
  baselines.resolve('lq', algo, 'smoke')


@pytest.mark.parametrize('args, message', [
    (['--algo=maml', '--alpha=0.5'], '--alpha does not apply to maml'),
    (['--algo=pearl', '--x64'], 'pearl computes in float32'),
    (['--algo=maml', '--set=meta_batch_size=0'],
     'MAMLConfig.meta_batch_size must be an integer >= 1'),
    (['--algo=maml', '--set=outer.max_kl=-1'], 'outer.max_kl'),
    (['--algo=pearl', '--set=num_tasks_sample=9'],
     'num_tasks_sample must be <= num_train_tasks'),
    (['--algo=pearl', '--set=slbo.n_inner=2'], "unknown field 'slbo'"),
    (['--algo=maml', '--set=task_gradient.preset=paper'],
     "unknown field 'task_gradient'"),
    (['--algo=pearl', '--ntasks=0'], '--ntasks must be >= 1'),
    (['--algo=reptile'], 'valid: admrl, mb_unif, mb_gauss, mb_vertices, '
     'mb_cem, slbo, maml, pearl'),
])
def test_driver_refuses_bad_hyperparameters_before_writing(args, message,
                                                           tmp_path, capsys):
  """`python -m experiments.run --env=lq --preset=smoke ARGS`, run in this
  process: exit 2 with one line naming the problem, no workdir created."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from experiments import run as driver  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'w'
  capsys.readouterr()
  with flagsaver.flagsaver():
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(['experiments.run', '--env=lq', '--preset=smoke',
                        *args, f'--workdir={workdir}'])
    with pytest.raises(SystemExit) as stopped:
      driver.main(argv)
  err = capsys.readouterr().err
  assert stopped.value.code == 2, err
  assert message in err
  assert not os.path.exists(workdir)


def test_study_arms_of_the_baselines_share_the_family():
  settings = dict(env='lq', scale='study', seeds=[0, 1],
                  algos=['admrl', 'maml', 'pearl'], alphas={'admrl': [1.0]})
  runs = study_design.training_runs(settings)
  horizons = {run[0].horizon for run in runs.values()}
  assert horizons == {100}  # the quick preset's, the study scale's
  for arm in ('maml', 'pearl'):
    family, config, alphas, seeds, record = runs[arm]
    assert baselines.is_baseline(config) and config.algo == arm
    assert config.n_iterations == presets.BASELINE_ITERATIONS['quick']
    assert alphas == [None] and seeds == [0, 1]
    assert record['algo'] == arm and record['alphas'] == [None]
    assert config.config == presets.baseline_preset(family, 'quick',
                                                    arm)[0]
  # A* and the model-based adaptation use the scale's SLBO settings.
  reference = study_design.reference_config(settings)
  assert reference.slbo == runs['admrl'][1].slbo


def test_legend_states_the_training_samples():
  method = dict(real_samples=[600, 600])
  assert study_design.method_samples(method) == '600'
  method = dict(real_samples=[150_000, 170_000])
  assert study_design.method_samples(method) == '160k [150k, 170k]'
  assert study_design.method_samples(dict(real_samples=[8e7])) == '80M'
  assert study_design.method_samples({}) == '?'
