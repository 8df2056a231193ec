"""A decoder-only LM on One Billion Word (lm1b): packed sequences, perplexity on the test split.

  python experiments/train.py --config=configs/catalog/lm1b_decoder.py --workdir=workdirs/lm1b

No TensorFlow needed. lm1b has one text feature ('text'): data.input_key='' makes each sentence a plain
causal-LM example (start token, sentence, EOS), packed into 256-token rows. The decoder_quickstart architecture
at GPT-2-small-like size (12 layers, d_model 768, rotary, RMSNorm, SwiGLU), SentencePiece unigram 32k from the
training split. lm1b has no validation split: evaluation reads the first 10k test sentences.

Reference (word-level test perplexity; the per-subword perplexity reported here is lower and converts by the
token/word ratio): 23.02 for the 1.0B-parameter Transformer with adaptive inputs of Baevski & Auli 2019 (23.91
at 0.46B); 30.0 for the LSTM + CNN inputs of Jozefowicz et al. 2016.
"""

from configs import decoder_quickstart


def get_config():
  config = decoder_quickstart.get_config()
  config.model.update(d_model=768, num_heads=12, num_kv_heads=0, head_dim=64, mlp_dim=2048, num_decoder_layers=12,
                      max_length=512, dropout_rate=0.1, dtype='bfloat16')
  config.objective.name = 'causal_lm'
  config.data.update(name='lm1b', train_split='train', eval_split='test[:10000]', input_key='', target_key='text',
                     tokenizer_model_type='unigram', vocab_size=32000, tokenizer_train_examples=1_000_000,
                     max_input_length=1, max_target_length=255, pack=True)
  config.optimizer.update(name='adamw', learning_rate=1e-3, schedule='cosine', warmup_steps=2000, b2=0.95,
                          weight_decay=0.1, end_learning_rate_factor=0.1)
  config.train.update(batch_size=256, num_steps=100_000, log_every=100, eval_every=5000, checkpoint_every=5000)
  config.eval.update(batch_size=128, num_examples=10_000)
  return config
