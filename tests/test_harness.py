"""lm-evaluation-harness model `small-lm`: local tasks answered as the perplexity scorer scores them and as
lm_eval's `--model hf` answers them on our exported folder, through simple_evaluate and through the CLI."""

import json
import math
import sys

import pytest
import torch

from conftest import run_cli
from perplexity.runner import load_scorer
from perplexity.scoring import score_rows
from test_perplexity import per_token_loop

CONTEXT = 32  # tiny_run_config's model.context
MC = [  # contexts of unequal length, the last longer than the context (left-truncated)
    {"question": "Tom had a red ball. He gave it to", "choices": [" his sister.", " the big dog in the park.", " nobody"],
     "label": 0},
    {"question": "Lily went to the park with her mom. They saw", "choices": [" a bird.", " a tall tree and a cat."],
     "label": 1},
    {"question": "Once upon a time there was a little girl named Lily. She liked to play with her friend Tom in "
                 "the big green park near her house, and one day they found a", "choices": [" box", " dog.", " ball"],
     "label": 2},
]
LONG = [  # several sliding windows each
    "Once upon a time there was a little girl named Lily. She liked to play in the park with her friend Tom "
    "every day. One day they found a big red ball under a tree and they were very happy.",
    "Tom saw a big dog in the garden. He ran to his mom and said, look at the dog! His mom smiled and gave "
    "him a cookie. The dog wagged its tail and they played together until the sun went down.",
]
SHORT = ["The dog was happy.", "Lily saw a cat.", "Tom and Lily went to the park."]  # one window each
GEN = ["Once upon a time", "Lily and Tom went to the", "Tom",
       "Once upon a time there was a little girl named Lily. She liked to play with her friend Tom in the big park"]


def _task(name: str, data, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")


def _write_tasks(folder):
    """Four tasks over local jsonl files: multiple choice, rolling (long and short texts), generation."""
    folder.mkdir()
    rows = {"mc": MC, "roll": [{"text": t} for t in LONG], "roll_short": [{"text": t} for t in SHORT],
            "gen": [{"prompt": p, "answer": " the"} for p in GEN]}
    for name, docs in rows.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    rolling = ('output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
               "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    bodies = {
        "mc": 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
              "doc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        "roll": rolling, "roll_short": rolling,
        "gen": 'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
               'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 10\n  do_sample: false\n'
               "metric_list:\n  - metric: exact_match\n",
    }
    for name, body in bodies.items():
        (folder / f"tiny_{name}.yaml").write_text(_task(f"tiny_{name}", folder / f"{name}.jsonl", body))


@pytest.fixture(scope="module")
def lm_eval(trained, tmp_path_factory):
    """lm_eval with small-lm registered, offline, and the local tasks."""
    lm_eval = pytest.importorskip("lm_eval")
    import eval.harness  # noqa: F401  (registers small-lm)
    from lm_eval.tasks import TaskManager

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        root = tmp_path_factory.mktemp("harness")
        _write_tasks(root / "tasks")
        ckpt = trained / "checkpoints/tiny/last.pt"
        yield {"module": lm_eval, "ckpt": str(ckpt), "root": root,
               "tasks": TaskManager(include_path=str(root / "tasks"), include_defaults=False)}


def _evaluate(env, model: str, model_args: dict, tasks: list[str]) -> dict:
    return env["module"].simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=env["tasks"],
                                         log_samples=True, batch_size=1)


@pytest.fixture(scope="module")
def ours(lm_eval):
    """small-lm on every task, 3 requests per batch (several batches of unequal lengths)."""
    args = {"ckpt": lm_eval["ckpt"], "device": "cpu", "batch_size": 3}
    return _evaluate(lm_eval, "small-lm", args, ["tiny_mc", "tiny_roll", "tiny_roll_short", "tiny_gen"])


@pytest.fixture(scope="module")
def scorer(lm_eval):
    """The perplexity scorer of the training class (no KV cache) on the same checkpoint."""
    return load_scorer(lm_eval["ckpt"], device="cpu", training_model=True)


def _samples(results: dict, task: str) -> list[dict]:
    return sorted(results["samples"][task], key=lambda s: s["doc_id"])


def _scored(scorer, row: list[int]) -> float:
    """Summed NLL of row[1:] by the perplexity scorer, one window (the row fits the context)."""
    assert len(row) <= CONTEXT + 1
    return float(score_rows(scorer.nll_fn, [row], CONTEXT, batch_size=1)[0][0])


