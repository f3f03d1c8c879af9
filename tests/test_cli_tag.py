"""The tagging command line: ``python -m helpers tag FILE... [--model CKPT]
[--top K] [--taggram PNG] [--json]`` with a course checkpoint on wav, mp3 and stereo 44.1 kHz files,
and its errors (missing or corrupt audio, missing or corrupt checkpoint): a
message naming the file, a non-zero exit code, no traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers.__main__ import main
from helpers.models import build_model
from helpers.train import model_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
TAGS = ["drums", "piano", "quiet", "rock", "synth", "violin"]


def signal(seconds: float, rate: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint (an untrained 1D CNN with 6 tags) and three audio files."""
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    save_checkpoint(d / "tiny.pt", model_checkpoint(build_model("cnn1d", n_tags=len(TAGS)), "cnn1d", TAGS))
    sf.write(d / "mono.wav", signal(4.0, 16000, 440), 16000)
    sf.write(d / "clip.mp3", signal(3.5, 16000, 330), 16000, format="MP3")
    sf.write(d / "stereo.wav", np.stack([signal(5.0, 44100, 220), signal(5.0, 44100, 550)], 1), 44100)
    (d / "corrupt.mp3").write_bytes(b"ID3" + bytes(range(256)) * 8)
    (d / "empty.wav").write_bytes(b"")
    (d / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    return d


def test_tags_wav_mp3_and_stereo_44k(files, capsys):
    paths = [str(files / n) for n in ("mono.wav", "clip.mp3", "stereo.wav")]
    assert main(["tag", *paths, "--model", str(files / "tiny.pt"), "--top", "3"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    for p, seconds in zip(paths, ("4.0 s", "3.5 s", "5.0 s")):
        assert f"{p} ({seconds}" in out.out
    lines = [ln for ln in out.out.splitlines() if ln.startswith("  ")]
    assert len(lines) == 3 * 3 and all(ln.split()[0] in TAGS for ln in lines)


def test_json_and_taggram_pictures(files, capsys, tmp_path):
    png = tmp_path / "gram.png"
    code = main(["tag", str(files / "mono.wav"), "--model", str(files / "tiny.pt"), "--json", "--top", "2",
                 "--taggram", str(png)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 1 and result[0]["file"].endswith("mono.wav")
    assert [t["tag"] in TAGS for t in result[0]["top_tags"]] == [True, True]
    assert result[0]["windows"] == 2 and result[0]["model"] == "cnn1d"      # 4 s: windows at 0 and 1 s
    assert png.read_bytes()[:4] == b"\x89PNG" and result[0]["taggram_png"] == str(png)
    # several files: one picture each, named after the audio file
    assert main(["tag", str(files / "mono.wav"), str(files / "clip.mp3"), "--model", str(files / "tiny.pt"),
                 "--taggram", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t_mono.png").exists() and (tmp_path / "t_clip.png").exists()


def test_bad_audio_files_are_named_and_the_others_still_tagged(files, capsys):
    code = main(["tag", str(files / "corrupt.mp3"), str(files / "mono.wav"), str(files / "missing.wav"),
                 str(files / "empty.wav"), "--model", str(files / "tiny.pt")])
    out = capsys.readouterr()
    assert code == 1
    assert "mono.wav (4.0 s" in out.out
    err = out.err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "corrupt.mp3" in err[0] and "cannot read" in err[0]
    assert "missing.wav" in err[1] and "no such file" in err[1]
    assert "empty.wav" in err[2]


def test_checkpoint_errors(files, capsys, monkeypatch, tmp_path):
    assert main(["tag", str(files / "mono.wav"), "--model", str(files / "corrupt.pt")]) == 2
    err = capsys.readouterr().err
    assert "corrupt.pt" in err and err.startswith("error: ")
    assert main(["tag", str(files / "mono.wav"), "--model", str(tmp_path / "nowhere.pt")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.pt" in err and "MTT_musicnn" in err and "best.pt" in err
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)     # musicnn's files not installed
    monkeypatch.setenv("COURSE_CHECKPOINTS", str(tmp_path / "empty"))        # nor converted yet
    assert main(["tag", str(files / "mono.wav")]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps musicnn==0.1.0" in err and err.startswith("error: ")


def test_a_real_process_prints_no_traceback(files):
    proc = subprocess.run([sys.executable, "-m", "helpers", "tag", str(files / "corrupt.mp3"),
                           "--model", str(files / "tiny.pt")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "corrupt.mp3" in proc.stderr and "Traceback" not in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "helpers", "tag", str(files / "stereo.wav"), "--model",
                         str(files / "tiny.pt"), "--top", "1"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stderr == "" and "stereo.wav (5.0 s" in ok.stdout
