r"""Benchmarks the train step (compile time, step time, tokens/s, MFU, memory) or decoding (compile time, prefill
and per-token latency, tokens/s, parameter bytes, memory), for model sizes x mesh layouts.

  python experiments/benchmark.py --sizes=tiny,small --meshes='data=-1' --output=benchmark.json
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/benchmark.py --sizes=tiny \
      --meshes='data=-1;fsdp=-1;fsdp=4,tensor=2;data=2,fsdp=2,tensor=2' --config.model.dtype=bfloat16
  python experiments/benchmark.py --mode=decode --sizes=tiny --batch_sizes=1,8 --prompt_lens=32,128 \
      --new_tokens=32 --weights=float,int8 --cache=on,off

--mode=train (the default) runs the project's own jitted train step (`train.make_train_step`) on random tokens,
every position real, so no data set is opened. --mode=decode runs greedy `decoding.generate` (jitted with the
parameters in their training shardings and the prompts split over the data-parallel axes, as
`decoding.sharded_generate` does) on random full-length prompts, for each batch size x prompt length x weights
(float, or int8 from `research/quantize.py`) x cache (on: the KV cache; off: recompute every step), and times
`decoding.prefill` alone to split prefill from per-token latency. Parameters are random, initialised as for
training. A size sets the model's dimensions; every other field (family, activation, dtype, remat, ...) comes from
the config and its --config.* overrides. Prints a table; --output also writes a JSON list of records. A layout
that does not fit the devices is reported as skipped, with the reason. Timings move with the machine's load:
compare numbers taken in one run.
"""

import copy
import dataclasses
import datetime
import functools
import json
import math
import os
import re
import resource
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from research import config as config_lib
from research import decoding, flops, quantize
from research import mesh as mesh_lib
from research import train
from research.data import pipeline
from research.data.tokenizer import EOS_ID, ByteTokenizer


def _size(d_model: int, num_heads: int, mlp_dim: int, layers: int, vocab_size: int) -> dict:
  """Model fields of one size; a family without an encoder (or decoder) ignores that layer count."""
  return dict(d_model=d_model, num_heads=num_heads, head_dim=d_model // num_heads, mlp_dim=mlp_dim,
              num_encoder_layers=layers, num_decoder_layers=layers, vocab_size=vocab_size)


# tiny and small suit a CPU; base is BERT / GPT-2 / T5-base scale; large and xl are for accelerators (use fsdp).
SIZES = {
    'tiny': _size(128, 4, 512, 2, 384),
    'small': _size(256, 4, 1024, 4, 384),
    'base': _size(768, 12, 3072, 12, 32128),
    'large': _size(1024, 16, 4096, 24, 32128),
    'xl': _size(2048, 32, 8192, 24, 32128),
}
CONFIG_SIZE = 'config'  # the config's own model, unchanged
MODES = ('train', 'decode')
WEIGHTS = ('float', 'int8')  # decode: the parameters as initialised (config.model.param_dtype), or int8-quantized
CACHE = ('on', 'off')  # decode: Options.use_cache
CPU_MATMUL_SIZE, ACCELERATOR_MATMUL_SIZE = 2048, 8192  # square matmuls that reach the peak rate

_DEFAULT_CONFIG = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs',
                                                'quickstart.py'))
if __name__ == '__main__':  # config_flags applies overrides while the flag is defined: check them first
  config_lib.exit_on_config_error(config_lib.check_overrides)(sys.argv, default_file=_DEFAULT_CONFIG)
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Base config file (path[:arg]).',
                                          lock_config=True)
_MODE = flags.DEFINE_string('mode', 'train', 'train: time the train step; decode: time greedy decoding (prefill, '
                            'per-token latency) for each --batch_sizes x --prompt_lens x --weights x --cache.')
_SIZES = flags.DEFINE_string('sizes', 'tiny,small', f'Comma-separated sizes: {", ".join(SIZES)}, or '
                             f'{CONFIG_SIZE} (the config\'s model as it is).')
