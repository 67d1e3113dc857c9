"""Weight-only int8 quantisation for inference: per-output-channel scales, dequantised in the matmul.

    quantize_int8(model)      # every nn.Linear but the MoE router becomes an Int8Linear, in place

Weights take a quarter of their fp32 memory (half of bf16), which is what bounds one-token decoding;
activations stay in the model's dtype.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Int8Linear(nn.Module):
    """y = x @ (w_int8 * scale)^T + b, with scale = max|w| / 127 per output channel."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0                          # (out,)
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # scaling the output (not the weight) keeps the matmul on the int8 tensor cast once
        y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y + self.bias.to(x.dtype) if self.bias is not None else y


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = ("router",)) -> nn.Module:
    """Replace the nn.Linear layers of `model` (not those named in `skip`) by Int8Linear, in place.

    A head tied to the token embedding is quantised as its own copy; the embedding stays exact.
    """
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child_name not in skip:
                setattr(module, child_name, Int8Linear(child))
    return model
