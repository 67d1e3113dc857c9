"""visualizations: each figure from small synthetic logs, the CLI, missing runs warned about, and both
notebooks executed headless on the logs of tiny training runs (from the repo root and from visualizations/)."""

import json
import math
import pickle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from conftest import REPO, tiny_run_config
from train_logs import RunLogger
from visualizations import benchmark_plots, plots
from visualizations.figures import smooth
from visualizations.run_logs import MissingLogWarning, repo_path


def _fake_run(log_dir, run, steps=40, tid=False, moe=False, seed=0):
    """A run's logs written by the trainer's own RunLogger: decaying loss, cosine lr, TID / MoE stats."""
    rng = np.random.default_rng(seed)
    meta = {"config": {"train": {"batch_size": 4, "grad_accum": 2, "grad_clip": 1.0}, "model": {"context": 32}},
            "params": 1000, "active_params": 1000}
    log = RunLogger(run, log_dir, meta)
    log.log_eval(0, 6.0, 4.5)
    for step in range(1, steps + 1):
        stats = {}
        if tid:
            stats = {"tid_target_ratio": 0.2, "tid_drop_ratio": 0.2 + 0.02 * rng.standard_normal(),
                     "tid_score_time": 0.003, "tid_step_time_without_scoring": 0.01, "tid_method": "entropy"}
        if moe:
            load = rng.dirichlet(np.ones(4), size=2) * 2  # (layers, experts), sums to top_k = 2
            stats.update({f"moe_load_l{l}_e{e}": load[l, e] for l in range(2) for e in range(4)}, moe_dropped=0.01)
        loss = 2 + 4 * math.exp(-step / 15) + 0.1 * rng.standard_normal()
        log.log_step(step, loss, 1e-3 * math.cos(step / steps), 1 + rng.random(), 0.013, 256, 0.013 * step, stats)
        if step % 10 == 0:
            log.log_eval(step, 2 + 4 * math.exp(-step / 15), 2.0)
    log.save()


def _fake_perplexity(log_dir, run, seed=0):
    ppl = np.exp(np.random.default_rng(seed).normal(3, 0.5, 200))
    (log_dir / "perplexity-losses").mkdir(parents=True, exist_ok=True)
    with open(log_dir / "perplexity-losses" / f"{run}.pkl", "wb") as f:
        pickle.dump(ppl.tolist(), f)
    summary = {"rows": 200, "mean": ppl.mean(), "median": float(np.median(ppl)), "corpus_ppl": 21.0, "bpb": 1.1}
    (log_dir / "perplexity-losses" / f"{run}.json").write_text(json.dumps(summary))


@pytest.fixture
def logs(tmp_path):
    log_dir = tmp_path / "logs"
    _fake_run(log_dir, "dense")
    _fake_run(log_dir, "tid", tid=True, seed=1)
    _fake_run(log_dir, "moe", moe=True, seed=2)
    for i, run in enumerate(("dense", "tid")):
        _fake_perplexity(log_dir, run, seed=i)
    speed = [{"decoder": "greedy", "kv_cache": c, "batch": b, "new_tokens": 16, "seconds": 1.0,
              "tokens_per_s": b * (100 if c else 30)} for b in (1, 8) for c in (True, False)]
    quality = [{"decoder": d, "prompts": 10, "bleu": 3.0 + k, "seconds": 1.0, "tokens_per_s": 100 / (k + 1)}
               for k, d in enumerate(("greedy", "beam 5", "beam 10"))]
    (tmp_path / "generation_cpu.json").write_text(json.dumps(
        {"speed": speed, "quality": quality, "device": "cpu", "dtype": "float32"}))
    return log_dir


def _assert_png(paths, name):
    assert [p.name for p in paths] == [f"{name}.png"]
    data = paths[0].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


