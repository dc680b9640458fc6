"""--config: a run's config.json (or its config section, edited) as the
starting point of another run, refused clearly when malformed."""
import dataclasses
import json

import pytest

from experiments.common import UsageError
from experiments.training import check_workdir
from experiments.training import resolve


def test_a_runs_record_reruns_as_it_was_and_edits_apply(tmp_path):
  _, config, _, _, record = resolve(
      env='lq', algo='mb_cem', preset='smoke',
      sets={'slbo.n_inner': '4', 'task_gradient.linear_solver': 'gmres'})
  path = tmp_path / 'config.json'
  path.write_text(json.dumps(record))
  # The quick preset underneath: every field comes from the file.
  _, again, _, _, _ = resolve(env='lq', algo=None, preset='quick',
                              config_file=str(path))
  assert again == config and again.algo == 'mb_cem'
  # The config section alone, edited; --algo and --set apply on top.
  section = dict(record['config'], n_tasks=5)
  path.write_text(json.dumps(section))
  _, edited, _, _, _ = resolve(env='lq', algo='admrl', preset='smoke',
                               config_file=str(path),
                               sets={'slbo.n_zeroshot': '7'})
  assert edited == dataclasses.replace(
      config, n_tasks=5, algo='admrl',
      slbo=dataclasses.replace(config.slbo, n_zeroshot=7))


@pytest.mark.parametrize('text, message', [
    ('{"slbo": {"n_innr": 3}}', 'unknown field.*slbo.n_innr'),
    ('{"bogus": 1}', 'unknown field.*bogus'),
    ('{"slbo": 3}', 'slbo.: expected a mapping'),
    ('[1, 2]', 'expected a mapping'),
    ('{not json', 'is not JSON'),
])
def test_a_malformed_config_file_is_refused_by_name(tmp_path, text, message):
  path = tmp_path / 'bad.json'
  path.write_text(text)
  with pytest.raises(UsageError, match=message):
    resolve(env='lq', algo=None, preset='smoke', config_file=str(path))


def test_a_missing_config_file_is_refused():
  with pytest.raises(UsageError, match='cannot read'):
    resolve(env='lq', algo=None, preset='smoke',
            config_file='/nonexistent/config.json')


def test_a_run_recorded_before_solvers_were_values_resumes(tmp_path):
  """A workdir whose config.json holds the task gradient's old flat solver
  fields (linear_solver='minres', iters, tol, damping, scale, shift,
  gmres_restart) is the same run as today's record of the same flags, so
  a resume accepts it; an old record of another solver is refused, the
  differing field named."""
  _, _, _, _, record = resolve(env='lq', algo='admrl', preset='smoke')
  solver = record['config']['task_gradient']['linear_solver']
  assert solver['kind'] == 'minres'
  old = json.loads(json.dumps(record))
  old['config']['task_gradient'].update(
      linear_solver='minres', iters=solver['iters'], tol=solver['tol'],
      damping=0.1, scale=None, shift=solver['shift'], gmres_restart=None)
  (tmp_path / 'config.json').write_text(json.dumps(old))
  assert check_workdir(str(tmp_path), record) == old
  old['config']['task_gradient'].update(iters=solver['iters'] + 1)
  (tmp_path / 'config.json').write_text(json.dumps(old))
  with pytest.raises(UsageError,
                     match='task_gradient.linear_solver.iters: saved'):
    check_workdir(str(tmp_path), record)
