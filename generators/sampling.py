"""Next-token samplers: free functions over a batch of logits, as in Meta's Llama reference."""

import math

import torch


def check_sampling(temperature: float, top_p: float, top_k: int | None, vocab_size: int | None = None,
                   cli: bool = False) -> None:
    """Raise ValueError naming the setting (as a command-line option with `cli`) when a sampling
    parameter is outside its range."""
    name = (lambda n: "--" + n.replace("_", "-")) if cli else (lambda n: n)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{name('temperature')} must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not (0 < top_p <= 1):  # also refuses NaN
        raise ValueError(f"{name('top_p')} must be in (0, 1] (1 = no nucleus filtering), got {top_p}")
    if top_k is not None and not (1 <= top_k <= (vocab_size or top_k)):
        raise ValueError(f"{name('top_k')} must be between 1 and the vocabulary size"
                         f"{f' ({vocab_size})' if vocab_size else ''}, got {top_k}")


def sample_top_p(probs: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample from the smallest set of most likely tokens whose probability mass is >= p (nucleus
    sampling), renormalised: a token is kept when the mass of the tokens ranked above it is < p.

    Args:
        probs: (B, V) probabilities.
        p: the mass to keep, in (0, 1]; the most likely token is always kept.
        generator: optional RNG for reproducible draws.
    Returns:
        (B, 1) sampled token ids.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above
    outside = mass_before >= p
    outside[..., 0] = False  # the most likely token always stays, whatever rounding does
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    choice = torch.multinomial(sorted_probs, num_samples=1, generator=generator)
    return order.gather(-1, choice)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits with everything below the k-th largest set to -inf (ties at the k-th are kept)."""
    check_sampling(1.0, 1.0, k, logits.size(-1))
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def next_token(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token for each row of (B, V) logits: greedy at temperature 0, else top-k/top-p sampling.

    At temperature T > 0 the token is drawn from softmax(logits / T), restricted first to the tokens
    whose logit is >= the k-th largest (top_k; ties kept), then to the smallest most likely set whose
    probability reaches top_p, and renormalised. T < 1 sharpens, T > 1 flattens; T = 0 is argmax.

    Returns:
        (B,) token ids.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    return sample_top_p(torch.softmax(logits, dim=-1), top_p, generator).squeeze(-1)
