"""visualizations.model_views against references computed another way: the logit lens of a rotary-position
checkpoint against the model's own forward (read by hooks), the figures read back from their artists and
compared with values worked out by hand, the attention figures against attention_maps, the per-token losses
against the cached forward, and the held-out rows against the data file the run was prepared from."""

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt

from conftest import tiny_run_config
from visualizations import model_views
from visualizations.attention import attention_maps

ANIMALS = ("dog", "cat", "bird", "fish", "frog", "duck")
PLACES = ("park", "garden", "house", "forest", "pond")


def _rows(n: int) -> list[str]:
    """n distinct small stories; every fifth one spans two lines."""
    rows = []
    for i in range(n):
        text = f"Story {i}: Tom saw a {ANIMALS[i % 6]} in the {PLACES[i % 5]}. It was {i % 7} days old."
        rows.append(text.replace(". ", ".\n", 1) if i % 5 == 0 else text)
    return rows


@pytest.fixture(scope="module")
def rotary(tmp_path_factory):
    """(checkpoint, its source rows): a 4-step rotary-position run on a jsonl file of known rows, at a high
    learning rate so that attention, and with it the rotation, already moves the predictions."""
    from generic_runner import train

    root = tmp_path_factory.mktemp("model_views")
    rows = _rows(300)
    source = root / "stories.jsonl"
    source.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    train(tiny_run_config(root, ["run_name=rotary", "model.position=rotary", "train.max_steps=4",
                                 "train.lr=0.02", "train.min_lr=0.002",
                                 "data.source=jsonl", f"data.path={source}", "data.heldout_rows=4",
                                 "data.val_rows=8"]))
    return root / "checkpoints" / "rotary" / "last.pt", rows


@pytest.fixture(scope="module")
def gen(rotary):
    return model_views.load(rotary[0])


@pytest.fixture(autouse=True)
def _close_new_figures():
    before = set(plt.get_fignums())
    yield
    for num in set(plt.get_fignums()) - before:
        plt.close(num)


def _decode_labels(tokenizer, ids):
    return [tokenizer.decode([i]) or "<s>" for i in ids]


LONG = " ".join(["Tom saw a big dog in the park and it ran home"] * 8)   # far more tokens than the context


def test_load_gives_the_checkpoints_fp32_cpu_model_with_a_single_row_cache_and_its_rotary_config(gen):
    """load(ckpt) = the checkpoint's model as configured (rotary, 2 layers), fp32, on the CPU, cached for 1 row."""
    model = gen.model
    assert model.cfg.position == "rotary" and model.cfg.n_layers == 2 and model.cfg.context == 32
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.device.type for p in model.parameters()} == {"cpu"} and torch.device(gen.device).type == "cpu"
    assert model.max_batch == 1 and not model.training
    assert gen.prompt_tokens("Tom")[0] == gen.tokenizer.start_id


def test_logit_lens_of_a_rotary_model_reads_each_stage_through_the_head_as_the_forward_computes_it(gen):
    """logit_lens stages = softmax max of head(token embedding), head(each block output hooked in forward_full)."""
    model, tok = gen.model, gen.tokenizer
    prompt = "Tom saw a dog in the park"
    ids = gen.prompt_tokens(prompt)
    labels, tops, probs = model_views.logit_lens(gen, prompt)

    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append(out[0])) for b in model.blocks]
    try:
        with torch.no_grad():
            logits = model.forward_full(torch.tensor([ids]))[0]
            stage0 = model.head(model.tok_emb(torch.tensor([ids])))[0]            # rotary: no added positions
            ref = torch.stack([stage0.softmax(-1)] + [model.head(s)[0].softmax(-1) for s in seen])
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == model.cfg.n_layers == 2
    ref_p, ref_id = ref.max(-1)
    assert probs.shape == (3, len(ids)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, ref_p.numpy(), atol=1e-7, rtol=1e-5)
    assert tops == [_decode_labels(tok, row.tolist()) for row in ref_id]
    own_p, own_id = logits.softmax(-1).max(-1)                                    # the model's own guesses
    np.testing.assert_allclose(probs[-1], own_p.numpy(), atol=1e-7, rtol=1e-5)
    assert tops[-1] == _decode_labels(tok, own_id.tolist())
    assert labels == _decode_labels(tok, ids) and labels[0] == "<s>"
    assert not np.allclose(probs[0], probs[-1])                                   # the blocks change the guess
    with torch.no_grad():                                                         # and so does the rotation:
        x = model.tok_emb(torch.tensor([ids]))                                    # without it the guesses differ
        for block in model.blocks:
            x = block(x, None)[0]
        unrotated = model.head(x)[0].softmax(-1).max(-1).values
    assert not np.allclose(unrotated.numpy(), own_p.numpy(), atol=1e-7, rtol=1e-5)


