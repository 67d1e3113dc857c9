"""A look inside a checkpoint: logit lens, attention maps per layer and head, per-token loss over text.

    from visualizations import model_views
    ckpt = "checkpoints/baseline-quickstart/best.pt"
    gen = model_views.load(ckpt)
    model_views.logit_lens_figure(*model_views.logit_lens(gen, "Once upon a time"))
    model_views.attention_figures(gen, "Tom saw a dog")            # one Figure per layer, a panel per head
    model_views.token_loss_figure(*model_views.token_losses(gen, model_views.heldout_rows(ckpt)[0]))

The notebook `visualizations/inspect.ipynb` calls these. Every function works on the checkpoint's
inference model (fp32, CPU by default) and crops text to the model's context.
"""

import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import pyplot as plt

from generators.generation import Generator
from visualizations.attention import attention_maps, heatmap_figure, token_labels


def load(ckpt: str | Path, device: str = "cpu") -> Generator:
    """The checkpoint's inference model and tokenizer, fp32."""
    return Generator.build(str(ckpt), max_batch_size=1, device=device, dtype="fp32")


def _ids(gen: Generator, text: str) -> list[int]:
    return gen.prompt_tokens(text)[: gen.model.cfg.context]


@torch.inference_mode()
def logit_lens(gen: Generator, prompt: str) -> tuple[list[str], list[list[str]], np.ndarray]:
    """The model's next-token guess read off the residual stream after the embedding and each block.

    Every stage's stream goes through the final norm and the output head, as after the last block.
    Returns:
        (position labels (T,), top token text [stage][position], its probability (L + 1, T)); stage 0
        is the embedding, stage L the last block, whose guesses are the model's own.
    """
    model = gen.model
    ids = _ids(gen, prompt)
    x, rope = model.embed(torch.tensor([ids], device=gen.device))
    streams = [x]
    for block in model.blocks:
        x = block(x, rope)[0]
        streams.append(x)
    probs = torch.stack([model.head(s)[0].float().softmax(-1) for s in streams])    # (L + 1, T, V)
    top_p, top_id = probs.max(dim=-1)                                                # (L + 1, T)
    tops = [token_labels(gen.tokenizer, row.tolist()) for row in top_id]
    return token_labels(gen.tokenizer, ids), tops, top_p.cpu().numpy()


def logit_lens_figure(labels: list[str], tops: list[list[str]], probs: np.ndarray):
    """Stages (rows) x positions (columns): the top next token, coloured by its probability."""
    L1, T = probs.shape
    fig, ax = plt.subplots(figsize=(1.0 * T + 2, 0.5 * L1 + 1.5))
    im = ax.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for s in range(L1):
        for t in range(T):
            ax.text(t, s, tops[s][t].strip()[:8] or repr(tops[s][t]), ha="center", va="center", fontsize=7,
                    color="white" if probs[s, t] > 0.6 else "black")
    ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(L1), ["embedding"] + [f"block {i}" for i in range(L1 - 1)], fontsize=8)
    ax.set_xlabel("input position (prediction of the next token)")
    ax.set_title("logit lens: top next token per stage and its probability")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def attention_figures(gen: Generator, prompt: str) -> list:
    """One Figure per layer with a heatmap per head (visualizations.attention's heatmaps)."""
    ids = _ids(gen, prompt)
    maps = attention_maps(gen.model, torch.tensor([ids], device=gen.device))
    labels = token_labels(gen.tokenizer, ids)
    return [heatmap_figure(att, labels, layer) for layer, att in enumerate(maps)]


@torch.inference_mode()
def token_losses(gen: Generator, text: str) -> tuple[list[str], np.ndarray]:
    """(token texts, NLL in nats of each token given the ones before it); the first (bos) is not scored."""
    ids = _ids(gen, text)
    logits = gen.model.forward_full(torch.tensor([ids], device=gen.device))[0, :-1]  # (T-1, V)
    nll = F.cross_entropy(logits.float(), torch.tensor(ids[1:], device=gen.device), reduction="none")
    return token_labels(gen.tokenizer, ids[1:]), nll.cpu().numpy()


def token_loss_figure(labels: list[str], nll: np.ndarray, width: int = 90, vmax: float | None = None):
    """The text, each token on a background coloured by its loss (white: predicted, red: surprising)."""
    vmax = vmax or float(np.percentile(nll, 95)) or 1.0
    cmap, norm = plt.get_cmap("Reds"), plt.Normalize(0.0, vmax)
    rows, row, used = [], [], 0          # wrap into lines of at most `width` characters
    for label, loss in zip(labels, nll):
        text = label.replace("\n", "⏎")
        if used + len(text) > width and row:
            rows.append(row)
            row, used = [], 0
        row.append((text, loss, used))
        used += len(text)
    rows.append(row)
    fig, ax = plt.subplots(figsize=(0.1 * width + 1.5, 0.3 * len(rows) + 1.0))
    for r, line in enumerate(rows):
        for text, loss, col in line:
            ax.text(col, -r, text, family="monospace", fontsize=9, va="center", ha="left",
                    bbox=dict(boxstyle="square,pad=0.05", fc=cmap(norm(loss)), ec="none"))
    ax.set_xlim(0, width)
    ax.set_ylim(-len(rows), 1)
    ax.axis("off")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.02, label="token NLL (nats)")
    ax.set_title(textwrap.shorten(f"per-token loss, mean {nll.mean():.2f} nats over {len(nll)} tokens", 100))
    return fig


def heldout_rows(ckpt: str | Path, n: int = 1) -> list[str]:
    """The first n held-out rows of the data the checkpoint was trained on (its prepared cache)."""
    from experiment_config import from_dict, prepare_run_data
    from models.checkpoint import load_checkpoint

    cfg = from_dict(load_checkpoint(ckpt)["config"])
    rows = prepare_run_data(cfg, log=lambda *a: None).rows("heldout")
    return rows[:n]


__all__ = ["attention_figures", "heldout_rows", "load", "logit_lens", "logit_lens_figure", "token_loss_figure",
           "token_losses"]