# ----------------------------------------------------------------------------- against our perplexity scorer

def test_multiple_choice_loglikelihoods_equal_the_scorer_on_the_same_tokens(ours, scorer):
    tok = scorer.tokenizer
    truncated = 0
    for sample in _samples(ours, "tiny_mc"):
        for (context, continuation), (logprob, _) in zip(sample["arguments"], sample["filtered_resps"]):
            ctx = [tok.start_id, *tok.encode(context)]
            whole = [tok.start_id, *tok.encode(context + continuation)]
            n = len(whole) - len(ctx)
            assert whole[:len(ctx)] == ctx and n > 0  # the pair splits where the context's tokens end
            row = whole[-(CONTEXT + 1):]               # left truncation to the context + 1 target
            truncated += len(row) < len(whole)
            expected = _scored(scorer, row[:-n]) - _scored(scorer, row)
            assert logprob == pytest.approx(expected, abs=1e-4)
    assert truncated >= 3  # every choice of the long question


def test_rolling_loglikelihoods_equal_the_scorer_and_a_per_token_loop(ours, scorer):
    tok = scorer.tokenizer
    samples = _samples(ours, "tiny_roll")
    lls = [s["filtered_resps"][0] for s in samples]
    rows = [[tok.start_id, *tok.encode(s["doc"]["text"])] for s in samples]
    assert min(len(r) for r in rows) > 2 * CONTEXT  # three windows or more at the default stride
    stride = CONTEXT // 2
    nll, count = score_rows(scorer.nll_fn, rows, CONTEXT, stride, batch_size=2)
    loop = [per_token_loop(scorer.logits_fn, r, CONTEXT, stride) for r in rows]
    assert lls == pytest.approx((-nll).tolist(), abs=1e-4)
    assert lls == pytest.approx([-v for v in loop], abs=1e-4)
    assert count.tolist() == [len(r) - 1 for r in rows]  # every token of the text once, no EOS
    n_bytes = sum(len(s["doc"]["text"].encode("utf-8")) for s in samples)
    assert ours["results"]["tiny_roll"]["bits_per_byte,none"] == pytest.approx(-sum(lls) / math.log(2) / n_bytes)


def test_greedy_flag_is_true_exactly_for_the_greedy_continuation(lm_eval):
    from eval.harness import SmallLM
    from generators.generation import Generator

    lm = SmallLM(lm_eval["ckpt"], device="cpu", batch_size=2)
    generator = Generator(lm.model, lm.tokenizer, lm.device)
    prompts = [lm.tok_encode("Once upon a time"), lm.tok_encode("Lily")]
    greedy, _ = generator.generate(prompts, 6, temperature=0, stop_at_eos=False)
    changed = [g[:-1] + [(g[-1] + 1) % lm.tokenizer.vocab_size] for g in greedy]
    answers = lm._loglikelihood_tokens([(None, p, c) for p, c in zip(prompts * 2, greedy + changed)])
    assert [a[1] for a in answers] == [True, True, False, False]
    assert answers[2][0] < answers[0][0] and answers[3][0] < answers[1][0]  # greedy is the likeliest token


# ----------------------------------------------------------------------------- against --model hf on the export

@pytest.fixture(scope="module")
def hf_folder(lm_eval):
    pytest.importorskip("accelerate")  # lm_eval's hf model needs it
    from models.convert import main as convert

    out = lm_eval["root"] / "hf"
    convert(["--ckpt", lm_eval["ckpt"], "--to", "hf", "--out", str(out)])
    return str(out)


def test_multiple_choice_and_generation_equal_hf_on_the_export(lm_eval, ours, hf_folder):
    hf = _evaluate(lm_eval, "hf", {"pretrained": hf_folder, "device": "cpu"}, ["tiny_mc", "tiny_gen"])
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tiny_mc"][metric] == hf["results"]["tiny_mc"][metric]
    for mine, theirs in zip(_samples(ours, "tiny_mc"), _samples(hf, "tiny_mc")):
        assert [r[0] for r in mine["filtered_resps"]] == pytest.approx([r[0] for r in theirs["filtered_resps"]],
                                                                       abs=1e-4)
        assert [r[1] for r in mine["filtered_resps"]] == [r[1] for r in theirs["filtered_resps"]]
    mine, theirs = ([s["filtered_resps"][0] for s in _samples(r, "tiny_gen")] for r in (ours, hf))
    assert mine == theirs
    assert len(set(mine)) >= 2 and any(mine)  # prompt-dependent, non-empty text
    assert ours["results"]["tiny_gen"]["exact_match,none"] == hf["results"]["tiny_gen"]["exact_match,none"]