def test_logit_lens_crops_a_long_prompt_to_the_context(gen):
    """logit_lens of an over-long prompt = its first `context` tokens, the last stage the forward's own guess."""
    ids = gen.prompt_tokens(LONG)
    assert len(ids) > 32
    labels, tops, probs = model_views.logit_lens(gen, LONG)
    assert labels == _decode_labels(gen.tokenizer, ids[:32])
    assert probs.shape == (3, 32) and [len(row) for row in tops] == [32, 32, 32]
    with torch.no_grad():
        own = gen.model.forward_full(torch.tensor([ids[:32]]))[0].softmax(-1).max(-1).values
    np.testing.assert_allclose(probs[-1], own.numpy(), atol=1e-7, rtol=1e-5)


def test_logit_lens_figure_draws_probs_on_a_0_1_scale_with_each_stage_and_positions_top_token_text():
    """logit_lens_figure's image, cell texts and colours, ticks and titles, against values worked out by hand."""
    labels = ["<s>", "Tom", " saw", " a"]
    tops = [[" the", "abcdefghijk", " ", "\n"],
            ["x", " dog ", "y", "z"],
            ["p", "q", "r", "s"]]
    probs = np.array([[0.1, 0.6, 0.61, 0.9],
                      [0.0, 0.59, 1.0, 0.3],
                      [0.7, 0.2, 0.6000001, 0.5]])
    fig = model_views.logit_lens_figure(labels, tops, probs)
    ax = fig.axes[0]
    (image,) = ax.get_images()
    np.testing.assert_array_equal(image.get_array(), probs)
    assert image.get_clim() == (0, 1) and image.get_cmap().name == "Blues"
    narrow = model_views.logit_lens_figure(["a", "b"], [["x", "y"]], np.array([[0.2, 0.9]]))
    assert narrow.axes[0].get_images()[0].get_clim() == (0, 1)         # the probability scale, not the data's range
    drawn = {(t.get_position()[0], t.get_position()[1]): (t.get_text(), t.get_color()) for t in ax.texts}
    shown = [["the", "abcdefgh", "' '", "'\\n'"], ["x", "dog", "y", "z"], ["p", "q", "r", "s"]]
    white = [[False, False, True, True], [False, False, True, False], [True, False, True, False]]   # 0.6: black
    expected = {(t, s): (shown[s][t], "white" if white[s][t] else "black") for s in range(3) for t in range(4)}
    assert len(ax.texts) == 12 and drawn == expected
    assert [t.get_text() for t in ax.get_xticklabels()] == labels and list(ax.get_xticks()) == [0, 1, 2, 3]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["embedding", "block 0", "block 1"]
    assert list(ax.get_yticks()) == [0, 1, 2]
    assert ax.get_xlabel() == "input position (prediction of the next token)"
    assert ax.get_title() == "logit lens: top next token per stage and its probability"
    assert len(fig.axes) == 2                                                     # and its colour bar
    assert tuple(fig.get_size_inches()) == pytest.approx((4 + 2, 0.5 * 3 + 1.5))


