"""The self-checks of notebooks 01 (top-k tags) and 03 (residual block): they
pass on a correct answer and name the mistake on the usual wrong ones."""
from __future__ import annotations

import io
from contextlib import redirect_stdout

import numpy as np
import pytest
from torch import nn

from helpers.course.checks import check_residual_block, check_top_k_tags


def verdict(check, *args) -> tuple[bool, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        ok = check(*args)
    return ok, out.getvalue()


def top_k_right(probs, tags, k):
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [(tags[i], float(probs[i])) for i in order]


def test_top_k_check_passes_on_a_correct_answer_and_writes_no_verdict_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CHECKS_FILE", str(tmp_path / "checks.jsonl"))   # the old grader's channel: gone
    ok, text = verdict(check_top_k_tags, top_k_right)
    assert ok and text.startswith("PASSED")
    assert not (tmp_path / "checks.jsonl").exists()


EXPECTED = "expected [('quiet', 0.9), ('piano', 0.7)]"     # the notebook's example, k = 2


@pytest.mark.parametrize("wrong, expected_words, shown", [
    (lambda p, t, k: [(t[i], float(p[i])) for i in np.argsort(p, kind="stable")[:k]], "least* probable",
     f"gives [('rock', 0.1), ('fast', 0.3)], {EXPECTED}"),
    (lambda p, t, k: [(t[i], float(p[i])) for i in sorted(np.argsort(-p)[:k])], "not in order",
     f"gives [('piano', 0.7), ('quiet', 0.9)], {EXPECTED}"),
    (lambda p, t, k: [(t[i], float(p[i])) for i in np.argsort(-p)[:k + 1]], "3 pairs instead of k = 2",
     f"gives [('quiet', 0.9), ('piano', 0.7), ('fast', 0.3)], {EXPECTED}"),
    (lambda p, t, k: [t[i] for i in np.argsort(-p)[:k]], "(tag, probability) pairs",
     "returns ['quiet', 'piano']: return a list of (tag, probability) pairs, e.g. [('quiet', 0.9), ('piano', 0.7)]"),
    (lambda p, t, k: None, "TypeError",
     "your function on the example of the notebook raised TypeError: 'NoneType' object is not iterable"),
], ids=["least-probable", "not-in-order", "one-too-many", "tags-only", "raises"])
def test_top_k_check_explains_the_usual_mistakes(wrong, expected_words, shown):
    """Each mistake gets its own hint, and the message shows what the
    function gave on which case and what was expected there."""
    ok, text = verdict(check_top_k_tags, wrong)
    assert not ok and text.startswith("FAILED") and expected_words in text
    assert shown in text


class Block(nn.Module):
    """The skeleton of notebook 03's exercise; ``MISTAKE`` picks the forward."""

    MISTAKE = ""

    def __init__(self, c_in, c_out, pool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Identity() if c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=1), nn.BatchNorm2d(c_out)))
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(pool)

    def forward(self, x):
        if self.MISTAKE == "no batch norm":
            return self.pool(self.relu(self.conv2(self.relu(self.conv1(x))) + self.shortcut(x)))
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.MISTAKE == "no shortcut":
            out = self.relu(out)
        elif self.MISTAKE == "relu first":
            out = self.relu(out) + self.shortcut(x)
        elif self.MISTAKE == "not written":
            raise NotImplementedError
        else:
            out = self.relu(out + self.shortcut(x))
        return self.pool(out)


@pytest.mark.parametrize("mistake, expected_words", [
    ("", "PASSED"),
    ("no shortcut", "add self.shortcut(x)"),
    ("relu first", "ReLU before the addition"),
    ("no batch norm", "differs from the course's by up to"),
    ("not written", "raised NotImplementedError"),
])
def test_residual_block_check(monkeypatch, mistake, expected_words):
    monkeypatch.setattr(Block, "MISTAKE", mistake)
    ok, text = verdict(check_residual_block, Block)
    assert ok == (mistake == "") and expected_words in text


def test_residual_block_check_names_layers_that_differ():
    class Renamed(Block):
        def __init__(self, c_in, c_out, pool):
            super().__init__(c_in, c_out, pool)
            self.first = self.conv1
            del self.conv1

    ok, text = verdict(check_residual_block, Renamed)
    assert not ok and "lacks ['conv1.weight', 'conv1.bias'] and has ['first.weight', 'first.bias']" in text


# --------------------------------------------------------------------------- notebook 03: __init__ too

class Projection(Block):
    """The skeleton's block with another shortcut when the channels change."""

    SHORTCUT = "none"

    def __init__(self, c_in, c_out, pool):
        super().__init__(c_in, c_out, pool)
        if c_in != c_out:
            self.shortcut = {"none": nn.Identity(),
                             "3x3": nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out)),
                             "no bn": nn.Sequential(nn.Conv2d(c_in, c_out, 1))}[self.SHORTCUT]


