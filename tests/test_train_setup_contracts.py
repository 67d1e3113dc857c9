"""train_setup, the steps before a run's first step, each against what it promises: the model holds an init
checkpoint's weights, LoRA leaves only adapters trainable, word vectors fill the rows they name; the splits
hold a validation block and a global batch; DDP and torch.compile wrap as the process count and config say;
the logger and the log lines carry the run's counts. References: state dicts compared tensor by tensor,
requires_grad counted by hand, recorded wrapper calls."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import models
import train_setup
from dataset_definitions.tokenization import WORD_SPECIALS, WordTokenizer
from experiment_config import ConfigError, RunConfig
from models import ModelConfig
from models.lora import LoRAConfig
from run_files import TrainingError
from runtime import Env

CPU_ENV = Env(0, 0, 1, torch.device("cpu"), torch.float32)


def _cfg(preset="baseline", **model) -> RunConfig:
    shape = dict(vocab_size=12, context=8, d_model=16, n_layers=2, n_heads=2, d_ff=32) | model
    return RunConfig(run_name="r", model=ModelConfig.from_preset(preset, **shape))


def test_the_model_is_seeded_moved_and_holds_the_init_checkpoints_weights(capsys):
    cfg = _cfg()
    fresh = train_setup.build_model(cfg, None, CPU_ENV)
    again = train_setup.build_model(cfg, None, CPU_ENV)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values()))
    torch.manual_seed(99)
    init = {"model": models.build(cfg.model).state_dict(), "config": {"model": {}}}     # another seed's weights
    loaded = train_setup.build_model(cfg, None, CPU_ENV, init=init)
    assert not torch.equal(fresh.state_dict()["lm_head.weight"], init["model"]["lm_head.weight"])
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in init["model"].items())
    on_meta = train_setup.build_model(cfg, None, Env(0, 0, 1, torch.device("meta"), torch.float32))
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
    assert capsys.readouterr().out == ""                                     # nothing to report without extras


def test_lora_leaves_only_the_adapters_trainable_and_says_how_many(capsys):
    cfg = replace(_cfg(), lora=LoRAConfig(rank=2, targets="wqkv,wo"))
    model = train_setup.build_model(cfg, None, CPU_ENV)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, _ in trainable)
    n = sum(p.numel() for _, p in trainable)
    assert capsys.readouterr().out == (f"LoRA rank 2 on wqkv,wo: {n:,} trainable parameters of "
                                       f"{model.num_params():,}\n")


def test_word_vectors_fill_the_rows_of_the_words_they_name(tmp_path, capsys):
    words = list(WORD_SPECIALS) + ["the", "cat", "sat", "mat"]
    (tmp_path / "tok.json").write_text(json.dumps({"kind": "word", "vocab": words, "pattern": r"\w+|[^\w\s]"}))
    tok = WordTokenizer(str(tmp_path / "tok.json"))
    (tmp_path / "vec.txt").write_text("cat " + " ".join(["0.5"] * 16) + "\nmat " + " ".join(["-1"] * 16) + "\n")
    cfg = _cfg(vocab_size=len(words), word_vectors=str(tmp_path / "vec.txt"))
    model = train_setup.build_model(cfg, tok, CPU_ENV)
    rows = model.state_dict()["tok_emb.weight"]
    assert torch.equal(rows[tok.index["cat"]], torch.full((16,), 0.5))
    assert torch.equal(rows[tok.index["mat"]], torch.full((16,), -1.0))
    assert capsys.readouterr().out == f"word vectors: 2/{len(words)} tokens initialised from {tmp_path / 'vec.txt'}\n"


def test_the_splits_need_one_validation_block_and_one_global_batch():
    cfg = _cfg()
    cfg = replace(cfg, train=replace(cfg.train, batch_size=4))
    train_setup.check_splits(range(8), range(1), 9, cfg, world=2)            # exactly enough of both
    with pytest.raises(TrainingError, match=r"the validation split has 5 tokens, fewer than one block of "
                                            r"model.context \+ 1 = 9: raise data.val_rows"):
        train_setup.check_splits(range(8), range(0), 5, cfg, world=2)
    with pytest.raises(ConfigError, match=r"the train split has 7 blocks of model.context=8, fewer than one batch "
                                          r"\(4 x 2 process\(es\)\)"):
        train_setup.check_splits(range(7), range(1), 9, cfg, world=2)


class _Wrapped(torch.nn.Module):
    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module, self.device_ids = module, device_ids


@pytest.mark.parametrize("world, device, compile, expected_ids", [
    (1, "cpu", False, "unwrapped"), (2, "cpu", False, None), (2, "cuda", False, [1]), (3, "cuda", True, [1]),
    (1, "cpu", True, "unwrapped")])
def test_ddp_wraps_several_processes_on_their_gpu_and_compile_wraps_last(monkeypatch, world, device, compile,
                                                                         expected_ids):
    compiled = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", _Wrapped)
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or ("compiled", m))
    model = torch.nn.Linear(2, 2)
    cfg = _cfg()
    cfg = replace(cfg, train=replace(cfg.train, compile=compile))
    out = train_setup.wrap_for_training(model, cfg, Env(1, 1, world, torch.device(device), torch.float32))
    inner = out[1] if compile else out
    assert compiled == ([inner] if compile else [])
    if expected_ids == "unwrapped":
        assert inner is model
    else:
        assert isinstance(inner, _Wrapped) and inner.module is model and inner.device_ids == expected_ids


@pytest.mark.parametrize("preset", ["baseline", "falcon"])
def test_counts_and_flops_follow_the_parameters_a_token_uses(preset):
    cfg = _cfg(preset)
    model = models.build(cfg.model)
    counts, flops = train_setup.parameter_counts(model, cfg)
    assert counts["params"] == sum(p.numel() for p in model.parameters())
    uses = model.num_active_params if preset == "falcon" else model.num_params
    assert counts["active_params"] == uses()
    assert flops == models.flops_per_token(cfg.model, uses(exclude_embeddings=True))
    assert uses(exclude_embeddings=True) < uses()                          # the lookup tables are left out
    if preset == "falcon":
        assert counts["active_params"] < counts["params"]


def test_the_logger_gets_the_runs_settings_counts_and_resume_step(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(train_setup, "open_wandb", lambda *args: seen.setdefault("wandb", args) and "wandb run")
    monkeypatch.setattr(train_setup, "open_tensorboard", lambda *args: seen.setdefault("tb", args) and "writer")
    monkeypatch.setattr(train_setup, "RunLogger", lambda *args, **kwargs: SimpleNamespace(args=args, kwargs=kwargs))
    cfg = replace(_cfg(), log_dir=str(tmp_path / "logs"))
    trainer = SimpleNamespace(cfg=cfg, step=40, unique_tokens=1234, param_counts={"params": 10, "active_params": 8})
    logger = train_setup.open_logger(trainer)
    as_dict = train_setup.to_dict(cfg)
    assert seen["wandb"] == (cfg.wandb, "r", as_dict)
    assert seen["tb"] == (cfg.log, "r", str(tmp_path / "logs"), 40)
    assert logger.args == ("r", str(tmp_path / "logs"),
                           {"config": as_dict, "train_tokens": 1234, "params": 10, "active_params": 8})
    assert logger.kwargs == dict(resume_step=40, wandb_run="wandb run", tensorboard="writer")


def _trainer(active, tid):
    cfg = _cfg()
    cfg = replace(cfg, train=replace(cfg.train, max_steps=1200, epochs=2.5))
    model = SimpleNamespace(num_params=lambda exclude_embeddings=False: 1_755_001 if exclude_embeddings else 2_505_001)
    return SimpleNamespace(cfg=cfg, env=CPU_ENV, param_counts={"params": 2_505_001, "active_params": active},
                           model=model, tid=tid, train_blocks=range(3000), unique_tokens=24_008,
                           tokens_per_step=256)


@pytest.mark.parametrize("active, tid_enabled", [(2_505_001, False), (1_005_001, True)])
def test_the_run_is_described_in_its_log_lines(active, tid_enabled):
    """Counts in millions to two places (just past a rounding edge, so the unit is exactly 1e6)."""
    tid = SimpleNamespace(enabled=tid_enabled, describe=lambda: "random, keep 70%")
    text = train_setup.describe_run(_trainer(active, tid))
    cfg = _cfg()
    lines = [f"model: {models.describe(cfg.model)}, 2.51M parameters"
             + (" (1.01M active per token)" if active != 2_505_001 else "")
             + ", 1.76M without lookup tables; d16 L2 H2 ctx 8, vocab 12"]
    if tid_enabled:
        lines.append("TID: random, keep 70%")
    lines.append("train: 3,000 blocks of 24,008 unique tokens, 256 tokens/step, 1,200 steps = 2.5 epochs, "
                 "1 process(es) on cpu, torch.float32")
    assert text.split("\n") == lines


def test_flops_are_of_the_non_embedding_parameters_not_all():
    """Guards the test above: the two counts differ enough that the FLOPs tell them apart."""
    cfg = _cfg()
    model = models.build(cfg.model)
    assert models.flops_per_token(cfg.model, model.num_params()) != \
        models.flops_per_token(cfg.model, model.num_params(exclude_embeddings=True))
    assert np.isfinite(train_setup.parameter_counts(model, cfg)[1])


@pytest.mark.parametrize("rank, world", [(0, 1), (0, 2), (1, 2), (2, 3)])
def test_rank_zero_prepares_the_data_and_the_others_read_it_after_a_barrier(monkeypatch, capsys, rank, world):
    """Rank 0 builds (or finds) the cache, reporting through its log; with several processes every rank then meets
    at a barrier and the others read the cache rank 0 made, silently."""
    events, cfg = [], _cfg()

    def prepare(cfg_, log):
        log("prepared")
        events.append(("prepare", cfg_ is cfg))
        return f"data of rank {rank}"
    monkeypatch.setattr(train_setup, "prepare_run_data", prepare)
    monkeypatch.setattr(train_setup.dist, "barrier", lambda: events.append("barrier"))
    env = Env(rank, rank, world, torch.device("cpu"), torch.float32)
    assert train_setup.load_data(cfg, env) == f"data of rank {rank}"
    main, several = rank == 0, world > 1
    assert events == ([("prepare", True)] if main else []) + (["barrier"] if several else []) + \
        ([] if main else [("prepare", True)])
    assert capsys.readouterr().out == ("prepared\n" if main else "")


@pytest.mark.parametrize("step", [250, None])
def test_fine_tuning_takes_the_init_checkpoints_model_and_tokenizer_and_says_so(capsys, step):
    import dataclasses

    base = _cfg()
    theirs = ModelConfig.from_preset("falcon", vocab_size=300, context=16, d_model=32, n_layers=1, n_heads=2, d_ff=64)
    ckpt = {"config": {"model": dataclasses.asdict(theirs)},
            "tokenizer": {"kind": "word", "path": "tok/word.json", "sha256": "ab" * 32, "vocab_size": 300}}
    if step is not None:
        ckpt["step"] = step
    cfg = train_setup.with_init_checkpoint(replace(base, init_from="runs/big/best.pt"), ckpt, CPU_ENV)
    assert cfg.model == theirs and cfg.train == base.train and cfg.init_from == "runs/big/best.pt"
    assert (cfg.tokenizer.kind, cfg.tokenizer.path, cfg.tokenizer.vocab_size) == ("word", "tok/word.json", 300)
    assert capsys.readouterr().out == (f"init from runs/big/best.pt (step {step or 0}): its falcon model and word "
                                       "tokenizer\n")
