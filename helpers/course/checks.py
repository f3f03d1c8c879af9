"""Self-checks for the exercises: each tells the student, in plain words,
what is wrong, or prints a clear "passed".

Every check prints its verdict and returns ``True`` or ``False``; it never
raises for a wrong answer (only for a broken call), so a notebook runs on
after a failed check. When ``$COURSE_CHECKS_FILE`` is set (the grader sets it),
each verdict is also appended there as one JSON line.
"""
from __future__ import annotations

import json
import os
import traceback
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..metrics import recall_at_k
from ..models import ResBlock2d

#: Figure 1 of the homework: output of each block for a 3 s input (48,000 samples).
FIGURE1_SHAPES = [(64, 24, 47), (128, 8, 15), (128, 2, 5), (64, 1, 1)]
FIGURE1_PARAMETERS = 299_892


def _verdict(name: str, passed: bool, message: str) -> bool:
    print(("PASSED: " if passed else "FAILED: ") + message)
    path = os.environ.get("COURSE_CHECKS_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"check": name, "passed": bool(passed), "message": message}) + "\n")
    return passed


def _error(name: str, what: str, e: BaseException) -> bool:
    last = traceback.format_exception_only(type(e), e)[-1].strip()
    return _verdict(name, False, f"{what} raised {last}")


def check_cnn2d(model: nn.Module, n_tags: int = 50) -> bool:
    """Check a 2D CNN against Figure 1: four blocks (in the order they are
    registered, each ending in a max pool) with outputs 64x24x47, 128x8x15,
    128x2x5, 64x1x1 for a 3 s input, logits ``(batch, n_tags)``, and 299,892
    parameters with 50 tags."""
    name = "cnn2d"
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    if len(pools) != 4:
        return _verdict(name, False, f"Figure 1 has 4 conv blocks, each ending in a MaxPool2d; your model has "
                                     f"{len(pools)} MaxPool2d layers")
    shapes: list[tuple] = []
    hooks = [p.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for p in pools]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 48000))
    except Exception as e:  # noqa: BLE001 - the student's code may fail in any way
        return _error(name, "your model on a (2, 48000) waveform batch", e)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for k, (got, want) in enumerate(zip(shapes, FIGURE1_SHAPES), start=1):
        if got != want:
            hint = (" (check the conv padding: kernel 3 needs padding 1 to keep the size)"
                    if got[1:] != want[1:] else " (check the number of output channels)")
            return _verdict(name, False, f"block {k} outputs {'x'.join(map(str, got))} instead of "
                                         f"{'x'.join(map(str, want))}{hint}")
    if tuple(out.shape) != (2, n_tags):
        return _verdict(name, False, f"the model returns shape {tuple(out.shape)} for a batch of 2, "
                                     f"expected (2, {n_tags}) logits")
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_tags == 50 and params != FIGURE1_PARAMETERS:
        return _verdict(name, False, f"every shape matches but the model has {params:,} parameters instead of "
                                     f"{FIGURE1_PARAMETERS:,}: check the BatchNorm layers and the final Linear(64, 50)")
    return _verdict(name, True, "every block's output shape matches Figure 1 "
                                f"({', '.join('x'.join(map(str, s)) for s in FIGURE1_SHAPES)}) "
                                f"and the model has {params:,} parameters")


def _recall_cases(seed: int = 0):
    """Small cases with a known answer: a hand-worked one, all-tied
    similarities (the query must not count as its own neighbour), a query
    without labels, and random cases with ties."""
    hand_labels = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    hand_sim = np.array([[1.0, 0.5, 0.9, 0.1], [0.5, 1.0, 0.2, 0.3], [0.9, 0.2, 1.0, 0.4], [0.1, 0.3, 0.4, 1.0]])
    yield "the hand-worked 4-clip example", hand_sim, hand_labels, 1
    yield "the hand-worked 4-clip example", hand_sim, hand_labels, 2
    yield "a case where every similarity is equal", np.ones((3, 3)), np.eye(3, dtype=int), 1
    yield "a case with a query without labels", np.zeros((4, 4)), np.array([[1, 0], [1, 0], [0, 1], [0, 0]]), 1
    rng = np.random.default_rng(seed)
    for _ in range(4):
        n = int(rng.integers(6, 20))
        sim = np.round(rng.standard_normal((n, n)), 1)
        labels = (rng.random((n, 5)) < 0.3).astype(int)
        yield f"a random case with N={n}", sim, labels, int(rng.choice([1, 2, 4]))


