"""T5 v1.1 small pre-training on C4 with span corruption (Raffel et al. 2020, the T5 recipe).

  pip install -r requirements-tf.txt   # the c4 builder registers only with TensorFlow
  python experiments/train.py --config=configs/catalog/c4_span_corruption_t5.py --workdir=workdirs/c4_t5 \
      --config.data.data_dir=gs://BUCKET/tfds --config.data.download=False

configs/t5_small.py (gated-GELU, RMSNorm, relative positions) with the T5 objective: 15% of each document's
tokens, in spans of mean length 3, become sentinels; the decoder writes the spans. Each document is cut to
512 tokens before corruption (T5 cuts 568, which corrupt to ~512), targets 114, packed; Adafactor, rsqrt schedule with 10k
warmup, batch 128 (T5 used 2048 x 512 = 1M tokens per batch for 524k steps; raise train.batch_size on a pod).
The SentencePiece vocabulary (32k unigram) is trained from C4 train; data.vocab_file=<spiece.model> uses T5's.

Reference: T5 paper, Table 14 (T5-Small, 1T tokens): GLUE 77.4 after fine-tuning; the pre-training
loss itself is not published. Here: per-token loss / accuracy of the span targets on validation.
"""

from configs import t5_small


def get_config():
  config = t5_small.get_config()
  config.objective.update(name='span_corruption', noise_density=0.15, mean_noise_span_length=3.0)
  config.data.update(name='c4/en', train_split='train', eval_split='validation[:10000]', input_key='text',
                     target_key='', tokenizer_model_type='unigram', vocab_size=32000,
                     tokenizer_train_examples=500_000, max_input_length=512, max_target_length=114, pack=True)
  config.eval.update(batch_size=64, num_examples=10_000)
  return config
