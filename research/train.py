"""The training loop: config -> data -> sharded train state -> steps, evaluation, checkpoints.

Read top to bottom: `Experiment.setup` builds everything from the config (and refuses bad input
before any work), `make_train_step`/`make_eval_step` are jitted once with explicit shardings, and
`train_and_evaluate` runs the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from research import checkpoints, config as config_lib, files, mesh as mesh_lib, metrics as metrics_lib
from research import distill, finetune, models, objectives, optim, prune, quantize
from research.data import pipeline, sources
from research.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, Tokenizer

CONFIG_FILE = 'config.json'
VOCAB_FILE = 'vocab.model'
LAYOUT_FILE = 'sharding.txt'


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree that is checkpointed as a whole."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step k uses fold_in(rng, k), so resuming needs nothing else


@dataclasses.dataclass
class Experiment:
  """The objects a config turns into; built by `setup`, shared by training, evaluation and analysis."""
  config: ml_collections.ConfigDict
  tokenizer: Tokenizer
  model: nn.Module
  objective: Any
  optimizer: optax.GradientTransformation
  mesh: Mesh
  rules: tuple
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  state_shardings: TrainState
  param_axes: Any  # each parameter's logical axis names
  batch_sharding: NamedSharding
  train_records: Any
  eval_records: Any
  trainable: Any  # True for each parameter that trains (`finetune.trainable_mask`)

  @property
  def param_count(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_state.params))

  @property
  def trainable_count(self) -> int:
    return finetune.count(self.abstract_state.params, self.trainable)

  @property
  def layout(self) -> str:
    """The mesh and each parameter's sharding, as a table."""
    return mesh_lib.layout_table(self.mesh, self.abstract_state.params, self.param_axes,
                                 self.state_shardings.params)


def example_batch(layout: pipeline.Layout, batch_size: int) -> dict:
  """A batch of padding with the model inputs' shapes and dtypes (for initialisation)."""
  empty = pipeline.pad_example(layout.empty(), layout.lengths())
  batch = layout.features({k: np.stack([v] * batch_size) for k, v in empty.items()})
  batch['example_index'] = np.zeros((batch_size,), np.int32)
  return batch