@pytest.mark.parametrize("shortcut, expected_words", [
    ("none", "no projection shortcut"), ("3x3", "the projection is a 1x1 convolution"), ("no bn", "no batch norm"),
])
def test_residual_block_check_explains_a_wrong_projection(monkeypatch, shortcut, expected_words):
    monkeypatch.setattr(Projection, "SHORTCUT", shortcut)
    ok, text = verdict(check_residual_block, Projection)
    assert not ok and expected_words in text, text


# --------------------------------------------------------------------------- notebook 02: the table of Figure 1

def test_figure1_table_matches_the_course_model_and_explains_two_mistakes():
    from helpers.course.checks import FIGURE1_PARAMETERS, FIGURE1_SHAPES, FIGURE1_TABLE, check_figure1_table
    from helpers.models import build_model, count_parameters

    assert [shape for _, shape, _ in FIGURE1_TABLE[:4]] == FIGURE1_SHAPES
    assert sum(p for _, _, p in FIGURE1_TABLE) + 2 == FIGURE1_PARAMETERS == count_parameters(build_model("cnn2d"))
    ok, text = verdict(check_figure1_table, FIGURE1_TABLE)
    assert ok and "299,892" in text
    no_pool = [row if row[0] != "block 2" else ("block 2", (128, 24, 47), row[2]) for row in FIGURE1_TABLE]
    ok, text = verdict(check_figure1_table, no_pool)
    assert not ok and "block 2" in text and "24 becomes 8" in text, text
    no_bn = [row if row[0] != "block 3" else ("block 3", row[1], 9 * 128 * 128 + 128) for row in FIGURE1_TABLE]
    ok, text = verdict(check_figure1_table, no_bn)
    assert not ok and "add 2·128 for its BatchNorm2d" in text, text
    ok, text = verdict(check_figure1_table, "I did not do it")
    assert not ok and "list of 5 rows" in text


# --------------------------------------------------------------------------- notebook 04: hard-negative mining

def mined(anchor, positive, negative, keys, margin, mistake=""):
    """A student's answer: the hardest valid in-batch negative (cosine), or a usual mistake."""
    import torch

    b = len(anchor)
    close = torch.nn.functional.cosine_similarity(anchor[:, None], torch.cat([anchor, positive, negative])[None], 2)
    invalid = torch.zeros_like(close, dtype=torch.bool)
    same = keys[:, None] == keys[None, :]
    if mistake != "own only":
        invalid[:, :2 * b] = torch.cat([same, same], 1)
    invalid[torch.arange(b), torch.arange(b)] = invalid[torch.arange(b), torch.arange(b) + b] = True
    if mistake == "easiest":
        hardest = close.masked_fill(invalid, 2.0).amin(1)
    else:
        hardest = close.masked_fill(invalid, -2.0).amax(1)
    return torch.relu(margin - torch.nn.functional.cosine_similarity(anchor, positive) + hardest)


@pytest.mark.parametrize("mistake, expected_words", [
    ("", "PASSED"), ("easiest", "the easiest"), ("own only", "same key"),
])
def test_mined_triplet_loss_check(mistake, expected_words):
    from helpers.course.checks import check_mined_triplet_loss

    ok, text = verdict(check_mined_triplet_loss, lambda *args: mined(*args, mistake=mistake))
    assert ok == (mistake == "") and expected_words in text, text


# --------------------------------------------------------------------------- notebook 05: Musicnn's front end

def front_end(spans=(0.7, 0.4), lengths=(129, 65, 33), channels=204):
    from helpers.models import TemporalBranch, TimbralBranch

    class FrontEnd(nn.Module):
        def __init__(self, n_mels=96):
            super().__init__()
            self.timbral = nn.ModuleList(TimbralBranch(channels, int(s * n_mels), 7) for s in spans)
            self.temporal = nn.ModuleList(TemporalBranch(51, n) for n in lengths)

        def forward(self, x):
            import torch
            return torch.cat([b(x) for b in (*self.timbral, *self.temporal)], dim=1)
    return FrontEnd


@pytest.mark.parametrize("kwargs, expected_words", [
    ({}, "561 in all"),
    ({"spans": (0.9, 0.4)}, "timbral branch 1's filters are 86 bands high instead of 67"),
    ({"lengths": (129, 65)}, "2 temporal branches instead of 3"),
    ({"channels": 128}, "timbral branch 1 has 128 channels instead of 204"),
])
def test_musicnn_front_end_check(kwargs, expected_words):
    from helpers.course.checks import check_musicnn_front_end

    ok, text = verdict(check_musicnn_front_end, front_end(**kwargs))
    assert ok == (not kwargs) and expected_words in text, text
