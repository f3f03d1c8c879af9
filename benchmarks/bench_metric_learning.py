"""Benchmarks of metric learning (notebook 04): prints figures, asserts nothing.

  python benchmarks/bench_metric_learning.py [--batches N]

* the triplet loss on a batch of embeddings: the homework's (each triplet's own
  negative) against hard negatives mined from the batch, forward + backward;
* triplets drawn per second by each sampling scheme (tag, tag_frequency, song);
* training throughput of fit_triplet (clips per second, 3 clips per triplet)
  for the 1D CNN and for Musicnn at the cpu profile's width, against
  evaluate_retrieval's time on the validation split.

Needs the synthetic dataset (``python -m helpers prepare synthetic``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.config import data_root  # noqa: E402
from helpers.data import TaggedAudio, triplet_dataset  # noqa: E402
from helpers.models import build_model  # noqa: E402
from helpers.retrieval import evaluate_retrieval, fit_triplet, triplet_loss  # noqa: E402
from helpers.train import Recipe  # noqa: E402


def bench_loss(repeats: int = 50) -> None:
    for batch, dim in ((16, 64), (64, 64), (256, 128)):
        gen = torch.Generator().manual_seed(0)
        a, p, n = (torch.randn(batch, dim, generator=gen, requires_grad=True) for _ in range(3))
        keys = torch.randint(0, 8, (batch,), generator=gen)
        for label, options in (("own negative", {}), ("hard negatives 0.3", {"hard_negatives": 0.3, "keys": keys})):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                triplet_loss(a, p, n, 0.4, "cosine", **options).backward()
                times.append(time.perf_counter() - t)
            print(f"triplet loss, batch {batch:3d} x {dim:3d}, {label:18s}: {np.median(times) * 1e3:6.3f} ms "
                  f"(forward + backward, median of {repeats})")


def bench_sampling(data: TaggedAudio, n: int = 2000) -> None:
    for row in data.split_indices("train"):        # warm the page cache: every scheme reads from memory
        data.waveform(int(row))
    for sampling in ("tag", "tag_frequency", "song"):
        ds = triplet_dataset(data, "train", 48000, sampling)
        torch.manual_seed(0)
        t = time.perf_counter()
        for _ in range(n):
            ds.sample_indices()
        index_rate = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n // 10):
            ds[i]
        item_rate = (n // 10) / (time.perf_counter() - t)
        print(f"sampling {sampling:13s}: {index_rate:8,.0f} triplet draws/s, {item_rate:6,.0f} triplets/s with "
              f"their three 3 s crops")


def bench_training(data: TaggedAudio, batches: int) -> None:
    recipe = Recipe(optimizer="adam", lr=1e-3, epochs=1, max_batches=batches)
    for name, width in (("cnn1d", 1.0), ("musicnn", 0.125)):
        torch.manual_seed(0)
        options = {} if width == 1 else {"width": width}
        model = build_model(name, n_tags=64, **options)
        t = time.perf_counter()
        history = fit_triplet(model, data, recipe, name, progress=False, sampling="song", hard_negatives=0.3)
        total = time.perf_counter() - t
        t = time.perf_counter()
        evaluate_retrieval(model, data, "valid", progress=False)
        evaluation = time.perf_counter() - t
        print(f"fit_triplet {name} (width {width:g}): {history.train_clips_per_s[0]:7,.0f} training clips/s "
              f"({batches} batches of 16 triplets); epoch with validation {total:5.1f} s, of which "
              f"evaluate_retrieval on {len(data.split_indices('valid'))} clips ~{evaluation:4.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="training batches per model (default 20)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_loss()
    data = TaggedAudio(data_root("synthetic"))
    bench_sampling(data)
    bench_training(data, args.batches)


if __name__ == "__main__":
    main()