def _recall_variant(sim: np.ndarray, labels: np.ndarray, k: int, skip_self: bool = True,
                    skip_unlabelled: bool = True) -> float:
    """Recall@K by its definition, one query at a time, with the two usual
    mistakes available as switches (to recognise them in a student's answer)."""
    values = []
    for q in range(len(sim)):
        yq = labels[q] > 0
        if not yq.any():
            if not skip_unlabelled:
                values.append(0.0)
            continue
        order = sorted((j for j in range(len(sim)) if j != q or not skip_self), key=lambda j: (-sim[q, j], j))
        found = (labels[order[:k]] > 0).any(0)
        values.append((found & yq).sum() / yq.sum())
    return float(np.mean(values))


def check_recall_at_k(fn: Callable[[np.ndarray, np.ndarray, int], float]) -> bool:
    """Check a student's ``fn(sim, labels, k) -> float`` against the definition
    (self excluded, label-less queries skipped, ties by index); on a
    disagreement, show the smallest such case with the expected value."""
    name = "recall_at_k"
    for what, sim, labels, k in _recall_cases():
        expected = recall_at_k(sim, labels, k)
        try:
            got = float(fn(sim.copy(), labels.copy(), k))
        except Exception as e:  # noqa: BLE001
            return _error(name, f"your function on {what} (k={k})", e)
        if not np.isclose(got, expected, atol=1e-9):
            hint = ""
            if np.isclose(got, _recall_variant(sim, labels, k, skip_self=False), atol=1e-9):
                hint = " It matches a Recall@K that counts the query as its own neighbour: exclude it."
            elif np.isclose(got, _recall_variant(sim, labels, k, skip_unlabelled=False), atol=1e-9):
                hint = " It matches a Recall@K that counts queries without labels as 0: leave them out of the mean."
            return _verdict(name, False, f"on {what} with k={k} your function gives {got:.4f}, the definition "
                                         f"gives {expected:.4f}.{hint}\nsim =\n{np.array2string(sim, precision=2)}"
                                         f"\nlabels =\n{labels}")
    return _verdict(name, True, "your Recall@K agrees with the definition on every test case "
                                "(hand-worked, ties, label-less queries, random)")


def check_top_k_tags(fn: Callable[[np.ndarray, list[str], int], list]) -> bool:
    """Check a student's ``fn(probs, tags, k) -> [(tag, probability), ...]``
    (notebook 01): the ``k`` most probable tags, most probable first, as
    pairs; on a disagreement, show the case with the expected answer."""
    name = "top_k_tags"
    rng = np.random.default_rng(0)
    many = [f"tag{i:02d}" for i in range(31)]
    cases = [("the example of the notebook", np.array([0.1, 0.7, 0.3, 0.9]), ["rock", "piano", "fast", "quiet"], 2),
             ("k = 1", np.array([0.2, 0.05, 0.6]), ["guitar", "drums", "vocal"], 1),
             ("k = every tag", np.array([0.4, 0.8, 0.1, 0.3]), ["a", "b", "c", "d"], 4),
             ("31 random probabilities, k = 5", rng.random(31), many, 5)]
    for what, probs, tags, k in cases:
        order = np.argsort(-probs, kind="stable")[:k]
        expected = [(tags[i], float(probs[i])) for i in order]
        try:
            got = list(fn(probs.copy(), list(tags), k))
        except Exception as e:  # noqa: BLE001 - the student's code may fail in any way
            return _error(name, f"your function on {what}", e)
        try:
            pairs = [(t, float(p)) for t, p in got if isinstance(t, str)]
        except (TypeError, ValueError):
            pairs = []
        if len(pairs) != len(got):
            return _verdict(name, False, f"on {what} your function returns {got!r}: return a list of (tag, "
                                         f"probability) pairs, e.g. {expected}")
        if len(pairs) == k and [t for t, _ in pairs] == [t for t, _ in expected] and \
                np.allclose([p for _, p in pairs], [p for _, p in expected]):
            continue
        hint = ""
        if len(pairs) != k:
            hint = f" It returns {len(pairs)} pairs instead of k = {k}."
        elif [t for t, _ in pairs] == [tags[i] for i in np.argsort(probs, kind="stable")[:k]]:
            hint = " These are the *least* probable tags: sort by decreasing probability."
        elif sorted(t for t, _ in pairs) == sorted(t for t, _ in expected):
            hint = " The tags are right but not in order: the most probable first."
        return _verdict(name, False, f"on {what} your function gives {pairs}, expected {expected}.{hint}\n"
                                     f"probs = {np.array2string(probs, precision=3)}")
    return _verdict(name, True, "your top_k_tags returns the k most probable tags, most probable first, as "
                                "(tag, probability) pairs on every test case")


