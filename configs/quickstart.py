"""Quickstart: a small encoder-decoder learns number words -> digits on a laptop CPU.

  python experiments/train.py --config=configs/quickstart.py --workdir=workdirs/quickstart

Goal: >= 95% held-out exact match within a few minutes on 2 CPU cores. Every field below can be
overridden from the command line, e.g. --config.model.num_encoder_layers=4.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Architecture: 2+2 layers, d_model 128, pre-norm, learned positions, tied embeddings (~0.9M params).
  config.model = ml_collections.ConfigDict(dict(
      family='encoder_decoder',
      d_model=128,
      num_heads=4,
      head_dim=0,  # 0: d_model // num_heads
      mlp_dim=512,
      num_encoder_layers=2,
      num_decoder_layers=2,
      dropout_rate=0.0,
      attention_dropout_rate=0.0,
      activation='relu',
      norm='layernorm',
      position_embedding='learned',
      max_length=64,
      tie_embeddings=True,
      use_bias=False,
      vocab_multiple=128,  # the embedding table is padded to a multiple of this, for even sharding
      dtype='float32',  # compute dtype; 'bfloat16' on accelerators
      param_dtype='float32',  # parameters and optimizer state
      remat='none',  # 'full' or 'dots_saveable': recompute activations in the backward pass to save memory
      scan_layers=False,  # True: compile one layer and scan it (compile time flat in depth)
      lora_rank=0,  # > 0: low-rank adapters (LoRA) of this rank on the lora_targets kernels; 0 = off
      lora_alpha=16.0,  # the adapters' output is scaled by lora_alpha / lora_rank
      lora_targets=('query', 'value'),  # of query, key, value, out (attention) and wi, wi_0, wi_1, wo (MLP)
  ))

  # The embedded task, prepared by TFDS on first use (no download) into data_dir ('' = TFDS default).
  config.data = ml_collections.ConfigDict(dict(
      source='tfds',  # or 'files': train_files / eval_files as TSV or JSONL of input/target pairs
      name='number_words',
      data_dir='',  # local or gs://; the SentencePiece vocabulary is cached next to the prepared data
      download=True,  # prepare (TFDS download_and_prepare) into data_dir on first use; False: it must be there
      train_split='train',
      eval_split='validation',
      train_files='',
      eval_files='',
      input_key='input',
      target_key='target',
      tokenizer='sentencepiece',  # or 'bytes'
      tokenizer_model_type='bpe',  # 'unigram' splits the rare word 'million' into letters here
      vocab_size=128,
      vocab_file='',  # a SentencePiece model to use instead of training one
      tokenizer_train_examples=20_000,
      max_input_length=24,
      max_target_length=10,
      pack=False,
      classes=(),  # classification: the label names, in class-id order
      read_threads=2,
  ))

  config.objective = ml_collections.ConfigDict(dict(
      name='seq2seq', label_smoothing=0.0, z_loss=0.0,
      mask_rate=0.15,  # mlm
      noise_density=0.15, mean_noise_span_length=3.0,  # span_corruption
  ))

  config.optimizer = ml_collections.ConfigDict(dict(
      name='adamw',
      learning_rate=3e-3,
      schedule='cosine',
      warmup_steps=100,
      end_learning_rate_factor=0.05,
      b1=0.9,
      b2=0.98,
      eps=1e-9,
      weight_decay=0.01,
      grad_clip_norm=1.0,
      adafactor_decay_rate=0.8,
      multiply_by_parameter_scale=True,
  ))

  config.train = ml_collections.ConfigDict(dict(
      batch_size=64,
      grad_accum_steps=1,  # > 1: the batch in this many sequential micro-batches (same update, less memory)
      num_steps=1500,
      log_every=50,
      eval_every=500,
      checkpoint_every=500,
      keep_checkpoints=2,
      # Regexes over parameter names such as 'encoder/layers_0/mlp/wi/kernel' (whole-name matches): a parameter
      # trains iff it matches a `trainable` pattern and no `freeze` pattern; the others stay bit-identical.
      trainable=('.*',),  # e.g. ('.*_lora_[ab]',) to train only LoRA adapters
      freeze=(),  # e.g. ('token_embed/.*', 'encoder/.*')
  ))

  # Start a new run from another experiment's checkpoint (only when this run's workdir has none yet): a training
  # workdir or one written by experiments/convert_checkpoint.py. The run uses that workdir's tokenizer.
  config.init = ml_collections.ConfigDict(dict(
      workdir='',  # '' = fresh initialisation
      step=0,  # 0: its latest checkpoint
      # Regexes over its parameter names to restore, e.g. ('encoder/.*',); () = all it has. Parameters it does not
      # restore (a new classifier head, LoRA adapters) keep their fresh initialisation.
      include=(),
  ))

  # One mesh (data, fsdp, tensor) within a slice; -1 takes the remaining devices. Rules map logical axis names to
  # mesh axes; the first rule whose mesh axes are still free wins.
  config.mesh = ml_collections.ConfigDict(dict(
      data=-1,
      fsdp=1,
      tensor=1,
      # Multi-slice TPU (or several hosts): each axis is multiplied by its size across slices, which
      # communicate over the slower data-centre network; data parallelism is the usual choice there.
      dcn=dict(data=1, fsdp=1, tensor=1),
      rules=(
          ('batch', ('data', 'fsdp')),
          ('embed', 'fsdp'),
          ('mlp', 'tensor'),
          ('heads', 'tensor'),
          ('vocab', 'tensor'),
          ('kv', None),
          ('length', None),
          ('layers', None),  # the stacked-layer axis of scan_layers
      ),
  ))

  # Several processes (hosts): detected on SLURM and Cloud TPU pods; else give the coordinator here.
  config.distributed = ml_collections.ConfigDict(dict(
      coordinator_address='',  # host:port of process 0
      num_processes=1,
      process_id=0,
      cpu_devices_per_process=0,  # > 0: emulate this many CPU devices per process (tests, laptops)
      initialization_timeout=300,
  ))

  # Knowledge distillation: the loss mixes in a teacher checkpoint's softened predictions (token objectives).
  config.distill = ml_collections.ConfigDict(dict(
      teacher_workdir='',  # '' = off; a training or imported workdir with the same tokenizer
      teacher_step=0,  # 0: the teacher's latest checkpoint
      temperature=2.0,  # both distributions are softened by this; the term is scaled by temperature**2
      weight=0.5,  # loss = (1 - weight) * cross-entropy + weight * KL(teacher || student)
  ))

  # Magnitude pruning: the smallest weights of each matrix are zeroed and stay zero (Zhu & Gupta 2017 schedule).
  config.prune = ml_collections.ConfigDict(dict(
      sparsity=0.0,  # 0 = off; the final fraction of zeros in each pruned matrix
      start_step=0,  # sparsity rises from 0 at start_step to `sparsity` at end_step (cubic), then stays
      end_step=0,  # 0: at 3/4 of train.num_steps
      every=10,  # steps between re-thresholding
      targets=('query', 'key', 'value', 'out', 'wi', 'wi_0', 'wi_1', 'wo'),  # attention and MLP matrices
  ))

  config.eval = ml_collections.ConfigDict(dict(batch_size=256, num_examples=0, num_print=3))  # 0 = whole split
  return config