_MESHES = flags.DEFINE_string('meshes', 'data=-1', 'Mesh layouts separated by ";", each axis=size pairs separated '
                              'by "," (axes data, fsdp, tensor; unnamed axes are 1; -1 = the remaining devices).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'train: global batch size (sequences per step).')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 128, 'train: tokens per sequence in each stack (a decoder-only model\'s '
                                'input and target are half each); 0 keeps the config\'s data lengths.')
_BATCH_SIZES = flags.DEFINE_string('batch_sizes', '1,8', 'decode: comma-separated global batch sizes (prompts '
                                   'decoded at once).')
_PROMPT_LENS = flags.DEFINE_string('prompt_lens', '32,128', 'decode: comma-separated prompt lengths in tokens '
                                   '(every prompt full; a decoder-only prompt also has its start token).')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 32, 'decode: greedy tokens generated after each prompt (fewer '
                                   'if every row produces EOS).')
_WEIGHTS = flags.DEFINE_string('weights', ','.join(WEIGHTS), 'decode: comma-separated parameter formats: float '
                               '(config.model.param_dtype), int8 (research/quantize.py, dequantized inside generate).')
_CACHE = flags.DEFINE_string('cache', ','.join(CACHE), 'decode: comma-separated: on (KV cache), off (the whole '
                             'sequence recomputed for each token).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (decode: timed calls of generate and of prefill).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps (calls) after compilation.')
_MODE_FLAGS = {'train': ('batch_size', 'seq_len'),
               'decode': ('batch_sizes', 'prompt_lens', 'new_tokens', 'weights', 'cache')}
_OUTPUT = flags.DEFINE_string('output', None, 'Also write the records to this JSON file.')

NOTES = ('compile_s: lower + compile of the train step (explicit, before any step runs); step_ms: median (mean) '
         'of the timed steps, each run to completion; tokens/s and MFU use the median; GFLOP/step: analytic model '
         'FLOPs (research/flops.py); xla/model: XLA cost_analysis FLOPs summed over devices / model FLOPs (XLA '
         'counts a loop body once: low with grad_accum_steps > 1 or scan_layers); memory: {memory}.')
DECODE_NOTES = ('compile_s: lower + compile of the jitted greedy generate (explicit, before any call); prefill_ms: '
                'median of the jitted decoding.prefill (dequantizing, the encoder, the prompt pass that fills the '
                'cache or, cache off, the first full forward pass); generate_ms: median (mean) of the whole '
                'generate; tokens/row: tokens generated per row, the decode loop\'s length ({new_tokens} unless '
                'every row produced EOS first); token_ms: (generate_ms - prefill_ms) / (tokens/row - 1), the time '
                'of one decode step (the first token comes from the prefill\'s logits); tokens/s: tokens generated '
                'by all rows (up to each EOS) / generate_ms; param_bytes: the parameters passed to generate (int8: '
                'values + float32 scales; norms, biases and position tables stay float); the batch is the config\'s '
                'train.batch_size, so a layout whose data x fsdp does not divide it is skipped; memory: {memory}.')


def parse_names(flag: str, text: str, valid: tuple[str, ...], noun: str) -> list[str]:
  """'--flag=a,b' -> ['a', 'b'], each one of `valid` (`noun` names one in the error)."""
  names = [name.strip() for name in text.split(',') if name.strip()]
  listed = ', '.join(valid)
  if not names:
    raise config_lib.ConfigError(f'--{flag}: no {noun} given; valid {noun}s: {listed}')
  for name in names:
    if name not in valid:
      raise config_lib.ConfigError(f'--{flag}: unknown {noun} {name!r}; valid {noun}s: {listed}')
  return names


def parse_sizes(text: str) -> list[str]:
  return parse_names('sizes', text, (*SIZES, CONFIG_SIZE), 'size')