def check_residual_block(block_class: Callable[..., nn.Module]) -> bool:
    """Check a student's residual block (notebook 03): built as
    ``block_class(c_in, c_out, pool)``, given the weights of the course's
    :class:`helpers.models.ResBlock2d`, it must give the same output on random
    input, with the same and with more output channels. Recognises a missing
    shortcut and a ReLU applied before the addition."""
    name = "residual_block"
    x = torch.randn(2, 16, 12, 20, generator=torch.Generator().manual_seed(0))
    for c_in, c_out in [(16, 16), (16, 32)]:
        ours = ResBlock2d(c_in, c_out, pool=(2, 2)).eval()
        generator = torch.Generator().manual_seed(c_out)
        for bn in (m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)):   # BN that is not the identity
            for t in (bn.weight.data, bn.bias.data, bn.running_mean):
                t.copy_(torch.randn(t.shape, generator=generator) * 0.5)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)
        try:
            yours = block_class(c_in, c_out, (2, 2)).eval()
            missing, unexpected = yours.load_state_dict(ours.state_dict(), strict=False)
            if missing or unexpected:
                return _verdict(name, False, f"with {c_in} -> {c_out} channels your block's layers differ from the "
                                             f"course's: yours lacks {list(unexpected)} and has {list(missing)} in addition. Keep "
                                             f"the layers of the skeleton (conv1, bn1, conv2, bn2, shortcut) and only "
                                             f"write forward")
            with torch.no_grad():
                got = yours(x)
        except Exception as e:  # noqa: BLE001
            return _error(name, f"your block with {c_in} -> {c_out} channels on a {tuple(x.shape)} input", e)
        with torch.no_grad():
            want = ours(x)
            main = ours.bn2(ours.conv2(ours.relu(ours.bn1(ours.conv1(x)))))
            no_shortcut = ours.pool(ours.relu(main))
            relu_first = ours.pool(ours.relu(main) + ours.shortcut(x))
        if tuple(got.shape) != tuple(want.shape):
            return _verdict(name, False, f"with {c_in} -> {c_out} channels your block outputs "
                                         f"{tuple(got.shape)} instead of {tuple(want.shape)}")
        if torch.allclose(got, want, atol=1e-5):
            continue
        hint = ""
        if torch.allclose(got, no_shortcut, atol=1e-5):
            hint = " It matches the block without its shortcut: add self.shortcut(x) to the second BN's output."
        elif torch.allclose(got, relu_first, atol=1e-5):
            hint = " It matches a block that applies the ReLU before the addition: add first, then the ReLU."
        return _verdict(name, False, f"with {c_in} -> {c_out} channels your block's output differs from the "
                                     f"course's by up to {(got - want).abs().max().item():.3g}.{hint}")
    return _verdict(name, True, "your residual block gives the course's output with the same and with more channels")
