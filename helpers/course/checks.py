"""Self-checks for the exercises: each tells the student, in plain words,
what is wrong, or prints a clear "passed".

Every exercise has three parts. ``*_cases(seed)`` draws the inputs (plain
data: numbers, lists, numpy arrays); the probe of :mod:`helpers.course.probes`
runs the student's answer on them and returns what it gives; ``judge_*(cases,
outputs)`` compares that with the course's own answers and returns ``(passed,
message)``. In a notebook, ``check_*(answer)`` is the three in one process,
on the cases of seed 0: it prints its verdict and returns ``True`` or
``False``, and never raises for a wrong answer, so a notebook runs on after a
failed check. The grader runs the probe in a clean kernel on cases of a
fresh seed and the judge in its own process (:mod:`helpers.course.exercises`).

A judge only reads plain data; on outputs that are not what a probe returns
(a submission that tampers with the probe) it raises ``ValueError``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..metrics import recall_at_k
from ..models import MusicnnFrontEnd, ResBlock2d, build_model
from ..retrieval import triplet_loss
from . import probes

#: Figure 1 of the homework: output of each block for a 3 s input (48,000 samples).
FIGURE1_SHAPES = [(64, 24, 47), (128, 8, 15), (128, 2, 5), (64, 1, 1)]
FIGURE1_PARAMETERS = 299_892


def _verdict(passed: bool, message: str) -> bool:
    print(("PASSED: " if passed else "FAILED: ") + message)
    return bool(passed)


def _check(name: str, answer) -> bool:
    """``judge(cases, probe(answer, cases))`` on the cases of seed 0, printed."""
    cases = CASES[name](0)
    return _verdict(*JUDGES[name](cases, probes.PROBES[name](answer, cases)))


def _raised(outputs: list, i: int) -> str | None:
    """The exception line the probe reported for case ``i``, if any."""
    return outputs[i].get("raised") if i < len(outputs) and isinstance(outputs[i], dict) else None


def _output(outputs: list, i: int, key: str):
    """Case ``i``'s ``key`` in the probe's outputs; ``ValueError`` when absent."""
    if i >= len(outputs) or not isinstance(outputs[i], dict) or key not in outputs[i]:
        raise ValueError(f"the probe's output for case {i} has no {key!r}")
    return outputs[i][key]


# --------------------------------------------------------------------------- 01: top-k tags

def top_k_tags_cases(seed: int = 0) -> list[dict]:
    """The notebook's example, k = 1, k = every tag, and 31 random probabilities."""
    rng = np.random.default_rng(seed)
    many = [f"tag{i:02d}" for i in range(31)]
    return [{"what": "the example of the notebook", "probs": np.array([0.1, 0.7, 0.3, 0.9]),
             "tags": ["rock", "piano", "fast", "quiet"], "k": 2},
            {"what": "k = 1", "probs": np.array([0.2, 0.05, 0.6]), "tags": ["guitar", "drums", "vocal"], "k": 1},
            {"what": "k = every tag", "probs": np.array([0.4, 0.8, 0.1, 0.3]), "tags": ["a", "b", "c", "d"], "k": 4},
            {"what": "31 random probabilities, k = 5", "probs": rng.random(31), "tags": many, "k": 5}]


def judge_top_k_tags(cases: list[dict], outputs: list) -> tuple[bool, str]:
    """The k most probable tags, most probable first, as (tag, probability) pairs."""
    for i, case in enumerate(cases):
        what, probs, tags, k = case["what"], np.asarray(case["probs"], dtype=float), case["tags"], case["k"]
        order = np.argsort(-probs, kind="stable")[:k]
        expected = [(tags[j], float(probs[j])) for j in order]
        if _raised(outputs, i):
            return False, f"your function on {what} raised {_raised(outputs, i)}"
        if "bad" in (outputs[i] if i < len(outputs) and isinstance(outputs[i], dict) else {}):
            return False, (f"on {what} your function returns {outputs[i]['bad']}: return a list of (tag, "
                           f"probability) pairs, e.g. {expected}")
        pairs = [(str(t), float(p)) for t, p in _output(outputs, i, "pairs")]
        if len(pairs) == k and [t for t, _ in pairs] == [t for t, _ in expected] and \
                np.allclose([p for _, p in pairs], [p for _, p in expected]):
            continue
        hint = ""
        if len(pairs) != k:
            hint = f" It returns {len(pairs)} pairs instead of k = {k}."
        elif [t for t, _ in pairs] == [tags[j] for j in np.argsort(probs, kind="stable")[:k]]:
            hint = " These are the *least* probable tags: sort by decreasing probability."
        elif sorted(t for t, _ in pairs) == sorted(t for t, _ in expected):
            hint = " The tags are right but not in order: the most probable first."
        return False, (f"on {what} your function gives {pairs}, expected {expected}.{hint}\n"
                       f"probs = {np.array2string(probs, precision=3)}")
    return True, ("your top_k_tags returns the k most probable tags, most probable first, as "
                  "(tag, probability) pairs on every test case")


