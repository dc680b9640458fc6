"""`python -m experiments.slbo_curve`: a learning curve that is written after
every stage, continues where it stopped, and refuses another setting."""
import json
import os
import shutil
import subprocess
import sys
import time

from experiments import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 30 × 200 real samples per stage: one stage fits the smallest dataset
# (10 000), two do not, so continuing a curve grows its dataset.
TINY = ['--env=lq', '--n_inner=1', '--n_policy=2', '--n_model=5',
        '--hidden=32,32', '--real_envs=30', '--rollouts=4', '--seed=0,1']


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
  assert one_stage['dataset_capacity'] == 10_000
  assert all(len(c) == 2 for c in one_stage['curves'].values())
  current = provenance.collect()
  assert one_stage['provenance'] == [current]
  # As if stage 1 had been computed by another commit: the continuation
  # adds its own entry.
  older = dict(current, code=dict(commit='0' * 40, dirty=False))
  with open(first + '.json', 'w') as f:
    json.dump(dict(one_stage, provenance=[older]), f)

  # A larger --stages resumes each seed from its checkpoint after stage 1.
  code, out, err = _curve(['--stages=2', f'--out={first}'])
  assert code == 0, err[-3000:]
  resumed = [json.loads(line) for line in out.splitlines()
             if 'resumed_after_stage' in line]
  assert resumed == [dict(seed=0, resumed_after_stage=1),
                     dict(seed=1, resumed_after_stage=1)]
  continued = _load(first)
  assert continued['provenance'] == [older, current]

  unbroken = str(tmp_path / 'unbroken')
  code, _, err = _curve(['--stages=2', f'--out={unbroken}'])
  assert code == 0, err[-3000:]
  whole = _load(unbroken)
  assert continued['budget'] == whole['budget']
  assert continued['dataset_capacity'] == whole['dataset_capacity'] == 12_000
  for seed in ('0', '1'):
    assert len(whole['curves'][seed]) == 3
    # The same random stream: every evaluation equal, not merely close.
    assert (_without_times(continued['curves'][seed])
            == _without_times(whole['curves'][seed]))
    assert (continued['curves'][seed][:2]
            == one_stage['curves'][seed][:2])
  assert continued['summary'] == whole['summary']
  assert os.path.exists(unbroken + '.png')

  # A seed without points (a run stopped before it started) holds nothing:
  # a subset of the seeds continues the file.
  partial = str(tmp_path / 'partial')
  with open(partial + '.json', 'w') as f:
    json.dump(dict(one_stage, curves=dict(one_stage['curves'], **{'1': []}),
                   seeds=[0, 1]), f)
  code, out, err = _curve(['--stages=1', '--seed=0', f'--out={partial}'])
  assert code == 0, err[-3000:]
  assert list(_load(partial)['curves']) == ['0']

  # Another setting, or fewer stages than saved: refused, file untouched.
  with open(unbroken + '.json', 'rb') as f:
    before = f.read()
  code, _, err = _curve(['--stages=2', '--n_model=6', f'--out={unbroken}'])
  assert code == 2 and 'budget.n_model: file 5, now 6' in err, err
  code, _, err = _curve(['--stages=1', f'--out={unbroken}'])
  assert code == 2 and 'already has 2 stages' in err, err
  code, _, err = _curve(['--stages=2', '--seed=0', f'--out={unbroken}'])
  assert code == 2 and 'also holds seeds [1]' in err, err
  with open(unbroken + '.json', 'rb') as f:
    assert f.read() == before

  # A curve started again over another run's checkpoints (here seed 1's in
  # seed 0's place) replaces them: orbax alone would keep the old ones.
  ckpt = unbroken + '.ckpt'
  shutil.rmtree(os.path.join(ckpt, 'seed_0'))
  shutil.copytree(os.path.join(ckpt, 'seed_1'), os.path.join(ckpt, 'seed_0'))
  os.remove(unbroken + '.json')
  started = time.time()
  code, _, err = _curve(['--stages=2', f'--out={unbroken}'])
  assert code == 0, err[-3000:]
  again = _load(unbroken)
  for seed in ('0', '1'):
    assert (_without_times(again['curves'][seed])
            == _without_times(whole['curves'][seed]))
  saved = os.path.join(ckpt, 'seed_0', '2')
  assert os.path.getmtime(saved) >= started

  # Two curves of one experiment side by side: identical curves compare
  # equal (zero paired difference); a curve of another task is refused.
  compare = str(tmp_path / 'compare')
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.compare_curves',
       f'--curves={first},{unbroken}', '--labels=continued,unbroken',
       f'--out={compare}'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = _load(compare)
  a, b = report['rows']
  assert a['real_return'] == b['real_return'] and len(
      a['real_return']['mean']) == 3
  assert b['minus_continued']['last_3'] == dict(mean=0.0, lo=0.0, hi=0.0)
  expected = [row['virtual_return'] - row['return_mean']
              for row in whole['curves']['0'][1:]]
  got = [(row['virtual_return'] - row['return_mean'])
         for row in whole['curves']['1'][1:]]
  means = [(x + y) / 2 for x, y in zip(expected, got)]
  assert all(abs(m - e) < 1e-3 * (1 + abs(e))
             for m, e in zip(means, a['exploitation']['mean']))
  assert os.path.exists(compare + '.png')
  other = dict(whole, psi=[v + 1.0 for v in whole['psi']])
  with open(str(tmp_path / 'other.json'), 'w') as f:
    json.dump(other, f)
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.compare_curves',
       f'--curves={unbroken},{tmp_path / "other"}', f'--out={compare}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'differ in psi' in proc.stderr, proc.stderr