def test_rolling_within_the_context_equals_hf_without_its_extra_bos(lm_eval, ours, hf_folder, scorer):
    """hf's default encoding puts [bos] in the scored text (log p(bos | bos) added); add_bos_token=False
    scores the text after the prefix token, as small-lm and the perplexity scorer do."""
    assert all(len(scorer.tokenizer.encode(t)) < CONTEXT for t in SHORT)
    hf = _evaluate(lm_eval, "hf", {"pretrained": hf_folder, "device": "cpu", "add_bos_token": False},
                   ["tiny_roll_short"])
    mine, theirs = ([s["filtered_resps"][0] for s in _samples(r, "tiny_roll_short")] for r in (ours, hf))
    assert mine == pytest.approx(theirs, abs=1e-4)
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ours["results"]["tiny_roll_short"][metric] == pytest.approx(hf["results"]["tiny_roll_short"][metric],
                                                                           rel=1e-5)


# ----------------------------------------------------------------------------- the command line

@pytest.fixture
def local_tasks_only(lm_eval, monkeypatch):
    """The CLI's task index without lm_eval's ~15,000 built-in tasks (indexing them takes most of a minute)."""
    from lm_eval import tasks

    class LocalTaskManager(tasks.TaskManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, include_defaults=False, **kwargs)

    monkeypatch.setattr(tasks, "TaskManager", LocalTaskManager)
    return lm_eval


def test_cli_writes_the_results_of_simple_evaluate(local_tasks_only, ours, capsys, monkeypatch):
    from lm_eval.api import registry

    from eval.lm_eval_harness import main

    # as in a fresh process: small-lm unknown to lm_eval until the command imports eval.harness
    monkeypatch.setattr(registry.model_registry, "_objs",
                        {k: v for k, v in registry.model_registry.items() if k != "small-lm"})
    monkeypatch.delitem(sys.modules, "eval.harness")
    env = local_tasks_only
    out = env["root"] / "cli"
    argv = ["--model", "small-lm", "--model_args", f"ckpt={env['ckpt']},device=cpu,batch_size=2",
            "--tasks", "tiny_mc", "--include_path", str(env["root"] / "tasks"), "--output_path", str(out)]
    code, err = run_cli(main, argv, capsys)
    assert code == 0, err
    (written,) = out.rglob("results_*.json")
    doc = json.loads(written.read_text())
    assert doc["results"]["tiny_mc"]["acc,none"] == ours["results"]["tiny_mc"]["acc,none"]


def test_model_args_win_over_what_the_command_line_always_passes(lm_eval):
    """lm_eval's CLI passes batch_size=1 and device=cuda:0 when they are not given."""
    from eval.harness import SmallLM

    lm = SmallLM.create_from_arg_string(f"ckpt={lm_eval['ckpt']},batch_size=2,device=cpu",
                                        {"batch_size": 1, "device": "cuda:0", "max_batch_size": None})
    assert (lm.batch_size, lm.model.max_batch, lm.device.type) == (2, 2, "cpu")
    lm = SmallLM.create_from_arg_obj({"ckpt": lm_eval["ckpt"]}, {"batch_size": 3, "device": "cuda:0"})
    assert (lm.batch_size, lm.device.type) == (3, "cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("model_args,message", [
    ("max_length=64", "error: max_length=64 exceeds the model's context (32): give at most 32"),
    ("batch_size=auto", "error: batch_size='auto' must be a positive whole number"),
    ("stride=40", "error: stride=40 exceeds max_length (32): it would skip tokens"),
])
def test_bad_model_args_are_one_line(local_tasks_only, model_args, message, capsys):
    from eval.lm_eval_harness import main

    env = local_tasks_only
    argv = ["--model", "small-lm", "--model_args", f"ckpt={env['ckpt']},{model_args}", "--tasks", "tiny_mc",
            "--include_path", str(env["root"] / "tasks")]
    code, err = run_cli(main, argv, capsys)
    assert code == 1 and err.strip().splitlines()[-1] == message


def test_missing_lm_eval_is_one_line_naming_the_extra(monkeypatch, capsys):
    from eval.lm_eval_harness import main

    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # import lm_eval fails as when it is not installed
    monkeypatch.delitem(sys.modules, "eval.harness", raising=False)
    code, err = run_cli(main, ["--model", "small-lm"], capsys)
    assert (code, err) == (1, 'error: lm-evaluation-harness is not installed: pip install -e ".[lmeval]"\n')


