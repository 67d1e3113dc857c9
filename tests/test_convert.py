"""Weights to and from Hugging Face, Meta and safetensors: same logits as transformers, exact round trips."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import models
from conftest import REPO, c_locale_env, tiny_run_config
from generic_runner import train
from models import ModelConfig
from models.convert import ConversionError, hf_architecture, to_hf_model

transformers = pytest.importorskip("transformers")


def _ckpt(preset, **extra):
    sizes = dict(vocab_size=97, context=32, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    cfg = ModelConfig.from_preset(preset, **{**sizes, **extra})
    torch.manual_seed(0)
    model = models.build(cfg).eval()
    spec = {"kind": "stub"}
    return model, {"model": model.state_dict(), "config": {"model": cfg.__dict__}, "tokenizer": spec}


@pytest.fixture(autouse=True)
def _no_tokenizer_files(monkeypatch):
    import models.convert
    monkeypatch.setattr(models.convert, "_special_ids", lambda spec: (1, 2, 0))


@pytest.mark.parametrize("preset,arch", [("baseline", "gpt2"), ("gpt2_125m", "llama"), ("llama", "llama")])
def test_exported_model_has_the_same_logits(preset, arch):
    model, ckpt = _perturbed(preset, {})                     # a swapped norm or bias shows only off their init
    assert hf_architecture(model.cfg) == arch
    hf = to_hf_model(ckpt)
    x = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-5, rtol=0)
        model.blocks[0].attn.wo.weight.add_(0.1 * torch.randn_like(model.blocks[0].attn.wo.weight))  # can fail
        assert (hf(x).logits - model(x)[0]).abs().max() > 1e-3


# format x family: "exact" (ours -> format -> ours gives the same tensors and logits) or the error
FAMILY_VARIANTS = {
    "baseline": ("baseline", {}),
    "baseline gelu_tanh untied": ("baseline", {"mlp": "gelu_tanh", "tie_embeddings": False}),
    "gpt2_125m": ("gpt2_125m", {}),
    "llama": ("llama", {}),
    "falcon": ("falcon", {}),
    "condor standard": ("condor", {"attention": "standard"}),
    "condor head_linear_silu": ("condor", {"attention": "head_linear_silu"}),
    "condor self_score": ("condor", {"attention": "self_score"}),
    "baseline swiglu": ("baseline", {"mlp": "swiglu"}),
}
ROUND_TRIPS = {
    "hf": {"falcon": "mixture-of-experts", "condor head_linear_silu": "per-head Linear\\+SiLU",
           "condor self_score": "second attention-score projection", "baseline swiglu": "mlp=swiglu"},
    "meta": {"baseline": "no learned positions", "baseline gelu_tanh untied": "no learned positions",
             "condor standard": "no learned positions", "falcon": "mixture-of-experts",
             "condor head_linear_silu": "per-head Linear\\+SiLU", "condor self_score": "second attention-score",
             "baseline swiglu": "mlp=swiglu"},
    "safetensors": {},
}


def _perturbed(preset, extra):
    """A model of the family with every parameter moved off its init (norm weights off 1, biases off 0)."""
    model, ckpt = _ckpt(preset, **extra)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, ckpt


def _through(fmt, ckpt, tmp_path):
    """(ModelConfig, state dict) after writing the checkpoint in `fmt` and reading it back from disk."""
    from models.convert import _export, from_hf, from_meta, from_safetensors
    import json
    out = tmp_path / fmt
    if fmt == "hf":
        to_hf_model(ckpt).save_pretrained(out)   # the weights; the tokenizer beside them is tested below
        return from_hf(out)
    _export(ckpt, fmt, out)
    if fmt == "meta":
        weights = torch.load(out / "consolidated.00.pth", weights_only=True)
        return from_meta(json.loads((out / "params.json").read_text()), weights, context=32)
    cfg, sd, spec = from_safetensors(out)
    assert spec == ckpt["tokenizer"]
    return cfg, sd


@pytest.mark.parametrize("fmt", list(ROUND_TRIPS))
@pytest.mark.parametrize("family", list(FAMILY_VARIANTS))
def test_round_trip_is_exact_or_refused_naming_what_the_format_lacks(fmt, family, tmp_path):
    model, ckpt = _perturbed(*FAMILY_VARIANTS[family])
    error = ROUND_TRIPS[fmt].get(family)
    if error:
        with pytest.raises(ConversionError, match=error):
            _through(fmt, ckpt, tmp_path)
        return
    cfg, sd = _through(fmt, ckpt, tmp_path)
    computes = ("vocab_size", "context", "d_model", "n_layers", "n_heads", "d_ff", "norm", "norm_eps", "position",
                "rope_theta", "mlp", "bias", "tie_embeddings", "attention")
    assert {k: getattr(cfg, k) for k in computes} == {k: getattr(model.cfg, k) for k in computes}
    again = models.build(cfg).eval()
    again.load_state_dict(sd, strict=True)
    assert again.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again(x)[0], model(x)[0])


def test_cli_export_loads_with_automodel_and_generates_our_greedy_tokens(tmp_path, monkeypatch):
    from generators import Generator
    train(tiny_run_config(tmp_path, ["train.max_steps=20", "train.lr=3e-3"]))
    ckpt = tmp_path / "checkpoints/tiny/last.pt"
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "models.convert", "--ckpt", str(ckpt), "--to", "hf", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    gen = Generator.build(str(ckpt), max_batch_size=1, device="cpu")
    prompt = gen.prompt_tokens("Once upon a time")
    ours = gen.generate([prompt], max_gen_len=12, temperature=0, stop_at_eos=False)[0][0]
    ids = torch.tensor([prompt])
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                         min_new_tokens=12, pad_token_id=0)[0, len(prompt):].tolist()
    assert theirs == ours
    sf = tmp_path / "w.safetensors"
    r = subprocess.run([sys.executable, "-m", "models.convert", "--ckpt", str(ckpt), "--to", "safetensors",
                        "--out", str(sf)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and sf.stat().st_size > 10_000


def _meta_forward(params: dict, w: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of Meta's Llama reference (llama/model.py) written out: RMSNorm, interleaved complex rotary,
    causal attention, SwiGLU FFN w2(silu(w1 x) * w3 x), the FFN width derived from params as Meta does."""
    dim, H, L, eps = params["dim"], params["n_heads"], params["n_layers"], params["norm_eps"]
    hd = dim // H
    hidden = int(params["ffn_dim_multiplier"] * int(2 * 4 * dim / 3))
    hidden = params["multiple_of"] * ((hidden + params["multiple_of"] - 1) // params["multiple_of"])
    rms = lambda x, weight: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    B, T = tokens.shape
    freqs = 1.0 / (params["rope_theta"] ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    cis = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), freqs))      # (T, hd/2)
    rotate = lambda x: torch.view_as_real(torch.view_as_complex(x.reshape(B, T, H, hd // 2, 2))
                                          * cis[None, :, None]).reshape(B, T, H, hd)
    mask = torch.full((T, T), float("-inf")).triu(1)
    h = w["tok_embeddings.weight"][tokens]
    for i in range(L):
        a = f"layers.{i}."
        assert w[a + "feed_forward.w1.weight"].shape == (hidden, dim)
        x = rms(h, w[a + "attention_norm.weight"])
        q, k, v = ((x @ w[a + f"attention.w{n}.weight"].T).view(B, T, H, hd) for n in "qkv")
        q, k = rotate(q).transpose(1, 2), rotate(k).transpose(1, 2)                             # (B, H, T, hd)
        att = ((q @ k.transpose(2, 3)) / math.sqrt(hd) + mask).softmax(-1)
        out = (att @ v.transpose(1, 2)).transpose(1, 2).reshape(B, T, dim)
        h = h + out @ w[a + "attention.wo.weight"].T
        x = rms(h, w[a + "ffn_norm.weight"])
        ff = F.silu(x @ w[a + "feed_forward.w1.weight"].T) * (x @ w[a + "feed_forward.w3.weight"].T)
        h = h + ff @ w[a + "feed_forward.w2.weight"].T
    return rms(h, w["norm.weight"]) @ w["output.weight"].T


@dataclasses.dataclass
class MetaModelArgs:
    """The fields of Meta's llama/model.py ModelArgs; its loader builds ModelArgs(max_seq_len=...,
    max_batch_size=..., **params.json)."""
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000
    max_batch_size: int = 32
    max_seq_len: int = 2048


@pytest.mark.parametrize("preset", ["llama", "gpt2_125m"])
def test_meta_export_has_the_same_logits_under_metas_reference(preset):
    from models.convert import to_meta
    model, ckpt = _perturbed(preset, {})
    params, weights = to_meta(model.cfg, ckpt["model"])
    args = MetaModelArgs(max_seq_len=32, max_batch_size=1, **params)   # an unknown or colliding key: TypeError
    cfg = model.cfg
    assert (args.dim, args.n_layers, args.n_heads, args.vocab_size, args.norm_eps, args.rope_theta) == (
        cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.vocab_size, cfg.norm_eps, cfg.rope_theta)
    assert args.n_kv_heads in (None, cfg.n_heads)
    x = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(_meta_forward(params, weights, x), model(x)[0], atol=1e-4, rtol=1e-4)


def _import_perturbed_hf(model_class, config, folder):
    """Build a transformers model, move every weight (norms included) off its init, save it, import it
    with from_hf; returns (hf model, our config, our model)."""
    from models.convert import from_hf
    torch.manual_seed(0)
    hf = model_class(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(folder)
    cfg, sd = from_hf(folder)
    ours = models.build(cfg).eval()
    ours.load_state_dict(sd, strict=True)
    return hf, cfg, ours


def test_hf_llama_import_computes_transformers_logits(tmp_path):
    # a Llama made by transformers itself, every weight (norms included) moved off its init
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    hf, cfg, ours = _import_perturbed_hf(transformers.LlamaForCausalLM, config, tmp_path / "llama")
    x = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], hf(x).logits, atol=1e-5, rtol=1e-5)


def test_hf_gpt2_import_computes_transformers_logits(tmp_path):
    # a GPT-2 made by transformers itself: tanh GELU ("gelu_new"), n_inner unset, Conv1D weights
    config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    hf, cfg, ours = _import_perturbed_hf(transformers.GPT2LMHeadModel, config, tmp_path / "gpt2")
    assert (cfg.mlp, cfg.d_ff, cfg.position, cfg.tie_embeddings) == ("gelu_tanh", 128, "learned", True)
    x = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], hf(x).logits, atol=1e-5, rtol=0)


