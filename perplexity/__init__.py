"""Perplexity and bits per byte of a checkpoint: held-out rows, another text file, the packed val stream.

    python perplexity-runners/run_perplexity.py --ckpt checkpoints/<run>/best.pt [--rows 10000] [--stride S]
    python perplexity-runners/run_perplexity.py --ckpt PATH --split val --packed   # = the trainer's val loss
    python perplexity-runners/run_text_perplexity.py --ckpt PATH --text-file other.txt [--delimiter D]
    python perplexity-runners/run_perplexity.py --compare RUN1 RUN2 ...

Definitions (DESIGN section 6), each made once in this package:
- A row is encoded as training documents are, [bos] + ids + [eos] (tokenizers without BOS, such
  as GPT-2's, start with EOS, the token that precedes a document in the packed stream). BOS is
  context, never a target; every other token is, EOS included: ending the document is part of
  modelling it, and the trainer's loss scores EOS too. A row of L tokens has L - 1 targets.
- Rows longer than the context are scored with a sliding window (`window_plan`): windows of up to
  `context` inputs start every `stride` tokens; each scores only the targets that no earlier window
  scored, so every target is scored exactly once, with as much left context as its window gives.
- Per-row perplexity = exp(row NLL / row targets); the runner saves the list (pickle, in row
  order) and prints its mean (the seed's aggregate) and median, the corpus perplexity
  exp(total NLL / total targets), bits per token = corpus loss / ln 2, and bits per byte = total NLL / ln 2 / UTF-8 bytes of the rows'
  text (bytes of the text only: BOS/EOS have none, but EOS's NLL counts, as in the trainer).
- `--packed` scores a split's token stream with `Trainer.evaluate`'s own function (`packed_nll`): blocks of
  context + 1 tokens at stride = context, total NLL / target tokens, the training model class in
  eval mode, batches of train.batch_size; bits per byte = loss / ln 2 / (bytes / token of the split).

Outputs: logs/perplexity-losses/<name>.pkl (list of per-row perplexities) and <name>.json (summary).

Modules: scoring (per-row NLL with sliding windows, batched; the packed stream), runner (loading a
checkpoint for scoring, the two command lines), results (saving, reading, comparing and printing results).
"""