def _opt_state_shardings(abstract_opt: Any, abstract_params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Optimizer-state leaves shaped like a parameter share its sharding; the rest is replicated.

  Matching is by the parameter's path at the end of the state leaf's path (e.g. `mu/encoder_0/...`),
  which also covers Adafactor's factored statistics (different shape -> replicated).
  """
  params = {checkpoints.path_keys(p): (leaf.shape, s) for (p, leaf), s in zip(
      jax.tree_util.tree_leaves_with_path(abstract_params), jax.tree.leaves(param_shardings))}
  depth = max(len(k) for k in params)

  def sharding(path, leaf):
    key = checkpoints.path_keys(path)
    for n in range(min(depth, len(key)), 0, -1):
      match = params.get(key[-n:])
      if match and match[0] == leaf.shape:
        return match[1]
    return mesh_lib.replicated(mesh)
  return jax.tree_util.tree_map_with_path(sharding, abstract_opt)


def setup(config: ml_collections.ConfigDict, devices=None, tokenizer: Tokenizer | None = None) -> Experiment:
  """Builds the experiment, validating the config and inputs before anything heavy runs.

  Given a `tokenizer` (analysis of a saved workdir), no data is opened.
  """
  data, train = config.data, config.train
  objectives.check_family(config)
  distill.check(config)
  prune.check(config.get('prune'), train.num_steps)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.rules(config.mesh)
  dp = mesh_lib.data_parallel_size(mesh)
  for key, size in (('train.batch_size', train.batch_size), ('eval.batch_size', config.eval.batch_size)):
    if size <= 0 or size % dp or size % jax.process_count():
      raise config_lib.ConfigError(
          f'{key}={size} must be a positive multiple of the data-parallel size {dp} (mesh data x fsdp) and of '
          f'the {jax.process_count()} processes; change {key} or config.mesh')
  if train.grad_accum_steps < 1 or train.batch_size % (train.grad_accum_steps * dp):
    raise config_lib.ConfigError(
        f'train.batch_size={train.batch_size} must be a multiple of train.grad_accum_steps={train.grad_accum_steps} '
        f'x the data-parallel size {dp}')
  train_records = eval_records = None
  if tokenizer is None:
    train_records = sources.open_split(data, 'train')
    eval_records = sources.open_split(data, 'eval')
    tokenizer = source_tokenizer(config) if finetune.source_workdir(config) else sources.tokenizer_for(
        data, train_records)
  model = models.build(config.model, tokenizer.vocab_size + objectives.extra_tokens(config))
  objective = objectives.build(config, model, tokenizer.vocab_size)
  longest = max(objective.layout.lengths().values())  # a decoder-only sequence holds input and target
  if config.model.position_embedding == 'learned' and longest > config.model.max_length:
    raise config_lib.ConfigError(f'data sequence length {longest} exceeds model.max_length={config.model.max_length}'
                                 '; raise model.max_length or shorten data.max_input_length/max_target_length')
  optimizer = optim.make(config.optimizer, train.num_steps)

  batch = example_batch(objective.layout, dp)
  boxed = jax.eval_shape(objective.init, jax.random.PRNGKey(0), batch)
  param_axes = nn.get_partition_spec(boxed)
  param_shardings = mesh_lib.logical_shardings(param_axes, mesh, rules)
  abstract_params = nn.unbox(boxed)
  mesh_lib.check_divisible(abstract_params, param_shardings)
  trainable = finetune.trainable_mask(abstract_params, train)
  optimizer = finetune.optimizer_for(optimizer, trainable)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  replicated = mesh_lib.replicated(mesh)
  state_shardings = TrainState(step=replicated, params=param_shardings, rng=replicated,
                               opt_state=_opt_state_shardings(abstract_opt, abstract_params, param_shardings, mesh))
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt,
                      rng=jax.eval_shape(jax.random.PRNGKey, 0))
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                                state_shardings)
  return Experiment(config, tokenizer, model, objective, optimizer, mesh, rules, abstract_state, state_shardings,
                    param_axes, mesh_lib.batch_sharding(mesh, rules), train_records, eval_records, trainable)



def init_state(exp: Experiment) -> TrainState:
  """A fresh state, created directly in its shardings (no host copy of the parameters); with `config.init`, the
  parameters it selects come from another experiment's checkpoint (`finetune.restore`)."""
  batch = example_batch(exp.objective.layout, 1)

  def init(seed):
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = nn.unbox(exp.objective.init(init_rng, batch))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=exp.optimizer.init(params),
                      rng=dropout_rng)
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.rules):
    state = jax.jit(init, static_argnums=0, out_shardings=exp.state_shardings)(exp.config.seed)
  if finetune.source_workdir(exp.config):
    state = finetune.initialise_from(exp.config.init, state, exp.optimizer, exp.state_shardings.opt_state)
  return state