def check_top_k_tags(fn: Callable[[np.ndarray, list[str], int], list]) -> bool:
    """Check a student's ``fn(probs, tags, k) -> [(tag, probability), ...]``
    (notebook 01): the ``k`` most probable tags, most probable first, as
    pairs; on a disagreement, show the case with the expected answer."""
    return _check("top_k_tags", fn)


# --------------------------------------------------------------------------- 02: the 2D CNN of Figure 1

def cnn2d_cases(seed: int = 0) -> list[dict]:
    """One batch of two 3 s waveforms: zeros for seed 0 (the notebook), noise otherwise."""
    if seed == 0:
        return [{"wav": np.zeros((2, 48000), dtype=np.float32)}]
    return [{"wav": (np.random.default_rng(seed).standard_normal((2, 48000)) * 0.1).astype(np.float32)}]


def _parametrised_layers(model: nn.Module, wav: torch.Tensor) -> list[nn.Module]:
    """The layers of ``model`` that hold parameters, in the order they run on ``wav``."""
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children()) and list(m.parameters())]
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m) if m not in order else None) for m in leaves]
    try:
        with torch.no_grad():
            model(wav)
    finally:
        for h in hooks:
            h.remove()
    return order


def judge_cnn2d(cases: list[dict], outputs: list, n_tags: int = 50) -> tuple[bool, str]:
    """Figure 1: four blocks each ending in a max pool, with outputs 64x24x47,
    128x8x15, 128x2x5, 64x1x1; logits ``(batch, n_tags)``; 299,892 parameters
    with 50 tags; and the output of Figure 1's network run with the student's
    own weights (conv -> BN -> ReLU -> max pool per block, then the linear)."""
    if _raised(outputs, 0) and (not outputs or "pools" not in outputs[0]):
        raised = _raised(outputs, 0)
        return False, f"your model on a (2, 48000) waveform batch raised {raised}"
    pools = int(_output(outputs, 0, "pools"))
    if pools != 4:
        return False, (f"Figure 1 has 4 conv blocks, each ending in a MaxPool2d; your model has "
                       f"{pools} MaxPool2d layers")
    wav = torch.from_numpy(np.asarray(cases[0]["wav"], dtype=np.float32))
    shapes = [tuple(int(s) for s in shape) for shape in _output(outputs, 0, "shapes")]
    for k, (got, want) in enumerate(zip(shapes, FIGURE1_SHAPES), start=1):
        if got != want:
            hint = (" (check the conv padding: kernel 3 needs padding 1 to keep the size)"
                    if got[1:] != want[1:] else " (check the number of output channels)")
            return False, f"block {k} outputs {'x'.join(map(str, got))} instead of {'x'.join(map(str, want))}{hint}"
    output = np.asarray(_output(outputs, 0, "output"), dtype=np.float32)
    if output.shape != (len(wav), n_tags):
        return False, (f"the model returns shape {tuple(output.shape)} for a batch of {len(wav)}, "
                       f"expected ({len(wav)}, {n_tags}) logits")
    params = int(_output(outputs, 0, "parameters"))
    if n_tags == 50 and params != FIGURE1_PARAMETERS:
        return False, (f"every shape matches but the model has {params:,} parameters instead of "
                       f"{FIGURE1_PARAMETERS:,}: check the BatchNorm layers and the final Linear(64, 50)")
    figure1 = build_model("cnn2d", n_tags=n_tags).eval()
    ours = _parametrised_layers(figure1, wav)
    yours = _output(outputs, 0, "layers")
    names = [str(layer["type"]) for layer in yours]
    if names != [type(m).__name__ for m in ours]:
        return False, (f"your layers run in the order {', '.join(names)}; Figure 1's: "
                       f"{', '.join(type(m).__name__ for m in ours)} (each block: Conv2d, BatchNorm2d, ReLU, "
                       f"MaxPool2d; then the Linear)")
    for module, layer in zip(ours, yours):
        want = {k: v for k, v in module.state_dict().items() if v.is_floating_point()}
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in layer["state"].items()}
        if set(state) != set(want) or any(state[k].shape != want[k].shape for k in want):
            return False, f"your {layer['type']} layers do not match Figure 1's in their sizes"
        module.load_state_dict(state, strict=False)
    with torch.no_grad():
        expected = figure1(wav).numpy()
    gap = float(np.abs(expected - output).max())
    if not np.isfinite(gap) or gap > 1e-3 * max(1.0, float(np.abs(expected).max())):
        return False, (f"every shape and the parameter count match, but with your own weights Figure 1's network "
                       f"gives another output (up to {gap:.3g} apart): in each block apply the conv, then the "
                       f"BatchNorm, then the ReLU, then the max pool, and feed the flattened 64 values to the "
                       f"Linear")
    return True, ("every block's output shape matches Figure 1 "
                  f"({', '.join('x'.join(map(str, s)) for s in FIGURE1_SHAPES)}) "
                  f"and the model has {params:,} parameters")