def parse_counts(flag: str, text: str) -> list[int]:
  """'--flag=1,8' -> [1, 8], each a positive integer."""
  example = flags.FLAGS[flag].default
  items = [item.strip() for item in text.split(',') if item.strip()]
  for item in items:
    if not re.fullmatch(r'\d+', item) or int(item) < 1:
      raise config_lib.ConfigError(f'--{flag}: {item!r} is not a positive integer; e.g. --{flag}={example}')
  if not items:
    raise config_lib.ConfigError(f'--{flag}: no value given; e.g. --{flag}={example}')
  return [int(item) for item in items]


def parse_meshes(text: str) -> list[dict[str, int]]:
  """'fsdp=4,tensor=2;data=-1' -> [{'fsdp': 4, 'tensor': 2}, {'data': -1}] (axes of size 1 left out)."""
  layouts = []
  for layout in [part.strip() for part in text.split(';') if part.strip()]:
    sizes = mesh_lib.parse_layout(layout, '--meshes')
    layouts.append({axis: size for axis, size in sizes.items() if size != 1} or {'data': 1})
  if not layouts:
    raise config_lib.ConfigError('--meshes: no layout given; e.g. --meshes="fsdp=4,tensor=2;data=-1"')
  return layouts


def describe_layout(layout: dict[str, int]) -> str:
  return ','.join(f'{axis}={size}' for axis, size in layout.items())


def case_config(base, size: str, layout: dict[str, int], batch_size: int, seq_len: int):
  """The base config with the size's model fields, the mesh layout, the batch and the sequence lengths."""
  config = copy.deepcopy(base)
  with config.unlocked():  # a size may set model.vocab_size, which base configs may not have
    if size != CONFIG_SIZE:
      config.model.update(SIZES[size])
    config.mesh.update({**{axis: 1 for axis in mesh_lib.AXES}, **layout})
    config.train.batch_size = config.eval.batch_size = batch_size
    if seq_len:
      decoder_only = config.model.family == 'decoder_only'
      config.data.max_input_length = seq_len // 2 if decoder_only else seq_len
      config.data.max_target_length = seq_len - seq_len // 2 if decoder_only else seq_len
      config.model.max_length = max(config.model.max_length, seq_len)  # room for learned positions
  return config


def decode_config(base, size: str, layout: dict[str, int], batch_size: int, prompt_len: int, new_tokens: int):
  """`case_config` for decoding: the data lengths are the prompt and the new tokens, and learned positions reach
  every position decoding uses (a decoder-only sequence: start token + prompt + new tokens)."""
  config = case_config(base, size, layout, batch_size, 0)
  with config.unlocked():
    config.data.max_input_length, config.data.max_target_length = prompt_len, new_tokens
    config.model.max_length = max(config.model.max_length, prompt_len + new_tokens + 1)
  return config


def synthetic_batch(layout: pipeline.Layout, batch_size: int, vocab_size: int, seed: int = 0) -> dict:
  """Random token ids filling every position (all real), arranged by the data pipeline's own code."""
  rng = np.random.default_rng(seed)
  label = layout.classes[0] if layout.classes else ''
  rows = []
  for _ in range(batch_size):
    inputs, targets = (rng.integers(EOS_ID + 1, vocab_size, length, dtype=np.int32)
                       for length in (layout.max_input_length, layout.max_target_length))
    rows.append(pipeline.pad_example(layout.arrange(inputs, targets, label), layout.lengths()))
  batch = layout.features({key: np.stack([row[key] for row in rows]) for key in rows[0]})
  batch['example_index'] = np.arange(batch_size, dtype=np.int32)
  return batch


def synthetic_prompts(exp: train.Experiment, batch_size: int, prompt_len: int, seed: int = 0) -> decoding.Prompts:
  """`batch_size` prompts of `prompt_len` random tokens each (every prompt full; EOS never among them), built by
  decoding's own functions from this process's share, as global arrays split over the data-parallel axes."""
  local = batch_size // jax.process_count()
  first = jax.process_index() * local
  tokens = np.random.default_rng([seed, jax.process_index()]).integers(
      EOS_ID + 1, exp.tokenizer.vocab_size, (local, prompt_len), dtype=np.int32)
  ids = list(range(first, first + local))
  if exp.config.model.family == 'decoder_only':
    prompts = decoding.decoder_prompts(list(tokens), prompt_len + 1, exp.config.objective.name == 'prefix_lm', ids)
  else:
    prompts = decoding.encoder_prompts(list(tokens), prompt_len, ids)
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(exp.batch_sharding, v), prompts)


