"""Run provenance: recorded once per workdir, a resume with other code,
libraries or settings warns (and is not refused)."""
import json
import os
import shutil
import subprocess

import jax
import pytest

from experiments import provenance


def test_collect_records_versions_and_jax_settings():
  current = provenance.collect()
  assert set(current['versions']) == set(provenance.PACKAGES)
  assert current['versions']['jax'] == jax.__version__
  assert current['x64'] == bool(jax.config.jax_enable_x64)
  assert current['jax_threefry_partitionable'] == bool(
      jax.config.jax_threefry_partitionable)
  assert current['device_kind'] == jax.devices()[0].device_kind
  json.dumps(current)  # storable as it is


def test_record_then_warn_on_a_resume_with_other_libraries(tmp_path):
  workdir = str(tmp_path / 'run')
  lines = []
  current = provenance.collect()
  # A new run records it (creating the workdir).
  assert provenance.record_or_check(workdir, current, lines.append) is None
  with open(os.path.join(workdir, provenance.FILENAME)) as f:
    assert json.load(f) == current
  # The same process resumes: nothing to say.
  assert provenance.record_or_check(workdir, current, lines.append) == []
  assert not lines
  # Another jax and x64: one warning line naming both; the record stays.
  other = dict(current, x64=not current['x64'],
               versions=dict(current['versions'], jax='0.0.1'))
  diffs = provenance.record_or_check(workdir, other, lines.append)
  assert diffs == [f'jax: {current["versions"]["jax"]} → 0.0.1',
                   f'x64: {current["x64"]} → {not current["x64"]}']
  assert len(lines) == 1 and lines[0].startswith('warning:')
  assert all(d in lines[0] for d in diffs) and 'not bitwise' in lines[0]
  with open(os.path.join(workdir, provenance.FILENAME)) as f:
    assert json.load(f) == current


def test_code_is_the_checkout_commit_and_whether_tracked_files_changed(
    tmp_path):
  if shutil.which('git') is None:
    pytest.skip('git is not installed')
  repo = str(tmp_path / 'repo')
  os.makedirs(repo)
  git = lambda *args: subprocess.run(
      ['git', '-C', repo, '-c', 'user.name=t', '-c', 'user.email=t@t',
       *args], check=True, capture_output=True, text=True).stdout.strip()
  assert provenance.code(repo) == dict(commit=None, dirty=None)
  git('init', '-q')
  with open(os.path.join(repo, 'a.py'), 'w') as f:
    f.write('x = 1\n')
  git('add', 'a.py')
  git('commit', '-q', '-m', 'a')
  head = git('rev-parse', 'HEAD')
  assert provenance.code(repo) == dict(commit=head, dirty=False)
  with open(os.path.join(repo, 'new.py'), 'w') as f:  # untracked: clean
    f.write('y = 2\n')
  assert provenance.code(repo) == dict(commit=head, dirty=False)
  with open(os.path.join(repo, 'a.py'), 'w') as f:
    f.write('x = 2\n')
  assert provenance.code(repo) == dict(commit=head, dirty=True)
  # This process's own record holds its checkout's code.
  assert provenance.collect()['code'] == provenance.code()


def test_a_code_change_is_named_and_an_older_record_without_code_is_not():
  current = provenance.collect()
  older = {k: v for k, v in current.items() if k != 'code'}
  assert provenance.differences(older, current) == []
  now = current['code']
  other = dict(current, code=dict(commit='0' * 40, dirty=not now['dirty']))
  assert provenance.differences(other, current) == [
      f'commit: {"0" * 40} → {now["commit"]}',
      f'dirty: {not now["dirty"]} → {now["dirty"]}']
