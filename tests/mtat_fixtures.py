"""Fixture MagnaTagATune trees and a local HTTP server for the MTAT tests and benchmark.

:func:`build_fixture` writes a miniature MTAT in the exact formats of the real
one: ``annotations_final.csv`` (the 190 real columns in order, TAB separated,
every field quoted, CRLF lines, sparse clip ids), mp3 files in
``<folder>/<name>.mp3`` across folders 0-f, zipped and cut into
``mp3.zip.001``-``.003``, and an ``md5  filename`` checksum file. It includes
MTAT's troubles: a known-empty (0-byte) file, a corrupt one (random bytes), a
truncated one, an annotated clip missing from the archive, and clips without
any top-50 tag.

:class:`FileServer` serves a dict of files on 127.0.0.1 (ephemeral port) from
a daemon thread, with switches: honour HTTP Range or ignore it, cut the
connection after N bytes once, serve wrong bytes. Its request loop is bounded
and it logs nothing; use it as a context manager.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Mapping

import numpy as np
import soundfile as sf

from helpers.prepare.mtat import ANNOTATIONS, FOLDERS, JOINED_ZIP, PARTS, SPLIT_FOLDERS, TOP50_TAGS

ANNOTATION_COLUMNS: list[str] = (
    "clip_id|no voice|singer|duet|plucking|hard rock|world|bongos|harpsichord|female singing|clasical|"
    "sitar|chorus|female opera|male vocal|vocals|clarinet|heavy|silence|beats|men|woodwind|funky|"
    "no strings|chimes|foreign|no piano|horns|classical|female|no voices|soft rock|eerie|spacey|jazz|"
    "guitar|quiet|no beat|banjo|electric|solo|violins|folk|female voice|wind|happy|ambient|new age|synth|"
    "funk|no singing|middle eastern|trumpet|percussion|drum|airy|voice|repetitive|birds|space|strings|"
    "bass|harpsicord|medieval|male voice|girl|keyboard|acoustic|loud|classic|string|drums|electronic|"
    "not classical|chanting|no violin|not rock|no guitar|organ|no vocal|talking|choral|weird|opera|"
    "soprano|fast|acoustic guitar|electric guitar|male singer|man singing|classical guitar|country|"
    "violin|electro|reggae|tribal|dark|male opera|no vocals|irish|electronica|horn|operatic|arabic|lol|"
    "low|instrumental|trance|chant|strange|drone|synthesizer|heavy metal|modern|disco|bells|man|deep|"
    "fast beat|industrial|hard|harp|no flute|jungle|pop|lute|female vocal|oboe|mellow|orchestral|viola|"
    "light|echo|piano|celtic|male vocals|orchestra|eastern|old|flutes|punk|spanish|sad|sax|slow|male|"
    "blues|vocal|indian|no singer|scary|india|woman|woman singing|rock|dance|piano solo|guitars|no drums|"
    "jazzy|singing|cello|calm|female vocals|voices|different|techno|clapping|house|monks|flute|not opera|"
    "not english|oriental|beat|upbeat|soft|noise|choir|female singer|rap|metal|hip hop|quick|water|"
    "baroque|women|fiddle|english|mp3_path"
).split("|")
OTHER_TAGS = [c for c in ANNOTATION_COLUMNS[1:-1] if c not in TOP50_TAGS]

# The troubled files of the fixture (all carry a top-50 tag) and the reason kind each must get.
EMPTY = "6/norine_braun-now_and_zen-08-gently-117-146.mp3"        # one of MTAT's three empty files
CORRUPT = "1/corrupt_artist-random_bytes-01-noise-0-29.mp3"       # random bytes
TRUNCATED = "d/cut_artist-half_gone-02-cut_short-30-59.mp3"       # 30 % of a valid mp3
MISSING = "c/lost_artist-never_zipped-03-gone-0-29.mp3"           # annotated, not in the archive
BROKEN = {EMPTY: "empty", CORRUPT: "unreadable", TRUNCATED: "truncated", MISSING: "missing"}
UNTAGGED = {"0", "c", "e", "a"}  # folders with one clip that has no top-50 tag


@dataclass
class MTATFixture:
    """A miniature MTAT: ``dir`` holds the four files and ``md5.txt`` (a ready
    ``--source`` folder), ``tree`` the mp3 files that were zipped."""

    dir: Path
    tree: Path
    files: dict[str, bytes]              # name -> content, as served / in dir
    md5_file: Path
    checksums: dict[str, str]
    clip_samples: int
    members: list[str]                   # mp3 paths in the archive
    candidates: dict[str, dict[str, int]] = field(default_factory=dict)  # rule -> split -> clips with a top-50 tag
    expected: dict[str, dict[str, int]] = field(default_factory=dict)    # rule -> split -> clips after decoding


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def mp3_bytes(samples: np.ndarray, sample_rate: int = 16000, cbr: bool = False) -> bytes:
    """Encode float audio as MP3 with soundfile (``cbr``: 32 kbps CBR, like real MTAT clips)."""
    buf = io.BytesIO()
    kw = dict(bitrate_mode="CONSTANT", compression_level=0.85) if cbr else {}
    sf.write(buf, samples, sample_rate, format="MP3", **kw)
    return buf.getvalue()


def tone(rng: np.random.Generator, n: int, sample_rate: int = 16000) -> np.ndarray:
    """A random tone plus a little noise, float32 ``(n,)`` in [-0.5, 0.5]."""
    t = np.arange(n) / sample_rate
    y = 0.3 * np.sin(2 * np.pi * rng.uniform(110, 1760) * t) + 0.05 * rng.standard_normal(n)
    return y.astype(np.float32)


def zip_parts(members: Mapping[str, bytes], n_parts: int = 3, dirs: bool = True) -> list[bytes]:
    """Zip ``members`` (name -> bytes, names taken as given) and cut the archive into ``n_parts`` pieces."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        if dirs:
            for folder in sorted({n.split("/")[0] for n in members if "/" in n and not n.startswith("/")}):
                zf.writestr(folder + "/", b"")
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2009, 1, 1, 0, 0, 0)), data)
    data = buf.getvalue()
    cuts = [len(data) * k // n_parts for k in range(n_parts + 1)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def write_annotations(path: Path, rows: list[tuple[int, set[str], str]]) -> None:
    """Write ``annotations_final.csv`` in MTAT's format from ``(clip_id, tags, mp3_path)`` rows."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        w.writerow(ANNOTATION_COLUMNS)
        for clip_id, tags, mp3 in rows:
            w.writerow([clip_id, *(int(c in tags) for c in ANNOTATION_COLUMNS[1:-1]), mp3])


def build_fixture(directory: Path, clips_per_folder: int = 2, seconds: float = 0.5, seed: int = 0,
                  cbr: bool = False) -> MTATFixture:
    """Write a miniature MTAT under ``directory`` (see the module docstring).

    ``clips_per_folder`` good, tagged clips of ``seconds`` s in each of the 16
    folders, plus the troubled files and the untagged clips. The clip length of
    the dataset is ``seconds * 16000`` samples.
    """
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    tree, src = directory / "tree", directory / "source"
    src.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * 16000))
    clips: list[tuple[set[str], str]] = []     # (tags, mp3 path) in annotation order, before ids
    audio: dict[str, bytes] = {}
    for folder in FOLDERS:
        for k in range(clips_per_folder):
            mp3 = f"{folder}/artist_{folder}{k}-album_{k}-{k + 1:02d}-track_{folder}_{k}-{30 * k}-{30 * k + 29}.mp3"
            tags = set(rng.choice(TOP50_TAGS, size=rng.integers(1, 4), replace=False))
            tags |= set(rng.choice(OTHER_TAGS, size=rng.integers(0, 3), replace=False))
            clips.append((tags, mp3))
            audio[mp3] = mp3_bytes(tone(rng, n), cbr=cbr)
        if folder in UNTAGGED:
            mp3 = f"{folder}/untagged_artist-album-09-only_other_tags-0-29.mp3"
            tags = set() if folder == "a" else set(rng.choice(OTHER_TAGS, size=2, replace=False))
            clips.append((tags, mp3))
            audio[mp3] = mp3_bytes(tone(rng, n), cbr=cbr)
    audio[EMPTY] = b""
    audio[CORRUPT] = rng.bytes(3000)
    whole = mp3_bytes(tone(rng, 2 * n), cbr=cbr)
    audio[TRUNCATED] = whole[:len(whole) * 3 // 10]
    for mp3 in BROKEN:
        clips.append(({str(rng.choice(TOP50_TAGS))}, mp3))
    order = rng.permutation(len(clips))          # folders interleave in the file, as in MTAT
    ids = np.cumsum(rng.integers(1, 8, size=len(clips))) + 1          # sparse, from 2
    rows = [(int(ids[j]), *clips[i]) for j, i in enumerate(order)]
    for mp3, data in audio.items():
        (tree / mp3).parent.mkdir(parents=True, exist_ok=True)
        (tree / mp3).write_bytes(data)
    write_annotations(src / ANNOTATIONS, rows)
    members = sorted(audio)
    parts = zip_parts({m: audio[m] for m in members})
    files = {ANNOTATIONS: (src / ANNOTATIONS).read_bytes()}
    for name, data in zip(PARTS, parts):
        (src / name).write_bytes(data)
        files[name] = data
    checksums = {name: md5_hex(data) for name, data in files.items()}
    checksums[JOINED_ZIP] = md5_hex(b"".join(parts))
    md5_file = src / "md5.txt"
    md5_file.write_text("".join(f"{s}  {name}\n" for name, s in checksums.items()))
    fx = MTATFixture(src, tree, files, md5_file, checksums, n, members)
    good = {f: clips_per_folder for f in FOLDERS}
    broken_in = {f: sum(m.startswith(f + "/") for m in BROKEN) for f in FOLDERS}
    for rule, splits in SPLIT_FOLDERS.items():
        fx.expected[rule] = {s: sum(good[f] for f in folders) for s, folders in splits.items()}
        fx.candidates[rule] = {s: fx.expected[rule][s] + sum(broken_in[f] for f in folders)
                               for s, folders in splits.items()}
    return fx


# --------------------------------------------------------------------------- HTTP server

class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args) -> None:  # no request log on stderr
        pass

    def do_GET(self) -> None:
        st = self.server.owner
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        data = st.files.get(name)
        if data is None:
            return self._reply(name, rng, 404, b"")
        if name in st.wrong_bytes:
            data = bytes(b ^ 0x5A for b in data)
        start, end, status = 0, len(data) - 1, 200
        if rng and st.honour_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            start = int(m[1])
            end = min(int(m[2]), end) if m[2] else end
            if start >= len(data):
                return self._reply(name, rng, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
        headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}"} if status == 206 else {}
        if st.honour_range:
            headers["Accept-Ranges"] = "bytes"
        self._reply(name, rng, status, data[start:end + 1], headers)

    def _reply(self, name: str, rng: str | None, status: int, body: bytes, headers: dict | None = None) -> None:
        st = self.server.owner
        st.requests.append((name, rng, status))
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        cut, st.cut_after = st.cut_after, None
        if cut is not None and cut < len(body):
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)   # drop the connection mid-body, once
            self.close_connection = True
        else:
            self.wfile.write(body)


class _Server(HTTPServer):
    owner: "FileServer"

    def handle_error(self, request, client_address) -> None:  # a dropped connection is expected here
        pass


class FileServer:
    """Serve ``files`` (name -> bytes) at ``url`` on 127.0.0.1 from a daemon thread.

    ``honour_range``: answer Range requests with 206 (else always 200 with
    the whole file); ``cut_after``: drop the connection after that many body
    bytes, once; ``wrong_bytes``: names served with altered content.
    ``requests`` records ``(name, Range header or None, status)``. The loop
    serves at most ``max_requests`` requests.
    """

    def __init__(self, files: Mapping[str, bytes], honour_range: bool = True, cut_after: int | None = None,
                 wrong_bytes: set[str] | frozenset[str] = frozenset(), max_requests: int = 200) -> None:
        self.files, self.honour_range, self.cut_after = dict(files), honour_range, cut_after
        self.wrong_bytes, self.max_requests = set(wrong_bytes), max_requests
        self.requests: list[tuple[str, str | None, int]] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._httpd.timeout = 0.05
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="mtat-fixture-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def _serve(self) -> None:
        served = 0
        while not self._stop.is_set() and served < self.max_requests:
            before = len(self.requests)
            self._httpd.handle_request()
            served += len(self.requests) > before

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._httpd.server_close()

    def names(self, status: int | None = None) -> list[str]:
        """Names requested so far (optionally only those answered with ``status``)."""
        return [n for n, _, s in self.requests if status is None or s == status]


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