def check_cnn2d(model: nn.Module, n_tags: int = 50) -> bool:
    """Check a 2D CNN against Figure 1 (see :func:`judge_cnn2d`): which block
    has which shape instead of Figure 1's, the parameter count, the order of
    the layers."""
    cases = cnn2d_cases(0)
    return _verdict(*judge_cnn2d(cases, probes.probe_cnn2d(lambda: model, cases), n_tags))


# --------------------------------------------------------------------------- 03: the residual block

def residual_block_cases(seed: int = 0) -> list[dict]:
    """A block keeping 16 channels and one going from 16 to 32: the weights of
    the course's ``ResBlock2d`` (batch norms that are not the identity) and a
    ``(2, 16, 12, 20)`` input, all drawn from ``seed``."""
    x = torch.randn(2, 16, 12, 20, generator=torch.Generator().manual_seed(seed))
    cases = []
    for c_in, c_out in [(16, 16), (16, 32)]:
        with torch.random.fork_rng():
            torch.manual_seed(seed * 1000 + c_out)
            ours = ResBlock2d(c_in, c_out, pool=(2, 2))
        generator = torch.Generator().manual_seed(seed * 1000 + c_out)
        for bn in (m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)):
            for t in (bn.weight.data, bn.bias.data, bn.running_mean):
                t.copy_(torch.randn(t.shape, generator=generator) * 0.5)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)
        cases.append({"c_in": c_in, "c_out": c_out, "x": x.numpy(),
                      "state": {k: v.numpy().copy() for k, v in ours.state_dict().items()}})
    return cases


