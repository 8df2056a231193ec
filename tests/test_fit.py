"""Fitting bigger models: scan over layers, rematerialisation and bfloat16 compute change memory and
compile time, not the function computed."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import hf, models, objectives, train
from tests.conftest import random_batch

T5_LIKE = dict(position_embedding='relative', norm='rmsnorm', activation='gated-gelu', tie_embeddings=False)


def _objective(config, **model_changes):
  config.model.update(dropout_rate=0.0, **model_changes)
  model = models.build(config.model, 40)
  return objectives.build(config, model, 40)


@pytest.mark.parametrize('family, variant', [('encoder_decoder', T5_LIKE), ('decoder_only', {}),
                                             ('encoder_only', dict(position_embedding='rotary'))])
def test_scanned_layers_compute_the_unrolled_model(config, family, variant):
  config.model.update(family=family, **variant)
  config.model.head = 'mlm' if family == 'encoder_only' else 'lm'
  config.objective.name = {'encoder_decoder': 'seq2seq', 'decoder_only': 'causal_lm', 'encoder_only': 'mlm'}[family]
  unrolled, scanned = _objective(config), _objective(config, scan_layers=True)
  batch = random_batch(unrolled.layout)
  params = nn.unbox(unrolled.init(jax.random.PRNGKey(0), batch))
  stacked = models.stack_layers(params)
  assert 'layers' in stacked[{'encoder_only': 'encoder'}.get(family, 'decoder')]
  boxed = scanned.init(jax.random.PRNGKey(0), batch)  # the scanned model's own tree has the same structure
  assert jax.tree.structure(nn.unbox(boxed)) == jax.tree.structure(stacked)
  kernel = boxed['decoder' if family != 'encoder_only' else 'encoder']['layers']['mlp']['wo']['kernel']
  assert kernel.names == ('layers', 'mlp', 'embed')
  np.testing.assert_allclose(scanned.logits(stacked, batch, None), unrolled.logits(params, batch, None), atol=2e-5)
  unstacked = models.unstack_layers(stacked)
  assert jax.tree.all(jax.tree.map(np.array_equal, unstacked, jax.tree.map(np.asarray, params)))


def _equations(jaxpr) -> int:
  """Equations in a jaxpr, not counting those inside sub-jaxprs (a scan body counts once, as its scan)."""
  return len(jaxpr.jaxpr.eqns)


def test_scan_keeps_the_program_size_flat_in_depth(config):
  """Compile time follows program size: unrolled grows with the layer count, scanned does not."""
  sizes = {}
  for scan in (False, True):
    for depth in (2, 6):
      objective = _objective(config, scan_layers=scan, num_encoder_layers=depth, num_decoder_layers=depth)
      batch = random_batch(objective.layout)
      params = jax.eval_shape(lambda: nn.unbox(objective.init(jax.random.PRNGKey(0), batch)))
      sizes[scan, depth] = _equations(jax.make_jaxpr(lambda p: objective.logits(p, batch, None))(params))
  assert sizes[False, 6] > 2 * sizes[False, 2]
  assert sizes[True, 6] == sizes[True, 2]


def test_remat_policies_give_the_same_gradients_and_do_recompute(config):
  grads, programs = {}, {}
  params = None
  for policy, scan in (('none', False), ('full', False), ('dots_saveable', True)):
    objective = _objective(config, remat=policy, scan_layers=scan)
    batch = random_batch(objective.layout)
    if params is None:
      params = jax.tree.map(np.asarray, nn.unbox(jax.jit(objective.init)(jax.random.PRNGKey(0), batch)))
    own = models.stack_layers(params) if scan else params
    grad_fn = jax.grad(lambda p: objective.loss_fn(p, batch, jax.random.PRNGKey(1))[0])
    grads[policy] = models.unstack_layers(jax.tree.map(np.asarray, jax.jit(grad_fn)(own)))
    programs[policy] = str(jax.make_jaxpr(grad_fn)(own))
  for policy, shown in (('full', 'nothing_saveable'), ('dots_saveable', 'DotsSaveable')):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads[policy], grads['none'])
    assert 'remat' in programs[policy] and shown in programs[policy]  # recomputed, under the chosen policy
  assert 'remat' not in programs['none']


def test_bfloat16_compute_keeps_float32_parameters_and_optimizer_state(config):
  """Mixed precision: matmuls in bfloat16, master weights and Adam moments in float32, loss close to float32."""
  config.model.dropout_rate = 0.0
  losses = {}
  for dtype in ('float32', 'bfloat16'):
    config.model.dtype = dtype
    exp = train.setup(config, jax.devices()[:1])
    state_dtypes = {x.dtype for x in jax.tree.leaves((exp.abstract_state.params, exp.abstract_state.opt_state))
                    if jnp.issubdtype(x.dtype, jnp.floating)}
    assert state_dtypes == {jnp.dtype('float32')}
    batch = random_batch(exp.objective.layout, config.train.batch_size)
    if dtype == 'float32':
      params = nn.unbox(jax.jit(exp.objective.init)(jax.random.PRNGKey(0), batch))
    program = str(jax.make_jaxpr(lambda p: exp.objective.logits(p, batch, None))(params))
    matmul_inputs = 'bf16[' if dtype == 'bfloat16' else 'f32['
    assert all(matmul_inputs in line for line in program.splitlines() if 'dot_general' in line)
    losses[dtype] = float(jax.jit(exp.objective.loss_fn)(params, batch, jax.random.PRNGKey(1))[0])
  assert losses['bfloat16'] == pytest.approx(losses['float32'], rel=2e-2)
  assert losses['bfloat16'] != losses['float32']


def test_scanned_checkpoints_convert_to_and_from_hugging_face(config):
  """A scanned model exports the same tensors as the unrolled one, and imports back stacked."""
  config.model.update(family='decoder_only', position_embedding='learned', activation='gelu_tanh', use_bias=True,
                      norm_position='pre', dropout_rate=0.0)
  config.objective.name = 'causal_lm'
  objective = _objective(config)
  params = jax.tree.map(np.asarray, nn.unbox(objective.init(jax.random.PRNGKey(0), random_batch(objective.layout))))
  model = hf.resolved(config.model, 40)
  tensors = hf.params_to_hf(model, params)
  model.scan_layers = True
  np.testing.assert_equal(hf.params_to_hf(model, models.stack_layers(params)), tensors)
  imported = hf.params_from_hf(model, tensors)
  np.testing.assert_equal(imported, models.stack_layers(params))