def test_attention_figures_are_one_figure_per_layer_with_each_heads_attention_maps_of_the_cropped_prompt(gen):
    """attention_figures: figure l, panel h = attention_maps of the context-cropped prompt ids, [l][h]."""
    ids = gen.prompt_tokens(LONG)[:32]
    maps = attention_maps(gen.model, torch.tensor([ids]))
    labels = _decode_labels(gen.tokenizer, ids)
    figs = model_views.attention_figures(gen, LONG)
    assert len(figs) == 2 and all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    for layer, (fig, att) in enumerate(zip(figs, maps)):
        assert len(fig.axes) == 2 == att.size(0)
        for head, ax in enumerate(fig.axes):
            (image,) = ax.get_images()
            np.testing.assert_allclose(image.get_array(), att[head].numpy(), atol=1e-7)
            assert image.get_array().shape == (32, 32)
            assert ax.get_title() == f"layer {layer} head {head}"
            assert [t.get_text() for t in ax.get_xticklabels()] == labels
    short = model_views.attention_figures(gen, "Tom saw a dog")
    n = len(gen.prompt_tokens("Tom saw a dog"))
    assert [f.axes[0].get_images()[0].get_array().shape for f in short] == [(n, n)] * 2


def test_token_losses_are_each_tokens_nll_under_the_cached_forward_with_the_first_not_scored(gen):
    """token_losses = (texts of tokens 1.., -log softmax of the KV-cache forward at each next token), cropped."""
    model, tok = gen.model, gen.tokenizer
    for text in ("Tom saw a dog.\nIt ran.", LONG):
        ids = gen.prompt_tokens(text)[:32]
        labels, nll = model_views.token_losses(gen, text)
        with torch.no_grad():
            logp = model(torch.tensor([ids]), start_pos=0)[0].float().log_softmax(-1)
        ref = [-logp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]
        assert labels == _decode_labels(tok, ids[1:]) and len(nll) == len(ids) - 1
        np.testing.assert_allclose(nll, ref, atol=1e-5, rtol=1e-5)
        assert (nll > 0).all()


LABELS = ["ab", "cde", "\n", "fghij", "k", "lmnopqrstuvw", "x"]
NLL = np.array([0.5, 1.0, 2.0, 0.0, 3.0, 4.0, 1.5])          # sorted: 0 .5 1 1.5 2 3 4; 95th pct: 3 + .7 * 1 = 3.7
# width 6: "ab"+"cde"+"⏎" fill 6 exactly (kept: only > width wraps); "fghij"+"k" = 6; the 12-wide token alone
LAYOUT = [("ab", 0, 0), ("cde", 2, 0), ("⏎", 5, 0), ("fghij", 0, -1), ("k", 5, -1), ("lmnopqrstuvw", 0, -2),
          ("x", 0, -3)]


def _read_token_figure(fig):
    ax = fig.axes[0]
    return ax, [(t.get_text(), *t.get_position()) for t in ax.texts], \
        [tuple(t.get_bbox_patch().get_facecolor()) for t in ax.texts]


def test_token_loss_figure_wraps_at_width_and_colours_each_token_by_its_loss_over_the_95th_percentile():
    """token_loss_figure's wrapping at width and Reds colours up to the 95th percentile, against a layout by hand."""
    fig = model_views.token_loss_figure(LABELS, NLL, width=6)
    ax, texts, colours = _read_token_figure(fig)
    assert texts == LAYOUT
    reds = matplotlib.colormaps["Reds"]
    expected = [reds(min(v / 3.7, 1.0)) for v in NLL]
    np.testing.assert_allclose(colours, expected, atol=1e-9)
    assert colours[5] == pytest.approx(reds(1.0)) and colours[3] == pytest.approx(reds(0.0))   # 4 > 3.7 clips
    assert all(t.get_fontfamily() == ["monospace"] and t.get_fontsize() == 9 for t in ax.texts)
    assert all(t.get_horizontalalignment() == "left" and t.get_verticalalignment() == "center" for t in ax.texts)
    assert ax.get_xlim() == (0, 6) and ax.get_ylim() == (-4, 1) and not ax.axison
    cbar = fig.axes[1]
    scale = next(c for c in cbar.collections if isinstance(c, matplotlib.collections.QuadMesh))
    assert scale.get_cmap().name == "Reds"                                # the colour bar is the boxes' colours
    assert cbar.get_ylim() == pytest.approx((0.0, 3.7)) and cbar.get_ylabel() == "token NLL (nats)"
    assert ax.get_title() == "per-token loss, mean 1.71 nats over 7 tokens"      # 12 / 7 = 1.714
    assert tuple(fig.get_size_inches()) == pytest.approx((0.1 * 6 + 1.5, 0.3 * 4 + 1.0))