def test_generation_settings_it_cannot_honour_are_refused(lm_eval):
    from eval.harness import SmallLM

    lm = SmallLM(lm_eval["ckpt"], device="cpu")
    with pytest.raises(ValueError, match=r"\['repetition_penalty'\] are not supported"):
        lm._generate(["Tom"], {"until": ["."], "max_gen_toks": 4, "repetition_penalty": 1.2})
    with pytest.raises(ValueError, match="max_gen_toks=32 leaves no room for a prompt in max_length=32"):
        lm._generate(["Tom"], {"until": ["."], "max_gen_toks": 32})
    greedy = lm._generate(GEN, {"until": [], "max_gen_toks": 6})
    assert greedy == lm._generate(GEN, {"until": [], "max_gen_toks": 6, "do_sample": False, "temperature": 5.0})
    torch.manual_seed(0)
    assert lm._generate(GEN, {"until": [], "max_gen_toks": 6, "do_sample": True, "temperature": 5.0}) != greedy


def test_the_command_reads_its_arguments_from_sys_argv_as_lm_eval_and_puts_sys_argv_back(lm_eval, monkeypatch,
                                                                                          capsys):
    """main() without argv takes sys.argv[1:]; lm_eval's parser sees the program as "lm-eval" (its usage
    errors say so); sys.argv is restored afterwards, even when lm_eval exits."""
    from eval.lm_eval_harness import main

    monkeypatch.setattr(sys, "argv", ["lm_eval_harness.py", "--no-such-option"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "lm-eval: error:" in err and "--no-such-option" in err
    assert sys.argv == ["lm_eval_harness.py", "--no-such-option"]


def test_settings_lm_eval_passes_fill_what_the_model_args_leave_out(lm_eval):
    """create_from_arg_string: the command line's batch_size and device apply where --model_args has none."""
    from eval.harness import SmallLM

    lm = SmallLM.create_from_arg_string(f"ckpt={lm_eval['ckpt']}", {"batch_size": 3, "device": "cpu"})
    assert (lm.batch_size, lm.model.max_batch, lm.device.type) == (3, 3, "cpu")


def test_a_generation_request_without_max_gen_toks_takes_256_and_is_refused_past_the_context(lm_eval):
    """No max_gen_toks in a task's generation_kwargs: lm_eval's default 256, which leaves no room for a prompt
    in this model's 32 positions: a ValueError naming both and the fix."""
    from lm_eval.api.instance import Instance

    from eval.harness import SmallLM

    lm = SmallLM.create_from_arg_obj({"ckpt": lm_eval["ckpt"], "device": "cpu"})
    request = Instance(request_type="generate_until", doc={}, arguments=("Once upon", {"until": ["."]}), idx=0)
    with pytest.raises(ValueError, match=r"max_gen_toks=256 leaves no room for a prompt in max_length=32: "
                                         r"pass --gen_kwargs max_gen_toks=N with N < 32"):
        lm.generate_until([request])


class _CacheHook:
    """Stands in for lm_eval's CacheHook (--use_cache): records each answer reported to it."""

    def __init__(self):
        self.calls = []

    def add_partial(self, attr, req, res):
        self.calls.append((attr, req, res))


def test_rolling_requests_use_the_stride_given_and_report_each_answer_to_lm_evals_cache(lm_eval, scorer):
    """model_args stride=8: log p(text) = -(the scorer's summed NLL at stride 8), not at the default 16; each
    answer goes to lm_eval's cache hook under loglikelihood_rolling with its text."""
    from lm_eval.api.instance import Instance

    from eval.harness import SmallLM

    lm = SmallLM.create_from_arg_obj({"ckpt": lm_eval["ckpt"], "device": "cpu", "stride": 8, "batch_size": 2})
    lm.set_cache_hook(hook := _CacheHook())
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i) for i, t in enumerate(LONG)]
    got = lm.loglikelihood_rolling(requests)
    rows = [[scorer.tokenizer.start_id, *scorer.tokenizer.encode(t)] for t in LONG]
    at_8, _ = score_rows(scorer.nll_fn, rows, CONTEXT, 8, batch_size=2)
    at_16, _ = score_rows(scorer.nll_fn, rows, CONTEXT, 16, batch_size=2)
    assert got == pytest.approx((-at_8).tolist(), abs=1e-4) and got != pytest.approx((-at_16).tolist(), abs=1e-3)
    assert hook.calls == [("loglikelihood_rolling", (t,), v) for t, v in zip(LONG, got)]


