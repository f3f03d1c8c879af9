"""Size and speed of every model of the course: parameters, input length,
output shape, training and inference throughput (clips/s) on one device.

    .venv/bin/python benchmarks/bench_models.py                    # CUDA if present, else CPU
    .venv/bin/python benchmarks/bench_models.py --device cpu --batch-size 8 --threads 1
    .venv/bin/python benchmarks/bench_models.py --device cuda --amp   # float16 autocast

Training throughput: forward + backward + SGD step on a random batch of the
model's training chunk; inference: eval mode, no gradients. Each after
``--warmup`` untimed steps; figures are clips per second (higher is better).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from helpers.models import MODEL_NAMES, format_table, model_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--amp", action="store_true", help="autocast: float16 on CUDA, bfloat16 on CPU")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per step (default 16, at least 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing (default 1)")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES, metavar="NAME",
                        help=f"models to measure (default all: {' '.join(MODEL_NAMES)})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"torch {torch.__version__}, device {device} ({name}), {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, batch {args.batch_size}, {args.steps} timed steps "
          f"after {args.warmup} warm-up, amp {'on' if args.amp else 'off'}")
    start = time.perf_counter()
    rows = model_table(args.models, device=device, batch_size=args.batch_size, steps=args.steps,
                       warmup=args.warmup, use_amp=args.amp)
    print(format_table(rows))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