RUNS = ["dense", "tid", "moe"]
FIGURES = {
    "loss": lambda d, out: plots.loss_curves(RUNS, d, ema=0.8, log_scale=True, out_dir=out),
    "lr_grad_norm": lambda d, out: plots.lr_grad_norm(RUNS, d, out_dir=out),
    "tid": lambda d, out: plots.tid_overhead(RUNS, d, out_dir=out),
    "moe_load": lambda d, out: plots.moe_load(RUNS, d, out_dir=out),
    "perplexity": lambda d, out: plots.perplexity(RUNS[:2], d, out_dir=out),
    "training_time": lambda d, out: plots.training_time(RUNS, d, out_dir=out),
    "generation_cpu": lambda d, out: benchmark_plots.generation_speed(d.parent / "generation_cpu.json", out_dir=out),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_each_figure_writes_a_png(logs, tmp_path, name):
    _assert_png(FIGURES[name](logs, tmp_path / "out"), name)


def test_figure_without_out_dir_is_returned_and_svg_on_request(logs, tmp_path):
    fig = plots.loss_curves(["dense"], logs)
    assert len(fig.axes) == 3 and fig.axes[2].get_xlabel() == "tokens seen"
    # tokens axis: batch 4 x accum 2 x context 32 = 256 tokens per step, from the times log
    assert fig.axes[2].lines[0].get_xdata()[-1] == 40 * 256
    paths = plots.training_time(["dense"], logs, out_dir=tmp_path / "f", formats=("png", "svg"))
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in paths)


def test_relative_log_dir_falls_back_to_the_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as a notebook started in visualizations/ asks for "logs"
    assert repo_path("visualizations") == REPO / "visualizations"
    (tmp_path / "visualizations").mkdir()
    assert repo_path("visualizations") == Path("visualizations")  # found here: used as given


def test_smooth_is_a_debiased_ema_that_skips_nans():
    assert np.allclose(smooth([1.0, 1.0, 1.0], 0.9), 1.0)      # no pull towards the zero start
    assert np.allclose(smooth([0.0, 10.0], 0.5), [0.0, 5 / 0.75])
    out = smooth([math.nan, 2.0, math.nan, 2.0], 0.9)
    assert math.isnan(out[0]) and np.allclose(out[1:], 2.0)
    assert np.array_equal(smooth([3.0, 1.0], 0.0), [3.0, 1.0])
    assert np.array_equal(smooth([3.0, math.nan, 1.0], 0.0), [3.0, math.nan, 1.0], equal_nan=True)  # raw: a gap
    with pytest.raises(ValueError):
        smooth([1.0], 1.0)


