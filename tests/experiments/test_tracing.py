"""Causal tracing: restoring a whole layer's output gives exactly the clean probability and
restoring nothing the corrupted one (NIE 1 and 0), for both towers of the default architecture
(ViT + BERT MiniLM) and a CLIP text transformer; the batched grid equals single restorations;
hooks are gone afterwards; misaligned corruptions are refused; token roles and changed patches."""


import numpy as np
import pytest
import torch

from ecif.data import encoders as E
from ecif.data.embedded import shapes
from ecif.experiments import tracing as T

from tests.tiny_open_clip import TINY_DEFAULT as TINY, tiny_clip_text_model as _clip_text_model




@pytest.fixture(scope="module")
def models():
    default, tok = E.create_default(E.default_config(8, **TINY), seed=0)
    clip, ctok = _clip_text_model()
    return {"vit_minilm": (default.double(), tok), "clip_text": (clip.double(), ctok)}


@pytest.fixture(scope="module")
def split():
    return shapes(sizes={"pretrain": 1, "train": 1, "val": 1, "test": 40}, image_size=8)["test"]


def _inputs(model, tok, ex, tower):
    """(clean, corrupt, candidates, target) of a tower, float64, random candidates."""
    n, k = ex.images.shape[:2]
    if tower == "text":
        ids = T.text_ids(model, tok, list(ex.clean_captions) + list(ex.corrupt_captions))
        clean, corrupt = ids[:n], ids[n:]
    else:
        cfg = model.visual.preprocess_cfg
        clean = E.image_tensor(ex.images[np.arange(n), ex.target], cfg).double()
        corrupt = E.image_tensor(ex.images[np.arange(n), ex.wrong], cfg).double()
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        emb = model.encode_text(T.text_ids(model, tok, [ex.clean_captions[0]])).shape[-1]
    cand = torch.randn(n, k, emb, generator=gen, dtype=torch.float64, device="cpu")
    return clean, corrupt, cand, torch.as_tensor(ex.target, device="cpu")


@pytest.mark.parametrize("arch", ["vit_minilm", "clip_text"])
@pytest.mark.parametrize("tower", ["text", "image"])
def test_whole_layer_restores_clean_and_nothing_restores_corrupt(models, split, arch, tower):
    model, tok = models[arch]
    ex = T.shapes_swap_examples(split, "color", 6, seed=1)
    clean, corrupt, cand, target = _inputs(model, tok, ex, tower)
    mods, _ = T.tower_modules(model, tower)
    n_layers = 1 + max(l for _, l in mods)
    with torch.no_grad():
        n_tok = T._clean_outputs(model, tower, clean, [("hidden", 0)], mods, T.tower_modules(model, tower)[1])[("hidden", 0)].shape[1]
    everywhere = np.ones(n_tok, dtype=bool)
    conds = [{}] + [{("hidden", l): everywhere} for l in range(n_layers)]
    conds += [{("attn", n_layers - 1): everywhere}]  # a module, not the whole layer: not exact
    res = T.restored_probabilities(model, tower, clean, corrupt, cand, target, conds, rows=7)
    p_clean, p_bad, r = res["clean"], res["corrupt"], res["restored"]
    gap = (p_clean - p_bad).abs()
    assert float(gap.max()) > 1e-4  # the corruption changes the probability
    assert float((r[0] - p_bad).abs().max()) < 1e-12
    assert float((r[1:-1] - p_clean).abs().max()) < 1e-10
    ok = gap > 1e-6
    nie = T.nie(r, p_clean, p_bad)
    assert float(nie[0][ok].abs().max()) < 1e-6
    assert float((nie[1:-1][:, ok] - 1).abs().max()) < 1e-5
    assert float((r[-1] - p_clean).abs().max()) > 1e-8  # restoring one module of the layer is not the whole layer