def init_params(exp: train.Experiment):
  """Random parameters exactly as `train.init_state` makes them (same seed, created in their shardings), without
  the optimizer state, which decoding does not need (and which would count in the device's peak memory)."""
  stateless = dataclasses.replace(exp, optimizer=optax.set_to_zero(),
                                  state_shardings=exp.state_shardings.replace(opt_state=optax.EmptyState()))
  return train.init_state(stateless).params


def quantize_params(exp: train.Experiment, params):
  """`quantize.quantize` in one jitted computation on the devices, the result in `quantize.shardings`."""
  quantized = functools.partial(quantize.quantize, logical_axes=exp.param_axes)
  shardings = quantize.shardings(jax.eval_shape(quantized, params), exp.state_shardings.params)
  return jax.jit(quantized, out_shardings=shardings)(params)


def lower_train_step(exp: train.Experiment, batch: dict):
  """The project's jitted train step, lowered for the experiment's state and `batch`, to compile it explicitly.

  `make_train_step` returns the jitted function wrapped in the mesh and logical-axis-rule contexts its tracing
  needs; those cannot be entered under another jit, so the jitted function is taken out of the wrapper.
  """
  jitted = train.make_train_step(exp).__wrapped__
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.rules):
    return jitted.lower(exp.abstract_state, batch)


@functools.cache
def measured_matmul_rate(dtype: str, size: int) -> float:
  """Best FLOP/s of a jitted size x size matmul in `dtype` on the first device, over a few runs."""
  operand = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.dtype(dtype)), jax.devices()[0])
  matmul = jax.jit(jnp.matmul)
  matmul(operand, operand).block_until_ready()
  best = float('inf')
  for _ in range(5):
    start = time.perf_counter()
    matmul(operand, operand).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def peak_flops_per_second(devices: list, dtype: str) -> tuple[float, str]:
  """Peak FLOP/s of the mesh's devices for matmuls in the model's compute dtype, and where the number comes from."""
  kind, count = devices[0].device_kind, len(devices)
  published = flops.published_peak(kind, dtype)
  if published:
    return published * count, f'published {kind} dense {dtype} peak x {count} devices'
  if devices[0].platform == 'cpu':  # emulated CPU devices share the host's cores: the host's rate is the peak
    size = CPU_MATMUL_SIZE
    return measured_matmul_rate(dtype, size), f'measured {size}x{size} {dtype} matmul rate of the whole host CPU'
  size = ACCELERATOR_MATMUL_SIZE
  rate = measured_matmul_rate(dtype, size)
  return rate * count, f'measured {size}x{size} {dtype} matmul rate of one {kind} x {count} devices'


def time_calls(call, initial, steps: int, warmup: int) -> tuple[list[float], object]:
  """`result = call(result)` from `initial`, `warmup` + `steps` times, each run to completion: the seconds of the
  last `steps` calls and the last result."""
  result, times = initial, []
  for i in range(warmup + steps):
    start = time.perf_counter()
    result = jax.block_until_ready(call(result))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return times, result


