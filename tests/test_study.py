"""Studies: config checks, same batches per seed, statistics against known answers, a resumed study."""

import json
import math

import numpy as np
import pytest
import yaml

import study
import study_report
import study_runner
from conftest import REPO, tiny_run_config
from dataset_definitions.datasets import BlockSampler
from experiment_config import ConfigError
from generic_runner import train

TINY = ["data.source=builtin", "data.train_rows=300", "data.val_rows=20", "data.heldout_rows=12",
        "tokenizer.kind=bpe", "tokenizer.vocab_size=300", "model.context=32", "model.d_model=32", "model.n_layers=1",
        "model.n_heads=2", "model.d_ff=64", "train.max_steps=4", "train.batch_size=2", "train.warmup_steps=1",
        "train.eval_every=2", "train.save_every=2", "train.keep_every=2", "train.eval_batches=2",
        "train.precision=fp32"]


def _study_file(tmp_path, arms: dict, **extra) -> str:
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump({"seeds": [1], "reference": "baseline", "arms": arms, **extra}))
    return str(path)


def _outputs(tmp_path) -> list[str]:
    return [f"data_dir={tmp_path / 'data'}", f"tokenizer_dir={tmp_path / 'tok'}",
            f"checkpoint_dir={tmp_path / 'ck'}", f"log_dir={tmp_path / 'logs'}"]


# ----------------------------------------------------------------------------- configs

def test_arms_differ_only_in_the_keys_they_name(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = _study_file(tmp_path, {"baseline": {"runner": "run_tid.py", "set": {"tid.method": "none"}},
                                  "entrodrop": {"runner": "run_tid.py", "set": {"tid.method": "entropy",
                                                                                "tid.drop": "low"}}})
    s = study.load_study(path)
    runs = study.resolve_runs(s, ["configs/quickstart.yaml"], TINY)
    diff = study.config_differences(s, runs)
    assert diff["entrodrop"] == {"tid.method": ("none", "entropy"), "tid.drop": ("auto", "low")}
    assert runs[0].cfg.seed == 1 and runs[0].name.startswith("mini-baseline-s1-")


def test_a_different_runner_config_is_refused_unless_named(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    # run_baseline.py trains the GPT-2 style baseline, run_tid.py the gpt2_125m family: not a TID comparison
    path = _study_file(tmp_path, {"baseline": {"runner": "run_baseline.py"},
                                  "entropy": {"runner": "run_tid.py", "set": {"tid.method": "entropy"}}})
    s = study.load_study(path)
    with pytest.raises(ConfigError, match="model.preset: 'baseline' vs 'gpt2_125m'"):
        study.config_differences(s, study.resolve_runs(s, ["configs/quickstart.yaml"], TINY))
    budget = _study_file(tmp_path, {"baseline": {"runner": "run_tid.py", "set": {"tid.method": "none"}},
                                    "long": {"runner": "run_tid.py", "set": {"train.grad_accum": 2}}})
    s = study.load_study(budget)
    with pytest.raises(ConfigError, match="same budget"):
        study.config_differences(s, study.resolve_runs(s, ["configs/quickstart.yaml"], TINY))
    with pytest.raises(ConfigError, match="the study's arms set these keys"):
        study.resolve_runs(s, ["configs/quickstart.yaml"], [*TINY, "tid.method=random"])


def test_an_edited_data_file_renames_the_runs(tmp_path, monkeypatch):
    """Finished runs are reused by name: a run trained on the old text must not answer for the new."""
    monkeypatch.chdir(REPO)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n" * 50, encoding="utf-8")
    path = _study_file(tmp_path, {"baseline": {"runner": "run_tid.py", "set": {"tid.method": "none"}},
                                  "random": {"runner": "run_tid.py", "set": {"tid.method": "random"}}})
    sets = [*TINY, "data.source=text", f"data.path={corpus}", *_outputs(tmp_path)]
    s = study.load_study(path)
    before = study.resolve_runs(s, ["configs/quickstart.yaml"], sets)[0].name
    assert study.resolve_runs(s, ["configs/quickstart.yaml"], sets)[0].name == before
    corpus.write_text("the dog sat on the log\n" * 50, encoding="utf-8")
    assert study.resolve_runs(s, ["configs/quickstart.yaml"], sets)[0].name != before


def test_bad_study_files_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        study.load_study(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"arms": {"a": {"runner": "run_tid.py"}, "b": {"runner": "run_tid.py"}},
                                   "reference": "c"}))
    with pytest.raises(ConfigError, match="reference 'c' is not one of the arms"):
        study.load_study(bad)
    bad.write_text(yaml.safe_dump({"arms": {"a": {"runner": "run_tid.py"}}, "seed": [1]}))
    with pytest.raises(ConfigError, match="unknown key"):
        study.load_study(bad)


