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


def _chunked(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int, grad_x: bool,
             grad_w: bool, per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Mean loss (per_row: each row's loss, 0 on ignored rows) and, when asked, its gradients with
    respect to x and weight, chunk by chunk."""
    autocast = torch.is_autocast_enabled(x.device.type)
    dtype = torch.get_autocast_dtype(x.device.type) if autocast else weight.dtype
    xs, w = x.to(dtype), weight.to(dtype)                                             # the matmul precision
    n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
    loss = torch.zeros((), device=x.device, dtype=torch.float32)
    rows_loss = torch.zeros(x.size(0), device=x.device, dtype=torch.float32) if per_row else None
    dx = torch.empty_like(x) if grad_x else None
    dw = torch.zeros_like(weight, dtype=torch.float32) if grad_w else None
    with torch.autocast(x.device.type, enabled=False):
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            xc, tc = xs[rows], targets[rows]
            logits = (xc @ w.T).float()                                               # (n, V)
            valid = tc != IGNORE_INDEX
            safe = tc.clamp(min=0)
            lse = torch.logsumexp(logits, dim=-1)                                     # (n,)
            nll = (lse - logits.gather(1, safe[:, None])[:, 0]) * valid                 # (n,)
            loss += nll.sum()
            if per_row:
                rows_loss[rows] = nll
            if not (grad_x or grad_w):
                continue
            # d loss / d logits = (softmax - one_hot) / n_valid on the valid rows, in place of the logits
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, safe[:, None], -torch.ones_like(lse)[:, None])
            grad = grad.mul_((valid / n_valid)[:, None]).to(dtype)
            if grad_x:
                dx[rows] = (grad @ w).to(x.dtype)
            if grad_w:
                dw += (grad.T @ xc).float()
    return (rows_loss if per_row else loss / n_valid), dx, dw


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of x @ weight.T over the targets != -100; gradients made in forward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int):
        loss, dx, dw = _chunked(x, weight, targets, chunk_rows, *ctx.needs_input_grad[:2])
        ctx.save_for_backward(dx, dw)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        dx, dw = ctx.saved_tensors
        dx = dx * grad_loss.to(dx.dtype) if dx is not None else None
        dw = (dw * grad_loss).to(ctx.weight_dtype) if dw is not None else None
        return dx, dw, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_rows: int = 4096, reduction: str = "mean") -> torch.Tensor:
    """F.cross_entropy(x @ weight.T, targets, ignore_index=-100, reduction=reduction) for x (N, C),
    weight (V, C), targets (N,); reduction "mean", or "none" (evaluation only: no gradient)."""
    if x.dim() != 2 or targets.shape != x.shape[:1]:
        raise ValueError(f"expected x (N, C) and targets (N,), got {tuple(x.shape)} and {tuple(targets.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"linear_cross_entropy: reduction={reduction!r}; use 'mean' or 'none'")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if reduction == "none":
        if needs_grad:
            raise ValueError("linear_cross_entropy(reduction='none') has no gradient: call it under torch.no_grad()")
        return _chunked(x, weight, targets, chunk_rows, False, False, per_row=True)[0]
    if needs_grad:
        return LinearCrossEntropy.apply(x, weight, targets, chunk_rows)
    return _chunked(x, weight, targets, chunk_rows, False, False)[0]  # evaluation: the loss alone
