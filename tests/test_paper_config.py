"""`admrl_jax.meta.paper.paper_config`: Appendix C of Lin et al. 2020 in
the library, the same configuration the driver's paper preset runs."""
import dataclasses

import pytest

from admrl_jax import envs
from admrl_jax.meta import admrl
from admrl_jax.meta import paper
from admrl_jax.meta import task_gradient as tg
from experiments import presets


@pytest.mark.parametrize('name', ['hopper2d', 'walker2d', 'ant2d', 'lq'])
def test_the_paper_preset_is_the_librarys_paper_config(name):
  family = envs.make(name)
  config, alpha = paper.paper_config(family)
  assert (config, {}, alpha) == presets.preset(name, 'paper')
  # Appendix C's per-family choices, which AdMRLConfig() alone lacks.
  assert config.n_tasks == 20 and config.n_slbo == 3
  assert config.n_slbo_first == (10 if name in ('hopper2d', 'walker2d')
                                 else 20)
  assert config.slbo.model.action_clip == family.action_bound
  if family.action_bound is None:  # lq: AdMRLConfig() would clip at 1
    assert admrl.AdMRLConfig().slbo.model.action_clip == 1.0
  assert config.step_rule == 'normalized' and alpha == 0.5


def test_as_written_is_the_papers_estimator_step_and_alpha():
  config, alpha = paper.paper_config(envs.make('hopper2d'), as_written=True)
  assert config.task_gradient == tg.preset('paper')
  assert config.step_rule == 'paper' and alpha == 2.0
  assert dataclasses.replace(
      config, task_gradient=tg.TaskGradientConfig(),
      step_rule='normalized') == paper.paper_config(envs.make('hopper2d'))[0]
  # The paper's α of each of its families; 1.0 for one it does not have.
  assert paper.paper_config(envs.make('walker2d'), as_written=True)[1] == 8.0
  assert paper.default_alpha('not_in_the_paper', 'paper') == 1.0


def test_a_family_name_is_refused_with_what_to_pass():
  with pytest.raises(TypeError, match='TaskFamily'):
    paper.paper_config('hopper2d')
