"""What the paper's configuration costs on this machine: CLIP ViT-B/32 features plus the ECIF fit.

    .venv/bin/python benchmarks/paper_cost.py                 # ViT-B-32, cpu
    .venv/bin/python benchmarks/paper_cost.py --device cuda   # on a GPU machine

The pretrained weights are not needed to time the model: an open_clip architecture with random
weights does exactly the same arithmetic. The script measures, in one run,

1. image encoding throughput at the architecture's input size (batches of ``--batch`` images),
2. text encoding throughput (batches of 256 captions),
3. the ECIF side at the paper's widths through ``ecif.experiments.bench.run_one`` (synthetic
   frozen features of the tower widths, LoRA rank ``--rank``, ``--n`` train pairs): the base fit,
   scoring every pair, and one leave-one-out retraining,

and prints, per data set of the paper, the estimated time of one pipeline run with the default
``common.split_sizes`` (5000 pretrain + 1000 train + 500 val + 1000 test images, the captions of
those pairs and the class prompts): feature extraction (images dominate) + fit + the ``loo`` stage
(``loo.n_pairs`` refits). Each row is printed as soon as it is measured; the load average is
printed before and after (a busy machine makes every number larger).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

SPLIT_IMAGES = 5000 + 1000 + 500 + 1000  # default common.split_sizes of a real data set
CLASSES = {"fgvc_aircraft": 100, "food101": 101, "flowers102": 102, "cifar100": 100}


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _median_rate(fn, items_per_call: int, repeats: int, label: str) -> float:
    fn()  # warm-up
    rates = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        rates.append(items_per_call / dt)
        print(f"  {label} {i + 1}/{repeats}: {items_per_call} in {dt:.2f} s ({rates[-1]:.1f}/s)", flush=True)
    return sorted(rates)[len(rates) // 2]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=32, help="images per encoding batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--n", type=int, default=1000, help="train pairs of the fit (default split size)")
    ap.add_argument("--rank", type=int, default=1, help="LoRA rank (finetune.rank)")
    ap.add_argument("--loo-pairs", type=int, default=40, help="refits of the loo stage (loo.n_pairs)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU here (torch.cuda.is_available() is False); use --device cpu")
    torch.set_num_threads(args.threads)

    from ecif.data.encoders import open_clip_module
    from ecif.experiments.bench import run_one

    print(f"[paper_cost] {args.arch} with random weights on {args.device}, {args.threads} threads; {_load()}",
          flush=True)
    open_clip = open_clip_module()
    model = open_clip.create_model(args.arch, pretrained=None).eval().to(args.device)
    tokenizer = open_clip.get_tokenizer(args.arch)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.rand(args.batch, 3, size, size, device=args.device)
    texts = tokenizer([f"a photo of a {i}, a type of aircraft." for i in range(256)]).to(args.device)
    d_img = model.visual.proj.shape[0] if getattr(model.visual, "proj", None) is not None else None
    d_txt = model.text_projection.shape[0]

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        img_rate = _median_rate(lambda: (model.encode_image(images), sync()), args.batch, args.repeats,
                                f"images {size}x{size}")
        txt_rate = _median_rate(lambda: (model.encode_text(texts), sync()), 256, args.repeats, "captions")
    print(f"[paper_cost] encoding: {img_rate:.1f} images/s, {txt_rate:.1f} captions/s "
          f"(pre-projection widths: image {d_img}, text {d_txt}); {_load()}", flush=True)

    dim = max(d for d in (d_img, d_txt) if d)
    print(f"[paper_cost] ECIF side: synthetic features of width {dim}, LoRA rank {args.rank}, n = {args.n} "
          f"(ecif.experiments.bench.run_one, lam 1, batches of 64) ...", flush=True)
    row = run_one(args.n, 64, dim=dim, width=512, rank=args.rank, threads=args.threads)
    fit_s, ecif_s, retrain_s = row["fit_s"], row["solve_s"] + row["score_s"], row["retrain_s"]
    print(f"[paper_cost] fit {fit_s:.1f} s, ECIF all pairs {ecif_s:.1f} s, one retraining {retrain_s:.1f} s; "
          f"{_load()}", flush=True)

    print("\n| data set | images | captions + prompts | features (min) | fit + ECIF (min) | loo stage (min) | total (min) |")
    print("|---|---|---|---|---|---|---|")
    for name, n_classes in CLASSES.items():
        n_txt = 1000 + 500 + 1000 + 5000 + n_classes
        feat = SPLIT_IMAGES / img_rate + n_txt / txt_rate
        loo = args.loo_pairs * retrain_s + ecif_s
        total = feat + fit_s + ecif_s + loo
        print(f"| {name} | {SPLIT_IMAGES} | {n_txt} | {feat / 60:.1f} | {(fit_s + ecif_s) / 60:.1f} | "
              f"{loo / 60:.1f} | {total / 60:.1f} |", flush=True)
    print(f"\n[paper_cost] done; {_load()}")


if __name__ == "__main__":
    main()
