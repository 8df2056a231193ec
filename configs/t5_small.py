"""T5 v1.1 small (77M parameters): gated-GELU, untied output layer, relative position buckets, RMSNorm.

For accelerators; the architecture matches google/t5-v1_1-small (so its checkpoints import exactly).
Trains on the embedded task as it stands; the corpora of the T5 paper come with the catalog-data configs.
"""

from configs import quickstart


def get_config(size: str = 'small'):
  config = quickstart.get_config()
  dims = {'small': dict(d_model=512, num_heads=6, mlp_dim=1024, layers=8),
          'base': dict(d_model=768, num_heads=12, mlp_dim=2048, layers=12)}[size]
  layers = dims.pop('layers')
  config.model.update(
      family='encoder_decoder', vocab_size=32128, head_dim=64, num_encoder_layers=layers, num_decoder_layers=layers,
      activation='gated-gelu', norm='rmsnorm', position_embedding='relative', tie_embeddings=False,
      scale_logits=False, scale_attention=False, dropout_rate=0.0, dtype='bfloat16', **dims)
  config.data.update(max_input_length=512, max_target_length=128, vocab_size=32000, pack=True)
  config.optimizer.update(name='adafactor', learning_rate=0.01, schedule='rsqrt', warmup_steps=10_000)
  config.train.update(batch_size=128, num_steps=524_288, log_every=100, eval_every=5000, checkpoint_every=5000)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return config
