"""GPT-2 small (124M parameters): pre-norm, GELU (tanh), learned positions, tied embeddings, biases.

For accelerators; the architecture matches the `gpt2` checkpoint (it imports exactly).
"""

from configs import decoder_quickstart


def get_config():
  config = decoder_quickstart.get_config()
  config.model.update(vocab_size=50257, d_model=768, num_heads=12, head_dim=64, num_kv_heads=0, mlp_dim=3072,
                      num_decoder_layers=12, max_length=1024, norm='layernorm', norm_epsilon=1e-5,
                      activation='gelu_tanh', position_embedding='learned', tie_embeddings=True, scale_logits=False,
                      use_bias=True, dropout_rate=0.1, attention_dropout_rate=0.1, dtype='bfloat16')
  config.objective.name = 'causal_lm'
  config.data.update(max_input_length=512, max_target_length=512, vocab_size=32000, pack=True)
  config.optimizer.update(name='adamw', learning_rate=6e-4, warmup_steps=2000, schedule='cosine', b2=0.95,
                          weight_decay=0.1, end_learning_rate_factor=0.1)
  config.train.update(batch_size=512, num_steps=600_000, log_every=100, eval_every=5000, checkpoint_every=5000)
  return config
