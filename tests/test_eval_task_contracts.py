"""Evaluation tasks and the generation loop: which sentences cloze picks (the last word alphabetic, at
least min_words words, reproducible by seed), which rows story_continuation keeps, task files (UTF-8
whatever the locale, every accepted layout, errors naming the line), and run_task's decoding settings
(the CLI's defaults, a seed per batch, new tokens at most half the context)."""

import json
import math
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import REPO, c_locale_env
from dataset_definitions.sources import DataError
from eval import run as eval_run
from eval import tasks

# ----------------------------------------------------------------------------- cloze


def test_cloze_keeps_sentences_whose_last_word_is_alphabetic():
    """One sentence per row, so the pick is forced: the label is the last word (normalised), the prompt
    the words before it; "42." is no word to predict, whatever the words before it are."""
    rows = ["I saw 3 dogs.", "We 7 ate cake.", "The price was 42.", "Tom ran to the Park!"]
    task = tasks.cloze(rows, limit=10)
    assert task.prompts == ["I saw 3", "We 7 ate", "Tom ran to the"]
    assert task.labels == ["dogs", "cake", "park"]


def test_cloze_takes_sentences_of_exactly_min_words():
    rows = ["Cats chase small mice.", "Dogs bark."]
    assert tasks.cloze(rows, limit=10).labels == ["mice"]                      # default min_words 4
    assert tasks.cloze(rows, limit=10, min_words=2).labels == ["mice", "bark"]
    with pytest.raises(DataError, match="no items"):
        tasks.cloze(rows, limit=10, min_words=5)


def _story_rows(n=30, k=6):
    """n rows of k sentences each, every sentence ending in its own alphabetic word."""
    def name(i):
        return "".join("abcdefghij"[int(d)] for d in str(i)) + "o"
    return [" ".join(f"Then the child saw a {name(r * k + s)}." for s in range(k)) for r in range(n)]


def test_cloze_picks_reproducibly_by_seed():
    """The sentence picked in each row comes from random.Random(seed): the same seed gives the same task,
    the default is seed 0 (eval.run's --seed default), and another seed picks other sentences."""
    rows = _story_rows()
    a = tasks.cloze(rows, limit=100, seed=3)
    assert tasks.cloze(rows, limit=100, seed=3).labels == a.labels
    assert tasks.cloze(rows, limit=100).labels == tasks.cloze(rows, limit=100, seed=0).labels
    assert tasks.cloze(rows, limit=100, seed=0).labels != a.labels
    # the reference: the same draw written out
    rng = random.Random(3)
    expected = []
    for row in rows:
        sentences = [s.split() for s in row.replace(". ", ".\n").splitlines()]
        expected.append(tasks.word(rng.choice(sentences)[-1]))
    assert a.labels == expected


# ----------------------------------------------------------------------------- story continuation

def test_story_continuation_keeps_rows_of_exactly_prompt_plus_four_words():
    """A row of prompt_words + 4 words is long enough (a 4-word continuation), one word fewer is not."""
    ok = " ".join(f"w{i}" for i in range(20))
    short = " ".join(f"s{i}" for i in range(19))
    task = tasks.story_continuation([short, ok], limit=10, prompt_words=16)
    assert task.prompts == [" ".join(f"w{i}" for i in range(16))]
    assert task.labels == ["w16 w17 w18 w19"]


def test_story_continuation_defaults_and_generation_budget():
    """Defaults: 16 prompt words (eval.run's --prompt-words default) and 24 reference words; the task
    generates twice as many tokens as the reference has words (room for subword splits)."""
    row = " ".join(f"w{i}" for i in range(60))
    task = tasks.story_continuation([row], limit=1)
    assert task.prompts == [" ".join(f"w{i}" for i in range(16))]
    assert task.labels == [" ".join(f"w{i}" for i in range(16, 40))]
    for reference_words in (5, 24, 30):
        t = tasks.story_continuation([row], limit=1, reference_words=reference_words)
        assert isinstance(t.max_gen_len, int) and t.max_gen_len == 2 * reference_words
        assert not t.greedy  # sampled like any generation, with --temperature


