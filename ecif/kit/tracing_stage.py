"""Fits for the tracing study: block-mode fine-tunes on clean and on systematically swapped
captions, merged into open_clip models for :func:`ecif.experiments.tracing_study.tracing_study`.

Orchestration only (it needs :func:`ecif.kit.problem.fit_corrupted`, which the experiments layer
may not import): both fits use the same settings and noise seed; the clean one corrupts no pair.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ecif.data.datasets import load_dataset
from ecif.data.encoders import load_encoder
from ecif.data.noise import inject
from ecif.experiments.block_merge import merge_block_lora
from ecif.kit.problem import FitSettings, fit_corrupted

__all__ = ["TRACING_SETTINGS", "block_study", "block_swap_models", "traced_block_fits"]

#: Small block-mode fits: one adapted block per tower, LoRA on q and v, lam 0.3 (docs/math.md §14),
#: the first 30 train pairs (``tracing.block_n_train``) in one batch of 30.
TRACING_SETTINGS = FitSettings(mode="blocks", blocks=1, targets=("qv",), lam=0.3, n_train=30, batch_size=30)


def block_swap_models(dataset: str, data_root, encoder_dir, *, attribute: str = "color", rate: float = 0.3,
                      noise_seed: int = 0, settings: FitSettings = TRACING_SETTINGS, encoder: str = "embedded",
                      device: str = "cpu") -> dict:
    """Fit ``settings`` (``mode`` must be ``blocks``) twice on ``dataset``: on the clean train
    captions (``"clean"``) and with a systematic ``attribute`` swap of ``rate`` of them
    (``"swap"``, :func:`ecif.data.noise.inject` with ``noise_seed``). Returns ``{"models": {name:
    merged open_clip model}, "tokenizer", "rules": [(attribute, source, target), ...], "fits": {name: fit
    info}, "seconds"}``."""
    if settings.mode != "blocks":
        raise ValueError(f"tracing a fine-tune needs block-mode fits (settings.mode = 'blocks'), got {settings.mode!r}.")
    t0 = time.perf_counter()
    model, tokenizer, _ = load_encoder(encoder, encoder_dir, device=device)
    ds = load_dataset(dataset, root=data_root)
    rules = inject(ds["train"], "attribute_swap", rate, noise_seed, systematic=True, attribute=attribute).details["swaps"]
    models, fits = {}, {}
    for name, rate_i, systematic in (("clean", 0.0, False), ("swap", rate, True)):
        with tempfile.TemporaryDirectory() as features_dir:
            fitted, info = fit_corrupted(dataset, data_root, encoder_dir, features_dir, kind="attribute_swap",
                                         rate=rate_i, noise_seed=noise_seed, systematic=systematic, attribute=attribute,
                                         settings=settings, encoder=encoder, device=device)
        models[name] = merge_block_lora(model, fitted.problem.param, fitted.theta_hat.cpu())
        fits[name] = info
    return {"models": models, "tokenizer": tokenizer, "rules": [tuple(r) for r in rules], "fits": fits,
            "seconds": time.perf_counter() - t0}


def traced_block_fits(dataset: str, data_root, encoder_dir, *, attribute: str = "color", rate: float = 0.3,
                      noise_seed: int = 0, settings: FitSettings = TRACING_SETTINGS, n_examples: int = 32,
                      window: int = 3, towers=("text", "image"), split: str = "test", base: bool = True,
                      encoder: str = "embedded", device: str = "cpu") -> dict:
    """:func:`block_swap_models`, then :func:`ecif.experiments.tracing_study.tracing_study` of the
    two fits (and of the frozen encoder, ``"base"``, when ``base``) on ``n_examples`` same-slot
    corruptions of ``attribute`` in ``split``. Returns the study's tables plus ``"models"`` (the
    traced open_clip models by name), ``"tokenizer"``, ``"rules"``, ``"fits"``, ``"fit_seconds"``
    and ``"trace_seconds"``."""
    from ecif.experiments.tracing_study import tracing_study

    fitted = block_swap_models(dataset, data_root, encoder_dir, attribute=attribute, rate=rate, noise_seed=noise_seed,
                               settings=settings, encoder=encoder, device=device)
    models = dict(fitted["models"])
    if base:
        models = {"base": load_encoder(encoder, encoder_dir, device=device)[0], **models}
    t0 = time.perf_counter()
    out = tracing_study(models, fitted["tokenizer"], load_dataset(dataset, root=data_root)[split], attribute=attribute,
                        n_examples=n_examples, window=window, towers=towers)
    out.update(models=models, tokenizer=fitted["tokenizer"], rules=fitted["rules"], fits=fitted["fits"],
               fit_seconds=fitted["seconds"], trace_seconds=time.perf_counter() - t0)
    return out


def block_study(dataset: str, data_root, encoder_dir, *, attribute: str = "color", rate: float = 0.3,
                noise_seed: int = 0, settings: FitSettings = TRACING_SETTINGS, n_examples: int = 16,
                split: str = "test", n_train: int | None = None, encoder: str = "embedded",
                device: str = "cpu") -> dict:
    """Where the misalignment lives: :func:`traced_block_fits` (``base``, ``clean``, ``swap``),
    then the per-layer contrast of the traces, swap minus clean
    (:func:`ecif.experiments.trace_contrast.layer_contrast`, single-layer restorations: no window
    traces are run), and the
    image -> caption retrieval of every swap rule by the three models
    (:func:`ecif.experiments.trace_contrast.swap_retrieval`, ``n_examples`` images per rule).

    Returns :func:`traced_block_fits`' dict plus ``"contrast"``, ``"retrieval"``, ``"attribute"``,
    ``"rate"`` and ``"adapted"``: ``{tower: [layers the fine-tune could change]}`` (the last
    ``settings.blocks`` of each tower; the projections are adapted too). ``n_train`` (when
    given) replaces ``settings.n_train``."""
    from ecif.experiments.trace_contrast import layer_contrast, swap_retrieval

    if n_train is not None:
        settings = replace(settings, n_train=int(n_train))

    out = traced_block_fits(dataset, data_root, encoder_dir, attribute=attribute, rate=rate, noise_seed=noise_seed,
                            settings=settings, n_examples=n_examples, window=1, split=split, base=True,
                            encoder=encoder, device=device)
    t0 = time.perf_counter()
    out["contrast"] = layer_contrast(out, reference="clean", other="swap")
    out["retrieval"] = swap_retrieval(out["models"], out["tokenizer"], load_dataset(dataset, root=data_root)[split],
                                      out["rules"], n_examples=n_examples)
    out["trace_seconds"] += time.perf_counter() - t0
    n_layers = {tower: tr.info["n_layers"] for (_, tower), tr in out["traces"].items()}
    out.update(attribute=attribute, rate=float(rate),
               adapted={t: list(range(n - settings.blocks, n)) for t, n in n_layers.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m ecif.kit.tracing_stage [--n-examples N] [--attribute A] [--rate R] [--n-train N] [--out DIR]``:
    fit, merge and trace (:func:`traced_block_fits`) on the shapes data with the shapes encoder,
    print the per-layer summary and, with ``--out``, write the tables as CSV."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--encoder-dir", default="artifacts/encoder_shapes")
    ap.add_argument("--attribute", default="color")
    ap.add_argument("--rate", type=float, default=0.3)
    ap.add_argument("--n-examples", type=int, default=16)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=TRACING_SETTINGS.n_train)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    out = traced_block_fits("shapes", a.data_root, a.encoder_dir, attribute=a.attribute, rate=a.rate,
                            settings=replace(TRACING_SETTINGS, n_train=a.n_train), n_examples=a.n_examples,
                            window=a.window, base=True)
    print(f"swap rules {out['rules']}; fits {out['fit_seconds']:.0f} s, traces {out['trace_seconds']:.0f} s")
    print(out["examples"].to_string())
    print(out["layers"].round(3).to_string())
    if a.out:
        folder = Path(a.out)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokens", "roles", "layers", "examples"):
            out[name].to_csv(folder / f"tracing_{name}.csv", index=False)


if __name__ == "__main__":
    main()