def test_shipped_studies_resolve(monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("tid", "families", "tid_schedules", "tid_multi_epoch"):
        s = study.load_study(f"configs/studies/{name}.yaml")
        assert len(s.seeds) >= 3
        diff = study.config_differences(s, study.resolve_runs(s, ["configs/quickstart.yaml"]))
        assert all(diff[a.name] for a in s.arms if a.name != s.reference), name
    tid = study.load_study("configs/studies/tid.yaml")
    methods = {a.name: dict(x.split("=") for x in a.sets) for a in tid.arms}
    assert methods["entrodrop"] == {"tid.method": '"entropy"', "tid.drop": '"low"'}


# ----------------------------------------------------------------------------- same batches per seed

def test_two_arms_with_the_same_seed_see_the_same_batches(tmp_path, monkeypatch):
    seen = []
    original = BlockSampler.next_indices
    monkeypatch.setattr(BlockSampler, "next_indices", lambda self: seen[-1].append(original(self)) or seen[-1][-1])

    def batches(run_name, seed, method):
        seen.append([])
        train(tiny_run_config(tmp_path, [f"run_name={run_name}", f"seed={seed}", f"tid.method={method}",
                                         "tid.p_start=0.3", "tid.p_end=0.3", "train.max_steps=6"]))
        return np.stack(seen[-1])

    none, entropy = batches("a", 5, "none"), batches("b", 5, "entropy")
    assert none.shape == (6, 4) and np.array_equal(none, entropy)
    assert not np.array_equal(none, batches("c", 6, "none"))   # the seed, not the arm, sets the order


# ----------------------------------------------------------------------------- statistics

def test_t_interval_matches_the_t_table():
    mean, half = study_report.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) = 4.3027
    assert math.isnan(study_report.t_interval([1.0])[1])


def test_paired_bootstrap_covers_zero_for_identical_arms_and_not_for_a_shifted_one():
    rng = np.random.default_rng(0)
    rows = rng.gamma(2.0, 1.5, size=400)                       # per-row difficulty, shared by both arms
    ref = rows + rng.normal(0, 0.05, size=(3, 400))            # 3 seeds
    same = rows + rng.normal(0, 0.05, size=(3, 400))           # the same arm trained again
    mean, lo, hi = study_report.paired_bootstrap(same - ref)
    assert lo < 0 < hi and study_report.verdict((lo, hi)) == "no detectable difference at this budget"
    mean, lo, hi = study_report.paired_bootstrap(same + 0.02 - ref)
    assert 0 < lo < 0.02 < hi and study_report.verdict((lo, hi)).startswith("worse")
    assert study_report.verdict((-hi, -lo)).startswith("better")
    assert study_report.verdict((lo, hi), (-0.01, 0.05)) == "no detectable difference at this budget"  # seeds disagree
    # one seed: the bootstrap CI of a mean is close to the normal interval mean ± 1.96 sd / sqrt(n)
    d = rng.normal(0.1, 1.0, size=(1, 2000))
    mean, lo, hi = study_report.paired_bootstrap(d)
    half = 1.96 * d.std(ddof=1) / math.sqrt(2000)
    assert lo == pytest.approx(mean - half, abs=0.15 * half) and hi == pytest.approx(mean + half, abs=0.15 * half)


# ----------------------------------------------------------------------------- a whole study, killed and resumed

def _in_process(cmd, env, out, log_path, what, children):
    """study_runner._call without a subprocess (each would import torch again): the same command lines, run here."""
    import contextlib

    import generic_runner
    from perplexity import runner as perplexity

    out.write(f"$ {' '.join(cmd)}\n")
    script, argv = cmd[1], cmd[2:]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        if script.startswith("run_"):
            generic_runner.main(study.runner_default_config(script), argv)
        else:
            perplexity.main(argv)