def test_token_loss_figure_with_a_given_vmax_a_first_token_wider_than_the_row_and_all_zero_losses():
    """token_loss_figure with a given vmax, an over-wide first token, zero losses, width 90: layouts by hand."""
    reds = matplotlib.colormaps["Reds"]
    fig = model_views.token_loss_figure(LABELS, NLL, width=6, vmax=2.0)
    ax, texts, colours = _read_token_figure(fig)
    assert texts == LAYOUT
    np.testing.assert_allclose(colours, [reds(min(v / 2.0, 1.0)) for v in NLL], atol=1e-9)
    assert fig.axes[1].get_ylim() == pytest.approx((0.0, 2.0))

    fig = model_views.token_loss_figure(["abcdefgh", "i", "a\nb"], np.array([0.0, 0.0, 0.0]), width=4)
    ax, texts, colours = _read_token_figure(fig)
    assert texts == [("abcdefgh", 0, 0), ("i", 0, -1), ("a⏎b", 1, -1)]
    assert ax.get_ylim() == (-2, 1) and fig.axes[1].get_ylim() == pytest.approx((0.0, 1.0))
    np.testing.assert_allclose(colours, [reds(0.0)] * 3, atol=1e-9)
    assert ax.get_title() == "per-token loss, mean 0.00 nats over 3 tokens"

    words = [f"w{i:02d} " for i in range(40)]                                   # 4 chars each: 22 fit in 90
    fig = model_views.token_loss_figure(words, np.linspace(0, 1, 40))
    ax, texts, _ = _read_token_figure(fig)
    assert [y for _, _, y in texts] == [0] * 22 + [-1] * 18 and texts[21][1] == 84 and ax.get_xlim() == (0, 90)


def test_token_loss_figure_of_token_losses_shows_the_texts_tokens(gen):
    """token_loss_figure(*token_losses(gen, text)): the drawn token texts, joined, are the text after bos."""
    text = "Tom saw a dog.\nIt ran home."
    fig = model_views.token_loss_figure(*model_views.token_losses(gen, text))
    drawn = "".join(t.get_text() for t in fig.axes[0].texts)
    assert drawn == text.replace("\n", "⏎")
    assert len(fig.axes[0].texts) == len(gen.prompt_tokens(text)) - 1


def test_heldout_rows_are_the_first_rows_of_the_source_the_run_kept_apart(rotary, capsys):
    """heldout_rows(ckpt, n) = the first min(n, 4) rows of the jsonl the run was prepared from (n defaults to 1),
    found without a word printed (a notebook cell shows the rows, not the data preparation's log)."""
    ckpt, rows = rotary
    capsys.readouterr()
    assert model_views.heldout_rows(ckpt) == [rows[0]]
    assert capsys.readouterr() == ("", "")
    assert "\n" in rows[0] and model_views.heldout_rows(ckpt, 3) == rows[:3]
    assert model_views.heldout_rows(ckpt, 100) == rows[:4]
    assert model_views.heldout_rows(ckpt, 0) == []


def test_public_names_are_the_seven_views():
    """__all__: the module's public functions, each defined there."""
    names = ["attention_figures", "heldout_rows", "load", "logit_lens", "logit_lens_figure", "token_loss_figure",
             "token_losses"]
    assert sorted(model_views.__all__) == names
    assert all(getattr(model_views, n).__module__ == model_views.__name__ for n in names)