def judge_residual_block(cases: list[dict], outputs: list) -> tuple[bool, str]:
    """The course's ``ResBlock2d`` output with the same weights; recognises a
    missing projection, a projection that is not 1x1 or has no batch norm, a
    projection where the identity belongs, a missing shortcut in ``forward``
    and a ReLU applied before the addition."""
    for i, case in enumerate(cases):
        c_in, c_out = case["c_in"], case["c_out"]
        x = torch.from_numpy(np.asarray(case["x"], dtype=np.float32))
        raised = _raised(outputs, i)
        if raised and "size mismatch for shortcut.0.weight" in raised:
            return False, (f"with {c_in} -> {c_out} channels your shortcut's convolution has another kernel than the "
                           f"course's: the projection is a 1x1 convolution, nn.Conv2d(c_in, c_out, kernel_size=1)")
        if raised:
            return False, f"your block with {c_in} -> {c_out} channels on a {tuple(x.shape)} input raised {raised}"
        missing, unexpected = list(_output(outputs, i, "missing")), list(_output(outputs, i, "unexpected"))
        lacks = {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("shortcut") else k for k in unexpected}
        if c_in != c_out and {"shortcut.0", "shortcut.1"} <= lacks:
            return False, (f"with {c_in} -> {c_out} channels your block has no projection shortcut: x has {c_in} "
                           f"channels and cannot be added to {c_out}; when c_in != c_out, self.shortcut = "
                           f"nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=1), nn.BatchNorm2d(c_out))")
        if c_in != c_out and "shortcut.1" in lacks:
            return False, (f"with {c_in} -> {c_out} channels your projection shortcut has no batch norm: follow its "
                           f"1x1 convolution with nn.BatchNorm2d(c_out), as in the main path")
        if c_in == c_out and any(k.startswith("shortcut.") for k in missing):
            return False, (f"with {c_in} -> {c_out} channels the shortcut is the identity (nn.Identity()): a "
                           f"projection is only needed when the number of channels changes")
        if missing or unexpected:
            return False, (f"with {c_in} -> {c_out} channels your block's layers differ from the course's: yours "
                           f"lacks {unexpected} and has {missing} in addition. Name them as the course's ResBlock2d: "
                           f"conv1, bn1, conv2, bn2, shortcut")
        ours = ResBlock2d(c_in, c_out, pool=(2, 2)).eval()
        ours.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in case["state"].items()})
        got = torch.from_numpy(np.asarray(_output(outputs, i, "output"), dtype=np.float32))
        with torch.no_grad():
            want = ours(x)
            main = ours.bn2(ours.conv2(ours.relu(ours.bn1(ours.conv1(x)))))
            no_shortcut = ours.pool(ours.relu(main))
            relu_first = ours.pool(ours.relu(main) + ours.shortcut(x))
        if tuple(got.shape) != tuple(want.shape):
            return False, f"with {c_in} -> {c_out} channels your block outputs {tuple(got.shape)} instead of " \
                          f"{tuple(want.shape)}"
        if torch.allclose(got, want, atol=1e-5):
            continue
        hint = ""
        if torch.allclose(got, no_shortcut, atol=1e-5):
            hint = " It matches the block without its shortcut: add self.shortcut(x) to the second BN's output."
        elif torch.allclose(got, relu_first, atol=1e-5):
            hint = " It matches a block that applies the ReLU before the addition: add first, then the ReLU."
        return False, (f"with {c_in} -> {c_out} channels your block's output differs from the course's by up to "
                       f"{(got - want).abs().max().item():.3g}.{hint}")
    return True, "your residual block gives the course's output with the same and with more channels"


def check_residual_block(block_class: Callable[..., nn.Module]) -> bool:
    """Check a student's residual block (notebook 03): built as
    ``block_class(c_in, c_out, pool)``, given the weights of the course's
    :class:`helpers.models.ResBlock2d`, it must give the same output on random
    input, with the same and with more output channels. Recognises a missing
    shortcut and a ReLU applied before the addition."""
    return _check("residual_block", block_class)


# --------------------------------------------------------------------------- 04: Recall@K

def recall_at_k_cases(seed: int = 0) -> list[dict]:
    """Small cases with a known answer: a hand-worked one, all-tied
    similarities (the query must not count as its own neighbour), a query
    without labels, and random cases with ties."""
    hand_labels = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    hand_sim = np.array([[1.0, 0.5, 0.9, 0.1], [0.5, 1.0, 0.2, 0.3], [0.9, 0.2, 1.0, 0.4], [0.1, 0.3, 0.4, 1.0]])
    cases = [("the hand-worked 4-clip example", hand_sim, hand_labels, 1),
             ("the hand-worked 4-clip example", hand_sim, hand_labels, 2),
             ("a case where every similarity is equal", np.ones((3, 3)), np.eye(3, dtype=int), 1),
             ("a case with a query without labels", np.zeros((4, 4)), np.array([[1, 0], [1, 0], [0, 1], [0, 0]]), 1)]
    rng = np.random.default_rng(seed)
    for _ in range(4):
        n = int(rng.integers(6, 20))
        sim = np.round(rng.standard_normal((n, n)), 1)
        labels = (rng.random((n, 5)) < 0.3).astype(int)
        cases.append((f"a random case with N={n}", sim, labels, int(rng.choice([1, 2, 4]))))
    return [{"what": w, "sim": s, "labels": y, "k": k} for w, s, y, k in cases]


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


