"""The course on a CPU at the speed of the hardware: the processor's fast
paths (bfloat16 autocast where native, the channels-last layout of 2D
convolutions) against plain float32, side by side in one process.

    .venv/bin/python benchmarks/bench_cpu_speed.py                 # the widths the cpu profile trains
    .venv/bin/python benchmarks/bench_cpu_speed.py --width full    # the papers' widths
    .venv/bin/python benchmarks/bench_cpu_speed.py --fallback      # as on a CPU without native bfloat16

Prints, for this CPU and thread count:

1. the matrix-multiply rate (float32 and bfloat16, GFLOP/s): what the
   processor can do at best;
2. per model (``cnn2d``, ``musicnn``, ``short_chunk_res``, ``cnn1d``), one
   training step on a batch of 16 random crops (forward, BCE loss, backward,
   SGD step): *bare*, plain PyTorch (float32, the default layout,
   ``torch.optim.SGD`` as it comes, glibc's ``malloc`` as it comes), and
   *course*, what :func:`helpers.train.fit` does with a profile's recipe
   (:func:`helpers.train.autocast`, :func:`helpers.train.fast_layout`, the
   fused optimiser of :func:`helpers.train.make_optimizer`, freed memory
   kept by :func:`helpers.config.keep_freed_memory`); then each fast path
   alone on top of bare: clips/s, the FLOP/s achieved (FLOPs of one float32
   step counted with ``torch.utils.flop_counter``, divided by the time) and
   the ratios;
3. the same for evaluation (a batch of 64 chunks, no gradients);
4. musicnn's published architecture (``musicnn_pons``) in evaluation on a
   batch of 64 patches: every value of its filters normalised and then
   max-pooled over frequency (*plain*), against the course's maxima first,
   two examples at a time (:meth:`helpers.models.pons.ReluBatchNorm2d.max_over`),
   in float32 and with the fast paths;
5. :class:`helpers.tagging.Tagger` on a 10-minute file, plain and with
   ``fast_paths``.

``--fallback`` makes the course believe the CPU has no native bfloat16
(:func:`helpers.train.cpu_has_native_bfloat16` returns False), to show what
it then does: float32, with the channels-last layout only.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import platform
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from helpers import config, train  # noqa: E402
from helpers.course.results import format_table  # noqa: E402
from helpers.models import build_model, pons  # noqa: E402
from helpers.tagging import Tagger  # noqa: E402

MODELS = ("cnn2d", "musicnn", "short_chunk_res", "cnn1d")
#: The widths the cpu profile of notebook 05 trains (1.0: the paper's).
CPU_WIDTHS = {"musicnn": 0.125, "short_chunk_res": 0.25}


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def interleaved_seconds(calls: dict[str, Callable[[], object]], repeats: int, min_seconds: float = 0.25) -> dict:
    """Median seconds of one call of each of ``calls``, timed in turn
    (round-robin: each repeat times every variant once, so that a change of
    clock speed or load in the middle of the run touches all of them alike).
    A call faster than ``min_seconds`` is timed over as many calls as reach it."""
    loops = {}
    for name, call in calls.items():
        call()                                                # warm-up: first-call allocations, oneDNN kernels
        start = time.perf_counter()
        call()
        loops[name] = max(1, round(min_seconds / max(time.perf_counter() - start, 1e-6)))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                call()
            times[name].append((time.perf_counter() - start) / loops[name])
    return {name: float(np.median(t)) for name, t in times.items()}


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an (n, n) @ (n, n) matrix product in ``dtype`` (an emulated
    bfloat16 runs at well under 1 GFLOP/s: pass a small ``n`` there)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / median_seconds(lambda: a @ b, repeats) / 1e9


def counted_flops(call: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


class Step:
    """One training step of ``model`` on a fixed batch: the bare float32 one
    (:data:`helpers.train.HOMEWORK_RECIPE`, ``torch.optim.SGD`` as it comes,
    glibc's default ``malloc``), the course's (the recipe of a profile, the
    course's optimiser, freed memory kept), or one fast path alone
    (``recipe``'s ``amp`` or ``channels_last``, or ``keep_memory``)."""

    def __init__(self, name: str, width: float | None, batch: int, recipe: train.Recipe,
                 keep_memory: bool = False, course_optimizer: bool = False) -> None:
        torch.manual_seed(0)
        options = {"width": width} if width is not None else {}
        self.model = build_model(name, n_tags=50, **options).train()
        samples = getattr(self.model, "input_samples", 48000)
        self.x, self.y = torch.randn(batch, samples), (torch.rand(batch, 50) < 0.1).float()
        self.recipe, self.keep_memory = recipe, keep_memory
        train.fast_layout(self.model, self.recipe.channels_last)
        self.optimizer = train.make_optimizer(self.model, self.recipe) if course_optimizer else \
            torch.optim.SGD(self.model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
        self.device = torch.device("cpu")

    def __call__(self) -> None:
        config.keep_freed_memory(self.keep_memory)
        with train.autocast(self.device, self.recipe.amp):
            logits = self.model(self.x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), self.y)
        train.optimizer_step(loss, self.optimizer)

    def evaluate(self) -> None:
        config.keep_freed_memory(self.keep_memory)
        with torch.no_grad(), train.autocast(self.device, self.recipe.amp):
            self.model(self.x)


def bench_models(width: str, repeats: int, fp32_rate: float) -> list[list]:
    """One row per model and step (train, eval): clips/s bare and the
    course's, the ratio, what each fast path gives alone, and the FLOP/s."""
    course, bare = train.HOMEWORK_RECIPE.for_profile("cpu"), train.HOMEWORK_RECIPE
    variants = {"bare": dict(recipe=bare),
                "course": dict(recipe=course, keep_memory=True, course_optimizer=True),
                "autocast only": dict(recipe=replace(bare, amp=course.amp)),
                "layout only": dict(recipe=replace(bare, channels_last=course.channels_last)),
                "memory only": dict(recipe=bare, keep_memory=True)}
    rows = []
    for name in MODELS:
        w = CPU_WIDTHS.get(name) if width == "cpu" else None
        label = name + (f" (width 1/{round(1 / w)})" if w else "")
        for what, batch in (("train", 16), ("eval", 64)):
            runs = {}
            for variant, settings in variants.items():
                step = Step(name, w, batch, **settings)
                if what == "eval":
                    step.model.eval()
                runs[variant] = step if what == "train" else step.evaluate
            flops = counted_flops(runs["bare"])                  # of the bare float32 step
            seconds = interleaved_seconds(runs, repeats)
            t_bare, t_course = seconds["bare"], seconds["course"]
            rows.append([label, what, batch, f"{batch / t_bare:.1f}", f"{batch / t_course:.1f}",
                         f"{t_bare / t_course:.2f}", f"{t_bare / seconds['autocast only']:.2f}",
                         f"{t_bare / seconds['layout only']:.2f}", f"{t_bare / seconds['memory only']:.2f}",
                         f"{flops / t_bare / 1e9:.0f}",
                         f"{flops / t_course / 1e9:.0f}", f"{100 * flops / t_bare / 1e9 / fp32_rate:.0f} %"])
            print(f"  {label:28s} {what:5s} " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in seconds.items()),
                  flush=True)
    return rows


MODEL_HEADER = ("model", "step", "batch", "bare clips/s", "course clips/s", "course / bare", "autocast only",
                "layout only", "memory only", "bare GFLOP/s", "course GFLOP/s", "bare / fp32 matmul")


def bench_pons_filters(repeats: int) -> list[list]:
    """musicnn's published architecture (random weights and statistics: the
    speed is the same) on 64 patches: the plain computation of its filters
    against the course's, in float32 and with the fast paths."""
    torch.manual_seed(0)
    model = build_model("musicnn_pons", n_tags=50).eval()
    x = torch.randn(64, model.input_samples)
    course_max_over = pons.ReluBatchNorm2d.max_over

    def plain_max_over(self, h, dim, conv_max):
        return self(h).amax(dim=dim)

    def forward(max_over, fast: bool) -> Callable[[], object]:
        def call():
            pons.ReluBatchNorm2d.max_over = max_over
            try:
                with torch.no_grad(), train.autocast(torch.device("cpu"), fast):
                    return model(x)
            finally:
                pons.ReluBatchNorm2d.max_over = course_max_over
        return call
    seconds = interleaved_seconds({f"{how} {precision}": forward(max_over, precision != "float32")
                                   for how, max_over in (("plain", plain_max_over), ("course", course_max_over))
                                   for precision in ("float32", "fast paths")}, repeats)
    return [[precision, f"{64 / seconds['plain ' + precision]:.0f}", f"{64 / seconds['course ' + precision]:.0f}",
             f"{seconds['plain ' + precision] / seconds['course ' + precision]:.2f}"]
            for precision in ("float32", "fast paths")]


PONS_HEADER = ("musicnn_pons eval, batch 64", "plain patches/s", "course patches/s", "speed-up")


def bench_tagger(repeats: int) -> list[dict]:
    """Tag a 10-minute waveform with the course's Figure 1 CNN and with musicnn's
    published MTT model (its architecture, random weights: the speed is the same)."""
    wav = np.random.default_rng(0).standard_normal(10 * 60 * 16000).astype(np.float32) * 0.1
    rows = []
    for name in ("cnn2d", "musicnn_pons"):
        torch.manual_seed(0)
        model = build_model(name, n_tags=50)
        tags = [f"tag{i}" for i in range(50)]
        plain = Tagger.from_model(model, tags, hop_seconds=3.0)
        t_plain = median_seconds(lambda: plain.tag_waveform(wav), repeats, warmup=0)
        fast = Tagger.from_model(model, tags, hop_seconds=3.0, fast_paths=True)
        t_fast = median_seconds(lambda: fast.tag_waveform(wav), repeats, warmup=0)
        rows.append([name, "10 min", "3 s", f"{t_plain:.2f}", f"{t_fast:.2f}", f"{t_plain / t_fast:.2f}"])
    return rows


TAGGER_HEADER = ("tagger", "file", "hop", "float32 s", "fast paths s", "speed-up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", choices=("cpu", "full"), default="cpu",
                        help="the models' widths: the cpu profile's (default) or the papers' (full)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median; default 5)")
    parser.add_argument("--fallback", action="store_true", help="as on a CPU without native bfloat16")
    parser.add_argument("--skip-tagger", action="store_true", help="leave out the 10-minute Tagger runs")
    args = parser.parse_args()
    if args.fallback:
        train.cpu_has_native_bfloat16 = lambda *a: False
    native = train.cpu_has_native_bfloat16()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, native bfloat16: {native}"
          + (" (forced off: --fallback)" if args.fallback else ""))
    recipe = train.HOMEWORK_RECIPE.for_profile("cpu")
    print(f"the course's fast paths here: autocast {train.amp_dtype('cpu', recipe.amp) or 'off (float32)'}, "
          f"channels-last 2D convolutions: {recipe.channels_last}, freed memory kept by glibc's malloc: "
          f"{config.keep_freed_memory(True)}")
    bf16_size = 2048 if native else 512                # emulated: a 2048 product would take a minute
    fp32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16, bf16_size, repeats=2)
    print(f"matrix multiply: float32 {fp32:.0f} GFLOP/s (2048 x 2048), bfloat16 {bf16:.3g} GFLOP/s "
          f"({bf16_size} x {bf16_size}; {bf16 / fp32:.2g} x)\n")
    rows = bench_models(args.width, args.repeats, fp32)
    print()
    print(format_table(MODEL_HEADER, rows, "ll" + "r" * 10))
    print()
    config.keep_freed_memory(True)                     # as in the course, for both columns of what follows
    print(format_table(PONS_HEADER, bench_pons_filters(args.repeats), "l" + "r" * 3))
    if not args.skip_tagger:
        print()
        print(format_table(TAGGER_HEADER, bench_tagger(max(1, args.repeats // 2)), "lll" + "r" * 3))


if __name__ == "__main__":
    main()
