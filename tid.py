"""Token-importance dropout (TID): score every input token, zero the inputs of the ones to drop.

Per training batch: a score per token (from a scoring pass on the same batch), a drop ratio from
the schedule, and for each sequence the round(ratio * droppable) tokens at one end of the ranking
become `drop_mask`, which the model applies to its first block's input. The loss still covers
every target; evaluation and generation never drop.

Scores (`tid.method`), all (B, T), higher = more of the named quantity; each asks the model only
through the interface every family keeps (models/gpt.py: embed_tokens, forward_from_embeddings,
attention_probs):
    random          uniform noise (no scoring pass)
    entropy         entropy of a softmax of the model (no-grad pass); `tid.entropy_of` says which:
                      next     H(softmax(logits[t])): the prediction made AT t, of token t+1 (the
                               TID study's definition, the default)
                      current  H(softmax(logits[t-1])): the prediction OF token t, made at t-1
    gradient_norm   ||d loss / d embedding_t||_2 (forward + backward to the embeddings only)
    attention_mass  attention token t receives in layer `tid.layer`, summed over heads and queries
                    (the pass stops at that layer)

Which end is dropped (`tid.drop`). The TID study keeps the most important tokens and drops the
least important, with importance = gradient norm (high), attention received (high) and minus the
entropy (a confident prediction is important). `tid.drop=auto` (the default) does exactly that:
    entropy -> high (the least confident), gradient_norm -> low, attention_mass -> low,
    random -> high (either end of uniform noise is the same rule).
`high` / `low` are explicit overrides: entropy + low is EntroDrop (2025), which drops the most
confident tokens. The resolved direction is logged (`resolved_drop`).

What is zeroed (`tid.keep_position`). The study's model has rotary positions, so a dropped token's
whole input vector is zero. On presets with added positions (learned, sinusoidal) the default
`keep_position=false` does the same: the input vector (token + position) is zeroed. `true` zeroes
the token embedding only, so the dropped position keeps its position embedding. On rotary presets
both are identical (positions enter through the attention, not the input).

Never dropped: position 0 (BOS or a cut-off document start), the first `tid.protect_first`
positions, and bos/pad tokens.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from run_stats import Stat
from runtime import Stopwatch

METHODS = ("none", "random", "entropy", "gradient_norm", "attention_mass")
SCHEDULES = ("constant", "linear_decay", "linear_warmup", "cosine", "sigmoid")
DROPS = ("auto", "high", "low")
# tid.drop=auto: the end of each method's ranking that holds the least important tokens (TID study)
AUTO_DROP = {"none": "high", "random": "high", "entropy": "high", "gradient_norm": "low", "attention_mass": "low"}


@dataclass
class TIDConfig:
    method: str = "none"            # none | random | entropy | gradient_norm | attention_mass
    drop: str = "auto"              # auto (least important by the method's definition) | high | low
    entropy_of: str = "next"        # entropy: next (prediction made at t, the study's) | current (of t)
    keep_position: bool = False     # False: zero the whole input vector (the study); True: token embedding only
    schedule: str = "constant"      # constant | linear_decay | linear_warmup | cosine | sigmoid
    p_start: float = 0.1            # drop ratio at step 0
    p_end: float = 0.1              # drop ratio at train.max_steps (unused by constant)
    layer: int = 0                  # attention_mass: the block whose attention is read (-1 = last)
    protect_first: int = 1          # positions 0..k-1 of every sequence are never dropped

    def __post_init__(self):
        for key, allowed in (("method", METHODS), ("drop", DROPS), ("entropy_of", ("next", "current")),
                             ("schedule", SCHEDULES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"tid.{key}: {getattr(self, key)!r} is not one of {list(allowed)}")
        for key in ("p_start", "p_end"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"tid.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.schedule == "linear_decay" and self.p_end > self.p_start:
            raise ValueError("tid.schedule=linear_decay needs p_end <= p_start (or use linear_warmup)")
        if self.schedule == "linear_warmup" and self.p_end < self.p_start:
            raise ValueError("tid.schedule=linear_warmup needs p_end >= p_start (or use linear_decay)")
        if self.protect_first < 1:
            raise ValueError("tid.protect_first must be >= 1 (position 0 has no context to score it)")


    @property
    def resolved_drop(self) -> str:
        """`high` or `low`: the end of the ranking that is dropped (auto resolved per method)."""
        return AUTO_DROP[self.method] if self.drop == "auto" else self.drop


def drop_ratio(cfg: TIDConfig, step: int, max_steps: int) -> float:
    """The schedule's drop ratio after `step` of `max_steps` optimizer steps (p_start at 0, p_end at the end;
    constant: p_start throughout, p_end unused)."""
    x = min(max(step / max(max_steps, 1), 0.0), 1.0)
    if cfg.schedule == "constant":
        w = 0.0
    elif cfg.schedule in ("linear_decay", "linear_warmup"):
        w = x
    elif cfg.schedule == "cosine":
        w = 0.5 * (1.0 - math.cos(math.pi * x))
    else:  # sigmoid curriculum, rescaled so that it starts exactly at p_start and ends at p_end
        lo, hi = _sigmoid(-5.0), _sigmoid(5.0)
        w = (_sigmoid(10.0 * (x - 0.5)) - lo) / (hi - lo)
    return cfg.p_start + w * (cfg.p_end - cfg.p_start)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# ----------------------------------------------------------------------------- scores

def random_scores(tokens: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) noise (B, T): a random ranking (torch's global generator)."""
    return torch.rand(tokens.shape, device=tokens.device)