def judge_recall_at_k(cases: list[dict], outputs: list) -> tuple[bool, str]:
    """Recall@K by its definition (self excluded, label-less queries skipped,
    ties by index); on a disagreement, the case with the expected value."""
    for i, case in enumerate(cases):
        what, sim, labels, k = case["what"], np.asarray(case["sim"], dtype=float), np.asarray(case["labels"]), case["k"]
        expected = recall_at_k(sim, labels, k)
        if _raised(outputs, i):
            return False, f"your function on {what} (k={k}) raised {_raised(outputs, i)}"
        got = float(_output(outputs, i, "value"))
        if not np.isclose(got, expected, atol=1e-9):
            hint = ""
            if np.isclose(got, _recall_variant(sim, labels, k, skip_self=False), atol=1e-9):
                hint = " It matches a Recall@K that counts the query as its own neighbour: exclude it."
            elif np.isclose(got, _recall_variant(sim, labels, k, skip_unlabelled=False), atol=1e-9):
                hint = " It matches a Recall@K that counts queries without labels as 0: leave them out of the mean."
            return False, (f"on {what} with k={k} your function gives {got:.4f}, the definition "
                           f"gives {expected:.4f}.{hint}\nsim =\n{np.array2string(sim, precision=2)}"
                           f"\nlabels =\n{labels}")
    return True, ("your Recall@K agrees with the definition on every test case "
                  "(hand-worked, ties, label-less queries, random)")


def check_recall_at_k(fn: Callable[[np.ndarray, np.ndarray, int], float]) -> bool:
    """Check a student's ``fn(sim, labels, k) -> float`` against the definition
    (self excluded, label-less queries skipped, ties by index); on a
    disagreement, show the smallest such case with the expected value."""
    return _check("recall_at_k", fn)



# --------------------------------------------------------------------------- 02: Figure 1's table, by hand

#: Figure 1 block by block: (name, output (C, F, T) for a 3 s input, parameters, (c_in, pool)); the
#: linear's "shape" is its output, (50,). With the spectrogram's BatchNorm2d(1) (2), 299,892 in all.
FIGURE1_BLOCKS = [("block 1", (64, 24, 47), 1, (4, 4)), ("block 2", (128, 8, 15), 64, (3, 3)),
                  ("block 3", (128, 2, 5), 128, (3, 3)), ("block 4", (64, 1, 1), 128, (2, 5))]


def _block_parameters(c_in: int, c_out: int) -> int:
    """A Conv2d(c_in, c_out, 3) with bias and its BatchNorm2d(c_out)."""
    return 9 * c_in * c_out + c_out + 2 * c_out


FIGURE1_TABLE = [(name, shape, _block_parameters(c_in, shape[0])) for name, shape, c_in, _ in FIGURE1_BLOCKS] + \
    [("linear", (50,), 64 * 50 + 50)]


def figure1_table_cases(seed: int = 0) -> list[dict]:
    """No input: the table is data (one empty case, whatever the seed)."""
    return [{}]


