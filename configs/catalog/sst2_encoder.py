"""Sentiment classification on SST-2 (glue/sst2) with a BERT-base-shaped encoder: accuracy, macro-F1.

  pip install -r requirements-tf.txt   # the glue builder registers only with TensorFlow
  python experiments/train.py --config=configs/catalog/sst2_encoder.py --workdir=workdirs/sst2

Encoder-only, first-token pooling (BERT's [CLS]) -> tanh pooler -> 2 classes; the label ClassLabel's names are
data.classes. Evaluated on the validation split (the test labels are hidden). From scratch by default; to
fine-tune a pre-trained encoder (e.g. configs/bert_base.py trained with MLM, or a converted checkpoint), add
  --config.init.workdir=workdirs/bert_base
which restores token_embed/ and encoder/ and uses that workdir's tokenizer (3 epochs, lr 2e-5, batch 32: BERT).

Reference: BERT-base 93.5 accuracy on the SST-2 test set (Devlin et al. 2019, Table 1), fine-tuned from
pre-training; from scratch, expect ~80-83 (the GLUE paper's BiLSTM baselines: 85-90 with ELMo/CoVe).
"""

from configs import bert_base


def get_config():
  config = bert_base.get_config()
  config.model.update(head='classifier', num_classes=2, pooling='first', max_length=128)
  config.objective.name = 'classify'
  config.data.update(name='glue/sst2', train_split='train', eval_split='validation', input_key='sentence',
                     target_key='label', classes=('negative', 'positive'), tokenizer='sentencepiece',
                     tokenizer_model_type='unigram', vocab_size=16000, max_input_length=128, max_target_length=8,
                     pack=False)
  config.init.include = ('token_embed/.*', 'encoder/.*')
  config.optimizer.update(learning_rate=2e-5, warmup_steps=600, schedule='cosine', end_learning_rate_factor=0.0)
  config.train.update(batch_size=32, num_steps=6300, log_every=100, eval_every=1000, checkpoint_every=1000)
  config.eval.update(batch_size=128, num_examples=0)
  return config