def make_train_step(exp: Experiment, teacher: distill.Teacher | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The jitted step: gradients of `objective.loss_fn`, optimizer update; the old state is donated.

  With a `teacher`, its logits on each (micro-)batch join the batch as `teacher_logits` (distillation);
  with `config.prune.sparsity`, matrices are magnitude-pruned after the update (`prune.apply`).
  """
  config = exp.config
  learning_rate = optim.schedule(config.optimizer, config.train.num_steps)
  micro_batches = config.train.grad_accum_steps
  pruning = config.prune.sparsity > 0
  # Frozen parameters are left as they are: pruning them would change what the run promised to keep.
  prune_mask = (jax.tree.map(lambda target, trains: target and trains, prune.target_mask(exp.abstract_state.params, config.prune),
                             exp.trainable) if pruning else None)

  def gradients(params, batch: dict, rng: jax.Array, teacher_params):
    def loss_fn(params, batch, rng):
      params = finetune.stop_frozen(params, exp.trainable)
      if teacher is not None:
        batch = {**batch, 'teacher_logits': jax.lax.stop_gradient(teacher.logits(teacher_params, batch))}
      return exp.objective.loss_fn(params, batch, rng)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
      return grad_fn(params, batch, rng)
    # The whole batch's gradients from `micro_batches` sequential pieces, weighted by what each scores. Piece i
    # takes rows i, i + k, i + 2k, ... so that every device holds an equal share of each piece.
    pieces = jax.tree.map(lambda x: x.reshape((-1, micro_batches) + x.shape[1:]).swapaxes(0, 1), batch)

    def body(total, inputs):
      index, piece = inputs
      (loss, metrics), grads = grad_fn(params, piece, jax.random.fold_in(rng, index))
      weight = metrics['loss_weight']
      total = jax.tree.map(lambda t, g: t + weight * g, total, grads)
      return total, {**metrics, 'loss': loss}
    zeros = jax.tree.map(jnp.zeros_like, params)
    total, per_piece = jax.lax.scan(body, zeros, (jnp.arange(micro_batches), pieces))
    weight = jnp.sum(per_piece['loss_weight'])
    share = per_piece['loss_weight'] / weight
    metrics = {k: jnp.sum(v) if k.endswith(('tokens', 'weight')) else jnp.sum(v * share) for k, v in per_piece.items()}
    return (metrics.pop('loss'), metrics), jax.tree.map(lambda g: g / weight, total)

  def step(state: TrainState, batch: dict, teacher_params=None) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = gradients(state.params, batch, rng, teacher_params)
    updates, opt_state = exp.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.tree.norm(grads),
               'learning_rate': learning_rate(state.step)}
    if pruning:
      params = prune.apply(params, state.params, state.step + 1, prune_mask, config.prune, config.train.num_steps)
      metrics['sparsity'] = prune.sparsity(params, prune_mask)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  in_shardings = (exp.state_shardings, exp.batch_sharding) + ((teacher.shardings,) if teacher else ())
  jitted = jax.jit(step, in_shardings=in_shardings,
                   out_shardings=(exp.state_shardings, mesh_lib.replicated(exp.mesh)), donate_argnums=0)
  return _under_mesh(exp, jitted, *((teacher.params,) if teacher else ()))


def make_eval_step(exp: Experiment,
                   param_shardings: Any = None) -> Callable[[Any, dict], tuple[dict, jax.Array, jax.Array]]:
  """The jitted evaluation: metric sums, greedy predictions and example indices (replicated).

  The parameters may be int8-quantized (`quantize.quantize`, with `param_shardings` from
  `quantize.shardings`): they are dequantized to the compute dtype inside the computation.
  """
  def step(params, batch):
    params = quantize.dequantize(params, jnp.dtype(exp.model.config.dtype))
    sums, predictions = exp.objective.eval_fn(params, batch)
    return sums, predictions, batch['example_index']
  replicated = mesh_lib.replicated(exp.mesh)
  params_sharding = exp.state_shardings.params if param_shardings is None else param_shardings
  jitted = jax.jit(step, in_shardings=(params_sharding, exp.batch_sharding), out_shardings=replicated)
  return _under_mesh(exp, jitted)


def _under_mesh(exp: Experiment, fn: Callable, *bound: Any) -> Callable:
  """`fn` called in the mesh and logical-axis-rule contexts, with `bound` appended to its arguments."""
  @functools.wraps(fn)  # `__wrapped__` is the jitted function (to lower and compile it alone)
  def wrapped(*args):
    with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.rules):
      return fn(*args, *bound)
  return wrapped


def to_global(exp: Experiment, local_batch: dict) -> dict:
  """This process's share of a batch -> global arrays sharded over the data-parallel axes."""
  return {k: jax.make_array_from_process_local_data(exp.batch_sharding, v) for k, v in local_batch.items()}


def evaluate(exp: Experiment, eval_step: Callable, params: Any) -> tuple[dict, list[tuple[str, str, str]]]:
  """Metrics over `eval.num_examples` of `exp.eval_records`, and (input, target, prediction) examples.

  Objectives that generate the target text are also scored with corpus BLEU and chrF.
  """
  sums, examples, predicted, references = {}, [], [], []
  generates_text = exp.objective.generates_text
  batches = pipeline.eval_batches(
      exp.eval_records, exp.tokenizer, exp.objective.layout, global_batch_size=exp.config.eval.batch_size,
      num_examples=exp.config.eval.num_examples, process_index=jax.process_index(),
      process_count=jax.process_count())
  for batch in batches:
    batch_sums, predictions, indices = jax.device_get(eval_step(params, to_global(exp, batch)))
    sums = {k: sums.get(k, 0.0) + np.asarray(v, np.float64) for k, v in batch_sums.items()}
    for index, prediction in zip(indices, predictions):
      if index < 0 or not generates_text and len(examples) >= exp.config.eval.num_print:
        continue  # padding, or nothing more to show
      record, text = exp.eval_records[int(index)], exp.objective.describe(exp.tokenizer, prediction)
      if generates_text:
        predicted.append(text)
        references.append(record['target'])
      if len(examples) < exp.config.eval.num_print:
        examples.append((record['input'], record['target'], text))
  summary = exp.objective.summarize(sums)
  if generates_text:
    summary.update(metrics_lib.generation_scores(predicted, references))
  return summary, examples


class StopRequest:
  """Turns the first SIGTERM/SIGINT into a request to save and stop at a step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested:  # a second signal: stop at once
      signal.signal(signum, self._previous[signum])
      signal.raise_signal(signum)
    self.requested = True

  def agreed(self, at_sync_point: bool) -> bool:
    """Whether every process stops after this step: at once with one process; with several (a signal may
    reach only some), when any was asked, decided together at logging steps so that all save the same step."""
    if jax.process_count() == 1:
      return self.requested
    return at_sync_point and bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir that holds another experiment (before any expensive work)."""
  saved = files.path(workdir) / CONFIG_FILE
  if saved.exists():
    config_lib.check_resumable(config_lib.from_json(saved.read_text()), config, workdir)


def save_to_workdir(config: ml_collections.ConfigDict, tokenizer: Tokenizer, workdir: str) -> None:
  """The resolved config and the vocabulary, so the workdir alone is enough to load the model."""
  if jax.process_index() != 0:
    return
  directory = files.path(workdir)
  directory.mkdir(parents=True, exist_ok=True)
  files.write_atomic(directory / CONFIG_FILE, config_lib.to_json(config).encode())
  if isinstance(tokenizer, SentencePieceTokenizer):
    files.write_atomic(directory / VOCAB_FILE, tokenizer.serialized)


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a workdir was trained (or imported) with."""
  path = files.path(workdir) / CONFIG_FILE
  if not path.exists():
    raise config_lib.ConfigError(f'{workdir} holds no {CONFIG_FILE}; is it a training workdir?')
  return config_lib.from_json(path.read_text())


def tokenizer_for_workdir(config: ml_collections.ConfigDict, workdir: str) -> Tokenizer:
  """The tokenizer a workdir was trained with: its vocab.model (or data.vocab_file), or bytes."""
  if config.data.tokenizer == 'bytes':
    return ByteTokenizer()
  for path in (files.path(workdir) / VOCAB_FILE, config.data.get('vocab_file')):
    if path and files.path(path).exists():
      return SentencePieceTokenizer(files.path(path).read_bytes())
  raise config_lib.ConfigError(f'{workdir} has no {VOCAB_FILE}; cannot rebuild its SentencePiece tokenizer')


def source_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
  """The tokenizer of `init.workdir`: a run initialised from it must read token ids as it did."""
  source = config.init.workdir
  if not files.path(source).is_dir():
    raise config_lib.ConfigError(f'init.workdir={source} does not exist')
  source_config = saved_config(source)
  tokenizer = tokenizer_for_workdir(source_config, source)
  finetune.check_vocabulary(config.data, source_config.data, tokenizer, source)
  return tokenizer


def load_teacher(exp: Experiment) -> distill.Teacher:
  """The teacher of `config.distill`, its parameters restored onto the student's mesh. Refused unless it reads
  the same token ids and batch layout as the student."""
  config = exp.config
  workdir = config.distill.teacher_workdir
  teacher_config = saved_config(workdir)
  tokenizer = tokenizer_for_workdir(teacher_config, workdir)
  if (type(tokenizer), getattr(tokenizer, 'serialized', None)) != (type(exp.tokenizer),
                                                                    getattr(exp.tokenizer, 'serialized', None)):
    raise config_lib.ConfigError(f'distill.teacher_workdir={workdir} uses another tokenizer than this run; train '
                                 f'the student with its vocabulary (data.vocab_file={workdir}/{VOCAB_FILE})')
  # The teacher reads the student's batches on the student's mesh.
  for section in ('mesh', 'train', 'eval'):
    teacher_config[section] = config[section].copy_and_resolve_references()
  teacher_config.data.update(max_input_length=config.data.max_input_length,
                             max_target_length=config.data.max_target_length)
  teacher_config.train.update(trainable=('.*',), freeze=())  # the student's fine-tuning choices are not the teacher's
  try:
    teacher = setup(teacher_config, devices=list(exp.mesh.devices.flat), tokenizer=tokenizer)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f'teacher {workdir}: {e}') from e
  if teacher.objective.layout != exp.objective.layout:
    raise config_lib.ConfigError(f'teacher {workdir} is a {teacher_config.objective.name} model; the student '
                                 f'({config.objective.name}) needs a teacher that reads the same batches')
  checkpointer = checkpoints.Checkpointer(files.path(workdir) / 'checkpoints')
  step = config.distill.teacher_step or checkpointer.latest_step()
  if step not in checkpointer.all_steps():
    raise config_lib.ConfigError(f'teacher {workdir} has no checkpoint at step {step}; it has '
                                 f'{checkpointer.all_steps()}')
  params = checkpointer.restore_params(step, teacher.abstract_state.params)
  checkpointer.close()
  return distill.Teacher(lambda p, batch: teacher.objective.logits(p, batch, None), params,
                         teacher.state_shardings.params, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Trains (resuming from the workdir's latest checkpoint), evaluates, saves; returns the last eval metrics."""
  check_workdir(config, workdir)
  exp = setup(config, devices)
  train_cfg = config.train
  save_to_workdir(config, exp.tokenizer, workdir)
  is_chief = jax.process_index() == 0
  checkpointer = checkpoints.Checkpointer(files.path(workdir) / 'checkpoints', keep=train_cfg.keep_checkpoints)
  data_iterator = pipeline.train_iterator(
      exp.train_records, exp.tokenizer, config.data, exp.objective.layout, global_batch_size=train_cfg.batch_size,
      seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
  start = checkpointer.latest_step()
  state = init_state(exp) if start is None else checkpointer.restore(start, exp.abstract_state, data_iterator,
                                                                      elastic=not config.data.pack)
  start = start or 0
  writer = metrics_lib.MetricWriter(workdir, resume_step=start, enabled=is_chief)
  teacher = load_teacher(exp) if config.distill.teacher_workdir else None
  train_step, eval_step = make_train_step(exp, teacher=teacher), make_eval_step(exp)
  layout = exp.layout
  if is_chief:
    files.write_atomic(files.path(workdir) / LAYOUT_FILE, layout.encode())
  trainable, total = exp.trainable_count, exp.param_count
  source = finetune.source_workdir(config)
  beginning = f'resuming from step {start}' if start else f'starting from {source}' if source else 'starting'
  _log(is_chief, f'{layout}\n{beginning}: {trainable:,} trainable of {total:,} parameters '
       f'({100 * trainable / total:.2f}%), {jax.process_count()} process(es), workdir {workdir}')
  if not start:
    writer.write(0, {'params/total': total, 'params/trainable': trainable})
  if teacher:
    _log(is_chief, f'distilling from {teacher.workdir} (weight {config.distill.weight}, temperature '
         f'{config.distill.temperature})')

  history, eval_metrics = [], {}
  tick = time.perf_counter()
  progress = tqdm.tqdm(total=train_cfg.num_steps, initial=start, disable=not is_chief, dynamic_ncols=True,
                       desc='train')
  with StopRequest() as stop:
    for step in range(start + 1, train_cfg.num_steps + 1):
      state, step_metrics = train_step(state, to_global(exp, next(data_iterator)))
      history.append(step_metrics)
      progress.update()
      last = step == train_cfg.num_steps
      logging_step = step % train_cfg.log_every == 0 or last
      stopping = stop.agreed(at_sync_point=logging_step)
      if logging_step or stopping:
        history = jax.device_get(history)
        summary = metrics_lib.mean_over_steps(history)
        elapsed = time.perf_counter() - tick
        tokens = sum(float(h['input_tokens']) + float(h['target_tokens']) for h in history)
        summary.update(tokens_per_sec=tokens / elapsed, step_time=elapsed / len(history))
        del summary['input_tokens'], summary['target_tokens'], summary['loss_weight']
        writer.write(step, {f'train/{k}': v for k, v in summary.items()})
        progress.set_postfix(loss=f'{summary["loss"]:.3f}', acc=f'{summary["accuracy"]:.3f}',
                             tok_s=f'{summary["tokens_per_sec"]:,.0f}')
        history, tick = [], time.perf_counter()
      if step % train_cfg.eval_every == 0 or last:
        eval_metrics, examples = evaluate(exp, eval_step, state.params)
        writer.write(step, {f'eval/{k}': v for k, v in eval_metrics.items()})
        _log(is_chief, f'step {step} eval: ' + ', '.join(f'{k} {v:.4g}' for k, v in eval_metrics.items()) +
             ''.join(f'\n  {src!r} -> {pred!r} (target {tgt!r})' for src, tgt, pred in examples))
        tick = time.perf_counter()  # evaluation time is not training throughput
      if step % train_cfg.checkpoint_every == 0 or last or stopping:
        checkpointer.save(step, state, data_iterator, force=True)
      if stopping:
        _log(is_chief, f'stopped at step {step} on request; checkpoint saved, rerun the same command to resume')
        break
  progress.close()
  checkpointer.wait()
  checkpointer.close()
  writer.close()
  return eval_metrics


def _log(enabled: bool, message: str) -> None:
  if enabled:
    tqdm.tqdm.write(message)
