"""ModelConfig: the model section of a run config; presets come from the family records (models/family.py)."""

import warnings
from dataclasses import dataclass, fields

from .family import FAMILIES, family_of


@dataclass
class ModelConfig:
    preset: str = "baseline"        # registry name: selects the family builder and its defaults
    vocab_size: int = 8192          # set from the tokenizer by the trainer
    context: int = 128              # maximum sequence length T
    d_model: int = 256              # residual width C
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 1024                # hidden width of the MLP (per gate for SwiGLU)
    norm: str = "layernorm"         # layernorm | rmsnorm
    norm_eps: float = 1e-5
    position: str = "learned"       # learned | rotary | sinusoidal
    rope_theta: float = 10000.0
    mlp: str = "gelu"               # gelu | gelu_tanh (GPT-2's "gelu_new") | swiglu | relu
    bias: bool = True               # biases in linear layers and LayerNorm
    tie_embeddings: bool = True     # share the token embedding with the output head
    dropout: float = 0.0
    word_vectors: str | None = None  # word2vec/fastText text file to initialise token embeddings
    freeze_embeddings: bool = False  # keep the (word-vector) token embeddings fixed; needs an untied head
    # condor: attention variant (models/condor.py says which system each one reproduces)
    attention: str = "standard"     # standard | head_linear_silu | self_score
    # falcon: every MLP a top-k mixture of experts
    n_experts: int = 8
    top_k: int = 2
    expert_d_ff: int | None = None  # width of one expert; None = d_ff // top_k (same active FLOPs)
    capacity_factor: float = 1.25   # training: capacity = ceil(factor * tokens * top_k / n_experts)
    eval_capacity_factor: float | None = None  # in eval mode; None = capacity_factor
    balance_coef: float = 0.01      # weight of the load-balance loss E * sum(importance * load)
    balance_count: str = "after_capacity"  # load counts the kept assignments (TinyStories Falcon) | before_capacity
    z_loss_coef: float = 1e-3       # weight of the router z-loss mean(logsumexp(logits)^2)

    def __post_init__(self):
        if self.attention in RENAMED_ATTENTION:  # checkpoints and configs written before the rename
            new = RENAMED_ATTENTION[self.attention]
            warnings.warn(f"model.attention={self.attention} is now called {new}", DeprecationWarning, stacklevel=3)
            self.attention = new
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.{key}: {getattr(self, key)!r} is not one of {list(allowed)}")
        family = family_of(self.preset)
        for key in ("context", "d_model", "n_layers", "n_heads", "d_ff", "vocab_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        for other in FAMILIES.values():  # a key only another family reads would be silently ignored
            for key in set(other.own_keys) - set(family.own_keys):
                if getattr(self, key) != DEFAULTS[key]:
                    raise ValueError(f"model.{key}={getattr(self, key)} is a {other.name} setting: "
                                     f"use model.preset={other.name}")
        if self.freeze_embeddings and not self.word_vectors:
            raise ValueError("model.freeze_embeddings=true needs model.word_vectors (a word2vec/fastText text file)")
        if self.freeze_embeddings and self.tie_embeddings:
            raise ValueError("model.freeze_embeddings=true with tied embeddings would freeze the output head too: "
                             "set model.tie_embeddings=false")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"model.top_k ({self.top_k}) must be between 1 and model.n_experts ({self.n_experts})")
        if self.capacity_factor <= 0 or (self.eval_capacity_factor is not None and self.eval_capacity_factor <= 0):
            raise ValueError("model.capacity_factor and model.eval_capacity_factor must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.position == "rotary" and self.head_dim % 2:
            raise ValueError(f"model.position=rotary needs an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModelConfig":
        """The preset's defaults (its family record) with `overrides` on top."""
        return cls(**{**family_of(name).defaults, **overrides, "preset": name})


CHOICES = {
    "norm": ("layernorm", "rmsnorm"),
    "position": ("learned", "rotary", "sinusoidal"),
    "mlp": ("gelu", "gelu_tanh", "swiglu", "relu"),
    "attention": ("standard", "head_linear_silu", "self_score"),
    "balance_count": ("after_capacity", "before_capacity"),
}
RENAMED_ATTENTION = {"head_mlp": "head_linear_silu"}  # old name -> current name
DEFAULTS = {f.name: f.default for f in fields(ModelConfig)}
