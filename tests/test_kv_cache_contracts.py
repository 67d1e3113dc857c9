"""KVCache and the cached models: what a cache stores (in its own dtype), which positions an update
writes and shows, the last slot, reordering fewer rows than the cache holds; the models' caches in
the asked dtype, and the default start_pos. References: the written tensors themselves, a mask and a
cache filled by hand-written loops, the training model's full forward."""

import pytest
import torch

import models
import modelskv
from models import ModelConfig
from modelskv import KVCache

B, H, S, DK, DV = 3, 2, 7, 4, 5


def kv(T: int, dtype=torch.float64, seed=0):
    """Random keys and values (B, H, T, d) with distinct values in every slot."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, DK, generator=g, dtype=dtype), torch.randn(B, H, T, DV, generator=g, dtype=dtype)


def test_a_float64_cache_stores_float64_keys_and_values_exactly():
    """The cache's dtype is the one asked: float64 values come back bit for bit (a float32 buffer
    would round them), from the eager (int position) path."""
    cache = KVCache(B, H, S, DK, DV, torch.float64)
    k, v = kv(4)
    assert k.float().double().ne(k).any()                            # so a float32 buffer would show
    keys, values, mask = cache.update(0, k, v)
    assert mask is None
    assert keys.dtype == values.dtype == torch.float64
    assert torch.equal(keys, k) and torch.equal(values, v)


def test_the_static_path_casts_the_new_keys_to_the_cache_dtype():
    """A 0-d tensor position (the compiled step) writes float32 keys into a float64 cache as their
    float64 values (the same numbers the eager path stores)."""
    static, eager = KVCache(B, H, S, DK, DV, torch.float64), KVCache(B, H, S, DK, DV, torch.float64)
    k, v = kv(2, dtype=torch.float32)
    keys, values, _ = static.update(torch.tensor(3), k, v)
    eager.update(3, k, v)
    assert keys.dtype == values.dtype == torch.float64
    assert torch.equal(keys[:, :, 3:5], k.double()) and torch.equal(values[:, :, 3:5], v.double())
    assert torch.equal(keys, eager.k[:B]) and torch.equal(values, eager.v[:B])


def reference_mask(start: int, T: int) -> torch.Tensor:
    """(T, S): query t (at position start + t) may attend to slot s iff s <= start + t."""
    return torch.tensor([[s <= start + t for s in range(S)] for t in range(T)])


@pytest.mark.parametrize("start,T", [(0, 3), (2, 3), (4, 3), (6, 1)])
def test_a_multi_token_static_update_writes_and_shows_the_same_positions_as_the_eager_one(start, T):
    """Both paths write k, v at start..start+T-1 (in order) over the same earlier prefix; the static
    path returns the whole buffer with the causal mask of those positions."""
    static, eager = KVCache(B, H, S, DK, DV, torch.float64), KVCache(B, H, S, DK, DV, torch.float64)
    if start:
        k0, v0 = kv(start, seed=1)
        static.update(torch.tensor(0), k0, v0)
        eager.update(0, k0, v0)
    k, v = kv(T, seed=2)
    keys, values, mask = static.update(torch.tensor(start), k, v)
    eager_keys, eager_values, _ = eager.update(start, k, v)
    assert torch.equal(keys[:, :, :start + T], eager_keys) and torch.equal(values[:, :, :start + T], eager_values)
    for t in range(T):                                               # position start + t holds token t
        assert torch.equal(keys[:, :, start + t], k[:, :, t]) and torch.equal(values[:, :, start + t], v[:, :, t])
    assert torch.equal(mask, reference_mask(start, T))


def test_the_cache_takes_its_last_slot_and_refuses_the_next():
    """A cache of S positions holds S: the prompt may fill it exactly, a step at position S - 1 is
    allowed; one position more is a ValueError."""
    cache = KVCache(B, H, S, DK, DV, torch.float64)
    k, v = kv(S)
    keys, _, _ = cache.update(0, k, v)                               # fills every slot
    assert torch.equal(keys, k)
    cache = KVCache(B, H, S, DK, DV, torch.float64)
    cache.update(0, *kv(S - 1))
    k1, v1 = kv(1, seed=5)
    keys, values, _ = cache.update(S - 1, k1, v1)                   # the last slot
    assert keys.size(2) == S and torch.equal(keys[:, :, -1], k1[:, :, 0]) and torch.equal(values[:, :, -1], v1[:, :, 0])
    with pytest.raises(ValueError, match="holds 7 positions"):
        cache.update(S, k1, v1)


def test_reordering_fewer_rows_than_the_cache_holds():
    """reorder(index) with len(index) < max_batch: row i becomes old row index[i] for i < len(index);
    the other rows stay as they were."""
    cache = KVCache(4, H, S, DK, DV, torch.float64)
    g = torch.Generator().manual_seed(3)
    cache.k.copy_(torch.randn(cache.k.shape, generator=g, dtype=torch.float64))
    cache.v.copy_(torch.randn(cache.v.shape, generator=g, dtype=torch.float64))
    old_k, old_v = cache.k.clone(), cache.v.clone()
    index = [2, 0]
    cache.reorder(torch.tensor(index))
    for i, j in enumerate(index):
        assert torch.equal(cache.k[i], old_k[j]) and torch.equal(cache.v[i], old_v[j])
    assert torch.equal(cache.k[2:], old_k[2:]) and torch.equal(cache.v[2:], old_v[2:])


# ----------------------------------------------------------------------------- the cached models

def tiny_pair(preset="baseline"):
    cfg = ModelConfig.from_preset(preset, vocab_size=31, context=16, d_model=16, n_layers=2, n_heads=2, d_ff=32)
    torch.manual_seed(0)
    train = models.build(cfg).eval()
    with torch.no_grad():
        for p in train.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return cfg, train


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_build_allocates_the_caches_in_the_asked_dtype(dtype):
    """modelskv.build(cfg, dtype=...) makes every layer's cache in that dtype at once (load_model
    relies on it to allocate the caches once, in the final dtype, before the weights are cast)."""
    cfg, _ = tiny_pair()
    model = modelskv.build(cfg, max_batch=2, dtype=dtype)
    for block in model.blocks:
        assert block.kv_cache.k.dtype == block.kv_cache.v.dtype == dtype
    assert next(model.parameters()).dtype == torch.float32                # the weights are not cast by build


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_setup_caches_without_a_dtype_follows_the_weights(dtype):
    """A model cast to `dtype` and given new caches without a dtype decodes incrementally as its full
    forward does (caches of another dtype would not even run through attention)."""
    cfg, train = tiny_pair()
    model = modelskv.build(cfg, max_batch=2)
    model.load_state_dict(train.state_dict())
    model.to(dtype)
    model.setup_caches(2, 12)
    x = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.forward_full(x).double()
        steps = torch.cat([model(x[:, :5], 0)] + [model(x[:, t:t + 1], t) for t in range(5, 12)], dim=1).double()
    tol = 1e-9 if dtype == torch.float64 else 0.1
    torch.testing.assert_close(steps, full, atol=tol, rtol=0)


def test_a_forward_without_start_pos_is_the_prefill_at_position_0():
    """model(tokens) with no start_pos places the tokens at 0..T-1: the training model's logits."""
    cfg, train = tiny_pair("llama")                                    # rotary positions: an offset shows
    model = modelskv.build(cfg, max_batch=2)
    model.load_state_dict(train.state_dict())
    x = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), train(x)[0], atol=2e-5, rtol=0)


def test_an_attention_layer_given_a_cache_and_no_start_pos_writes_at_position_0():
    """CausalSelfAttention(x, cache=c) stores x's keys at 0..T-1, as start_pos=0 does."""
    from models.blocks import CausalSelfAttention

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("baseline", vocab_size=11, context=8, d_model=8, n_layers=1, n_heads=2, d_ff=16)
    attn = CausalSelfAttention(cfg).double()
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    default, at_0 = (KVCache(1, 2, 8, 4, 4, torch.float64) for _ in range(2))
    torch.testing.assert_close(attn(x, cache=default), attn(x, cache=at_0, start_pos=0))
    assert torch.equal(default.k, at_0.k) and default.k[:, :, :3].abs().sum() > 0
