"""What the generation-speed figure draws, read back from the returned Figure and checked against numbers
worked out here from a small JSON in the layout benchmarks/decode_speed.py --ckpt writes ("speed" rows of
decoder / kv_cache / batch / tokens_per_s, "quality" rows of decoder / bleu / tokens_per_s, device, dtype).

Speed panel: one bar series per (decoder, kv_cache) group in order of first appearance, G groups side by
side at each sorted batch size: width = 0.8 / G, centre = batch index + (g - (G - 1) / 2) * width, a
missing batch drawn at height 0. Also: labels, titles, suptitle, the quality panel, which JSONs
`benchmark` draws or warns about, and the files written."""

import json
import warnings

import matplotlib
import numpy as np
import pytest
from matplotlib import pyplot as plt

from visualizations import benchmark_plots
from visualizations.run_logs import MissingLogWarning

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# rows deliberately not sorted by batch: batch 4 first, and HF generate only at batch 1
SPEED = [
    {"decoder": "greedy", "kv_cache": True, "batch": 4, "new_tokens": 16, "seconds": 1.0, "tokens_per_s": 360.0},
    {"decoder": "greedy", "kv_cache": False, "batch": 4, "new_tokens": 16, "seconds": 1.0, "tokens_per_s": 90.0},
    {"decoder": "greedy", "kv_cache": True, "batch": 1, "new_tokens": 16, "seconds": 1.0, "tokens_per_s": 100.0},
    {"decoder": "greedy", "kv_cache": False, "batch": 1, "new_tokens": 16, "seconds": 1.0, "tokens_per_s": 40.0},
    {"decoder": "HF generate", "kv_cache": True, "batch": 1, "new_tokens": 16, "seconds": 1.0, "tokens_per_s": 70.0},
]
QUALITY = [
    {"decoder": "greedy", "prompts": 5, "bleu": 12.34, "seconds": 1.0, "tokens_per_s": 500.0},
    {"decoder": "sample T=0.6 p=0.9", "prompts": 5, "bleu": 8.06, "seconds": 1.0, "tokens_per_s": 300.0},
    {"decoder": "beam 3", "prompts": 5, "bleu": 15.0, "seconds": 1.0, "tokens_per_s": 120.0},
]
W3 = 0.8 / 3  # three groups


def _write(tmp_path, name="generation_cpu", **payload):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"benchmark": "generation", "ckpt": "ckpt.pt", **payload}))
    return path


def _full(tmp_path, **extra):
    return _write(tmp_path, speed=SPEED, quality=QUALITY, device="cuda", dtype="bfloat16", **extra)


def _bars(ax):
    """[(left x, width, height)] per bar container, in drawing order."""
    return [[(p.get_x(), p.get_width(), p.get_height()) for p in c.patches] for c in ax.containers]


def _ticklabels(ax):
    return [t.get_text() for t in ax.get_xticklabels()]


# ----------------------------------------------------------------------------- speed panel

def test_generation_speed_bars_per_group_and_batch(tmp_path):
    """Three groups (greedy cached, greedy uncached, HF) at batches [1, 4]: width 0.8/3, centres
    i + (g - 1) * 0.8/3, heights the tokens/s of that group and batch, 0 where the group lacks the batch."""
    fig = benchmark_plots.generation_speed(_full(tmp_path))
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    expected = [  # (centres, heights) per group g = 0, 1, 2
        ([0 - W3, 1 - W3], [100.0, 360.0]),
        ([0.0, 1.0], [40.0, 90.0]),
        ([0 + W3, 1 + W3], [70.0, 0.0]),
    ]
    bars = _bars(ax)
    assert len(bars) == 3
    for got, (centres, heights) in zip(bars, expected):
        np.testing.assert_allclose([b[1] for b in got], [W3, W3], rtol=1e-12)
        np.testing.assert_allclose([b[0] for b in got], [c - W3 / 2 for c in centres], rtol=0, atol=1e-12)
        np.testing.assert_allclose([b[2] for b in got], heights, rtol=0, atol=0)