@torch.no_grad()
def entropy_scores(model, tokens: torch.Tensor, of: str = "next") -> torch.Tensor:
    """Entropy of the model's predictive distribution per position.

    of="next": score[:, t] = entropy of the prediction made at t (of token t+1), the TID study's.
    of="current": score[:, t] = entropy of the prediction of token t (made at t-1); score[:, 0] = 0.
    """
    logits = model(tokens).logits
    logp = F.log_softmax(logits.float(), dim=-1)                                   # (B, T, V)
    entropy = -(logp.exp() * logp).sum(-1)                                         # (B, T)
    return entropy if of == "next" else F.pad(entropy[:, :-1], (1, 0))            # current: shift by one


def gradient_norm_scores(model, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """score[:, t] = L2 norm of d loss / d (token embedding at t).

    Only the embeddings' gradient is asked for: with the parameters frozen (as `scores` does) the
    backward pass skips every weight gradient.
    """
    embeddings = model.embed_tokens(tokens).detach().requires_grad_()              # (B, T, C)
    with torch.enable_grad():
        loss = model.forward_from_embeddings(embeddings, targets).objective  # as training minimises it
        (grad,) = torch.autograd.grad(loss, embeddings)                            # (B, T, C)
    return grad.float().norm(dim=-1)


@torch.no_grad()
def attention_mass_scores(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """score[:, t] = attention that token t receives in block `layer`, summed over heads and queries.

    The pass stops at that block (`attention_probs` computes the weights SDPA does not return).
    """
    weights = model.attention_probs(tokens, layer)                                 # (B, H, Tq, Tk)
    return weights.float().sum(dim=(1, 2))                                         # (B, Tk)


@contextlib.contextmanager
def frozen(model):
    """Parameters without gradients for the duration (restored after)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ----------------------------------------------------------------------------- selection

def droppable_mask(tokens: torch.Tensor, protect_first: int, special_ids: tuple) -> torch.Tensor:
    """(B, T) bool: positions that may be dropped (not among the first k, not bos/pad)."""
    ok = torch.ones_like(tokens, dtype=torch.bool)
    ok[:, :protect_first] = False
    for i in special_ids:
        if i is not None:
            ok &= tokens != i
    return ok


def select_drops(scores: torch.Tensor, droppable: torch.Tensor, ratio: float, drop_high: bool) -> torch.Tensor:
    """(B, T) bool: per row, the round(ratio * droppable) droppable positions (round half to even) with
    the highest (drop_high) or lowest scores; never a position outside `droppable`."""
    n_drop = torch.round(ratio * droppable.sum(dim=1).float()).long()             # (B,)
    key = scores.float() if drop_high else -scores.float()
    key = key.masked_fill(~droppable, float("-inf"))                               # never chosen
    order = key.argsort(dim=1, descending=True)                                    # best candidates first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.size(1), device=order.device).expand_as(order))
    return (rank < n_drop[:, None]) & droppable


class TokenImportanceDropout:
    """Builds the drop mask for a training batch and reports what it did.

    compile=True compiles each scoring pass (with its softmax or norm) as one graph.
    """

    def __init__(self, cfg: TIDConfig, max_steps: int, special_ids: tuple, n_layers: int, compile: bool = False):
        self.cfg, self.max_steps, self.special_ids = cfg, max_steps, special_ids
        if cfg.method == "attention_mass" and not -n_layers <= cfg.layer < n_layers:
            raise ValueError(f"tid.layer={cfg.layer} is outside the model's {n_layers} layers")
        self.score_fns = {"entropy": entropy_scores, "gradient_norm": gradient_norm_scores,
                          "attention_mass": attention_mass_scores}
        if compile:
            self.score_fns = {name: torch.compile(fn) for name, fn in self.score_fns.items()}

    @property
    def enabled(self) -> bool:
        return self.cfg.method != "none"

    def logged_extras(self, step_seconds: float, stats: dict) -> dict:
        """What the logs add to a step's TID statistics: the step's time without scoring (the
        overhead of TID, readable off the logs), the method and the resolved direction."""
        return {"tid_step_time_without_scoring": step_seconds - stats["tid_score_time"],
                "tid_method": self.cfg.method, "tid_drop": self.cfg.resolved_drop}

    def describe(self) -> str:
        """The settings in words, for the run log."""
        cfg = self.cfg
        return (f"{cfg.method}, drop {cfg.resolved_drop}" + (" (auto)" if cfg.drop == "auto" else "")
                + (f", entropy of the {cfg.entropy_of} token's prediction" if cfg.method == "entropy" else "")
                + f", {'token embedding only' if cfg.keep_position else 'whole input'} zeroed, "
                + f"{cfg.schedule} {cfg.p_start:g}" + (f" -> {cfg.p_end:g}" if cfg.schedule != "constant" else ""))

    def scores(self, model, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scores (B, T) from a pass in eval mode: dropout noise would blur the ranking."""
        method = self.cfg.method
        if method == "random":
            return random_scores(tokens)
        was_training = model.training
        model.eval()
        try:
            score = self.score_fns[method]
            if method == "entropy":
                return score(model, tokens, self.cfg.entropy_of)
            if method == "gradient_norm":
                with frozen(model):
                    return score(model, tokens, targets)
            return score(model, tokens, self.cfg.layer)
        finally:
            model.train(was_training)

    def mask(self, model, tokens: torch.Tensor, targets: torch.Tensor, step: int):
        """(drop_mask (B, T) bool, stats: the target and realised drop ratios and the seconds spent
        here, `tid_score_time`). `model` is the plain model (no DDP/compile wrapper)."""
        with Stopwatch(tokens.device) as clock:
            ratio = drop_ratio(self.cfg, step, self.max_steps)
            scores = self.scores(model, tokens, targets)
            droppable = droppable_mask(tokens, self.cfg.protect_first, self.special_ids)
            drop = select_drops(scores, droppable, ratio, self.cfg.resolved_drop == "high")
        stats = {"tid_target_ratio": Stat.mean(ratio), "tid_drop_ratio": Stat.mean(drop.sum() / droppable.sum().clamp(min=1)),
                 "tid_score_time": Stat.sum(clock)}
        return drop, stats