def judge_figure1_table(cases: list[dict], outputs: list) -> tuple[bool, str]:
    """Row by row against :data:`FIGURE1_TABLE`: the output shape (C, F, T)
    of each block for a 3 s input (96 x 188 mel bands x frames) and its
    parameters; recognises a BatchNorm or a bias left out of the count."""
    if _raised(outputs, 0):
        return False, f"reading FIGURE1_TABLE raised {_raised(outputs, 0)}"
    if "bad" in outputs[0]:
        return False, (f"FIGURE1_TABLE is {outputs[0]['bad']}: make it a list of 5 rows (name, (C, F, T), "
                       f"parameters), e.g. ('block 1', (64, 24, 47), 768)")
    rows = _output(outputs, 0, "rows")
    if len(rows) != len(FIGURE1_TABLE):
        return False, f"FIGURE1_TABLE has {len(rows)} rows instead of 5: block 1 to block 4, then the linear"
    before = (96, 188)
    for row, (name, shape, params), block in zip(rows, FIGURE1_TABLE, FIGURE1_BLOCKS + [None]):
        got_shape, got_params = tuple(int(s) for s in row[1]), int(row[2])
        if got_shape != shape:
            if block is None:
                return False, f"the linear outputs one logit per tag: (50,), not {got_shape}"
            c_in, pool = block[2], block[3]
            if got_shape[:1] != shape[:1]:
                return False, (f"{name}: its conv has {shape[0]} filters, so {shape[0]} output channels "
                               f"(you wrote {got_shape[0]})")
            return False, (f"{name}: the conv (padding 1) keeps {before[0]} x {before[1]}, then the {pool} max pool "
                           f"divides and rounds down: {before[0]} becomes {shape[1]}, {before[1]} becomes {shape[2]} "
                           f"(you wrote {got_shape[1:]})")
        if got_params != params:
            if block is None:
                return False, f"the Linear(64, 50) has 64 x 50 weights and 50 biases: {params:,}, not {got_params:,}"
            c_in, c_out = block[2], shape[0]
            hint = f"a Conv2d({c_in}, {c_out}, 3) has 9·{c_in}·{c_out} + {c_out} parameters, plus 2·{c_out} for its BatchNorm"
            if got_params == 9 * c_in * c_out + c_out:
                hint = f"that is the conv alone: add 2·{c_out} for its BatchNorm2d (a scale and a shift per channel)"
            elif got_params == 9 * c_in * c_out + 2 * c_out:
                hint = f"the conv also has a bias per output channel: {c_out} more"
            elif got_params == 9 * c_in * c_out:
                hint = f"that is the conv's weights alone: add its {c_out} biases and 2·{c_out} for its BatchNorm"
            return False, f"{name} has {params:,} parameters, not {got_params:,}: {hint}"
        before = shape[1:]
    total = sum(p for _, _, p in FIGURE1_TABLE) + 2
    return True, (f"every row matches Figure 1; with the spectrogram's BatchNorm2d(1) (2 parameters) the network "
                  f"has {total:,} parameters")


def check_figure1_table(table: list) -> bool:
    """Check a student's table of Figure 1 (notebook 02): rows ``(name,
    (C, F, T), parameters)`` for the four blocks and the linear; names the
    first row that is wrong and how to work it out."""
    return _check("figure1_table", table)


# --------------------------------------------------------------------------- 04: in-batch hard-negative mining

