"""What training each model on MagnaTagATune costs on a GPU, from counted FLOPs.

    .venv/bin/python benchmarks/bench_gpu_plan.py
    .venv/bin/python benchmarks/bench_gpu_plan.py --epochs 30 --utilisation 0.2 --split homework

For every model of the course (full width, the paper's size) the script counts
the floating-point operations of one training step per clip with
``torch.utils.flop_counter`` (forward and backward of the layers after the
front end: convolutions, matrix products, the GRU; the STFT and the mel
filterbank are not counted, and they are a small share), then converts an
epoch over the MTAT training split (one random crop per clip) into GPU
minutes at a stated utilisation of the GPU's peak rate:

    minutes = FLOPs per clip x clips per epoch x epochs / (utilisation x peak) / 60

A second table adds up the ``gpu`` profile notebook by notebook
(:data:`GPU_PLAN`: every training run of a notebook with its epochs, and the
validation after every epoch), the plan the notebooks' own warm-up estimate
("expected: ...", :func:`helpers.train.estimate_training_time`) checks on
the student's GPU.

Peak rates are the vendors' dense figures for float16 with tensor cores (the
``gpu`` profile trains with float16 autocast): T4 65 TFLOP/s, A100 312 TFLOP/s.
Small convolutional networks with batch 16 reach a small share of that peak;
the default utilisation of 0.15 is an assumption, not a measurement: measure
the real throughput on a GPU with ``benchmarks/bench_models.py --device cuda
--amp`` and pass the ratio. Data loading (MTAT's 29 s clips from disk) is not
counted either.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from helpers.course.results import format_table  # noqa: E402
from helpers.data import chunk_starts  # noqa: E402
from helpers.models import MODEL_NAMES, Classifier, build_model  # noqa: E402
from helpers.models.sota import WON_CRNN_SAMPLES  # noqa: E402
from helpers.prepare.mtat import CLIP_SAMPLES, PUBLISHED_SIZES  # noqa: E402

#: Dense float16 tensor-core peaks in FLOP/s (vendor data sheets).
PEAK_FP16 = {"T4": 65e12, "A100": 312e12}


#: The ``gpu`` profile's training runs, notebook by notebook, as the notebooks
#: set them (keep in step with their parameter cells): (notebook, what, model,
#: model options, epochs, clips per training item: 3 for a triplet).
GPU_PLAN = [
    ("01", "1D CNN, homework recipe", "cnn1d", {}, 10, 1),
    ("02", "2D CNN (Figure 1), homework recipe", "cnn2d", {}, 10, 1),
    *[("03", f"sweep: {what}", "cnn2d_tuned", options, 3, 1) for what, options in (
        ("SGD lr 1e-3", {}), ("Adam lr 1e-3", {}), ("Adam lr 3e-3", {}), ("dropout 0.5", {"dropout": 0.5}),
        ("5 blocks", {"n_blocks": 5}), ("residual blocks", {"residual": True}))],
    ("03", "final: the chosen configuration (5 blocks, the dearest)", "cnn2d_tuned", {"n_blocks": 5}, 20, 1),
    ("04", "linear projection, tag triplets", "linear_projection", {}, 3, 3),
    *[("04", f"1D CNN embedder, run {run}", "cnn1d", {}, 30, 3) for run in ("A", "B", "C", "D", "D*")],
    ("04", "Musicnn embedder, run E", "musicnn", {}, 30, 3),
    ("05", "crnn on 29.1 s, as Won et al.", "crnn", {"input_samples": WON_CRNN_SAMPLES}, 20, 1),
    *[("05", name, name, {}, 20, 1) for name in ("musicnn", "short_chunk", "short_chunk_res")],
    # transfer learning: fine-tuning (counted as full training, an upper bound: its front end is frozen) and scratch
    *[("05", f"Pons's musicnn, {how}", "musicnn_pons", {}, 20, 1) for how in ("fine-tuned", "from scratch")],
]


def training_flops_per_clip(name: str, batch_size: int = 16, n_tags: int = 50, **options) -> float:
    """FLOPs of one training step (forward + backward) of model ``name`` on a
    batch of its training chunk, divided by the batch size. The front end
    (STFT, mel filterbank) runs outside the counter."""
    model = build_model(name, n_tags=n_tags, **options).train()
    wav = 0.1 * torch.randn(batch_size, model.input_samples, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        spec = model.spec(model.check_input(wav))
    counter = FlopCounterMode(display=False)
    with counter:
        z = model.features(model.spec_bn(spec))
        if isinstance(model, Classifier):
            out = model.linear(model.dropout(z) if model.dropout is not None else z)
        else:
            out = z
        target = torch.zeros_like(out)
        loss = nn.functional.binary_cross_entropy_with_logits(out, target) if isinstance(model, Classifier) \
            else out.square().mean()
        loss.backward()
    return counter.get_total_flops() / batch_size


def validation_flops_per_clip(name: str, clip_samples: int = CLIP_SAMPLES, **options) -> float:
    """FLOPs of the forward passes that validate one clip of ``clip_samples``:
    every chunk that covers it, as :func:`helpers.train.predict` cuts it
    (:func:`helpers.data.chunk_starts`; front end not counted)."""
    model = build_model(name, n_tags=50, **options).eval()
    chunks = len(chunk_starts(clip_samples, model.input_samples))
    wav = 0.1 * torch.randn(chunks, model.input_samples, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        spec = model.spec(model.check_input(wav))
        counter = FlopCounterMode(display=False)
        with counter:
            model.features(model.spec_bn(spec))
    return counter.get_total_flops()


def notebook_plan(split: str, utilisation: float) -> list[list[str]]:
    """Rows of the per-notebook table: runs, training and validation PFLOP,
    expected T4 and A100 minutes."""
    sizes = PUBLISHED_SIZES[split]
    totals: dict[str, list[float]] = {}
    for notebook, _, name, options, epochs, clips_per_item in GPU_PLAN:
        train = training_flops_per_clip(name, **options) * clips_per_item * sizes["train"] * epochs
        valid = validation_flops_per_clip(name, **options) * sizes["valid"] * epochs
        runs, t, v = totals.get(notebook, [0, 0.0, 0.0])
        totals[notebook] = [runs + 1, t + train, v + valid]
    rows = []
    for notebook, (runs, train, valid) in totals.items():
        minutes = {gpu: (train + valid) / (utilisation * peak) / 60 for gpu, peak in PEAK_FP16.items()}
        rows.append([notebook, str(runs), f"{train / 1e15:.1f}", f"{valid / 1e15:.2f}", f"{minutes['T4']:.0f}",
                     f"{minutes['A100']:.0f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the plan (default 30, the gpu profile)")
    parser.add_argument("--utilisation", type=float, default=0.15,
                        help="share of the float16 peak reached (default 0.15, an assumption)")
    parser.add_argument("--split", choices=sorted(PUBLISHED_SIZES), default="clean",
                        help="MTAT split whose training clips make an epoch (default clean: 15,244)")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES, metavar="NAME")
    args = parser.parse_args(argv)

    clips = PUBLISHED_SIZES[args.split]["train"]
    print(f"MTAT {args.split} split: {clips:,} training clips per epoch, {args.epochs} epochs, utilisation "
          f"{args.utilisation:.0%} of the float16 peak (T4 65, A100 312 TFLOP/s)")
    rows = []
    for name in args.models:
        per_clip = training_flops_per_clip(name)
        epoch = per_clip * clips
        minutes = {gpu: epoch * args.epochs / (args.utilisation * peak) / 60 for gpu, peak in PEAK_FP16.items()}
        rows.append([name, f"{per_clip / 1e9:.2f}", f"{epoch / 1e15:.2f}",
                     f"{epoch / (args.utilisation * PEAK_FP16['T4']) / 60:.1f}",
                     f"{minutes['T4']:.0f}", f"{minutes['A100']:.0f}"])
    print(format_table(("model", "GFLOP/clip", "PFLOP/epoch", "T4 min/epoch", f"T4 min/{args.epochs} ep",
                        f"A100 min/{args.epochs} ep"), rows, "l" + "r" * 5))
    print(f"\nThe gpu profile, notebook by notebook (GPU_PLAN: every training run with its epochs; validation "
          f"after every epoch), MTAT {args.split} split, same utilisation:")
    plan = notebook_plan(args.split, args.utilisation)
    print(format_table(("notebook", "runs", "train PFLOP", "valid PFLOP", "T4 min", "A100 min"), plan, "lrrrrr"))
    print(f"whole course: T4 {sum(int(r[4]) for r in plan)} min, A100 {sum(int(r[5]) for r in plan)} min "
          f"(the test evaluations, data loading and the front end come on top)")


if __name__ == "__main__":
    main()
