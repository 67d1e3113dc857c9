"""Nothing lost, nothing silently wrong in the tools that read a checkpoint: generation, perplexity, benchmarks.

As tests/test_safety.py for training: each failure a hostile but fair user found, reproduced through
the command line, checking the exit status, that the message names the key or file, and that
nothing is written.
"""

import math
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import run_cli, run_cli_out
from models.checkpoint import load_checkpoint


# ----------------------------------------------------------------------------- checkpoint hashes

def _flip_a_weight_bit(src: Path, dst: Path, record: int = 0) -> None:
    """Copy a checkpoint and flip one bit inside a stored tensor (as a bad disk would): the first, or
    the `record`-th of the file's tensor records."""
    dst.write_bytes(src.read_bytes())
    with zipfile.ZipFile(dst) as z:
        info = [i for i in z.infolist() if "/data/" in i.filename][record]
    with open(dst, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + name_len + extra_len + 2
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))


def test_flipped_bits_in_the_weights_fail_every_loader(trained, tmp_path, capsys):
    from perplexity.runner import main as ppl_main
    from generators.generate import main as gen_main
    bad = tmp_path / "flipped.pt"
    _flip_a_weight_bit(trained / "checkpoints/tiny/last.pt", bad)
    for main, argv in ((gen_main, ["--ckpt", str(bad), "--prompt", "Once"]),
                       (ppl_main, ["--ckpt", str(bad), "--log-dir", str(tmp_path / "logs"), "--quiet"])):
        code, err = run_cli(main, argv, capsys)
        assert code == 1 and str(bad) in err and "corrupted" in err
    assert not (tmp_path / "logs").exists()


def test_non_finite_scores_are_not_written(trained, tmp_path, capsys):
    from perplexity.runner import main as ppl_main
    ckpt = torch.load(trained / "checkpoints/tiny/last.pt", weights_only=True)
    for key in ("state_sha256", "tensor_sha256"):  # a file from before hashes, with NaN weights
        ckpt.pop(key, None)
    ckpt["model"]["tok_emb.weight"][:] = math.nan
    torch.save(ckpt, tmp_path / "nan.pt")
    code, err = run_cli(ppl_main, ["--ckpt", str(tmp_path / "nan.pt"), "--log-dir", str(tmp_path / "logs"),
                                   "--rows", "5", "--quiet"], capsys)
    assert code == 1 and "not finite" in err and str(tmp_path / "nan.pt") in err
    assert not list((tmp_path / "logs").rglob("*.pkl")) and not list((tmp_path / "logs").rglob("*.json"))


# ----------------------------------------------------------------------------- generation, perplexity and benchmark arguments

@pytest.mark.parametrize("args,named", [
    (["--max-new-tokens", "0"], "--max-new-tokens"), (["--max-new-tokens", "-4"], "--max-new-tokens"),
    (["--beam", "0"], "--beam"), (["--beam", "-1"], "--beam"), (["--temperature", "nan"], "--temperature"),
    (["--temperature", "-0.5"], "--temperature"), (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"), (["--top-k", "385"], "--top-k"),
    (["--prompt", "the cat sat on the mat " * 10], "context is 32")])
def test_generation_arguments_are_checked(trained, capsys, args, named):
    from generators.generate import main as gen_main
    code, err = run_cli(gen_main, ["--ckpt", str(trained / "checkpoints/tiny/last.pt"), "--prompt", "Once", *args],
                        capsys)
    assert code == 2 and named in err and err.count("\n") == 1


def test_long_prompt_truncates_from_the_left_on_request(trained):
    from generators import Generator
    g = Generator.build(str(trained / "checkpoints/tiny/last.pt"), max_batch_size=1)
    long = "the cat sat on the mat " * 10
    ids = g.prompt_tokens(long)
    assert len(ids) > 32
    out = g.text_completion([long], temperature=0, max_gen_len=6, truncate=True)[0]["tokens"]
    ref, _ = g.generate([ids[-(32 - 6):]], 6, temperature=0)   # the prompt's last context - 6 tokens
    assert out == ref[0]
    with pytest.raises(ValueError, match=f"{len(ids)} tokens; the model's context is 32"):
        g.text_completion([long], max_gen_len=6)
    with pytest.raises(ValueError, match="max_gen_len"):
        g.text_completion(["Once"], max_gen_len=0)


def test_top_p_always_keeps_the_most_likely_token():
    from generators.sampling import sample_top_p
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]])
    g = torch.Generator().manual_seed(0)
    for p in (1e-12, 0.2, 0.5):
        draws = torch.cat([sample_top_p(probs, p, g) for _ in range(200)], dim=1)
        assert (draws == probs.argmax(-1, keepdim=True)).all()


def test_deleted_tokenizer_is_the_same_error_in_every_tool(trained, tmp_path, capsys):
    from perplexity.runner import main as ppl_main
    from generators.generate import main as gen_main
    ckpt = trained / "checkpoints/tiny/last.pt"
    tok = Path(load_checkpoint(ckpt)["tokenizer"]["path"])
    saved = tok.read_bytes()
    tok.unlink()
    try:
        errs = [run_cli(main, ["--ckpt", str(ckpt), *extra], capsys)
                for main, extra in ((gen_main, ["--prompt", "Once"]), (ppl_main, ["--log-dir", str(tmp_path)]))]
    finally:
        tok.write_bytes(saved)
    assert errs[0] == errs[1] and errs[0][0] == 1 and str(tok) in errs[0][1] and errs[0][1].count("\n") == 1


def test_perplexity_stride_zero_is_refused_and_skipped_rows_are_counted(trained, tmp_path, capsys):
    from perplexity.runner import main as ppl_main, main_text
    ckpt = str(trained / "checkpoints/tiny/last.pt")
    code, err = run_cli(ppl_main, ["--ckpt", ckpt, "--stride", "0", "--log-dir", str(tmp_path)], capsys)
    assert code == 2 and "--stride" in err and err.count("\n") == 1 and not list(tmp_path.iterdir())
    rows = tmp_path / "rows.txt"
    rows.write_bytes(b"the cat sat\n\n\xff\xfe not utf-8\nthe dog ran\n   \n")
    code, _, out = run_cli_out(main_text, ["--ckpt", ckpt, "--text-file", str(rows), "--log-dir",
                                           str(tmp_path / "logs"), "--quiet"], capsys)
    assert code == 0 and "2 rows," in out and "3 rows skipped (empty or not text, invalid UTF-8)" in out


@pytest.mark.parametrize("args,named", [(["--beams", "0,5"], "--beams"), (["--beams", "-2"], "--beams"),
                                        (["--batch-sizes", "0"], "--batch-sizes")])
def test_generation_bench_refuses_zero_or_negative_beams(trained, capsys, args, named):
    from benchmarks.decode_speed import main as bench_main
    code, err = run_cli(bench_main, ["--ckpt", str(trained / "checkpoints/tiny/last.pt"), *args], capsys)
    assert code == 2 and named in err and err.count("\n") == 1
