"""BERT base (110M parameters): post-norm, GELU, learned positions, masked-LM pre-training.

For accelerators; the architecture matches bert-base-uncased (its checkpoints import; the token-type
embedding is folded into the positions, as inputs here are single segments).
"""

from configs import encoder_quickstart


def get_config():
  config = encoder_quickstart.get_config()
  config.model.update(vocab_size=30522, d_model=768, num_heads=12, head_dim=64, mlp_dim=3072, num_encoder_layers=12,
                      max_length=512, norm_epsilon=1e-12, use_bias=True, scale_logits=False, dropout_rate=0.1,
                      attention_dropout_rate=0.1, pooling='first', dtype='bfloat16')
  config.data.update(max_input_length=512, vocab_size=30000)
  config.optimizer.update(name='adamw', learning_rate=1e-4, warmup_steps=10_000, schedule='cosine',
                          b2=0.999, eps=1e-6, weight_decay=0.01)
  config.train.update(batch_size=256, num_steps=1_000_000, log_every=100, eval_every=10_000, checkpoint_every=10_000)
  return config
