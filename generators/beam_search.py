"""Beam search on the KV cache: the beams share one prefill; each step reorders the cache rows.

    hypotheses = beam_search(generator, generator.prompt_tokens("Once upon a time"), beam_size=5,
                             max_gen_len=40)
    best_tokens, best_score = hypotheses[0].tokens, hypotheses[0].score

Score of a hypothesis = (sum of its tokens' log-probs, EOS included when it ended) / len ** alpha,
with len the number of generated tokens and alpha the length penalty (0 = raw sum, 1 = mean).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Hypothesis:
    tokens: list[int]     # generated ids, without the EOS
    logprob: float        # sum of the log-probs of the generated tokens (EOS included if finished)
    score: float          # logprob / length ** length_penalty
    finished: bool        # ended with EOS (else stopped at max_gen_len or the cache end)


def _score(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / max(length, 1) ** length_penalty


@torch.inference_mode()
def beam_search(generator, prompt_tokens: list[int], beam_size: int, max_gen_len: int,
                length_penalty: float = 1.0, early_stopping: bool = True) -> list[Hypothesis]:
    """The `beam_size` best continuations of one prompt, best first.

    Args:
        generator: a generators.Generator built with max_batch_size >= beam_size.
        prompt_tokens: the prompt ids (e.g. generator.prompt_tokens(text)).
        beam_size: beams kept per step (k = 1 is greedy decoding).
        max_gen_len: most new tokens per hypothesis.
        length_penalty: alpha in score = logprob / length ** alpha.
        early_stopping: stop once beam_size hypotheses have finished.
    Returns:
        Up to beam_size Hypotheses sorted by score, highest first.
    """
    model, eos, device = generator.model, generator.tokenizer.eos_id, generator.device
    if beam_size < 1:
        raise ValueError(f"beam size must be >= 1, got {beam_size}")
    if max_gen_len < 1:
        raise ValueError(f"max_gen_len (new tokens) must be >= 1, got {max_gen_len}")
    if beam_size > model.max_batch:
        raise ValueError(f"beam_size {beam_size} > the generator's max_batch_size {model.max_batch}")
    max_gen_len = min(max_gen_len, model.max_seq_len - len(prompt_tokens))
    if max_gen_len < 1:
        raise ValueError(f"prompt of {len(prompt_tokens)} tokens leaves no room in max_seq_len={model.max_seq_len}")
    prompt = torch.tensor([prompt_tokens], dtype=torch.long, device=device)
    logp = F.log_softmax(model(prompt, 0)[:, -1].float(), dim=-1)               # (1, V)
    model.reorder_caches(torch.zeros(beam_size, dtype=torch.long, device=device))  # k copies of the prefix
    beams = torch.empty(1, 0, dtype=torch.long, device=device)                    # (rows, generated)
    beam_logprob = torch.zeros(1, device=device)                                   # (rows,)
    finished: list[Hypothesis] = []
    pos = len(prompt_tokens)
    for step in range(max_gen_len):
        # every alive beam x every token; keep the best 2k so k survive even if some end in EOS
        candidates = (beam_logprob[:, None] + logp).flatten()                      # (n_alive * V,)
        top_lp, top_idx = candidates.topk(min(2 * beam_size, candidates.numel()))
        parent, token = top_idx // logp.size(1), top_idx % logp.size(1)
        keep_parent, keep_token, keep_lp = [], [], []
        for lp, b, t in zip(top_lp.tolist(), parent.tolist(), token.tolist()):
            if lp == float("-inf"):  # a padding row's candidate (see below)
                break
            if t == eos:
                gen = beams[b].tolist()
                finished.append(Hypothesis(gen, lp, _score(lp, len(gen) + 1, length_penalty), True))
            else:
                keep_parent.append(b), keep_token.append(t), keep_lp.append(lp)
            if len(keep_parent) == beam_size:
                break
        if early_stopping and len(finished) >= beam_size or not keep_parent or step == max_gen_len - 1:
            # the step's surviving beams end here too, unless they lost to finished ones
            if not (early_stopping and len(finished) >= beam_size):
                for b, t, lp in zip(keep_parent, keep_token, keep_lp):
                    gen = beams[b].tolist() + [t]
                    finished.append(Hypothesis(gen, lp, _score(lp, len(gen), length_penalty), False))
            break
        # always beam_size rows, so a compiled decode step sees one shape: fewer survivors are padded
        # with copies of the first, whose log-prob of -inf keeps their candidates out of the ranking
        pad = beam_size - len(keep_parent)
        index = torch.tensor(keep_parent + keep_parent[:1] * pad, device=device)
        next_tokens = torch.tensor(keep_token + keep_token[:1] * pad, device=device)
        beams = torch.cat([beams[index], next_tokens[:, None]], dim=1)
        beam_logprob = torch.tensor(keep_lp + [float("-inf")] * pad, device=device)
        model.reorder_caches(index)  # row i of every cache becomes its parent's prefix
        logits = generator.forward(beams[:, -1:], pos)                              # (beam_size, 1, V)
        logp = F.log_softmax(logits[:, -1].float(), dim=-1)
        pos += 1
    return sorted(finished, key=lambda h: h.score, reverse=True)[:beam_size]
