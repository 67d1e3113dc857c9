"""Cross-entropy of the output head without the full (tokens, vocab) logits in memory.

    loss = linear_cross_entropy(x, lm_head.weight, targets, chunk_rows=4096)   # = F.cross_entropy(x @ W.T, targets)

At GPT-2 sizes the logits of one batch (16 x 1024 tokens x 50k vocab) take 1.6 GB in bf16 and
twice that in fp32; they are written, read back for the loss, kept for the backward pass, and their
gradient is written and read again. Here rows are taken `chunk_rows` at a time: each chunk's
logits are formed, turned into its loss and its gradients at once (forward time, in fp32), and
dropped. The backward pass only scales the stored gradients. Same FLOPs, far fewer bytes.
"""

import torch

IGNORE_INDEX = -100


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of x @ weight.T over the targets != -100; gradients made in forward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int):
        dtype = torch.get_autocast_dtype("cuda" if x.is_cuda else "cpu") if torch.is_autocast_enabled(
            x.device.type) else weight.dtype
        xs, w = x.to(dtype), weight.to(dtype)                                         # the matmul precision
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
        loss = torch.zeros((), device=x.device, dtype=torch.float32)
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.size(0), chunk_rows):
                rows = slice(start, start + chunk_rows)
                xc, tc = xs[rows], targets[rows]
                logits = (xc @ w.T).float()                                           # (n, V)
                valid = tc != IGNORE_INDEX
                safe = tc.clamp(min=0)
                lse = torch.logsumexp(logits, dim=-1)                                 # (n,)
                picked = logits.gather(1, safe[:, None])[:, 0]
                loss += ((lse - picked) * valid).sum()
                if grad_x is None and grad_w is None:
                    continue
                # d loss / d logits = (softmax - one_hot) / n_valid on the valid rows, in place of the logits
                grad = logits.sub_(lse[:, None]).exp_()
                grad.scatter_add_(1, safe[:, None], -torch.ones_like(lse)[:, None])
                grad.mul_((valid / n_valid)[:, None])
                g = grad.to(dtype)
                if grad_x is not None:
                    grad_x[rows] = (g @ w).to(x.dtype)
                if grad_w is not None:
                    grad_w += g.T.float() @ xc.float() if dtype == torch.float32 else (g.T @ xc).float()
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_x, grad_w = ctx.saved_tensors
        dx = grad_x * grad_loss.to(grad_x.dtype) if grad_x is not None else None
        dw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return dx, dw, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_rows: int = 4096) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T, targets, ignore_index=-100) for x (N, C), weight (V, C), targets (N,)."""
    if x.dim() != 2 or targets.shape != x.shape[:1]:
        raise ValueError(f"expected x (N, C) and targets (N,), got {tuple(x.shape)} and {tuple(targets.shape)}")
    return LinearCrossEntropy.apply(x, weight, targets, chunk_rows)
