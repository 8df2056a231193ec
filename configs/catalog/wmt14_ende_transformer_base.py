"""Transformer-base on WMT14 English -> German (Vaswani et al. 2017, "Attention Is All You Need").

  pip install -r requirements-tf.txt   # the wmt14_translate builder registers only with TensorFlow
  python experiments/train.py --config=configs/catalog/wmt14_ende_transformer_base.py \
      --workdir=workdirs/wmt14_ende --config.data.data_dir=gs://BUCKET/tfds

The recipe: 6+6 layers, d_model 512, 8 heads, MLP 2048, ReLU, post-norm, sinusoidal positions, dropout 0.1,
shared source/target vocabulary (SentencePiece BPE, 32k, trained once from the training split and cached next
to the data), shared embeddings, label smoothing 0.1, Adam (0.9, 0.98, 1e-9), lr = d_model^-0.5 *
min(step^-0.5, step * 4000^-1.5) (peak 7e-4 at step 4000, then inverse square root), 100k steps of about
25k source + 25k target tokens (here 256 packed sequences of 128 + 128 tokens, ~32k a side).
Evaluation: greedy-decoded BLEU (sacrebleu, 13a) on the validation split (newstest2013).

Reference: 27.3 BLEU on newstest2014 (base, beam 4, checkpoint averaging; tokenized BLEU, so sacreBLEU is
usually about 1 lower), Vaswani et al. 2017, Table 2. The wmt14_translate validation split is newstest2013
(25.8 for base in Table 3 of the same paper).
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model.update(family='encoder_decoder', d_model=512, num_heads=8, head_dim=0, mlp_dim=2048,
                      num_encoder_layers=6, num_decoder_layers=6, activation='relu', norm='layernorm',
                      norm_position='post', position_embedding='sinusoidal', dropout_rate=0.1,
                      attention_dropout_rate=0.0, tie_embeddings=True, max_length=256, dtype='bfloat16')
  config.data.update(name='wmt14_translate/de-en', train_split='train', eval_split='validation',
                     input_key='en', target_key='de', tokenizer='sentencepiece', tokenizer_model_type='bpe',
                     vocab_size=32000, tokenizer_train_examples=1_000_000, max_input_length=128,
                     max_target_length=128, pack=True)
  config.objective.update(name='seq2seq', label_smoothing=0.1)
  config.optimizer.update(name='adamw', learning_rate=7e-4, schedule='rsqrt', warmup_steps=4000, b1=0.9, b2=0.98,
                          eps=1e-9, weight_decay=0.0, grad_clip_norm=0.0)
  config.train.update(batch_size=256, num_steps=100_000, log_every=100, eval_every=5000, checkpoint_every=5000)
  config.eval.update(batch_size=128, num_examples=0, num_print=3)
  return config