def test_grid_matches_single_restorations_and_hooks_are_removed(models, split):
    model, tok = models["clip_text"]
    ex = T.shapes_swap_examples(split, "color", 3, seed=1)
    clean, corrupt, cand, target = _inputs(model, tok, ex, "text")
    roles, changed = T._text_roles(clean, corrupt)
    with torch.no_grad():
        before = model.encode_text(clean).clone()
    tr = T.trace(model, "text", clean, corrupt, cand, target, roles, changed, kinds=("attn", "mlp", "hidden"),
                 window=3, only_flipped=False, rows=4)
    big = T.trace(model, "text", clean, corrupt, cand, target, roles, changed, kinds=("attn", "mlp", "hidden"),
                  window=3, only_flipped=False, rows=100000)
    np.testing.assert_allclose(tr.restored, big.restored, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tr.restored_window, big.restored_window, rtol=0, atol=1e-12)
    n_layers = tr.restored.shape[2]
    t = int(np.flatnonzero(changed[0])[0])
    onehot = np.eye(clean.shape[1], dtype=bool)[t]
    assert n_layers == 2
    conds = [{("mlp", 1): onehot}, {("attn", l): onehot for l in (0, 1)}, {("attn", 1): onehot},
             {("hidden", n_layers - 1): onehot}]
    single = T.restored_probabilities(model, "text", clean, corrupt, cand, target, conds)["restored"].numpy()
    k = tr.kinds.index
    np.testing.assert_allclose(tr.restored[:, k("mlp"), 1, t], single[0], atol=1e-12)
    np.testing.assert_allclose(tr.restored_window[:, k("attn"), 0, t], single[1], atol=1e-12)  # window 0..1
    np.testing.assert_allclose(tr.restored_window[:, k("attn"), 1, t], single[1], atol=1e-12)  # clipped at the end
    np.testing.assert_allclose(tr.restored[:, k("attn"), 1, t], single[2], atol=1e-12)
    np.testing.assert_allclose(tr.restored[:, k("hidden"), n_layers - 1, t], single[3], atol=1e-12)
    # restoring a token the corruption did not touch, at the first layer, changes nothing
    untouched = int(np.flatnonzero(~changed[0])[0])
    np.testing.assert_allclose(tr.restored[0, k("hidden"), 0, untouched], tr.p_corrupt[0], atol=1e-12)
    # no hook is left and the model computes what it did before
    mods, _ = T.tower_modules(model, "text")
    assert all(len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in mods.values())
    with torch.no_grad():
        assert torch.equal(model.encode_text(clean), before)


def test_misaligned_corruption_is_refused(models, split):
    model, tok = models["vit_minilm"]
    ex = T.shapes_swap_examples(split, "position", 4, seed=1, swap={"top left": "center", "center": "top left"})
    with pytest.raises(ValueError, match="tokens"):
        T.trace_text(model, tok, ex)
    ids = T.text_ids(model, tok, ex.clean_captions)
    with pytest.raises(ValueError, match="same shape"):
        T.restored_probabilities(model, "text", ids, ids[:, :-1], torch.zeros(4, 5, 16, dtype=torch.float64),
                                 torch.zeros(4, dtype=torch.long), [{}])
    aligned = T.shapes_swap_examples(split, "position", 4, seed=1, swap={"top left": "bottom right"})
    assert all("bottom right" in c for c in aligned.corrupt_captions)


def test_roles_and_changed_patches(models, split):
    model, tok = models["vit_minilm"]
    ex = T.shapes_swap_examples(split, "color", 2, seed=1)
    ids = T.text_ids(model, tok, list(ex.clean_captions) + list(ex.corrupt_captions))
    roles, changed = T._text_roles(ids[:2], ids[2:])
    words = ex.clean_captions[0].split()  # "a small red circle at the top left": [CLS] a small COLOUR circle ...
    assert words[2] == ex.values[ex.target[0]]
    assert list(roles[0][:5]) == ["first", "before", "before", "constraint", "next"]
    assert changed[0].sum() == 1 and changed[0][3]
    # one changed pixel changes exactly its patch (patch 2 x 2 on 8 x 8 images: token 1 + row * 4 + col)
    img = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    other = img.clone()
    other[0, 1, 5, 2] = 1.0
    r, c = T.changed_patches(model, img, other)
    assert c.shape == (1, 17) and np.flatnonzero(c[0]).tolist() == [1 + 2 * 4 + 1]
    assert r[0, 0] == "cls" and r[0, 10] == "corrupted" and r[0, 2] == "clean"


def test_trained_encoder_colour_corruption_flips_retrieval(shapes_encoder_dir):
    model, tok, _ = E.load_encoder("embedded", shapes_encoder_dir)
    split = shapes(sizes={"pretrain": 1, "train": 1, "val": 1, "test": 12})["test"]
    ex = T.shapes_swap_examples(split, "color", 12, seed=0)
    tr = T.trace_image(model, tok, ex, kinds=("attn",), window=1)
    # the trained encoder retrieves the right colour and the recoloured image flips it
    assert tr.p_clean.mean() > 0.7 and tr.p_corrupt.mean() < 0.1 and tr.flipped.sum() >= 9
    # the ViT pools its class token: restoring the last attention output at patches cannot help
    h = tr.heatmap("attn")
    assert np.nanmax(np.abs(h[-1, 1:])) < 1e-6 and h[-1, 0] > 0.05