def mined_triplet_loss_cases(seed: int = 0) -> list[dict]:
    """Three batches of triplets ``(batch, 6)`` with keys that repeat (the
    song or tag each triplet was drawn for), margin 0.4, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    cases = []
    for b in (4, 6, 8):
        a, p, n = (rng.standard_normal((b, 6)).astype(np.float32) for _ in range(3))
        cases.append({"anchor": a, "positive": p, "negative": n, "keys": rng.integers(0, max(2, b // 2), b),
                      "margin": 0.4})
    return cases


def _mined_variants(case: dict) -> dict[str, torch.Tensor]:
    """The course's per-triplet loss with the hardest valid negative, and the
    usual mistakes, each ``(batch,)``."""
    a, p, n = (torch.from_numpy(np.asarray(case[k], dtype=np.float32)) for k in ("anchor", "positive", "negative"))
    keys, margin = torch.from_numpy(np.asarray(case["keys"], dtype=np.int64)), float(case["margin"])
    b = len(a)
    close = nn.functional.cosine_similarity(a[:, None], torch.cat([a, p, n])[None], dim=2)     # (b, 3b)
    same = keys[:, None] == keys[None, :]
    own = torch.zeros(b, 3 * b, dtype=torch.bool)
    own[torch.arange(b), torch.arange(b)] = own[torch.arange(b), torch.arange(b) + b] = True
    invalid = own | torch.cat([same, same, torch.zeros_like(same)], dim=1)
    cos_p = nn.functional.cosine_similarity(a, p, dim=1)
    loss = lambda close_n: torch.relu(margin - cos_p + close_n)        # noqa: E731
    return {"right": triplet_loss(a, p, n, margin, hard_negatives=1e-9, keys=keys, reduction="none"),
            "easiest": loss(close.masked_fill(invalid, math.inf).amin(1)),
            "no mask": loss(close.amax(1)),
            "own only": loss(close.masked_fill(own, -math.inf).amax(1)),
            "mean": triplet_loss(a, p, n, margin, hard_negatives=1.0, keys=keys, reduction="none"),
            "own negative": triplet_loss(a, p, n, margin, reduction="none")}


MINING_HINTS = {
    "easiest": "it picks the *least* similar valid candidate, the easiest: the hardest negative is the one most "
               "similar to the anchor (the largest cosine similarity; with a distance it would be the smallest)",
    "no mask": "it takes the most similar of *all* candidates, the triplet's own anchor included (cosine 1): set the "
               "invalid ones to -inf before the max",
    "own only": "it leaves out the triplet's own anchor and positive but not those of triplets with the same key: "
                "they share the anchor's song or tag, so they are no negatives",
    "mean": "it averages every valid candidate (run D*): keep the hardest one only",
    "own negative": "it uses each triplet's own negative: mine the batch instead (anchors, positives and negatives "
                    "of every triplet are candidates)",
}


def judge_mined_triplet_loss(cases: list[dict], outputs: list) -> tuple[bool, str]:
    """The course's ``triplet_loss(..., hard_negatives, keys, reduction='none')``
    with the single hardest valid negative; recognises the usual mistakes."""
    for i, case in enumerate(cases):
        b = len(case["keys"])
        if _raised(outputs, i):
            return False, f"your function on a batch of {b} triplets raised {_raised(outputs, i)}"
        got = torch.from_numpy(np.asarray(_output(outputs, i, "losses"), dtype=np.float32))
        variants = _mined_variants(case)
        want = variants["right"]
        if tuple(got.shape) != (b,):
            return False, f"on a batch of {b} triplets your function returns shape {tuple(got.shape)}: return ({b},)," \
                          f" the loss of each triplet"
        if torch.allclose(got, want, atol=1e-5):
            continue
        hint = next((MINING_HINTS[k] for k in MINING_HINTS if torch.allclose(got, variants[k], atol=1e-5)), "")
        return False, (f"on a batch of {b} triplets (keys {list(map(int, case['keys']))}) your losses are "
                       f"{np.round(got.numpy(), 3).tolist()}, the course's {np.round(want.numpy(), 3).tolist()}"
                       + (f": {hint}" if hint else ""))
    return True, "your mined triplet loss agrees with the course's triplet_loss on every batch"


def check_mined_triplet_loss(fn: Callable) -> bool:
    """Check a student's ``fn(anchor, positive, negative, keys, margin) ->
    (batch,)`` losses with the hardest valid in-batch negative (notebook 04)."""
    return _check("mined_triplet_loss", fn)


# --------------------------------------------------------------------------- 05: Musicnn's front end

def musicnn_front_end_cases(seed: int = 0) -> list[dict]:
    """A ``(2, 1, 96, 40)`` log-mel batch and the weights of the course's
    ``MusicnnFrontEnd`` (batch norms that are not the identity), from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ours = MusicnnFrontEnd(n_mels=96)
    for bn in (m for m in ours.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))):
        for t in (bn.weight.data, bn.bias.data, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=generator) * 0.5)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)
    return [{"n_mels": 96, "x": torch.randn(2, 1, 96, 40, generator=generator).numpy(),
             "state": {k: v.numpy().copy() for k, v in ours.state_dict().items()}}]


