r"""Decodes prompts with a workdir's checkpoint (or an imported Hugging Face one) and writes JSONL.

  echo "three hundred and five" | python experiments/decode.py --workdir=workdirs/quickstart
  python experiments/decode.py --workdir=workdirs/decoder_quickstart --prompts=prompts.txt --output=out.jsonl \
      --method=sample --temperature=0.7 --top_p=0.9 --seed=1
  python experiments/decode.py --from_hf=path/to/t5-small --prompts=- --method=beam --beam_size=4

Each input line is a prompt, or a JSON object {"input": ..., "id": ...}. Each output line is
{"line", ["id",] "input", "output", "tokens", "score"}, or {"line", "error"} for a prompt that could not be
decoded (reported on stderr with its line number; the exit status is then 1, after every other prompt
was decoded). Greedy, beam search and sampling use the key/value cache (--nouse_cache recomputes).
"""

import json
import sys
import tempfile

from absl import app, flags, logging

from research import analysis, config as config_lib, convert, decoding, inference, mesh as mesh_lib, train

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to decode with.')
_FROM_HF = flags.DEFINE_string('from_hf', None, 'Or: a Hugging Face checkpoint directory (imported on the fly).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_PROMPTS = flags.DEFINE_string('prompts', '-', 'Prompt file, one per line ("-": standard input).')
_OUTPUT = flags.DEFINE_string('output', '-', 'JSONL output file ("-": standard output).')
_METHOD = flags.DEFINE_string('method', 'greedy', f'One of {", ".join(decoding.METHODS)}.')
_MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 0, 'Tokens to generate at most (0: the config\'s '
                                       'data.max_target_length).')
_BEAM_SIZE = flags.DEFINE_integer('beam_size', 4, 'beam: hypotheses kept per prompt.')
_LENGTH_PENALTY = flags.DEFINE_float('length_penalty', 0.6, 'beam: GNMT alpha; 0 ranks by log-probability alone.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'sample: softmax temperature (0: greedy).')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'sample: only the k most likely tokens (0: all).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'sample: nucleus mass (1: all).')
_SEED = flags.DEFINE_integer('seed', 0, 'sample: random seed (a prompt\'s sample depends on it and its line).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Prompts decoded together.')
_INT8 = flags.DEFINE_bool('int8', False, 'Decode with int8 weights (per-channel scales).')
_USE_CACHE = flags.DEFINE_bool('use_cache', True, 'Key/value cache (False: recompute every step; for comparison).')
_MESH = flags.DEFINE_string('mesh', '', 'Shard over all devices with these axis sizes, e.g. "fsdp=4,tensor=2" '
                            '(default: one device).')


@config_lib.exit_on_config_error
def main(argv):
  if len(argv) > 1:
    raise config_lib.ConfigError(f'unexpected arguments {argv[1:]}')
  if bool(_WORKDIR.value) == bool(_FROM_HF.value):
    raise config_lib.ConfigError('give exactly one of --workdir and --from_hf')
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value
  if _FROM_HF.value:
    workdir = tempfile.mkdtemp(prefix='imported_')
    convert.import_hf(_FROM_HF.value, workdir)
  config = train.saved_config(workdir)  # checked before the checkpoint is read
  inference.check_decodable(config)
  options = decoding.Options(
      _METHOD.value, _MAX_NEW_TOKENS.value or config.data.max_target_length, _BEAM_SIZE.value,
      _LENGTH_PENALTY.value, _TEMPERATURE.value, _TOP_K.value, _TOP_P.value, _USE_CACHE.value).validate()
  mesh = mesh_lib.parse_layout(_MESH.value) if _MESH.value else None
  loaded = analysis.load_experiment(workdir, _STEP.value, mesh=mesh)
  decoder = inference.TextDecoder(loaded, options, _BATCH_SIZE.value, _INT8.value)
  print(f'{loaded.config.model.family} at step {loaded.step}; {options.method}, at most {options.max_new_tokens} new '
        f'tokens; parameters {mesh_lib.format_bytes(decoder.param_bytes)}'
        + (f' in int8 (float: {mesh_lib.format_bytes(decoder.float_bytes)})' if _INT8.value else ''), file=sys.stderr)

  if _PROMPTS.value == '-':
    prompts = inference.read_prompts(sys.stdin.buffer)
  else:
    with open(_PROMPTS.value, 'rb') as source:
      prompts = inference.read_prompts(source)
  records = decoder.decode(prompts, _SEED.value)
  lines = ''.join(json.dumps(record, ensure_ascii=False) + '\n' for record in records)
  if _OUTPUT.value == '-':
    sys.stdout.write(lines)
  else:
    with open(_OUTPUT.value, 'w', encoding='utf-8') as sink:
      sink.write(lines)
  failed = [r for r in records if 'error' in r]
  for record in failed:
    print(f'line {record["line"]}: {record["error"]}', file=sys.stderr)
  if failed:
    print(f'{len(failed)} of {len(records)} prompts failed; the others were decoded', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
