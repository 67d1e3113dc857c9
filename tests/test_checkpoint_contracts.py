"""models.checkpoint's loading and saving contracts: a crafted checkpoint runs no code and is named as such,
a file that is no checkpoint is named as unreadable, map_location is used, weights load strictly with the
mismatches counted, non-finite weights are never written, and saving makes the folders it needs."""

import os

import pytest
import torch

from experiment_config import RunConfig, to_dict
from models import ModelConfig, build
from models.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint

TINY = dict(vocab_size=31, context=8, d_model=16, n_layers=1, n_heads=2, d_ff=32)


def _state(model=None) -> dict:
    model = model or build(ModelConfig.from_preset("baseline", **TINY))
    cfg = to_dict(RunConfig())
    cfg["model"] = to_dict(model.cfg)
    return {"format": 1, "model": model.state_dict(), "config": cfg, "step": 3,
            "tokenizer": {"kind": "bpe", "vocab_size": TINY["vocab_size"]}}


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker, path = tmp_path / "code_ran", tmp_path / "crafted.pt"
    torch.save({**_state(), "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"holds more than tensors and plain data \(it names posix\.system\); "
                                              r"refusing to load it"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_named_unreadable(tmp_path):
    for name, content in (("noise.pt", os.urandom(64)), ("text.pt", b"not a checkpoint\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"{name} is not a readable checkpoint"):
            load_checkpoint(tmp_path / name)


def test_load_checkpoint_passes_map_location_to_torch(tmp_path):
    """Every stored tensor goes through the given map_location (here a callable that records them)."""
    save_checkpoint(tmp_path / "c.pt", _state())
    seen = []

    def where(storage, location):
        seen.append(location)
        return storage

    ckpt = load_checkpoint(tmp_path / "c.pt", map_location=where)
    assert len(seen) >= len(ckpt["model"]) - 1 and set(seen) == {"cpu"}                # tied head: one storage


def test_weights_of_another_architecture_are_refused_with_the_mismatches_counted(tmp_path):
    """strict loading: one missing and one unexpected key are 2 problems, the first one named."""
    model = build(ModelConfig.from_preset("baseline", **TINY))
    state = _state(model)
    weights = dict(state["model"])
    weights["extra.weight"] = weights.pop("norm_f.weight")
    with pytest.raises(CheckpointError, match=r"do not fit a baseline model \(2 problems; first: Missing key\(s\) "
                                              r"in state_dict: \"norm_f\.weight\""):
        load_weights(model, {**state, "model": weights})


def test_non_finite_weights_are_never_written(tmp_path):
    state = _state()
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    state["model"]["norm_f.weight"][0] = float("nan")
    with pytest.raises(CheckpointError, match=r"1 weight tensors are not finite \(first: norm_f\.weight\)"):
        save_checkpoint(tmp_path / "c.pt", state)
    assert not list(tmp_path.iterdir())


def test_saving_makes_the_folders_and_the_file_loads_back_equal(tmp_path):
    path = tmp_path / "a" / "b" / "last.pt"
    state = _state()
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    assert back["step"] == 3 and all(torch.equal(back["model"][k], v) for k, v in state["model"].items())


def test_the_state_hash_covers_every_nested_value_and_not_the_insertion_order():
    """state_sha256 changes when any value changes, however deep (a tensor in the optimizer's nested state, a
    plain number in the config), and not when the same dicts were built in another order (equal values
    included)."""
    from models.checkpoint import state_sha256

    def state(order=1, moment=0.5, lr=3e-4):
        pairs = [("exp_avg", torch.full((3,), moment)), ("exp_avg_sq", torch.full((3,), 0.5))]
        optimizer = {"state": {0: dict(pairs[::order])}, "lr": lr}
        top = [("model", {"w": torch.ones(2)}), ("optimizer", optimizer), ("step", 3)]
        return dict(top[::order])

    base = state_sha256(state())
    assert state_sha256(state(order=-1)) == base
    assert state_sha256(state(moment=0.25)) != base
    assert state_sha256(state(lr=1e-4)) != base


def test_a_checkpoint_with_only_the_older_weights_hash_is_still_verified(tmp_path):
    """Written before the full hash, a checkpoint carries tensor_sha256 only: it loads when its weights
    match it, and one whose weights changed is refused as corrupted."""
    from models.checkpoint import tensor_sha256

    state = _state()
    state["tensor_sha256"] = tensor_sha256(state)
    path = tmp_path / "old.pt"
    torch.save(state, path)                                            # as the older trainer wrote it
    assert load_checkpoint(path)["step"] == 3
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 1
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="is corrupted: its contents do not match the hash"):
        load_checkpoint(path)


@pytest.mark.parametrize("change, problem", [
    ({"model": [torch.ones(2)]}, "'model' is not a dict of tensors"),
    ({"model": {"w": torch.ones(2), "note": "x"}}, "'model' is not a dict of tensors"),
    ({"tokenizer": None}, "no 'tokenizer' spec"),
    ({"config": "baseline"}, "no model config under 'config'"),
    ({"config": {"model": {"d_model": 16, "colour": "red"}}}, "its model config is not one of ours: "),
])
def test_a_file_missing_what_readers_need_is_named_with_its_problem(tmp_path, change, problem):
    path = tmp_path / "x.pt"
    torch.save({**_state(), **change}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path} is not a checkpoint of this project ({problem}")
    assert str(e.value).endswith("give a checkpoint the trainer or models.convert wrote")


def test_the_older_weights_hash_is_sha256_over_the_documented_bytes_empty_tensors_included():
    """tensor_sha256 against hashlib over what it promises (for each of model, lora_model, by sorted name:
    "part.name:dtype:shape\\0" then the raw bytes, an empty tensor adding none): the hash stored in files of
    older versions must not move."""
    import hashlib

    from models.checkpoint import tensor_sha256

    w = torch.tensor([[1.0, -2.0]], dtype=torch.float32)
    empty, a = torch.zeros(0, 3, dtype=torch.bfloat16), torch.tensor([7], dtype=torch.int64)
    ckpt = {"model": {"w": w, "b_empty": empty}, "lora_model": {"a": a}, "step": 3}
    reference = hashlib.sha256(b"model.b_empty:torch.bfloat16:(0, 3)\0" +
                               b"model.w:torch.float32:(1, 2)\0" + w.numpy().tobytes() +
                               b"lora_model.a:torch.int64:(1,)\0" + a.numpy().tobytes()).hexdigest()
    assert tensor_sha256(ckpt) == reference