def test_cloze_decodes_greedily_a_few_tokens_for_one_word():
    """Cloze scores the first word of a greedy continuation of at most 8 tokens (one word is enough)."""
    task = tasks.cloze(["The cat sat on the mat."], limit=1)
    assert task.greedy and task.max_gen_len == 8
    assert task.postprocess("Mat, then", "mat") == "mat"


# ----------------------------------------------------------------------------- task files

def _jsonl(tmp_path, lines) -> str:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_task_file_layouts(tmp_path):
    """"answer", "label" or "reference" holds the label; a list of references stays a list; the prompt
    is kept as written (non-ASCII included) and is the SARI source unless "source" is given."""
    path = _jsonl(tmp_path, [json.dumps({"prompt": "Où est le café ?", "answer": "ici"}),
                             json.dumps({"prompt": "2+2", "label": 4}),
                             json.dumps({"prompt": "p3", "reference": ["a b", "c d"], "source": "src"}),
                             ""])
    task = tasks.from_jsonl(path, limit=10)
    assert task.prompts == ["Où est le café ?", "2+2", "p3"]
    assert task.labels == ["ici", "4", ["a b", "c d"]]
    assert task.sources == ["Où est le café ?", "2+2", "src"] and task.name == "qa"


@pytest.mark.parametrize("bad, needs", [('{"answer": "x"}', "needs"), ('{"prompt": "x"}', "needs"),
                                        ("5", "needs"), ('"just text"', "needs"), ("{broken", "is not JSON")])
def test_task_file_errors_name_the_line(tmp_path, bad, needs):
    """Line numbers count from 1 as an editor shows them (the blank line 2 included)."""
    path = _jsonl(tmp_path, [json.dumps({"prompt": "p", "answer": "a"}), "", bad])
    with pytest.raises(DataError, match=f"line 3 {needs}"):
        tasks.from_jsonl(path, limit=10)