def test_smooth_defaults_to_ema_09_and_reads_ints_and_missing_values_as_floats():
    """The default ema is 0.9 (TensorBoard's); integer or None entries (a step that did not log the value) come
    back as floats and NaN gaps, raw or smoothed (reference: a hand-computed debiased EMA)."""
    np.testing.assert_allclose(smooth([0.0, 10.0]), [0.0, 10 * 0.1 / (1 - 0.81)])
    raw = smooth([3, None, 1], 0.0)
    assert raw.dtype == float and np.array_equal(raw, [3.0, math.nan, 1.0], equal_nan=True)
    np.testing.assert_allclose(smooth([2, None, 2], 0.5), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("which", ["x", "y"])
def test_log_axis_ticks_one_two_five_per_decade_as_plain_numbers_on_the_axis_named(which):
    from matplotlib.ticker import LogLocator

    from visualizations.figures import log_axis
    fig, ax = matplotlib.pyplot.subplots()
    log_axis(ax, which)
    axis, other = (ax.xaxis, ax.yaxis) if which == "x" else (ax.yaxis, ax.xaxis)
    assert getattr(ax, f"get_{which}scale")() == "log"
    ticks = [t for t in axis.get_major_locator().tick_values(0.3, 12) if 0.3 <= t <= 12]
    np.testing.assert_allclose(ticks, [0.5, 1, 2, 5, 10])
    assert [axis.get_major_formatter()(t) for t in ticks] == ["0.5", "1", "2", "5", "10"]
    assert axis.get_minor_formatter()(3.0) == ""
    assert not isinstance(other.get_major_locator(), LogLocator)
    matplotlib.pyplot.close(fig)


def test_new_figure_is_a_grid_of_w_by_h_inch_gridded_panels_laid_out_by_constraints():
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    from visualizations.figures import new_figure
    for args, kwargs, shape, inches in [((3, 2), {}, (2, 3), (16.5, 8.0)), ((1,), {}, (1, 1), (5.5, 4.0)),
                                        ((2,), {"w": 3, "h": 2}, (1, 2), (6.0, 2.0))]:
        fig, axes = new_figure(*args, **kwargs)
        assert axes.shape == shape and tuple(fig.get_size_inches()) == inches
        assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
        for ax in axes.flat:
            line = ax.xaxis.get_gridlines()[0]
            assert line.get_visible() and line.get_alpha() == 0.3
        matplotlib.pyplot.close(fig)


def test_save_or_return_writes_120_dpi_files_and_closes_that_figure_only(tmp_path):
    """A 2 x 1 panel figure (11 x 4 inches) saves as a 1320 x 480 PNG; the figure saved is closed, a figure
    made after it (the current one) stays open; without out_dir the figure comes back open."""
    import struct

    from visualizations.figures import new_figure, save_or_return
    fig, _ = new_figure(2)
    other = matplotlib.pyplot.figure()
    [path] = save_or_return(fig, "panels", tmp_path / "out", ("png",))
    assert path == tmp_path / "out" / "panels.png"
    assert struct.unpack(">II", path.read_bytes()[16:24]) == (1320, 480)          # the PNG header's width, height
    open_figures = matplotlib.pyplot.get_fignums()
    assert fig.number not in open_figures and other.number in open_figures
    assert save_or_return(other, "x", None, ("png",)) is other and other.number in matplotlib.pyplot.get_fignums()
    matplotlib.pyplot.close(other)


def test_missing_run_warns_and_the_others_still_plot(logs, tmp_path):
    with pytest.warns(MissingLogWarning, match="'ghost'"):
        fig = plots.loss_curves(["ghost", "dense", "tid"], logs)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][:2] == ["dense", "tid"]
    (logs / "times" / "tid.pkl").unlink()  # no times log: no wall-time curve, the rest still drawn
    with pytest.warns(MissingLogWarning) as record:
        saved = plots.plot_all(["dense", "ghost", "tid"], logs, tmp_path / "out", bench=[tmp_path / "nope.json"])
    messages = " ".join(str(w.message) for w in record)
    assert "'ghost'" in messages and "tid.pkl" in messages and "nope.json" in messages
    assert set(saved) == {"loss", "lr_grad_norm", "tid", "perplexity", "training_time"}  # no MoE run: no figure
    for name, paths in saved.items():
        _assert_png(paths, name)


def test_cli_writes_every_figure_and_fails_only_with_nothing_to_draw(logs, tmp_path, capsys):
    out = tmp_path / "figures"
    bench = [str(logs.parent / "generation_cpu.json")]
    rc = plots.main(["--runs", *RUNS, "ghost", "--log-dir", str(logs), "--out", str(out), "--svg", "--bench", *bench])
    assert rc == 0
    names = {"loss", "lr_grad_norm", "tid", "moe_load", "perplexity", "training_time", "generation_cpu"}
    assert {p.name for p in out.iterdir()} == {f"{n}.{ext}" for n in names for ext in ("png", "svg")}
    assert "warning: run 'ghost' left out" in capsys.readouterr().err
    assert plots.main(["--runs", "ghost", "--log-dir", str(logs), "--out", str(out), "--bench"]) == 1


# ----------------------------------------------------------------------------- notebooks on a real (tiny) run