def test_generation_speed_single_group_is_centred_on_the_batch(tmp_path):
    """One group: width 0.8, bars centred on the batch index (left edges -0.4, 0.6)."""
    rows = [{"decoder": "greedy", "kv_cache": True, "batch": b, "tokens_per_s": v} for b, v in ((8, 50.0), (2, 20.0))]
    fig = benchmark_plots.generation_speed(_write(tmp_path, speed=rows))
    (got,) = _bars(fig.axes[0])
    np.testing.assert_allclose(got, [(-0.4, 0.8, 20.0), (0.6, 0.8, 50.0)], rtol=0, atol=1e-12)
    assert _ticklabels(fig.axes[0]) == ["batch 2", "batch 8"]


def test_generation_speed_axes_labels_and_legend(tmp_path):
    """Speed panel: ticks at batch indices labelled 'batch N' (sorted), y 'new tokens/s' on a log scale, the
    title names the KV cache, legend 'decoder, KV cache' / 'decoder, no cache' per group in order."""
    ax = benchmark_plots.generation_speed(_full(tmp_path)).axes[0]
    assert list(ax.get_xticks()) == [0, 1]
    assert _ticklabels(ax) == ["batch 1", "batch 4"]
    assert ax.get_ylabel() == "new tokens/s"
    assert ax.get_yscale() == "log"
    assert ax.get_title() == "speed with and without the KV cache"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "greedy, KV cache", "greedy, no cache", "HF generate, KV cache"]


def test_generation_speed_uncached_bars_are_hatched(tmp_path):
    """Cached groups are plain, the uncached group hatched; each group one colour, groups distinct."""
    ax = benchmark_plots.generation_speed(_full(tmp_path)).axes[0]
    hatches = [[p.get_hatch() for p in c.patches] for c in ax.containers]
    assert [all(h) for h in hatches] == [False, True, False]
    assert [any(h) for h in hatches] == [False, True, False]
    colours = [tuple(c.patches[0].get_facecolor()) for c in ax.containers]
    assert len(set(colours)) == 3
    assert all(tuple(p.get_facecolor()) == colours[i] for i, c in enumerate(ax.containers) for p in c.patches)


# ----------------------------------------------------------------------------- quality panel and titles

def test_generation_speed_quality_panel(tmp_path):
    """Quality panel: one bar per decoder at 0, 1, 2 with its tokens/s, ticks named by decoder, a note
    'BLEU x.x' (one decimal) above each bar, y 'new tokens/s', title naming held-out prompts and BLEU."""
    ax = benchmark_plots.generation_speed(_full(tmp_path)).axes[1]
    heights = [p.get_height() for p in ax.patches]
    centres = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    assert heights == [500.0, 300.0, 120.0]
    np.testing.assert_allclose(centres, [0, 1, 2], atol=1e-12)
    assert _ticklabels(ax) == ["greedy", "sample T=0.6 p=0.9", "beam 3"]
    notes = [(t.get_text(), tuple(t.xy)) for t in ax.texts]
    assert notes == [("BLEU 12.3", (0, 500.0)), ("BLEU 8.1", (1, 300.0)), ("BLEU 15.0", (2, 120.0))]
    assert ax.get_ylabel() == "new tokens/s"
    assert ax.get_title() == "decoders on held-out prompts (BLEU above)"


def test_generation_speed_suptitle_names_device_and_dtype(tmp_path):
    """Suptitle 'Generation: <device>, <dtype>'; '?' for each one missing from the JSON."""
    fig = benchmark_plots.generation_speed(_full(tmp_path))
    assert fig._suptitle.get_text() == "Generation: cuda, bfloat16"
    fig = benchmark_plots.generation_speed(_write(tmp_path, "b", speed=SPEED, quality=QUALITY))
    assert fig._suptitle.get_text() == "Generation: ?, ?"
    fig = benchmark_plots.generation_speed(_write(tmp_path, "c", speed=SPEED, dtype="float32"))
    assert fig._suptitle.get_text() == "Generation: ?, float32"
    fig = benchmark_plots.generation_speed(_write(tmp_path, "d", speed=SPEED, device="cpu"))
    assert fig._suptitle.get_text() == "Generation: cpu, ?"