def test_meta_import_refuses_what_it_cannot_read():
    from models.convert import from_meta, to_meta
    model, ckpt = _ckpt("llama")
    params, weights = to_meta(model.cfg, ckpt["model"])
    with pytest.raises(ConversionError, match="--context"):
        from_meta(params, weights, context=None)
    with pytest.raises(ConversionError, match="grouped-query"):
        from_meta({**params, "n_kv_heads": 2}, weights, context=32)


def test_cli_import_of_every_format(tmp_path):
    from models.checkpoint import load_checkpoint
    from models.convert import main as convert_main
    train(tiny_run_config(tmp_path, ["train.max_steps=2", "model.preset=llama", "model.tie_embeddings=false"]))
    ckpt_path = tmp_path / "checkpoints/tiny/last.pt"
    ckpt = load_checkpoint(ckpt_path)
    tokenizer = ckpt["tokenizer"]["path"]
    for fmt, out, extra in (("meta", tmp_path / "meta", ["--context", "32", "--tokenizer", tokenizer]),
                            ("safetensors", tmp_path / "w.safetensors", [])):
        convert_main(["--ckpt", str(ckpt_path), "--to", fmt, "--out", str(out)])
        convert_main(["--from", fmt, str(out), "--out", str(tmp_path / f"{fmt}.pt"), *extra])
        back = load_checkpoint(tmp_path / f"{fmt}.pt")
        assert back["tokenizer"]["sha256"] == ckpt["tokenizer"]["sha256"]
        for k, v in ckpt["model"].items():
            assert torch.equal(back["model"][k], v), (fmt, k)
    r = subprocess.run([sys.executable, "-m", "models.convert", "--from", "meta", str(tmp_path / "meta"),
                        "--out", str(tmp_path / "x.pt")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.startswith("error:") and "--context" in r.stderr


def test_hf_import_then_export_round_trips(tmp_path, llama_model):
    from models.checkpoint import load_checkpoint
    from models.convert import main as convert_main
    tok = llama_model
    model, ckpt = _perturbed("llama", {"vocab_size": 32000})
    hf_dir = tmp_path / "hf_llama"
    to_hf_model(ckpt).save_pretrained(hf_dir)
    convert_main(["--from", "hf", str(hf_dir), "--tokenizer", str(tok), "--out", str(tmp_path / "imported.pt")])
    imported = load_checkpoint(tmp_path / "imported.pt")
    assert imported["tokenizer"]["kind"] == "llama" and imported["config"]["model"]["n_layers"] == 2
    assert imported["model"].keys() == ckpt["model"].keys()
    for k, v in ckpt["model"].items():
        assert torch.equal(imported["model"][k], v), k


@pytest.fixture
def trained_or_shared_tokenizer(request, tmp_path):
    """A tokenizer of the kind in request.param: trained here (bpe, word, sentencepiece) or the shared files."""
    from dataset_definitions.config import TokenizerConfig
    from dataset_definitions.stories import stories
    from dataset_definitions.tokenizer_training import build_tokenizer
    kind = request.param
    if kind in ("gpt2", "llama"):
        path = request.getfixturevalue("gpt2_dir" if kind == "gpt2" else "llama_model")
        return build_tokenizer(TokenizerConfig(kind=kind, path=str(path)), lambda: iter(()), tmp_path, kind)
    texts = list(stories(300, seed=0))
    return build_tokenizer(TokenizerConfig(kind=kind, vocab_size=400), lambda: texts, tmp_path, kind)


PROMPTS = ["Once upon a time", "Lily saw a big dog. She said, \"Hello!\"", "The sun was warm and the sky was blue"]


UNUSUAL = ["Lily\u2019s dog met Zyxwvut and QQQ", "\u00c9COLE na\u00efve caf\u00e9 \u2014 42 times!",
           "a  b\n\nc\t'quoted'"]


@pytest.mark.parametrize("trained_or_shared_tokenizer", ["bpe", "word", "gpt2"], indirect=True)
def test_the_fast_tokenizer_encodes_unusual_text_as_ours_with_our_vocabulary(trained_or_shared_tokenizer):
    """fast_tokenizer on what the generation prompts lack: words outside a word-level vocabulary (its <unk>), a
    curly apostrophe (word level reads it as '), capitals, accents, runs of whitespace; its vocabulary is the
    model's, no token added; our special tokens are its special tokens (dropped by skip_special_tokens)."""
    from dataset_definitions.hf_tokenizer import fast_tokenizer
    tok = trained_or_shared_tokenizer
    fast = fast_tokenizer(tok)
    assert len(fast) == tok.vocab_size
    for text in UNUSUAL:
        assert fast(text, add_special_tokens=False)["input_ids"] == tok.encode(text), text
    if tok.kind == "word":
        assert tok.unk_id in tok.encode(UNUSUAL[0]) and tok.encode("Lily\u2019s") == tok.encode("lily's")
    specials = [tok.eos_id] if tok.kind == "gpt2" else [0, 1, 2, 3]     # ours: pad, bos/sos, eos, unk at 0..3
    assert sorted(fast.all_special_ids) == specials
    ids = list(range(4, 40))                                              # ordinary tokens of every kind
    assert fast.decode([*specials, *ids, *specials], skip_special_tokens=True) == fast.decode(ids)


@pytest.mark.parametrize("trained_or_shared_tokenizer", ["gpt2"], indirect=True)
def test_gpt2_files_are_read_as_utf8_whatever_the_locale(trained_or_shared_tokenizer, tmp_path):
    """Under a C (ASCII) locale without Python's UTF-8 mode, the fast tokenizer of GPT-2's files (vocab.bpe is
    UTF-8) is built and encodes as in this process."""
    code = ("import json, sys; from dataset_definitions.config import TokenizerConfig; "
            "from dataset_definitions.tokenizer_training import build_tokenizer; "
            "from dataset_definitions.hf_tokenizer import fast_tokenizer; "
            "tok = build_tokenizer(TokenizerConfig(kind='gpt2', path=sys.argv[1]), lambda: iter(()), sys.argv[2], "
            "'g'); "
            "print(json.dumps(fast_tokenizer(tok)(json.loads(sys.argv[3]), add_special_tokens=False)['input_ids']))")
    text = "na\u00efve caf\u00e9 \u2014 done"
    tok = trained_or_shared_tokenizer
    out = subprocess.run([sys.executable, "-c", code, tok.path, str(tmp_path), json.dumps(text)], cwd=REPO,
                         env=c_locale_env(), capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert json.loads(out.stdout) == tok.encode(text)


@pytest.mark.parametrize("trained_or_shared_tokenizer", ["bpe", "word", "sentencepiece", "gpt2", "llama"], indirect=True)
def test_hf_folder_holds_a_tokenizer_that_reproduces_our_encoding_and_generation(trained_or_shared_tokenizer, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.undo()  # the real tokenizer's special ids, not the stub's
    from generators import Generator
    from models.checkpoint import save_checkpoint
    from models.convert import _export, _import, _special_ids, imported_checkpoint
    tok = trained_or_shared_tokenizer
    cfg = ModelConfig.from_preset("baseline", vocab_size=tok.vocab_size, context=64, d_model=32, n_layers=2,
                                  n_heads=4, d_ff=64)
    torch.manual_seed(0)
    model = models.build(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))           # decisive logits, so greedy tokens are not ties
    ckpt = imported_checkpoint("m", cfg, model.state_dict(), tok.spec())
    save_checkpoint(tmp_path / "m.pt", ckpt)
    _export(ckpt, "hf", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    gen = Generator.build(str(tmp_path / "m.pt"), max_batch_size=1, device="cpu")
    bos, eos, pad = _special_ids(tok.spec())
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (eos, pad)
    assert hf_tok.bos_token_id == (bos if bos is not None else eos)
    assert (hf.config.eos_token_id, hf.config.pad_token_id) == (eos, pad)
    unk = {"word": getattr(tok, "unk_id", None), "gpt2": None}.get(tok.kind, -1)
    if unk == -1:                                                   # bpe and SentencePiece name theirs "<unk>"
        unk = tok._tok.token_to_id("<unk>") if tok.kind == "bpe" else tok._sp.piece_to_id("<unk>")
    assert hf_tok.unk_token_id == unk
    a, b = gen.prompt_tokens(PROMPTS[0]), gen.prompt_tokens(PROMPTS[1])
    assert hf_tok(PROMPTS[0], PROMPTS[1])["input_ids"] == a + b     # a pair: each text as a prompt
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # the class transformers 4 and 5 both resolve
    for prompt in PROMPTS:
        ids = hf_tok(prompt)["input_ids"]
        assert ids == gen.prompt_tokens(prompt)                     # [bos] + our ids
        ours = gen.generate([ids], max_gen_len=10, temperature=0, stop_at_eos=False)[0][0]
        x = torch.tensor([ids])
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=10,
                             min_new_tokens=10)[0, len(ids):].tolist()
        assert theirs == ours
        if tok.kind != "word":                                       # word level: HF joins with plain spaces
            assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids)
    # and the folder imports back with our tokenizer file found in it
    back = _import("hf", str(tmp_path / "hf"), tokenizer=None, context=None)
    assert back["tokenizer"]["sha256"] == tok.spec()["sha256"]
    assert all(torch.equal(back["model"][k], v) for k, v in ckpt["model"].items())