def test_study_runs_reports_and_resumes_without_retraining(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(study_runner, "_call", _in_process)
    path = _study_file(tmp_path, {"baseline": {"runner": "run_tid.py", "set": {"tid.method": "none"}},
                                  "random": {"runner": "run_tid.py", "set": {"tid.method": "random"}}})
    argv = ["--study", path, "--config", "configs/quickstart.yaml", "--out", str(tmp_path / "out"),
            *(a for s in [*TINY, *_outputs(tmp_path)] for a in ("--set", s))]
    study_runner.main(argv)
    report = json.loads((tmp_path / "out/summary.json").read_text())
    assert set(report["arms"]) == {"baseline", "random"} and report["heldout_rows"] == 12
    assert report["comparisons"]["random"]["verdict"]
    md = (tmp_path / "out/summary.md").read_text()
    assert "| baseline (reference) |" in md and "`tid.method`: 'none' -> 'random'" in md
    assert {p.name for p in (tmp_path / "out/figures").iterdir()} == {"val_curves.png", "heldout.png"}
    for m in report["runs"]:
        assert m["val_bits_per_token"] == pytest.approx(m["val_loss"] / math.log(2))
        assert m["final_step"] == 4
    _check_best_and_last(tmp_path, report, md)

    # as if the second run had been killed after step 2: its last.pt is the step-2 state, no record of finishing
    s = study.load_study(path)
    s.out_dir = tmp_path / "out"
    first, second = study.resolve_runs(s, ["configs/quickstart.yaml"], [*TINY, *_outputs(tmp_path)])
    (s.dir / "runs" / f"{second.name}.json").unlink()
    ckpt = tmp_path / "ck" / second.name
    (ckpt / "last.pt").write_bytes((ckpt / "step_2.pt").read_bytes())
    first_mtime = (tmp_path / "ck" / first.name / "last.pt").stat().st_mtime_ns
    assert study_runner.run_state(first) == "scored" and study_runner.run_state(second) == "partial"
    assert "--resume" in study_runner.train_command(second)
    study_runner.main(argv)
    assert (tmp_path / "ck" / first.name / "last.pt").stat().st_mtime_ns == first_mtime   # not retrained
    log = (s.dir / "runs" / f"{second.name}.log").read_text()
    assert log.count("--resume") == 1 and study_runner.run_state(second) == "scored"
    assert "resumed from step 2" in log
    report = json.loads((tmp_path / "out/summary.json").read_text())
    assert [m["final_step"] for m in report["runs"]] == [4, 4]


def _check_best_and_last(tmp_path, report, md):
    """Each run is scored at best.pt (its best validation step) and at last.pt; both are reported with their
    own paired comparison, and the epochs and unique tokens of every arm are in summary.md."""
    from models.checkpoint import load_checkpoint
    from train_logs import load_losses

    for m in report["runs"]:
        val = load_losses(m["run"], tmp_path / "logs")["val"]
        best = val["step"][int(np.argmin(val["loss"]))]
        assert m["heldout_step"] == 4 and m["best_heldout_step"] == m["best_step"] == best
        last = json.loads((tmp_path / "logs/perplexity-losses" / f"{m['run']}.json").read_text())
        assert m["heldout_corpus_ppl"] == last["corpus_ppl"]
        ckpt = load_checkpoint(tmp_path / "ck" / m["run"] / "last.pt")["config"]["train"]
        assert m["epochs"] == ckpt["epochs"] and ckpt["max_steps"] == 4
    nll = {(m["arm"], c): np.log(study_report.load_plain_pickle(
        tmp_path / "logs/perplexity-losses" / f"{m['run']}{'' if c == 'last' else '-best'}.pkl")) for m in report["runs"]
        for c in ("last", "best")}
    for c, key in (("last", "comparisons"), ("best", "comparisons_best")):
        assert report[key]["random"]["delta_nll"] == pytest.approx(float(np.mean(nll[("random", c)] - nll[("baseline", c)])))
    assert "Held-out rows scored at best.pt" in md and "Held-out rows scored at last.pt" in md
    assert "Paired against `baseline` at best.pt" in md and "| epochs | unique train tokens | best step |" in md


def test_best_and_last_checkpoints_are_scored_and_compared_apart(tmp_path):
    from types import SimpleNamespace

    import pickle

    cfg = SimpleNamespace(checkpoint_dir=str(tmp_path / "ck"), log_dir=str(tmp_path / "logs"),
                          data=SimpleNamespace(heldout_rows=9))
    runs = [SimpleNamespace(arm=arm, seed=seed, name=f"{arm}-s{seed}", cfg=cfg)
            for seed in (1, 2) for arm in ("baseline", "other")]
    for run in runs:
        cmd = study_runner.score_command(run, 7, "best")
        assert cmd[cmd.index("--ckpt") + 1] == str(tmp_path / "ck" / run.name / "best.pt")
        assert cmd[cmd.index("--out-name") + 1] == f"{run.name}-best" != study_runner.score_command(run, 7)[
            cmd.index("--out-name") + 1]
    rng = np.random.default_rng(1)
    rows = rng.gamma(2.0, 1.5, size=50) + 1
    shift = {("other", "last"): 0.3, ("other", "best"): -0.2, ("baseline", "last"): 0.0, ("baseline", "best"): 0.0}
    out = tmp_path / "logs" / "perplexity-losses"
    out.mkdir(parents=True)
    for run in runs:
        for checkpoint in ("last", "best"):
            nll = rows + shift[(run.arm, checkpoint)] + rng.normal(0, 0.01, size=50)
            (out / f"{study_runner.scored_name(run, checkpoint)}.pkl").write_bytes(pickle.dumps(np.exp(nll).tolist()))
    s = SimpleNamespace(arms=[SimpleNamespace(name="baseline"), SimpleNamespace(name="other")], reference="baseline",
                        seeds=[1, 2])
    last, best = (study_report.comparisons(s, runs, c)["other"] for c in ("last", "best"))
    assert last["delta_nll"] == pytest.approx(0.3, abs=0.01) and last["verdict"].startswith("worse")
    assert best["delta_nll"] == pytest.approx(-0.2, abs=0.01) and best["verdict"].startswith("better")
    for checkpoint, loss in (("last", 2.0), ("best", 1.5)):
        result = {"mean": 9.0, "corpus_ppl": math.exp(loss), "loss": loss, "bpb": 1.0, "rows": 50, "step": 3}
        (out / f"{study_runner.scored_name(runs[0], checkpoint)}.json").write_text(json.dumps(result))
    assert study_report._heldout(runs[0], "best")["heldout_bits_per_token"] == pytest.approx(1.5 / math.log(2))
    assert study_report._heldout(runs[0], "last")["heldout_corpus_ppl"] == pytest.approx(math.exp(2.0))