def memory_record(compiled, local_devices: list) -> dict:
  """Peak memory per device: the runtime's high-water mark where the device reports one (GPU, TPU), else XLA's
  estimate for the compiled step; and the process's peak resident memory (host). Only this process's devices
  can be asked."""
  analysis = compiled.memory_analysis()
  estimate = analysis and (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                           - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
  stats = [device.memory_stats() for device in local_devices]
  rss_unit = 1 if sys.platform == 'darwin' else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
  record = {'compiled_memory_bytes': estimate,
            'host_max_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * rss_unit}
  if all(s and 'peak_bytes_in_use' in s for s in stats):
    return {**record, 'peak_memory_bytes': max(s['peak_bytes_in_use'] for s in stats),
            'peak_memory_source': 'device peak_bytes_in_use, max over devices (high-water mark since the process '
                                  'started)'}
  return {**record, 'peak_memory_bytes': estimate,
          'peak_memory_source': 'compiled memory_analysis per device: arguments + outputs - aliased + temporaries'}


def benchmark(config, steps: int, warmup: int) -> dict:
  """Compiles and times the train step for one config; the record's measurements (or why it was skipped)."""
  try:
    exp = train.setup(config, tokenizer=ByteTokenizer())
  except config_lib.ConfigError as e:
    return {'status': 'skipped', 'reason': str(e)}
  local = synthetic_batch(exp.objective.layout, config.train.batch_size // jax.process_count(),
                          exp.tokenizer.vocab_size)
  batch = train.to_global(exp, local)
  devices = list(exp.mesh.devices.flat)
  lengths = {stack: local[f'{stack}_input_tokens'].shape[1] if f'{stack}_input_tokens' in local else 0
             for stack in ('encoder', 'decoder')}
  model_flops = flops.train_flops(exp.model.config, config.model.family, config.train.batch_size,
                                  lengths['encoder'], lengths['decoder'])
  tokens = jax.process_count() * sum(int(np.sum(local[key] > 0)) for key in (
      'encoder_segment_ids', 'decoder_segment_ids') if key in local)
  record = {'mesh': dict(exp.mesh.shape), 'model': dataclasses.asdict(exp.model.config),
            'param_count': exp.param_count, 'sequence_lengths': lengths,
            'tokens_per_step': tokens, 'model_flops_per_step': model_flops}
  try:
    start = time.perf_counter()
    compiled = lower_train_step(exp, batch).compile()
    compile_s = time.perf_counter() - start
    times, (_, metrics) = time_calls(lambda previous: compiled(previous[0], batch), (train.init_state(exp), None),
                                     steps, warmup)
  except jax.errors.JaxRuntimeError as e:  # typically out of memory: record it and go on to the next case
    return {**record, 'status': 'failed', 'reason': str(e).strip().splitlines()[0]}
  step_s, loss = statistics.median(times), float(metrics['loss'])  # a non-finite loss is kept as text: strict JSON
  peak, peak_source = peak_flops_per_second(devices, config.model.dtype)
  xla_flops = (compiled.cost_analysis() or {}).get('flops')
  return {**record, 'status': 'ok', 'compile_s': compile_s, 'step_s_median': step_s,
          'step_s_mean': statistics.mean(times), 'tokens_per_s': tokens / step_s,
          'model_flops_per_s': model_flops / step_s, 'peak_flops_per_s': peak, 'peak_flops_source': peak_source,
          'mfu': model_flops / step_s / peak, 'xla_flops_per_step': xla_flops and xla_flops * len(devices),
          'final_loss': loss if math.isfinite(loss) else str(loss), **memory_record(compiled, exp.mesh.local_devices)}


def benchmark_decode(config, prompt_len: int, new_tokens: int, weights: list[str], caches: list[str], steps: int,
                     warmup: int) -> list[dict]:
  """Compiles and times greedy decoding for one config (size, layout, batch) and prompt length: a record per
  weights x cache, with its measurements (or why it was skipped or failed)."""
  cases = [{'weights': w, 'cache': c} for w in weights for c in caches]
  try:
    exp = train.setup(config, tokenizer=ByteTokenizer())
  except config_lib.ConfigError as e:
    return [{**case, 'status': 'skipped', 'reason': str(e)} for case in cases]
  prompts = synthetic_prompts(exp, config.train.batch_size, prompt_len)
  shared = {'mesh': dict(exp.mesh.shape), 'model': dataclasses.asdict(exp.model.config),
            'param_count': exp.param_count, 'prompt_width': prompts.tokens.shape[1],
            'encoder_length': None if prompts.encoder_tokens is None else prompts.encoder_tokens.shape[1]}
  records = []
  try:
    float_params = init_params(exp)
    for w in weights:
      params = quantize_params(exp, float_params) if w == 'int8' else float_params
      for c in caches:
        options = decoding.Options(method='greedy', max_new_tokens=new_tokens, use_cache=c == 'on')
        try:
          measured = measure_decode(exp, options, params, prompts, steps, warmup)
        except jax.errors.JaxRuntimeError as e:  # typically out of memory: record it and go on to the next case
          measured = {'status': 'failed', 'reason': str(e).strip().splitlines()[0]}
        records.append({'weights': w, 'cache': c, **shared, 'param_bytes': quantize.nbytes(params), **measured})
  except jax.errors.JaxRuntimeError as e:  # initialising or quantizing the parameters
    done = len(records)
    records += [{**case, **shared, 'status': 'failed', 'reason': str(e).strip().splitlines()[0]}
                for case in cases[done:]]
  return records


def measure_decode(exp: train.Experiment, options: decoding.Options, params, prompts: decoding.Prompts, steps: int,
                   warmup: int) -> dict:
  """Greedy generate and prefill, jitted with the parameters in their training shardings and the prompts split over
  the data-parallel axes, as `decoding.sharded_generate` does (it keeps its jitted function inside, and the
  explicit compile needs it), compiled, then timed."""
  replicated = mesh_lib.replicated(exp.mesh)
  shardings = quantize.shardings(params, exp.state_shardings.params)  # float params: their own shardings
  rng = jax.random.PRNGKey(0)
  generate = jax.jit(functools.partial(decoding.generate, exp.model, options),
                     in_shardings=(shardings, exp.batch_sharding, replicated), out_shardings=replicated)
  prefill = jax.jit(functools.partial(decoding.prefill, exp.model, options),
                    in_shardings=(shardings, exp.batch_sharding), out_shardings=replicated)
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.rules):
    start = time.perf_counter()
    compiled = generate.lower(params, prompts, rng).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled_prefill = prefill.lower(params, prompts).compile()
    prefill_compile_s = time.perf_counter() - start
  generate_times, decoded = time_calls(lambda _: compiled(params, prompts, rng), None, steps, warmup)
  prefill_times, _ = time_calls(lambda _: compiled_prefill(params, prompts), None, steps, warmup)
  # A row's tokens end at its first EOS (zeros follow); the loop runs until the longest row ends.
  ended = np.asarray(jax.device_get(decoded.tokens)) == EOS_ID
  lengths = np.where(ended.any(axis=1), ended.argmax(axis=1) + 1, options.max_new_tokens)
  per_row, generated = int(lengths.max()), int(lengths.sum())
  generate_s, prefill_s = statistics.median(generate_times), statistics.median(prefill_times)
  return {'status': 'ok', 'compile_s': compile_s, 'prefill_compile_s': prefill_compile_s,
          'generate_s_median': generate_s, 'generate_s_mean': statistics.mean(generate_times),
          'prefill_s_median': prefill_s, 'prefill_s_mean': statistics.mean(prefill_times),
          'tokens_per_row': per_row, 'decode_steps': per_row - 1, 'generated_tokens': generated,
          'rows_ended_with_eos': int(ended.any(axis=1).sum()),
          'token_s': (generate_s - prefill_s) / (per_row - 1) if per_row > 1 else None,
          'tokens_per_s': generated / generate_s, **memory_record(compiled, exp.mesh.local_devices)}


def _bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if n < 1024 or unit == 'GiB':
      return f'{n:.1f} {unit}'
    n /= 1024


def _count(n: float) -> str:
  for unit, scale in (('B', 1e9), ('M', 1e6), ('k', 1e3)):
    if n >= scale:
      return f'{n / scale:.3g}{unit}'
  return f'{n:.3g}'


def aligned(records: list[dict], keys: tuple[str, ...], header: tuple[str, ...], cells, notes) -> str:
  """The records as aligned text, one row per case: the record's `keys`, then `cells(record)`, or its status and
  reason where it did not run; then the distinct lines of `notes(record)`."""
  rows, lines_after = [], {}
  for r in records:
    key = tuple(str(r[k]) for k in keys)
    if r['status'] != 'ok':
      rows.append((*key, f'{r["status"]}: {r["reason"]}'))
      continue
    rows.append((*key, *cells(r)))
    lines_after.update(dict.fromkeys(notes(r)))
  complete = [header] + [row for row in rows if len(row) == len(header)]  # a skipped row's reason runs on
  widths = [max(len(row[i]) for row in (complete if i >= len(keys) else (header, *rows)))
            for i in range(len(header))]
  lines = ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
  return '\n'.join(lines + list(lines_after))


def _memory(r: dict) -> str:
  return _bytes(r['peak_memory_bytes']) if r['peak_memory_bytes'] else '-'


def table(records: list[dict]) -> str:
  """Train records, one row per case, then what the peak, the columns and the memory mean."""
  header = ('size', 'mesh', 'params', 'compile_s', 'step_ms', '(mean)', 'tokens/s', 'GFLOP/step', 'xla/model',
            'MFU', 'memory')

  def cells(r):
    xla_ratio = f'{r["xla_flops_per_step"] / r["model_flops_per_step"]:.2f}' if r['xla_flops_per_step'] else '-'
    return (_count(r['param_count']), f'{r["compile_s"]:.2f}', f'{1e3 * r["step_s_median"]:.1f}',
            f'({1e3 * r["step_s_mean"]:.1f})', _count(r['tokens_per_s']), f'{r["model_flops_per_step"] / 1e9:.3g}',
            xla_ratio, f'{100 * r["mfu"]:.2f}%', _memory(r))

  def notes(r):
    return (f'peak {r["peak_flops_per_s"] / 1e9:,.1f} GFLOP/s: {r["peak_flops_source"]}',
            NOTES.format(memory=r['peak_memory_source']))
  return aligned(records, ('size', 'layout'), header, cells, notes)


def decode_table(records: list[dict]) -> str:
  """Decode records, one row per case, then what the columns and the memory mean."""
  header = ('size', 'mesh', 'batch', 'prompt', 'weights', 'cache', 'param_bytes', 'compile_s', 'prefill_ms',
            'generate_ms', '(mean)', 'tokens/row', 'token_ms', 'tokens/s', 'memory')

  def cells(r):
    token_ms = f'{1e3 * r["token_s"]:.2f}' if r['token_s'] is not None else '-'
    return (_bytes(r['param_bytes']), f'{r["compile_s"]:.2f}', f'{1e3 * r["prefill_s_median"]:.1f}',
            f'{1e3 * r["generate_s_median"]:.1f}', f'({1e3 * r["generate_s_mean"]:.1f})', str(r['tokens_per_row']),
            token_ms, _count(r['tokens_per_s']), _memory(r))

  def notes(r):
    return (DECODE_NOTES.format(new_tokens=r['new_tokens'], memory=r['peak_memory_source']),)
  return aligned(records, ('size', 'layout', 'batch_size', 'prompt_len', 'weights', 'cache'), header, cells, notes)


@config_lib.exit_on_config_error
def main(argv):
  if len(argv) > 1:
    raise config_lib.ConfigError(f'unexpected arguments {argv[1:]}; fields are set as --config.section.key=value')
  mode = _MODE.value
  config_lib.check_choice(mode, MODES, '--mode')
  for other, names in _MODE_FLAGS.items():
    for name in names:
      if other != mode and flags.FLAGS[name].present:
        raise config_lib.ConfigError(f'--{name} applies to --mode={other} only (this run is --mode={mode})')
  sizes, layouts = parse_sizes(_SIZES.value), parse_meshes(_MESHES.value)
  for name, value, least in (('batch_size', _BATCH_SIZE.value, 1), ('steps', _STEPS.value, 1),
                             ('warmup', _WARMUP.value, 0), ('seq_len', _SEQ_LEN.value, 0),
                             ('new_tokens', _NEW_TOKENS.value, 1)):
    if value < least:
      raise config_lib.ConfigError(f'--{name}={value} must be at least {least}')
  base = _CONFIG.value
  if mode == 'decode':
    batch_sizes, prompt_lens = parse_counts('batch_sizes', _BATCH_SIZES.value), parse_counts('prompt_lens',
                                                                                            _PROMPT_LENS.value)
    weights = parse_names('weights', _WEIGHTS.value, WEIGHTS, 'weight format')
    caches = parse_names('cache', _CACHE.value, CACHE, 'cache setting')
    if base.model.family == 'encoder_only':
      raise config_lib.ConfigError("--mode=decode: model.family='encoder_only' has no decoder to generate with; use "
                                   'a decoder_only or encoder_decoder config')
  logging.set_verbosity(logging.WARNING)
  if 'distributed' in base:
    mesh_lib.initialize_distributed(base.distributed)
  device = jax.devices()[0]
  run = {'mode': mode, 'device_kind': device.device_kind, 'platform': device.platform,
         'device_count': jax.device_count(), 'process_count': jax.process_count(), 'jax_version': jax.__version__,
         'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
         'config_file': config_flags.get_config_filename(flags.FLAGS['config']),
         'overrides': [arg for arg in sys.argv[1:] if arg.startswith('--config.')],
         **({'batch_size': _BATCH_SIZE.value, 'seq_len': _SEQ_LEN.value} if mode == 'train' else
            {'method': 'greedy', 'new_tokens': _NEW_TOKENS.value}),
         'steps': _STEPS.value, 'warmup': _WARMUP.value}
  is_chief = jax.process_index() == 0
  records = []
  for size in sizes:
    for layout in layouts:
      case = {**run, 'size': size, 'layout': describe_layout(layout), 'family': base.model.family,
              'dtype': base.model.dtype}
      if mode == 'train':
        if is_chief:
          print(f'benchmarking {size} on {describe_layout(layout)} ...', file=sys.stderr, flush=True)
        config = case_config(base, size, layout, _BATCH_SIZE.value, _SEQ_LEN.value)
        records.append({**case, **benchmark(config, _STEPS.value, _WARMUP.value)})
        continue
      for batch_size in batch_sizes:
        for prompt_len in prompt_lens:
          if is_chief:
            print(f'benchmarking decoding with {size} on {describe_layout(layout)}, batch {batch_size}, prompt '
                  f'{prompt_len} ...', file=sys.stderr, flush=True)
          config = decode_config(base, size, layout, batch_size, prompt_len, _NEW_TOKENS.value)
          records += [{**case, 'batch_size': batch_size, 'prompt_len': prompt_len, **measured} for measured in
                      benchmark_decode(config, prompt_len, _NEW_TOKENS.value, weights, caches, _STEPS.value,
                                       _WARMUP.value)]
  if is_chief:
    settings = (f'batch {run["batch_size"]}, seq_len {run["seq_len"] or "from the config"}; {run["steps"]} timed '
                f'steps after {run["warmup"]} warm-up' if mode == 'train' else
                f'decode: batch sizes {_BATCH_SIZES.value}, prompt lengths {_PROMPT_LENS.value}, {run["new_tokens"]} '
                f'new tokens (greedy); {run["steps"]} timed calls after {run["warmup"]} warm-up')
    print(f'{run["device_count"]} {run["platform"]} device(s) ({run["device_kind"]}), jax {run["jax_version"]}; '
          f'{" ".join([os.path.relpath(run["config_file"]), *run["overrides"]])}; {settings}')
    print((table if mode == 'train' else decode_table)(records))
    if _OUTPUT.value:
      with open(_OUTPUT.value, 'w') as f:
        json.dump(records, f, indent=2)
  if any(r['status'] == 'failed' for r in records):
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