def test_task_files_are_read_as_utf8_whatever_the_locale(tmp_path):
    """Under a C (ASCII) locale without Python's UTF-8 mode, a UTF-8 task file still reads the same."""
    path = _jsonl(tmp_path, [json.dumps({"prompt": "naïve café", "answer": "über"}, ensure_ascii=False)])
    code = ("import json, sys; from eval.tasks import from_jsonl; t = from_jsonl(sys.argv[1], 5); "
            "sys.stdout.buffer.write(json.dumps([t.prompts, t.labels]).encode())")
    env = c_locale_env()
    out = subprocess.run([sys.executable, "-c", code, path], cwd=REPO, env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert json.loads(out.stdout) == [["naïve café"], ["über"]]


# ----------------------------------------------------------------------------- run_task

class _Generator:
    """A stand-in Generator: records each generate call, returns `gen_len` tokens per prompt."""

    def __init__(self, context):
        self.model = SimpleNamespace(max_seq_len=context)
        self.tokenizer = SimpleNamespace(decode=lambda ids: " ".join(f"w{i}" for i in ids))
        self.calls = []

    def prompt_tokens(self, prompt):
        return [1, *range(2, 2 + len(prompt.split()))]

    def generate(self, batch, max_gen_len, temperature, top_p, seed=None):
        self.calls.append({"batch": [list(p) for p in batch], "max_gen_len": max_gen_len,
                           "temperature": temperature, "top_p": top_p, "seed": seed})
        return [list(range(100, 100 + max_gen_len)) for _ in batch], None


def _task(n=3, max_gen_len=48):
    return tasks.Task("t", [f"p{i} a b" for i in range(n)], [f"w{i}" for i in range(n)], ("accuracy",),
                      max_gen_len=max_gen_len)


def test_run_task_defaults_are_the_command_line_defaults(monkeypatch):
    """run_task's defaults decode as `python -m eval.run` does by default: its --temperature, --top-p,
    --seed (batch i seeded with seed + i) and --batch-size."""
    seen = []
    monkeypatch.setattr(eval_run, "evaluate", seen.append)
    eval_run.main(["--ckpt", "x.pt"])
    cli = seen[0]
    gen = _Generator(context=256)
    out = eval_run.run_task(gen, _task(n=3))
    assert [len(c["batch"]) for c in gen.calls] == [cli.batch_size] * 3
    assert [c["seed"] for c in gen.calls] == [cli.seed + i for i in range(3)]
    assert {(c["temperature"], c["top_p"]) for c in gen.calls} == {(cli.temperature, cli.top_p)}
    assert (out["runtime"]["batch_size"], out["runtime"]["temperature"]) == (cli.batch_size, cli.temperature)


@pytest.mark.parametrize("context, max_gen_len, max_new_tokens, expected",
                         [(64, 48, None, 32), (63, 48, None, 31), (256, 48, None, 48), (64, 48, 1, 1),
                          (64, 48, 10, 10), (3, 48, None, 1)])
def test_new_tokens_are_at_most_half_the_context_and_at_least_one(context, max_gen_len, max_new_tokens, expected):
    """gen_len = max(1, min(--max-new-tokens or the task's max_gen_len, context // 2)) (the module
    docstring); prompts are cut from the left to the rest of the context, BOS kept."""
    gen = _Generator(context)
    out = eval_run.run_task(gen, _task(n=2, max_gen_len=max_gen_len), max_new_tokens=max_new_tokens)
    assert {c["max_gen_len"] for c in gen.calls} == {expected}
    assert out["runtime"]["max_gen_len"] == expected
    assert all(len(p) <= context - expected and p[0] == 1 for c in gen.calls for p in c["batch"])


class _ClockedGenerator(_Generator):
    """A _Generator on a fake clock: each generate call takes one second per prompt in its batch."""

    def __init__(self, context, clock):
        super().__init__(context)
        self.clock = clock

    def generate(self, batch, max_gen_len, temperature, top_p, seed=None):
        self.clock[0] += float(len(batch))
        return super().generate(batch, max_gen_len, temperature, top_p, seed)


def test_batches_seeds_time_and_new_tokens_over_unequal_batches(monkeypatch):
    """5 prompts at batch size 2 decode as batches of 2, 2, 1 (in order), seeded seed + batch index; a
    batch's time is shared by its prompts (here 1 s each on a fake clock, 5 s in all), and the new
    tokens are counted over all batches (5 * gen_len). Reference: the fake clock and hand counts."""
    clock = [100.0]
    monkeypatch.setattr(eval_run.time, "perf_counter", lambda: clock[0])
    gen = _ClockedGenerator(context=64, clock=clock)
    task = _task(n=5, max_gen_len=7)
    out = eval_run.run_task(gen, task, temperature=0.8, top_p=0.5, seed=10, batch_size=2)
    assert [c["batch"] for c in gen.calls] == [[gen.prompt_tokens(p) for p in task.prompts[i:i + 2]] for i in (0, 2, 4)]
    assert [c["seed"] for c in gen.calls] == [10, 11, 12]
    assert {(c["temperature"], c["top_p"], c["max_gen_len"]) for c in gen.calls} == {(0.8, 0.5, 7)}
    rt = out["runtime"]
    assert (rt["prompts"], rt["seconds"], rt["mean_s"], rt["std_s"]) == (5, 5.0, 1.0, 0.0)
    assert rt["new_tokens"] == 5 * 7 and rt["tokens_per_s"] == 7.0 and rt["batch_size"] == 2
    expected = " ".join(f"w{i}" for i in range(100, 107))
    assert out["generations"] == [expected] * 5 and out["results"] == [expected] * 5   # keep: as generated
    assert out["prompts"] == task.prompts and out["labels"] == task.labels


def test_unseeded_run_task_passes_no_seed_and_a_greedy_task_ignores_temperature():
    """seed=None leaves every batch unseeded; a greedy task decodes at temperature 0 whatever is asked,
    and says so in its runtime block."""
    gen = _Generator(context=64)
    eval_run.run_task(gen, _task(n=3), temperature=0.9, seed=None)
    assert [c["seed"] for c in gen.calls] == [None] * 3 and {c["temperature"] for c in gen.calls} == {0.9}
    greedy = tasks.Task("g", ["a b"], ["w100"], ("accuracy",), max_gen_len=2, greedy=True)
    gen = _Generator(context=64)
    out = eval_run.run_task(gen, greedy, temperature=0.9)
    assert gen.calls[0]["temperature"] == 0.0 and out["runtime"]["temperature"] == 0.0


def test_table_has_a_column_per_metric_any_task_has_and_a_dash_where_a_task_lacks_it():
    """One header, a rule as long as it, then per task: the name (cut to 20), n, each metric in METRICS
    order (9.2f, '-' where missing), mean and p95 seconds per prompt, tokens/s. Reference: the lines
    written out by hand."""
    rt = {"prompts": 3, "mean_s": 0.5, "p95_s": 0.75, "tokens_per_s": 12.34}
    results = {"a_task_name_longer_than_twenty": {"eval": {"bleu-1": 50.0}, "runtime": rt},
               "cloze": {"eval": {"accuracy": 33.333}, "runtime": rt | {"prompts": 12}}}
    header = f"{'task':20s} {'n':>5s} {'accuracy':>9s} {'bleu-1':>9s} {'s/prompt':>9s} {'p95 s':>8s} {'tok/s':>9s}"
    assert eval_run.table(results).split("\n") == [
        header, "-" * len(header),
        "a_task_name_longer_t     3         -     50.00    0.5000   0.7500      12.3",
        "cloze                   12     33.33         -    0.5000   0.7500      12.3"]



def test_a_task_file_stops_at_the_limit(tmp_path):
    """limit items, the first ones in file order, even when the file has more."""
    path = _jsonl(tmp_path, [json.dumps({"prompt": f"q{i}", "answer": f"a{i}"}) for i in range(3)])
    task = tasks.from_jsonl(path, limit=2)
    assert (task.prompts, task.labels) == (["q0", "q1"], ["a0", "a1"])


def test_dialogue_task_settings_and_a_file_of_no_usable_dialogue(tmp_path):
    """The dialogue task generates up to 64 tokens, cut at the next turn; a file whose records all lack an
    Assistant turn is refused, naming what was skipped and why."""
    good = tmp_path / "hh.jsonl"
    good.write_text(json.dumps({"chosen": "\n\nHuman: hi there\n\nAssistant: hello you"}) + "\n", encoding="utf-8")
    task = tasks.dialogue(good, limit=5)
    assert task.max_gen_len == 64 and task.labels == ["hello you"]
    assert task.postprocess("fine thanks\n\nHuman: and you?", task.labels[0]) == "fine thanks"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"chosen": "\n\nHuman: only a question"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"has no usable dialogues \(skipped: \{'no Assistant turn': 1\}\)"):
        tasks.dialogue(bad, limit=5)