@pytest.fixture(scope="module")
def quickstart_logs(tmp_path_factory):
    """Logs of tiny baseline, TID and Falcon runs named like the quickstart runs, plus perplexities."""
    from generic_runner import train

    tmp = tmp_path_factory.mktemp("quickstart")
    for run, sets in (("baseline-quickstart", []), ("tid-quickstart", ["tid.method=entropy", "tid.p_start=0.2"]),
                      ("falcon-quickstart", ["model.preset=falcon", "model.n_experts=4", "model.top_k=2"])):
        train(tiny_run_config(tmp, [f"run_name={run}", *sets]))
    _fake_perplexity(tmp / "logs", "baseline-quickstart")  # the perplexity runner's output format
    return tmp / "logs"


def _execute(notebook, cwd, monkeypatch, **params):
    """Run a notebook top to bottom in `cwd`, with a cell setting `params` after its parameters cell."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline, as in Jupyter
    nb = nbformat.read(REPO / "visualizations" / notebook, as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _images(outputs):
    return sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.parametrize("cwd", [".", "visualizations"])
def test_viz_notebook_runs_on_a_tiny_run(quickstart_logs, monkeypatch, cwd):
    outputs = _execute("viz.ipynb", REPO / cwd, monkeypatch, LOG_DIR=str(quickstart_logs))  # RUNS: its default
    assert _images(outputs) == 2  # loss curves, lr and gradient norm


def test_compare_runs_notebook_shows_every_figure(quickstart_logs, monkeypatch):
    runs = ["baseline-quickstart", "tid-quickstart", "falcon-quickstart"]
    outputs = _execute("compare_runs.ipynb", REPO / "visualizations", monkeypatch, RUNS=runs,
                       LOG_DIR=str(quickstart_logs))
    assert _images(outputs) == 6  # loss, lr/grad norm, TID, MoE load, perplexity, training time


def test_compare_runs_notebook_saves_figures_from_the_repo_root(quickstart_logs, monkeypatch, tmp_path):
    _execute("compare_runs.ipynb", REPO, monkeypatch, LOG_DIR=str(quickstart_logs), OUT_DIR=str(tmp_path))
    assert {p.name for p in tmp_path.glob("*.png")} == {"loss.png", "lr_grad_norm.png", "perplexity.png",
                                                        "training_time.png"}


# ----------------------------------------------------------------------------- a look inside a checkpoint

@pytest.fixture(scope="module")
def inspect_gen(quickstart_logs):
    from visualizations import model_views
    return model_views.load(quickstart_logs.parent / "checkpoints/baseline-quickstart/last.pt")


def test_logit_lens_last_stage_is_the_models_prediction(inspect_gen):
    import torch
    from visualizations import model_views
    gen = inspect_gen
    labels, tops, probs = model_views.logit_lens(gen, "Once upon a time")
    ids = gen.prompt_tokens("Once upon a time")
    L, T = gen.model.cfg.n_layers, len(ids)
    assert probs.shape == (L + 1, T) and len(tops) == L + 1 and len(labels) == T
    with torch.no_grad():
        full = gen.model.forward_full(torch.tensor([ids]))[0].softmax(-1)        # the model's own forward
    top_p, top_id = full.max(-1)
    assert tops[-1] == [gen.tokenizer.decode([i]) or "<s>" for i in top_id.tolist()]
    np.testing.assert_allclose(probs[-1], top_p.numpy(), rtol=1e-5)
    assert ((probs > 0) & (probs <= 1)).all()
    # stage 0 reads the embedding alone: the same guess at every position holding the same token
    embed_only = gen.model.head(gen.model.embed(torch.tensor([ids]))[0])[0].softmax(-1).max(-1).values
    np.testing.assert_allclose(probs[0], embed_only.detach().numpy(), rtol=1e-5)


def test_token_losses_match_cross_entropy_by_hand(inspect_gen):
    import torch
    from visualizations import model_views
    gen = inspect_gen
    text = "Lily saw a big dog."
    labels, nll = model_views.token_losses(gen, text)
    ids = gen.prompt_tokens(text)
    with torch.no_grad():
        logp = gen.model.forward_full(torch.tensor([ids]))[0].log_softmax(-1)
    expected = [-logp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]
    np.testing.assert_allclose(nll, expected, rtol=1e-5)
    assert "".join(labels) == gen.tokenizer.decode(ids[1:])


def test_attention_heatmaps(inspect_gen, tmp_path):
    import torch
    from visualizations.attention import attention_maps, save_heatmaps
    gen = inspect_gen
    ids = gen.prompt_tokens("Tom saw a big dog")
    maps = attention_maps(gen.model, torch.tensor([ids]))
    assert len(maps) == gen.model.cfg.n_layers and maps[0].shape == (gen.model.cfg.n_heads, len(ids), len(ids))
    assert torch.allclose(maps[0].sum(-1), torch.ones(gen.model.cfg.n_heads, len(ids)), atol=1e-5)
    assert torch.triu(maps[1], diagonal=1).abs().max() == 0          # causal
    paths = save_heatmaps(maps, [str(i) for i in ids], tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_inspect_notebook_runs_on_a_tiny_checkpoint(quickstart_logs, monkeypatch):
    ckpt = quickstart_logs.parent / "checkpoints/baseline-quickstart/last.pt"
    outputs = _execute("inspect.ipynb", REPO / "visualizations", monkeypatch, CKPT=str(ckpt))
    layers = 2                                   # tiny_run_config's model.n_layers
    assert _images(outputs) == 1 + layers + 1    # logit lens, one attention figure per layer, token loss


@pytest.mark.parametrize("position", ["rotary", "learned"])
def test_attention_maps_are_the_weights_each_layer_applies_to_its_values(position):
    """attention_maps(model, tokens)[l] @ v, heads merged and projected by wo, is layer l's own attention
    output (read by a forward hook): with rotary positions the maps include the rotation."""
    import torch

    from models import ModelConfig
    from modelskv.model import build
    from visualizations.attention import attention_maps

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("baseline", vocab_size=37, context=9, d_model=12, n_layers=2, n_heads=3, d_ff=20,
                                  position=position)
    model = build(cfg, max_batch=1)
    tokens = torch.randint(0, 37, (1, 9))
    seen = []
    hooks = [b.attn.register_forward_hook(lambda m, args, out: seen.append((args, out))) for b in model.blocks]
    try:
        maps = attention_maps(model, tokens)
    finally:
        for h in hooks:
            h.remove()
    assert len(maps) == len(seen) == 2
    for block, att, (args, out) in zip(model.blocks, maps, seen):
        assert att.shape == (3, 9, 9) and torch.allclose(att.sum(-1), torch.ones(3, 9), atol=1e-6)
        with torch.no_grad():
            _, _, v = block.attn.project(*args[:2])
            y = (att.unsqueeze(0) @ v).transpose(1, 2).reshape(1, 9, 12)
            torch.testing.assert_close(block.attn.wo(y), out, atol=1e-5, rtol=1e-5)
    assert [len(b.attn._forward_pre_hooks) for b in model.blocks] == [0, 0]     # its hooks removed


def test_token_labels_are_each_tokens_text_and_s_for_one_that_decodes_to_nothing():
    from visualizations.attention import token_labels

    class Tokenizer:
        def decode(self, ids):
            return "".join("" if i == 0 else chr(ord("a") + i) for i in ids)
    assert token_labels(Tokenizer(), [0, 1, 2, 0]) == ["<s>", "b", "c", "<s>"]


def test_heatmap_figure_is_a_row_of_square_panels_one_per_head_on_a_fixed_probability_scale():
    """heatmap_figure(att (H, T, T), labels, layer): H panels in one row, panel h showing att[h] on the colour
    scale 0..1 (heads and layers compare), titled with layer and head, tokens as ticks on both axes; the
    figure is H square panels wide, taller with more tokens."""
    import torch
    from matplotlib import pyplot as plt

    from visualizations.attention import heatmap_figure
    att = torch.rand(3, 4, 4).softmax(-1)
    labels = ["<s>", "a", "b", "c"]
    fig = heatmap_figure(att, labels, layer=5)
    assert len(fig.axes) == 3 and len({ax.get_position().y0 for ax in fig.axes}) == 1
    for h, ax in enumerate(fig.axes):
        (image,) = ax.get_images()
        np.testing.assert_array_equal(image.get_array(), att[h].numpy())
        assert image.get_clim() == (0, 1) and ax.get_title() == f"layer 5 head {h}"
        assert [t.get_text() for t in ax.get_xticklabels()] == labels == [t.get_text() for t in ax.get_yticklabels()]
        assert list(ax.get_xticks()) == list(range(4)) == list(ax.get_yticks())
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("key (attended to)", "query")
    width, height = fig.get_size_inches()
    assert width == pytest.approx(3 * height)
    taller = heatmap_figure(torch.rand(1, 12, 12).softmax(-1), [str(i) for i in range(12)], 0)
    assert taller.get_size_inches()[1] > height
    plt.close("all")


def test_save_heatmaps_writes_one_png_per_layer_titled_with_its_layer_and_closes_them(tmp_path, monkeypatch):
    import torch
    from matplotlib import pyplot as plt

    from visualizations import attention
    titles, real = [], attention.heatmap_figure

    def spy(att, labels, layer):
        fig = real(att, labels, layer)
        titles.append([ax.get_title() for ax in fig.axes])
        return fig
    monkeypatch.setattr(attention, "heatmap_figure", spy)
    before = plt.get_fignums()
    out = tmp_path / "a" / "b"
    maps = [torch.rand(2, 3, 3).softmax(-1) for _ in range(3)]
    paths = attention.save_heatmaps(maps, ["x", "y", "z"], out)
    assert paths == [out / f"attention_layer{i}.png" for i in range(3)]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths) and plt.get_fignums() == before
    assert titles == [[f"layer {i} head 0", f"layer {i} head 1"] for i in range(3)]


def test_attention_command_writes_each_layers_heatmaps_and_fails_in_one_line_on_a_bad_checkpoint(
        quickstart_logs, tmp_path, capsys):
    from visualizations import attention
    ckpt = quickstart_logs.parent / "checkpoints/baseline-quickstart/last.pt"
    out = tmp_path / "maps"
    attention.main(["--ckpt", str(ckpt), "--prompt", "Tom saw a dog", "--out", str(out)])
    printed = capsys.readouterr().out.strip()
    assert sorted(p.name for p in out.iterdir()) == ["attention_layer0.png", "attention_layer1.png"]
    assert printed.startswith("wrote 2 heatmaps (") and printed.endswith(f"tokens, 2 heads) to {out}/")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        attention.main(["--ckpt", str(tmp_path / "bad.pt"), "--prompt", "x", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith("error: ") and "\n" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("missing", ["--ckpt", "--prompt"])
def test_attention_command_needs_a_checkpoint_and_a_prompt_and_writes_to_attention_maps_by_default(
        quickstart_logs, tmp_path, monkeypatch, capsys, missing):
    from visualizations import attention
    ckpt = quickstart_logs.parent / "checkpoints/baseline-quickstart/last.pt"
    args = {"--ckpt": str(ckpt), "--prompt": "Tom saw a dog"}
    with pytest.raises(SystemExit) as e:
        attention.main([a for k, v in args.items() if k != missing for a in (k, v)])
    assert e.value.code == 2 and f"the following arguments are required: {missing}" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    attention.main([a for kv in args.items() for a in kv])
    assert sorted(p.name for p in (tmp_path / "attention_maps").iterdir()) == ["attention_layer0.png",
                                                                               "attention_layer1.png"]
