"""A decoder-only LM on C4 (c4/en): GPT-2-small architecture, packed 1024-token rows, perplexity.

  pip install -r requirements-tf.txt   # the c4 builder registers only with TensorFlow
  # c4/en is ~800 GB of Common Crawl to process: prepare it with Apache Beam (tfds build c4/en
  # --data_dir=gs://BUCKET/tfds --file_format=array_record --beam_pipeline_options=...) before training.
  python experiments/train.py --config=configs/catalog/c4_decoder.py --workdir=workdirs/c4_decoder \
      --config.data.data_dir=gs://BUCKET/tfds --config.data.download=False

configs/gpt2_small.py on C4: each document is a causal-LM example (data.input_key=''), packed.
Evaluation: perplexity on the first 10k validation documents.

Reference: none published for this exact setup (perplexity depends on the vocabulary, so numbers from papers
with other tokenizers do not compare).
"""

from configs import gpt2_small


def get_config():
  config = gpt2_small.get_config()
  config.data.update(name='c4/en', train_split='train', eval_split='validation[:10000]', input_key='',
                     target_key='text', tokenizer_model_type='unigram', vocab_size=32000,
                     tokenizer_train_examples=500_000, max_input_length=1, max_target_length=1023, pack=True)
  config.eval.update(batch_size=64, num_examples=10_000)
  return config
