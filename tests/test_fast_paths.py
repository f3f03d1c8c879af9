"""The processor's fast paths (issue 16): bfloat16 autocast only where the CPU
computes it natively, the channels-last layout for 2D convolutions, one
switch that turns both off, and results that stay those of float32 within
bfloat16's rounding."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import train
from helpers.audio import LogMelSpectrogram
from helpers.config import choose_fast_paths
from helpers.data import ChunkDataset, TaggedAudio
from helpers.metrics import _top_k_neighbours, recall_at_ks
from helpers.models import build_model
from helpers.models.blocks import TimbralBranch, conv2d_by_shifts
from helpers.models.pons import TimbralFilters
from helpers.train import HOMEWORK_RECIPE, Recipe, amp_dtype, cpu_has_native_bfloat16, fast_layout, fit, predict


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),           # AMD Zen 4, Intel Cooper Lake
    ("fpu sse avx2 avx512f amx_bf16 amx_tile amx_int8", True),       # Intel Sapphire Rapids and later
    ("fpu sse avx2 avx512f avx512_vnni", False),                     # AVX-512 without BF16: emulated
    ("fpu sse avx2 fma", False),
])
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_native_bfloat16(str(cpuinfo)) is native


def test_mixed_precision_is_bfloat16_only_where_native(monkeypatch):
    monkeypatch.setattr(train, "cpu_has_native_bfloat16", lambda: True)
    assert amp_dtype("cpu", True) == torch.bfloat16
    assert amp_dtype("cuda", True) == torch.float16
    assert amp_dtype("cpu", False) is None and amp_dtype("cuda", False) is None
    monkeypatch.setattr(train, "cpu_has_native_bfloat16", lambda: False)
    assert amp_dtype("cpu", True) is None                              # emulated bfloat16 is slower: float32
    assert amp_dtype("cuda", True) == torch.float16
    with train.autocast(torch.device("cpu"), True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_one_switch_turns_the_fast_paths_off(monkeypatch):
    monkeypatch.delenv("COURSE_FAST_PATHS", raising=False)
    assert choose_fast_paths() and choose_fast_paths(False) is False
    for profile in ("ci", "cpu", "gpu"):
        r = HOMEWORK_RECIPE.for_profile(profile)
        assert r.amp and r.channels_last
    assert not HOMEWORK_RECIPE.amp and not HOMEWORK_RECIPE.channels_last   # a bare recipe: plain float32
    monkeypatch.setenv("COURSE_FAST_PATHS", "off")
    r = HOMEWORK_RECIPE.for_profile("cpu")
    assert not choose_fast_paths() and not r.amp and not r.channels_last
    assert HOMEWORK_RECIPE.for_profile("cpu", amp=True).amp                  # an explicit change still wins


def test_a_plateau_recipe_shows_no_switch_settings():
    text = repr(HOMEWORK_RECIPE.for_profile("cpu"))
    assert "epochs=8" in text and "channels_last=True" in text
    assert "switch_epoch" not in text and "drops" not in text
    assert "switch_epoch=80" in repr(train.WON2020_RECIPE)


def test_the_channels_last_layout_changes_2d_models_only_and_not_their_output():
    torch.manual_seed(0)
    model = build_model("cnn2d", n_tags=10).eval()
    x = torch.randn(2, model.input_samples)
    with torch.no_grad():
        before = model(x)
        fast_layout(model, True)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        after = model(x)
        fast_layout(model, False)
        assert all(c.weight.is_contiguous() for c in convs)
    assert torch.allclose(before, after, atol=1e-5)
    for name, options in (("cnn1d", {}), ("musicnn", {"width": 0.125})):     # no 2D convolution; slower in it
        model = fast_layout(build_model(name, n_tags=10, **options), True)
        assert all(p.is_contiguous() for p in model.parameters())


class TinyCnn2d(nn.Module):
    """Log-mel, one 2D convolution, a global max pool and a tag layer: a 2D
    model small enough to train in a test."""

    input_samples = 16000

    def __init__(self, n_tags: int) -> None:
        super().__init__()
        self.spec = LogMelSpectrogram()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.out = nn.Linear(8, n_tags)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(self.spec(wav)))


def test_training_with_the_fast_paths_resumes_exactly_and_stays_near_float32(tiny_root, tmp_path):
    data = TaggedAudio(tiny_root)
    fast = Recipe(epochs=2, batch_size=8, lr=1e-2, amp=True, channels_last=True)
    torch.manual_seed(0)
    once = TinyCnn2d(len(data.tags))
    h1 = fit(once, data, fast, "tiny", checkpoint_dir=tmp_path / "a", progress=False)
    torch.manual_seed(0)
    twice = TinyCnn2d(len(data.tags))
    fit(twice, data, Recipe(**{**fast.__dict__, "epochs": 1}), "tiny", checkpoint_dir=tmp_path / "b", progress=False)
    h2 = fit(twice, data, fast, "tiny", checkpoint_dir=tmp_path / "b", progress=False)
    assert h1.valid_loss == h2.valid_loss                                  # the same run, interrupted or not
    torch.manual_seed(0)
    plain = TinyCnn2d(len(data.tags))
    h3 = fit(plain, data, Recipe(**{**fast.__dict__, "amp": False, "channels_last": False}), "tiny",
             checkpoint_dir=tmp_path / "c", progress=False)
    assert np.allclose(h1.valid_loss, h3.valid_loss, atol=2e-2)           # bfloat16 rounding, not another result
    chunks = ChunkDataset(data, "test", 16000)
    exact = predict(once, chunks, device="cpu", progress=False).values
    quick = predict(once, chunks, device="cpu", progress=False, fast_paths=True).values
    assert np.abs(exact - quick).max() < 2e-2


def test_recall_at_k_is_exact_with_ties_and_groups_in_row_blocks():
    """The blocked top-k of Recall@K against a one-query-at-a-time definition,
    on cases with many ties (rounded similarities) and groups."""
    rng = np.random.default_rng(7)
    for case in range(60):
        n = int(rng.integers(4, 30))
        k = int(rng.integers(1, min(8, n - 2) + 1))
        sim = np.round(rng.standard_normal((n, n)), int(rng.integers(0, 2))).astype(
            np.float32 if case % 2 else np.float64)
        labels = (rng.random((n, 4)) < 0.4).astype(int)
        labels[0] = 1
        groups = rng.integers(0, max(2, n // 2), n) if case % 3 else None
        if groups is not None and (n - np.bincount(groups)[groups]).min() < k:
            groups = None
        expected, neighbours = [], []
        for q in range(n):
            others = [j for j in range(n) if j != q and (groups is None or groups[j] != groups[q])]
            top = sorted(others, key=lambda j: (-sim[q, j], j))[:k]
            neighbours.append(top)
            if labels[q].any():
                expected.append((labels[top].any(0) & (labels[q] > 0)).sum() / labels[q].sum())
        assert recall_at_ks(sim, labels, (k,), groups)[f"R@{k}"] == pytest.approx(np.mean(expected))
        codes = np.unique(groups, return_inverse=True)[1] if groups is not None else None
        blocked = _top_k_neighbours(sim, k, codes, block_rows=int(rng.integers(1, 6)))
        assert np.array_equal(blocked, np.array(neighbours))


def test_the_notebooks_say_what_runs(monkeypatch):
    fast = HOMEWORK_RECIPE.for_profile("cpu")
    monkeypatch.setattr(train, "cpu_has_native_bfloat16", lambda: True)
    assert train.describe_fast_paths("cpu", fast) == ("cpu: bfloat16 autocast (this CPU computes bfloat16 natively); "
                                                      "channels-last 2D convolutions")
    assert train.describe_fast_paths("cuda", fast).startswith("cuda: float16 autocast with loss scaling")
    monkeypatch.setattr(train, "cpu_has_native_bfloat16", lambda: False)
    assert "no native bfloat16" in train.describe_fast_paths("cpu", fast)
    assert train.describe_fast_paths("cpu", HOMEWORK_RECIPE) == "cpu: float32 (mixed precision off); the default memory layout"


@pytest.mark.parametrize("kernel, padding, dim", [((38, 7), (0, 3), 3), ((7, 38), (0, 0), 2), ((5, 3), (2, 1), 3)])
def test_a_one_channel_convolution_by_shifts_is_the_convolution(kernel, padding, dim):
    """conv2d_by_shifts: the same output and the same gradients as the convolution it replaces."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 6, kernel, padding=padding)
    x = torch.randn(3, 1, 96, 50, requires_grad=True)
    target = torch.randn_like(conv(x))
    grads = []
    for compute in (conv, lambda h: conv2d_by_shifts(h, conv, dim)):
        out = compute(x)
        conv.zero_grad()
        x.grad = None
        (out * target).sum().backward()
        grads.append((out.detach(), x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    for plain, shifted in zip(*grads):
        torch.testing.assert_close(shifted, plain, rtol=1e-3, atol=1e-3 * float(plain.abs().max()))
    with pytest.raises(ValueError, match="one input channel"):
        conv2d_by_shifts(torch.randn(1, 2, 9, 9), nn.Conv2d(2, 3, 3), 3)


@pytest.mark.parametrize("which", ["course", "pons"])
def test_musicnn_timbral_filters_train_as_the_plain_convolution_and_maximum(which):
    """In training the timbral filters run on shifted copies and pool with
    Tensor.max: the output and the gradients are those of the plain
    convolution, batch norm, ReLU and amax (float32: ties after ReLU carry no gradient)."""
    torch.manual_seed(0)
    if which == "course":
        branch = TimbralBranch(8, 38).train()                         # x: (batch, 1, 96 bands, frames)
        conv, x = branch.conv, torch.randn(3, 1, 96, 40, requires_grad=True)
        plain = lambda: branch.relu(branch.bn(conv(x))).amax(dim=2)   # noqa: E731
    else:
        branch = TimbralFilters(8, 38).train()                        # x: (batch, 1, frames, 96 bands)
        conv, x = branch.filters.conv, torch.randn(3, 1, 40, 96, requires_grad=True)
        plain = lambda: branch.filters.bn(F.relu(conv(F.pad(x, (0, 0, 3, 3))))).amax(dim=3)  # noqa: E731
    results = []
    for compute in (lambda: branch(x), plain):
        x.grad, conv.weight.grad = None, None
        out = compute()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad.clone(), conv.weight.grad.clone()))
    for course, reference in zip(*results):
        torch.testing.assert_close(course, reference, rtol=1e-3, atol=1e-4 * float(reference.abs().max()))


