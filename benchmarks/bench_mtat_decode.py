"""Benchmark: MTAT decode + write throughput through the real preparation path.

Writes ``--clips`` fixture clips of real MTAT length (465,984 samples,
29.124 s at 16 kHz, MP3 32 kbps CBR like the real files) in MTAT's layout,
zipped into three parts with an ``annotations_final.csv``, then runs
:func:`helpers.prepare.mtat.prepare_mtat` on them (``source=``: MD5 check, unpack,
decode in worker processes, DatasetWriter) with 1 and 2 worker processes.
Prints clips/s and the projected time and disk for the clean split
(21,105 clips). Not a test: the figures depend on the machine and its load.

    .venv/bin/python benchmarks/bench_mtat_decode.py [--clips 40] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402

from helpers.prepare import mtat  # noqa: E402
from mtat_fixtures import md5_hex, mp3_bytes, tone, write_annotations, zip_parts  # noqa: E402

CLEAN_CLIPS = sum(mtat.PUBLISHED_SIZES["clean"].values())  # 21,105


def build(src: Path, n_clips: int) -> dict[str, str]:
    """Write ``n_clips`` real-length CBR clips as MTAT parts + annotations into ``src``; returns the checksums."""
    rng = np.random.default_rng(0)
    members, rows = {}, []
    for k in range(n_clips):
        folder = mtat.FOLDERS[k % 16]
        mp3 = f"{folder}/bench_artist-bench_album-{k:02d}-clip_{k}-0-29.mp3"
        members[mp3] = mp3_bytes(tone(rng, mtat.CLIP_SAMPLES), cbr=True)
        rows.append((2 + 3 * k, {mtat.TOP50_TAGS[k % 50]}, mp3))
    write_annotations(src / mtat.ANNOTATIONS, rows)
    sums = {mtat.ANNOTATIONS: md5_hex((src / mtat.ANNOTATIONS).read_bytes())}
    for name, data in zip(mtat.PARTS, zip_parts(members)):
        (src / name).write_bytes(data)
        sums[name] = md5_hex(data)
    size = np.mean([len(b) for b in members.values()])
    print(f"{n_clips} clips of {mtat.CLIP_SAMPLES:,} samples, MP3 32 kbps CBR, {size / 1000:.1f} kB each")
    return sums


def run(src: Path, work: Path, sums: dict[str, str], workers: int) -> None:
    stamps: list[float] = []
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):   # only the figures are printed
        warnings.simplefilter("ignore", mtat.MTATCountWarning)   # 40 clips are not the published split
        meta = mtat.prepare_mtat(work / f"mtat_w{workers}", source=src, mp3_dir=work / "mp3", checksums=sums,
                                 workers=workers, progress=False, on_clip=lambda n: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    n = meta["n_clips"]
    steady = (n - 1) / (stamps[-1] - stamps[0])       # clips/s once the workers run
    startup = stamps[0] - t0 - 1 / steady              # MD5, unpack check, pool start, first clip
    project = CLEAN_CLIPS / steady + startup
    print(f"workers={workers}: {n} clips in {total:.2f} s ({n / total:.1f} clips/s overall, incl. {startup:.2f} s "
          f"setup and worker start); steady {steady:.1f} clips/s ({1000 / steady:.1f} ms per clip) -> clean split "
          f"({CLEAN_CLIPS:,} clips): about {project / 60:.1f} min")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        src, work = Path(tmp) / "source", Path(tmp) / "work"
        src.mkdir()
        sums = build(src, args.clips)
        for w in args.workers:
            run(src, work, sums, w)
    print("(Setup includes starting the worker pool: the first run starts the fork server, which imports helpers "
          "and torch once; later runs in the same Python session reuse it.)")
    disk = CLEAN_CLIPS * mtat.CLIP_SAMPLES * 2
    print(f"Disk for the clean split: {CLEAN_CLIPS:,} x {mtat.CLIP_SAMPLES:,} samples x 2 bytes = "
          f"{mtat.format_bytes(disk)} ({disk / 2**30:.1f} GiB) for audio.npy, plus about 3 GB of zip parts and "
          f"3 GB of unpacked mp3 files while preparing")


if __name__ == "__main__":
    main()