@pytest.mark.parametrize("tokens, budget, expected", [
    ([1, 2, 3], 3, [1, 2, 3]), ([1, 2, 3], 5, [1, 2, 3]), ([1, 2, 3, 4, 5], 3, [1, 4, 5]), ([1, 2, 3, 4, 5], 1, [1])])
def test_a_long_prompt_keeps_its_first_token_and_the_last_budget_minus_one(tokens, budget, expected):
    from eval.run import _fit
    assert _fit(tokens, budget) == expected


@pytest.fixture
def built(monkeypatch):
    """build_tasks with the task builders and the data preparation recorded: (call, prepare calls)."""
    from types import SimpleNamespace

    import eval.run as run

    prepared = []

    def prepare_run_data(cfg, **kw):
        prepared.append((cfg, kw))
        return SimpleNamespace(rows=lambda split: [f"{split} row"])
    monkeypatch.setattr(run, "prepare_run_data", prepare_run_data)
    for name in ("story_continuation", "cloze", "dialogue", "from_jsonl"):
        monkeypatch.setattr(run.task_defs, name, lambda *a, _name=name, **kw: (_name, a, kw))

    def call(tasks=None, task_file=(), metrics="accuracy"):
        args = SimpleNamespace(tasks=tasks, task_file=list(task_file), metrics=metrics, limit=5, prompt_words=3,
                               seed=7, dialogue_file="d.jsonl")
        return run.build_tasks(args, "cfg")
    return call, prepared


