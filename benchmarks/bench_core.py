"""Benchmarks of the helpers core (issue 2): prints figures, asserts nothing.

  python benchmarks/bench_core.py [--skip-generation]

* Recall@K (K = 1, 2, 4, 8) at the full MTAT test size, N = 4,332, 50 tags;
* generation time and disk size of the default synthetic dataset;
* random 3 s crops read per second from the on-disk format (memory-mapped).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.config import data_root  # noqa: E402
from helpers.data import RandomCropDataset, TaggedAudio  # noqa: E402
from helpers.metrics import recall_at_ks  # noqa: E402
from helpers.prepare.synth import SynthConfig, prepare_synthetic  # noqa: E402
from helpers.retrieval import similarity_matrix  # noqa: E402


def bench_recall(n: int = 4332, n_tags: int = 50, repeats: int = 5) -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, 128)).astype(np.float32)
    labels = rng.random((n, n_tags)) < 0.06
    # The course's cosine similarities (PyTorch). A NumPy product here would leave OpenBLAS's threads spinning
    # for a while after it, and on 2 cores they slow the first call of recall_at_ks down 2x.
    sim = similarity_matrix(emb)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        recall_at_ks(sim, labels, (1, 2, 4, 8))
        times.append(time.perf_counter() - t)
    print(f"Recall@1/2/4/8, N = {n}, {n_tags} tags: first call {times[0] * 1000:.0f} ms, "
          f"median {np.median(times) * 1000:.0f} ms over {repeats} calls")


def bench_generation() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        prepare_synthetic(Path(tmp) / "synthetic", SynthConfig(), progress=False)
        seconds = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (Path(tmp) / "synthetic").iterdir())
    cfg = SynthConfig()
    print(f"synthetic dataset ({cfg.n_clips} clips of {cfg.clip_seconds:g} s, {os.cpu_count()} cores): "
          f"generated in {seconds:.1f} s, {size / 1e6:.0f} MB on disk")


def bench_crops(root: Path, n: int = 3000) -> None:
    data = TaggedAudio(root)
    ds = RandomCropDataset(data, "train", 48000)
    torch.manual_seed(0)
    t = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    seconds = time.perf_counter() - t
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    t = time.perf_counter()
    clips = sum(len(x) for x, _ in loader)
    loader_seconds = time.perf_counter() - t
    print(f"random 3 s crops from {root}: {n / seconds:,.0f} crops/s one by one, "
          f"{clips / loader_seconds:,.0f} crops/s through a DataLoader (batch 16, shuffled, main process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-generation", action="store_true", help="do not time a fresh generation")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    bench_recall()
    if not args.skip_generation:
        bench_generation()
    root = data_root("synthetic")
    if not (root / "meta.json").exists():
        prepare_synthetic(root)
    bench_crops(root)


if __name__ == "__main__":
    main()