def test_a_batch_of_log_mels_is_computed_piece_by_piece_with_the_same_numbers():
    front_end = LogMelSpectrogram()
    x = torch.randn(2 * LogMelSpectrogram.CLIPS_PER_PIECE + 3, 8000)
    whole = front_end(x)
    assert whole.shape == (len(x), 1, 96, 32)
    assert torch.equal(whole, torch.cat([front_end(clip[None]) for clip in x]))


def test_the_optimisers_are_fused_on_the_cpu():
    model = nn.Linear(3, 2)
    for optimizer in ("sgd", "adam"):
        assert train.make_optimizer(model, Recipe(optimizer=optimizer)).defaults["fused"] is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_kept_for_the_next_tensors():
    """With keep_freed_memory, a loop that computes with 64 MB temporaries
    faults their pages in once; with glibc's default behaviour, at every
    step (counted in a fresh process, whose allocator nothing else set)."""
    script = (
        "import resource, sys, torch\n"
        "from helpers.config import keep_freed_memory\n"
        "print(keep_freed_memory(sys.argv[1] == 'on'))\n"
        "x = torch.randn(2 ** 24)\n"
        "for _ in range(3):\n"
        "    (x * 2 + 1).relu().sum()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(8):\n"
        "    (x * 2 + 1).relu().sum()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {}
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True,
                             env={**os.environ, "COURSE_FAST_PATHS": "0"}).stdout.split()
        assert out[0] == "True"
        faults[mode] = int(out[1])
    pages = 8 * 2 ** 26 // 4096                          # one 64 MB temporary a step, in 4 kB pages
    assert faults["off"] > pages, faults                 # glibc's default: three temporaries a step faulted in
    assert faults["on"] < faults["off"] // 4, faults     # kept: none, or now and then one when the heap moves