def test_without_task_names_the_builtin_tasks_run_unless_task_files_are_given(built):
    """No --tasks: every built-in task, or with --task-file only the files' tasks; the held-out rows are read
    once, quietly, and only for the tasks that need them (story continuation, cloze)."""
    call, prepared = built
    assert [t[0] for t in call()] == ["story_continuation", "cloze", "dialogue"]
    assert len(prepared) == 1 and prepared[0][1]["log"]("anything") is None
    assert call(task_file=["mine.jsonl"]) == [("from_jsonl", ("mine.jsonl", 5, ["accuracy"]), {})]
    assert call(tasks="dialogue") == [("dialogue", ("d.jsonl", 5), {})] and len(prepared) == 1
    assert call(tasks="cloze")[0] == ("cloze", (["heldout row"], 5), {"seed": 7}) and len(prepared) == 2
    assert call(tasks="story_continuation")[0] == ("story_continuation", (["heldout row"], 5, 3), {})
    assert len(prepared) == 3


def test_an_unknown_metric_is_refused_naming_it(built):
    call, _ = built
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['nope'\]"):
        call(tasks="dialogue", metrics="accuracy,nope")


@pytest.mark.parametrize("seconds, tokens_per_s", [([0.0, 0.0], math.nan), ([0.25, 0.25], 10 / 0.5)])
def test_tokens_per_second_is_nan_when_no_time_was_measured(seconds, tokens_per_s):
    from eval.run import runtime_stats
    got = runtime_stats(seconds, 10, 2, 8, 0.0)["tokens_per_s"]
    assert (math.isnan(got) and math.isnan(tokens_per_s)) or got == pytest.approx(tokens_per_s)


# ----------------------------------------------------------------------------- the command line

def test_the_command_line_defaults_and_types(monkeypatch, capsys):
    """`python -m eval.run`'s documented defaults, its numbers parsed as numbers, --ckpt required."""
    seen = []
    monkeypatch.setattr(eval_run, "evaluate", seen.append)
    eval_run.main(["--ckpt", "x.pt"])
    a = seen[-1]
    assert (a.ckpt, a.tasks, a.task_file, a.out, a.device, a.dtype) == ("x.pt", None, [], None, "auto", "auto")
    assert (a.limit, a.prompt_words, a.temperature, a.top_p, a.seed, a.batch_size, a.max_new_tokens) == (
        100, 16, 0.6, 0.9, 0, 1, None)
    assert a.metrics == ",".join(tasks.FILE_METRICS) and a.dialogue_file == str(tasks.DEFAULT_DIALOGUE_FILE)
    eval_run.main(["--ckpt", "x.pt", "--limit", "3", "--prompt-words", "7", "--temperature", "0.5", "--top-p", "0.8",
                   "--seed", "4", "--batch-size", "2", "--max-new-tokens", "5", "--task-file", "a.jsonl",
                   "--task-file", "b.jsonl"])
    a = seen[-1]
    assert (a.limit, a.prompt_words, a.temperature, a.top_p, a.seed, a.batch_size, a.max_new_tokens) == (
        3, 7, 0.5, 0.8, 4, 2, 5) and a.task_file == ["a.jsonl", "b.jsonl"]
    assert all(isinstance(v, float) for v in (a.temperature, a.top_p))
    assert all(isinstance(v, int) for v in (a.limit, a.prompt_words, a.seed, a.batch_size, a.max_new_tokens))
    with pytest.raises(SystemExit) as e:
        eval_run.main([])
    assert e.value.code == 2 and "--ckpt" in capsys.readouterr().err


RUNTIME = {"prompts": 1, "mean_s": 0.5, "p95_s": 0.5, "tokens_per_s": 3.0}


def _evaluate(monkeypatch, tmp_path, argv, run_name="tiny"):
    """eval.run.main in tmp_path on stand-ins for load_model, Generator, build_tasks and run_task, each call
    recorded: returns the records."""
    seen = {}
    cfg = SimpleNamespace(run_name=run_name)
    loaded = SimpleNamespace(model="the model", tokenizer="the tokenizer", device="the device", dtype="torch.bfloat16",
                             step=12, run_config=lambda: cfg)

    def load_model(ckpt, **options):
        seen["load"] = (ckpt, options)
        return loaded

    class Generator(_Generator):
        def __init__(self, model, tokenizer, device):
            super().__init__(context=64)
            self.device = device
            seen["generator"] = (model, tokenizer, device, self)

        def generate(self, batch, max_gen_len, temperature=0.6, top_p=0.9, seed=None):   # Generator's defaults
            return super().generate(batch, max_gen_len, temperature, top_p, seed)

    def build_tasks(args, cfg_):
        assert cfg_ is cfg
        return [_task(), tasks.Task("u", ["q"], ["a"], ("bleu-1",))]

    def run_task(generator, task, *settings):
        assert generator is seen["generator"][3]
        seen.setdefault("run_task", []).append((task.name, settings))
        return {"prompts": ["p"], "results": ["naïve"], "labels": ["l"], "eval": {"accuracy": 50.0},
                "runtime": RUNTIME}
    monkeypatch.setattr(eval_run, "load_model", load_model)
    monkeypatch.setattr(eval_run, "Generator", Generator)
    monkeypatch.setattr(eval_run, "build_tasks", build_tasks)
    monkeypatch.setattr(eval_run, "run_task", run_task)
    monkeypatch.chdir(tmp_path)
    eval_run.main(argv)
    return seen


