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
