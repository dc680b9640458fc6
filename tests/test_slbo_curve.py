"""`python -m experiments.slbo_curve`: a learning curve that is written after
every stage, continues where it stopped, and refuses another setting."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--env=lq', '--n_inner=1', '--n_policy=2', '--n_model=5',
        '--hidden=32,32', '--real_envs=2', '--rollouts=4', '--seed=0,1']


def _curve(args):
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.slbo_curve', *TINY, *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stdout, proc.stderr


def _load(out):
  with open(out + '.json') as f:
    return json.load(f)


def _without_times(curve):
  return [{k: v for k, v in row.items() if k != 'wall_s'} for row in curve]


def test_a_curve_continues_where_it_stopped_and_equals_an_unbroken_one(
    tmp_path):
  first = str(tmp_path / 'continued')
  code, _, err = _curve(['--stages=1', f'--out={first}'])
  assert code == 0, err[-3000:]
  one_stage = _load(first)
  assert one_stage['complete'] and one_stage['budget']['stages'] == 1
  assert all(len(c) == 2 for c in one_stage['curves'].values())

  # A larger --stages resumes each seed from its checkpoint after stage 1.
  code, out, err = _curve(['--stages=2', f'--out={first}'])
  assert code == 0, err[-3000:]
  resumed = [json.loads(line) for line in out.splitlines()
             if 'resumed_after_stage' in line]
  assert resumed == [dict(seed=0, resumed_after_stage=1),
                     dict(seed=1, resumed_after_stage=1)]
  continued = _load(first)

  unbroken = str(tmp_path / 'unbroken')
  code, _, err = _curve(['--stages=2', f'--out={unbroken}'])
  assert code == 0, err[-3000:]
  whole = _load(unbroken)
  assert continued['budget'] == whole['budget']
  for seed in ('0', '1'):
    assert len(whole['curves'][seed]) == 3
    # The same random stream: every evaluation equal, not merely close.
    assert (_without_times(continued['curves'][seed])
            == _without_times(whole['curves'][seed]))
    assert (continued['curves'][seed][:2]
            == one_stage['curves'][seed][:2])
  assert continued['summary'] == whole['summary']
  assert os.path.exists(unbroken + '.png')

  # Another setting, or fewer stages than saved: refused, file untouched.
  with open(unbroken + '.json', 'rb') as f:
    before = f.read()
  code, _, err = _curve(['--stages=2', '--n_model=6', f'--out={unbroken}'])
  assert code == 2 and 'other settings (budget.n_model)' in err, err
  code, _, err = _curve(['--stages=1', f'--out={unbroken}'])
  assert code == 2 and 'already has 2 stages' in err, err
  with open(unbroken + '.json', 'rb') as f:
    assert f.read() == before
