"""Attention heatmaps of a prompt: one PNG per layer, one panel per head, tokens on both axes.

    python -m visualizations.attention --ckpt checkpoints/baseline-quickstart/best.pt --prompt "Tom saw a dog" --out attn/
"""

import argparse
from pathlib import Path

import torch

from cli import exit_with
from generators.generation import Generator
from models.checkpoint import CheckpointError


@torch.inference_mode()
def attention_maps(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the attention probabilities (H, T, T) of one sequence (1, T), as the layer computes them."""
    maps, handles = [], []

    def read(module, args):
        q, k, _ = module.project(args[0], args[1])
        maps.append(module.attention_weights(q, k)[0].float().cpu())

    for block in model.blocks:
        handles.append(block.attn.register_forward_pre_hook(read))
    try:
        model.forward_full(tokens)
    finally:
        for h in handles:
            h.remove()
    return maps


def heatmap_figure(att: torch.Tensor, labels: list[str], layer: int):
    """One layer's attention (H, T, T) as a row of heatmaps, one per head, tokens on both axes."""
    import matplotlib.pyplot as plt

    n_heads = att.size(0)
    size = 0.25 * len(labels) + 2
    fig, axes = plt.subplots(1, n_heads, figsize=(size * n_heads, size), squeeze=False)
    for head, ax in enumerate(axes[0]):
        ax.imshow(att[head].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {layer} head {head}")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
    fig.tight_layout()
    return fig


def save_heatmaps(maps: list[torch.Tensor], labels: list[str], out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for layer, att in enumerate(maps):
        fig = heatmap_figure(att, labels, layer)
        path = out_dir / f"attention_layer{layer}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text, for axis labels ("<s>" for a token that decodes to nothing, like bos)."""
    return [tokenizer.decode([i]) or "<s>" for i in ids]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Save attention heatmaps of a prompt, every layer and head.")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", default="attention_maps")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        gen = Generator.build(args.ckpt, max_batch_size=1, device=args.device, dtype="fp32")
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        exit_with(f"error: {e}", 1)
    ids = gen.prompt_tokens(args.prompt)[:gen.model.max_seq_len]
    labels = token_labels(gen.tokenizer, ids)
    maps = attention_maps(gen.model, torch.tensor([ids], device=gen.device))
    paths = save_heatmaps(maps, labels, Path(args.out))
    print(f"wrote {len(paths)} heatmaps ({len(ids)} tokens, {maps[0].size(0)} heads) to {args.out}/")


if __name__ == "__main__":
    main()