def test_generations_come_back_in_request_order_and_go_to_lm_evals_cache(lm_eval):
    """generate_until over requests of two settings, interleaved: each answer in its request's place equals
    that request generated alone, and goes to the cache hook with the request's arguments."""
    from lm_eval.api.instance import Instance

    from eval.harness import SmallLM

    lm = SmallLM.create_from_arg_obj({"ckpt": lm_eval["ckpt"], "device": "cpu", "batch_size": 4})
    settings = [{"until": ["."], "max_gen_toks": 6}, {"max_gen_toks": 3, "until": ["\n"]}]
    requests = [Instance(request_type="generate_until", doc={}, arguments=(p, settings[i % 2]), idx=i)
                for i, p in enumerate(GEN[:3] + ["Lily had a"])]
    lm.set_cache_hook(hook := _CacheHook())
    got = lm.generate_until(requests)
    alone = [SmallLM.create_from_arg_obj({"ckpt": lm_eval["ckpt"], "device": "cpu", "batch_size": 1})
             .generate_until([r])[0] for r in requests]
    assert got == alone and len(set(got)) > 1
    assert sorted(hook.calls, key=lambda c: c[1][0]) == sorted(
        [("generate_until", r.args, text) for r, text in zip(requests, got)], key=lambda c: c[1][0])


def _lm(lm_eval, **args):
    from eval.harness import SmallLM

    return SmallLM.create_from_arg_obj({"ckpt": lm_eval["ckpt"], "device": "cpu", **args})


