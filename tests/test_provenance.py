"""Run provenance: recorded once per workdir, a resume with other libraries
or settings warns (and is not refused)."""
import json
import os

import jax

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