def judge_musicnn_front_end(cases: list[dict], outputs: list) -> tuple[bool, str]:
    """Branch by branch against the course's ``MusicnnFrontEnd(96)``: two
    timbral branches (filters 67 and 38 bands high, 70 % and 40 % of 96, 7
    frames wide, 204 channels each), three temporal ones (129, 65, 33
    frames, 51 channels each), 561 channels in all, the time axis kept; then
    the output with the course's weights."""
    case = cases[0]
    if _raised(outputs, 0) and "branches" not in outputs[0]:
        return False, f"building or running your front end raised {_raised(outputs, 0)}"
    ours = MusicnnFrontEnd(n_mels=int(case["n_mels"])).eval()
    x = torch.from_numpy(np.asarray(case["x"], dtype=np.float32))
    spans = {"timbral": ["70 %", "40 %"], "temporal": ["", "", ""]}
    for kind, branches in (("timbral", ours.timbral), ("temporal", ours.temporal)):
        yours = _output(outputs, 0, "branches").get(kind)
        if yours is None:
            return False, f"your front end has no self.{kind}: keep the skeleton's nn.ModuleList of {kind} branches"
        if len(yours) != len(branches):
            return False, f"your front end has {len(yours)} {kind} branches instead of {len(branches)}"
        for k, (branch, got) in enumerate(zip(branches, yours), start=1):
            want = list(branch.conv.weight.shape)
            got_w = [int(s) for s in got["weight"]]
            if got_w[:1] != want[:1]:
                return False, f"{kind} branch {k} has {got_w[0]} channels instead of {want[0]}"
            if kind == "timbral" and got_w[2:3] != want[2:3]:
                return False, (f"timbral branch {k}'s filters are {got_w[2]} bands high instead of {want[2]} "
                               f"({spans[kind][k - 1]} of the 96 mel bands, rounded down)")
            if got_w[-1] != want[-1]:
                what = "frames wide" if kind == "timbral" else "frames long"
                return False, f"{kind} branch {k}'s filters are {got_w[-1]} {what} instead of {want[-1]}"
            if [int(s) for s in got["output"]] != [len(x), want[0], x.shape[-1]]:
                return False, (f"{kind} branch {k} outputs {tuple(got['output'])} instead of "
                               f"{(len(x), want[0], x.shape[-1])}: pad its conv to keep the {x.shape[-1]} frames and "
                               f"reduce the frequency axis (max for timbral, mean before the conv for temporal)")
    shape = [int(s) for s in _output(outputs, 0, "shape")]
    if shape != [len(x), ours.out_channels, x.shape[-1]]:
        return False, (f"your front end outputs {tuple(shape)} instead of {(len(x), 561, x.shape[-1])}: concatenate "
                       f"the five branches' outputs along the channels (dim 1)")
    missing, unexpected = list(_output(outputs, 0, "missing")), list(_output(outputs, 0, "unexpected"))
    if missing or unexpected:
        return False, (f"your front end's weights are named differently from the course's: yours lacks {unexpected[:4]} "
                       f"and has {missing[:4]}: build the branches with TimbralBranch and TemporalBranch")
    ours.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in case["state"].items()})
    with torch.no_grad():
        want = ours(x)
    got = torch.from_numpy(np.asarray(_output(outputs, 0, "output"), dtype=np.float32))
    if not torch.allclose(got, want, atol=1e-4):
        return False, (f"every branch has the course's shape, but with the course's weights your output differs by "
                       f"up to {(got - want).abs().max().item():.3g}: the timbral branches first (70 % then 40 %), "
                       f"then the temporal ones (129, 65, 33 frames)")
    return True, ("your front end has the course's five branches and gives its output: 2 x 204 timbral and "
                  "3 x 51 temporal channels, 561 in all")


def check_musicnn_front_end(front_end_class: Callable[..., nn.Module]) -> bool:
    """Check a student's Musicnn front end (notebook 05): built as
    ``front_end_class(n_mels=96)``, branch by branch shapes, 561 channels,
    and the course's output when given its weights."""
    return _check("musicnn_front_end", front_end_class)


CASES = {"top_k_tags": top_k_tags_cases, "cnn2d": cnn2d_cases, "residual_block": residual_block_cases,
         "recall_at_k": recall_at_k_cases, "figure1_table": figure1_table_cases,
         "mined_triplet_loss": mined_triplet_loss_cases, "musicnn_front_end": musicnn_front_end_cases}
JUDGES = {"top_k_tags": judge_top_k_tags, "cnn2d": judge_cnn2d, "residual_block": judge_residual_block,
          "recall_at_k": judge_recall_at_k, "figure1_table": judge_figure1_table,
          "mined_triplet_loss": judge_mined_triplet_loss, "musicnn_front_end": judge_musicnn_front_end}