@pytest.mark.parametrize("gen_kwargs, sampled", [
    ({"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 5}, (0.7, 0.8, 5)),
    ({"do_sample": True}, (0.0, 1.0, None)),                 # sampling asked without a temperature: greedy
    ({"temperature": 0.7, "top_p": 0.8, "top_k": 5}, (0.7, 0.8, 5)),      # lm_eval: a temperature asks to sample
    ({"do_sample": False, "temperature": 0.7, "top_k": 0}, (0.0, 1.0, 0))])   # ... unless do_sample says no
def test_generation_settings_reach_the_sampler(lm_eval, monkeypatch, gen_kwargs, sampled):
    """lm_eval's do_sample / temperature / top_p / top_k as our sampler takes them (after lm_eval's own
    normalisation): greedy unless sampling is asked with a temperature, top_p 1 and no top-k unless given;
    prompts go longest first, batch_size at a time, answers come back in order."""
    from lm_eval.api.instance import Instance

    lm = _lm(lm_eval, batch_size=2)
    calls, generate = [], lm.generator.generate

    def record(prompts, max_gen_len, temperature, top_p, top_k):
        calls.append(([len(p) for p in prompts], max_gen_len, temperature, top_p, top_k))
        return generate(prompts, max_gen_len, 0.0, 1.0, None)
    monkeypatch.setattr(lm.generator, "generate", record)
    texts = ["Tom", "Once upon a time there was", "Lily and Tom"]
    args = {"until": ["."], "max_gen_toks": 4, **gen_kwargs}
    got = lm.generate_until([Instance(request_type="generate_until", doc={}, arguments=(t, args), idx=i)
                             for i, t in enumerate(texts)])
    lengths = [len(lm.tok_encode(t)) for t in texts]
    longest_first = sorted(lengths, reverse=True)
    assert calls == [(longest_first[:2], 4, *sampled), (longest_first[2:], 4, *sampled)]
    assert got == [_lm(lm_eval).generate_until([Instance(request_type="generate_until", doc={},
                                                         arguments=(t, {"until": ["."], "max_gen_toks": 4}), idx=0)])[0]
                   for t in texts]


def test_one_token_of_generation_is_allowed_and_none_is_refused(lm_eval):
    from lm_eval.api.instance import Instance

    lm = _lm(lm_eval)
    ask = [Instance(request_type="generate_until", doc={}, arguments=("Tom", {"max_gen_toks": 1}), idx=0)]
    assert len(lm.generate_until(ask)) == 1
    ask = [Instance(request_type="generate_until", doc={}, arguments=("Tom", {"max_gen_toks": 0}), idx=0)]
    with pytest.raises(ValueError, match="max_gen_toks=0 leaves no room"):
        lm.generate_until(ask)


def test_encoding_adds_bos_unless_told_not_to(lm_eval):
    lm = _lm(lm_eval)
    ids = lm.tokenizer.encode("Once upon a time")
    assert lm.tok_encode("Once upon a time") == lm.tok_encode("Once upon a time", add_special_tokens=True) == \
        [lm.tokenizer.start_id, *ids]
    assert lm.tok_encode("Once upon a time", add_special_tokens=False) == ids


def test_loglikelihoods_come_back_in_request_order_go_to_the_cache_and_refuse_a_continuation_too_long(lm_eval):
    """Requests of unequal lengths, batched longest first: each answer equals that request scored alone, goes to the
    cache hook with its (context, continuation), and an empty request list is fine; a continuation of more tokens
    than max_length is refused, one of exactly max_length is scored."""
    lm = _lm(lm_eval, batch_size=2)
    pairs = [("Once upon a time", " there"), ("Tom", " and Lily went to the park"), ("Lily and Tom", " played")]
    requests = [(p, lm.tok_encode(p[0]), lm.tok_encode(p[1], add_special_tokens=False)) for p in pairs]
    lm.set_cache_hook(hook := _CacheHook())
    got = lm._loglikelihood_tokens(requests)
    alone = [_lm(lm_eval)._loglikelihood_tokens([r])[0] for r in requests]
    assert [g[1] for g in got] == [a[1] for a in alone]
    assert [g[0] for g in got] == pytest.approx([a[0] for a in alone], abs=1e-4) and all(g[0] < 0 for g in got)
    assert hook.calls == [("loglikelihood", p, answer) for p, answer in zip(pairs, got)]
    assert lm._loglikelihood_tokens([]) == []
    exact = [(None, [lm.tokenizer.start_id], list(range(5, 5 + CONTEXT)))]
    assert len(lm._loglikelihood_tokens(exact)) == 1
    with pytest.raises(ValueError, match=f"a continuation of {CONTEXT + 1} tokens does not fit max_length={CONTEXT}"):
        lm._loglikelihood_tokens([(None, [lm.tokenizer.start_id], list(range(5, 6 + CONTEXT)))])


@pytest.fixture
def recorded_small_lm(monkeypatch):
    """SmallLM on a stand-in load_model (a model of context 32) and Generator, their calls recorded."""
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from eval import harness
    seen = {}
    model = SimpleNamespace(max_seq_len=32)

    def load_model(ckpt, **options):
        seen["load"] = (ckpt, options)
        return SimpleNamespace(model=model, tokenizer="the tokenizer", device=torch.device("meta"))
    monkeypatch.setattr(harness, "load_model", load_model)
    monkeypatch.setattr(harness, "Generator", lambda *parts: seen.setdefault("generator", parts))
    return harness.SmallLM, seen, model


def test_the_model_is_loaded_as_asked_and_windows_default_to_the_context_and_half_of_it(recorded_small_lm):
    SmallLM, seen, model = recorded_small_lm
    lm = SmallLM("c.pt")
    assert seen["load"] == ("c.pt", {"max_batch": 1, "device": "auto", "dtype": "auto"})
    assert seen["generator"] == (model, "the tokenizer", torch.device("meta"))
    assert (lm.batch_size, lm.max_length, lm.stride) == (1, 32, 16)
    lm = SmallLM("d.pt", device="cpu", dtype="bf16", batch_size="4", max_length="9")
    assert seen["load"] == ("d.pt", {"max_batch": 4, "device": "cpu", "dtype": "bf16"})
    assert (lm.batch_size, lm.max_length, lm.stride) == (4, 9, 4)                # stride: half of max_length
    assert SmallLM("c.pt", max_length=1).stride == 1                            # and at least 1
    assert SmallLM("c.pt", max_length=8, stride=8).stride == 8                  # a stride of max_length is allowed
    with pytest.raises(ValueError, match=r"^stride=9 exceeds max_length \(8\)"):
        SmallLM("c.pt", max_length=8, stride=9)


@pytest.mark.parametrize("name, value", [("batch_size", 0), ("batch_size", "-2"), ("batch_size", "2.5"),
                                         ("batch_size", "auto"), ("max_length", "x"), ("max_length", -1),
                                         ("stride", "0.5"), ("stride", -3)])
def test_model_args_that_are_not_positive_whole_numbers_are_refused_by_name(recorded_small_lm, name, value):
    SmallLM, _, _ = recorded_small_lm
    with pytest.raises(ValueError) as e:
        SmallLM("c.pt", **{name: value})
    assert str(e.value) == f"{name}={value!r} must be a positive whole number"
