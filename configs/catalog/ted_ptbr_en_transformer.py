"""A small Transformer on TED talks, Portuguese -> English (ted_hrlr_translate/pt_to_en, ~51k pairs).

  python experiments/train.py --config=configs/catalog/ted_ptbr_en_transformer.py --workdir=workdirs/ted_pt_en

No TensorFlow needed. The low-resource recipe of Qi et al. 2018 ("When and why are pre-trained word embeddings
useful for NMT?", which released these splits): 4+4 layers, d_model 256, 4 heads, MLP 1024, dropout 0.3 (as
the TensorFlow Transformer tutorial on this dataset), shared 8k SentencePiece vocabulary from the training
split, label smoothing 0.1, inverse-square-root schedule; greedy BLEU (sacrebleu) on the validation split.

Reference: Qi et al. 2018 report about 30 BLEU on test for pt -> en with their attentional RNN baseline (no
pre-trained embeddings); not a Transformer, so a guide rather than a target.
"""

from configs.catalog import wmt14_ende_transformer_base


def get_config():
  config = wmt14_ende_transformer_base.get_config()
  config.model.update(d_model=256, num_heads=4, mlp_dim=1024, num_encoder_layers=4, num_decoder_layers=4,
                      dropout_rate=0.3)
  config.data.update(name='ted_hrlr_translate/pt_to_en', input_key='pt', target_key='en', vocab_size=8000,
                     tokenizer_train_examples=100_000)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=4000)
  config.train.update(batch_size=128, num_steps=30_000, eval_every=2000, checkpoint_every=2000)
  return config
