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
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from helpers.config import choose_device, tqdm  # noqa: E402
from helpers.course.results import format_table  # noqa: E402
from helpers.models import MODEL_NAMES, Classifier, build_model, count_parameters, model_options  # noqa: E402
from helpers.train import amp_dtype, autocast, grad_scaler, optimizer_step  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_table(names: Sequence[str] = MODEL_NAMES, n_tags: int = 50, device: str | torch.device | None = None,
                batch_size: int = 16, steps: int = 3, warmup: int = 1, use_amp: bool = False,
                progress: bool = False) -> list[dict[str, Any]]:
    """Size and measured speed of each model on ``device``.

    For every name: build the model with default options, then time
    ``steps`` training steps (forward + backward + SGD step on a random
    waveform batch of ``batch_size`` clips of the model's ``input_samples``,
    BCE-with-logits loss on random tags, or the mean squared embedding for
    ``linear_projection``) and ``steps`` inference passes (eval mode,
    ``no_grad``), each after ``warmup`` untimed ones.

    ``device``: default CUDA when available, else CPU. ``use_amp``: the
    course's mixed precision (:func:`helpers.train.amp_dtype`: float16 on
    CUDA with a gradient scaler, bfloat16 on CPU). Training needs ``batch_size >= 2`` (BatchNorm after a dense
    layer).

    Returns one dict per model: ``name``, ``params``, ``input_samples``,
    ``input_seconds``, ``output_shape`` (for ``batch_size`` clips),
    ``embedding_dim``, ``train_clips_per_s``, ``infer_clips_per_s``,
    ``device``, ``batch_size``, ``amp`` (the autocast dtype name or
    ``None``). Render it with :func:`format_table`.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (BatchNorm in training), got {batch_size}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for name in names:
        model_options(name)                    # an unknown name raises ValueError
    device = choose_device(device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name in tqdm(names, desc="models", disable=not progress):
        rows.append(_measure(name, n_tags, device, batch_size, steps, warmup, use_amp, gen))
        if device.type == "cuda":
            torch.cuda.empty_cache()           # the model of _measure is gone: its memory can be released
    return rows


def _measure(name: str, n_tags: int, device: torch.device, batch_size: int, steps: int, warmup: int,
             use_amp: bool, gen: torch.Generator) -> dict[str, Any]:
    """One row of :func:`model_table`; everything it allocates is freed when it returns."""
    dtype = amp_dtype(device, use_amp)
    model = build_model(name, n_tags=n_tags).to(device)
    wav = (0.1 * torch.randn(batch_size, model.input_samples, generator=gen)).to(device)
    target = torch.randint(0, 2, (batch_size, n_tags), generator=gen).float().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    scaler = grad_scaler(device, use_amp)
    criterion = nn.BCEWithLogitsLoss()

    def train_step() -> None:
        with autocast(device, use_amp):
            out = model(wav)
        out = out.float()
        optimizer_step(criterion(out, target) if isinstance(model, Classifier) else out.square().mean(),
                       optimizer, scaler)

    def infer_step() -> torch.Tensor:
        with torch.no_grad(), autocast(device, use_amp):
            return model(wav)

    model.train()
    train_s = _timed(train_step, steps, warmup, device)
    model.eval()
    out = infer_step()
    infer_s = _timed(infer_step, steps, warmup, device)
    return {
        "name": name,
        "params": count_parameters(model),
        "input_samples": model.input_samples,
        "input_seconds": model.input_seconds,
        "output_shape": tuple(out.shape),
        "embedding_dim": model.embedding_dim,
        "train_clips_per_s": steps * batch_size / train_s,
        "infer_clips_per_s": steps * batch_size / infer_s,
        "device": str(device),
        "batch_size": batch_size,
        "amp": None if dtype is None else str(dtype).replace("torch.", ""),
    }


def _timed(step: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds taken by ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return max(time.perf_counter() - start, 1e-9)


def render(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`model_table` rows as a plain-text table."""
    header = ("model", "params", "input", "seconds", "output", "embedding", "train clips/s", "infer clips/s")
    cells = [(r["name"], f"{r['params']:,}", f"{r['input_samples']:,}", f"{r['input_seconds']:.2f}",
              " x ".join(map(str, r["output_shape"])), str(r["embedding_dim"]),
              f"{r['train_clips_per_s']:.1f}", f"{r['infer_clips_per_s']:.1f}") for r in rows]
    return format_table(header, cells, "l" + "r" * (len(header) - 1))


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
    print(render(rows))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