@pytest.mark.parametrize("run_name, out, written", [("café", None, "results/eval/café.json"),
                                                    ("", None, "results/eval/runs.json"),
                                                    ("tiny", "a/b/c.json", "a/b/c.json")])
def test_evaluate_hands_the_settings_on_and_writes_one_document(monkeypatch, tmp_path, capsys, run_name, out,
                                                                 written):
    """evaluate: load_model gets the batch size, device and dtype; the generator the loaded model's device;
    a short greedy warm-up precedes the tasks; run_task gets every sampling setting; the document (default
    results/eval/<run>.json, the run named by the checkpoint's folder when its config has no name, parent
    folders made) records ckpt, run, step, the settings with device and dtype, and each task's results, as
    UTF-8 text."""
    argv = ["--ckpt", "runs/last.pt", "--temperature", "0.5", "--top-p", "0.8", "--seed", "4", "--batch-size", "2",
            "--max-new-tokens", "5", "--limit", "3", "--device", "cpu", "--dtype", "bf16",
            *(["--out", out] if out else [])]
    seen = _evaluate(monkeypatch, tmp_path, argv, run_name)
    assert seen["load"] == ("runs/last.pt", {"max_batch": 2, "device": "cpu", "dtype": "bf16"})
    assert seen["generator"][:3] == ("the model", "the tokenizer", "the device")
    warm_up = seen["generator"][3].calls
    assert len(warm_up) == 1 and len(warm_up[0]["batch"]) == 1
    assert (warm_up[0]["max_gen_len"], warm_up[0]["temperature"]) == (2, 0)
    assert seen["run_task"] == [("t", (0.5, 0.8, 4, 2, 5)), ("u", (0.5, 0.8, 4, 2, 5))]
    text = (tmp_path / written).read_text(encoding="utf-8")
    doc = json.loads(text)
    assert doc == {"ckpt": "runs/last.pt", "run": run_name or "runs", "step": 12,
                   "settings": {"temperature": 0.5, "top_p": 0.8, "seed": 4, "limit": 3, "batch_size": 2,
                                "max_new_tokens": 5, "device": "the device", "dtype": "torch.bfloat16"},
                   "tasks": {name: {"prompts": ["p"], "results": ["naïve"], "labels": ["l"],
                                    "eval": {"accuracy": 50.0}, "runtime": RUNTIME}
                             for name in ("t", "u")}}
    assert "naïve" in text and "\\u" not in text                     # UTF-8, not escaped
    said = capsys.readouterr().out
    assert said.splitlines()[-1] == f"wrote {written}" and said.splitlines()[0].startswith("task")


@pytest.mark.parametrize("limit, batch_size, ok", [(1, 1, True), (0, 1, False), (1, 0, False), (-1, 2, False)])
def test_evaluate_refuses_a_limit_or_batch_size_below_one(monkeypatch, tmp_path, capsys, limit, batch_size, ok):
    argv = ["--ckpt", "x.pt", "--limit", str(limit), "--batch-size", str(batch_size)]
    if ok:
        assert "load" in _evaluate(monkeypatch, tmp_path, argv)
        return
    with pytest.raises(SystemExit) as e:
        _evaluate(monkeypatch, tmp_path, argv)
    assert e.value.code == 1 and capsys.readouterr().err.strip() == "error: --limit and --batch-size must be positive"