def test_generation_speed_without_quality_or_speed(tmp_path):
    """A JSON with speed rows only draws an empty quality panel; with quality only, an empty speed panel."""
    fig = benchmark_plots.generation_speed(_write(tmp_path, "s", speed=SPEED))
    assert len(_bars(fig.axes[0])) == 3 and len(fig.axes[1].patches) == 0
    fig = benchmark_plots.generation_speed(_write(tmp_path, "q", quality=QUALITY))
    assert len(fig.axes[0].patches) == 0 and [p.get_height() for p in fig.axes[1].patches] == [500.0, 300.0, 120.0]


# ----------------------------------------------------------------------------- benchmark(): routing and files

@pytest.mark.parametrize("payload", [dict(speed=SPEED, quality=QUALITY), dict(speed=SPEED), dict(quality=QUALITY)])
def test_generation_speed_figure_via_dispatch(tmp_path, payload):
    """benchmark() draws the generation figure for a JSON with speed rows, quality rows or both (no warning),
    the same bars generation_speed draws."""
    path = _write(tmp_path, device="cpu", dtype="float32", **payload)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingLogWarning)
        fig = benchmark_plots.benchmark(str(path))
    assert fig._suptitle.get_text() == "Generation: cpu, float32"
    speed_heights = [[b[2] for b in c] for c in _bars(fig.axes[0])]
    assert speed_heights == ([[100.0, 360.0], [40.0, 90.0], [70.0, 0.0]] if "speed" in payload else [])
    assert [p.get_height() for p in fig.axes[1].patches] == ([500.0, 300.0, 120.0] if "quality" in payload else [])


def test_generation_speed_dispatch_writes_files(tmp_path):
    """benchmark(out_dir=, formats=) writes <json stem>.<format> for each format, returns those paths in order."""
    path = _full(tmp_path)
    out = tmp_path / "figs"
    paths = benchmark_plots.benchmark(path, out_dir=out, formats=("png", "svg"))
    assert paths == [out / "generation_cpu.png", out / "generation_cpu.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()
    assert sorted(p.name for p in out.iterdir()) == ["generation_cpu.png", "generation_cpu.svg"]
    assert plt.get_fignums() == []


def test_generation_speed_default_format_is_png(tmp_path):
    """Without formats: one PNG named after the JSON, from both generation_speed and benchmark."""
    path = _full(tmp_path)
    assert benchmark_plots.benchmark(path, out_dir=tmp_path / "a") == [tmp_path / "a" / "generation_cpu.png"]
    assert benchmark_plots.generation_speed(path, out_dir=tmp_path / "b") == [tmp_path / "b" / "generation_cpu.png"]
    assert (tmp_path / "b" / "generation_cpu.png").read_bytes()[:4] == b"\x89PNG"


def test_generation_speed_missing_file_warns(tmp_path):
    """A path that is not a file: MissingLogWarning naming the path, no figure, nothing written."""
    missing = tmp_path / "nope.json"
    with pytest.warns(MissingLogWarning, match="no benchmark results at .*nope.json"):
        assert benchmark_plots.benchmark(missing, out_dir=tmp_path / "out") is None
    assert not (tmp_path / "out").exists()


def test_generation_speed_other_json_is_refused_with_a_warning(tmp_path):
    """A JSON with neither speed nor quality rows (the plain decode run's 'results' layout): a warning
    naming the file and saying it is not a generation benchmark, None, nothing written."""
    path = tmp_path / "decode_speed_cpu.json"
    path.write_text(json.dumps({"benchmark": "decode_speed", "device": "cpu", "results": SPEED}))
    with pytest.warns(MissingLogWarning) as record:
        assert benchmark_plots.benchmark(path, out_dir=tmp_path / "out") is None
    assert len(record) == 1
    assert str(record[0].message) == f"{path}: not a generation benchmark; no figure"
    assert not (tmp_path / "out").exists()
