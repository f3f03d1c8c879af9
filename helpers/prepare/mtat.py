"""MagnaTagATune (MTAT): download, verification, unpacking, splits and decoding
into the course's on-disk dataset format (:mod:`helpers.data`).

``python -m helpers prepare mtat`` runs every step; each step is also a plain
function that a notebook can call::

    fetch_files / download_file   the three ``mp3.zip.00N`` parts and
                                  ``annotations_final.csv`` (resumable, retried,
                                  MD5-verified), or the student's own copies
                                  (``source=``, e.g. a folder on Google Drive)
    unpack                        the joined parts, read as one zip, into
                                  ``<folder>/<name>.mp3`` files (safe, idempotent)
    read_annotations, make_splits the top-50 tags and the ``clean`` (Won et al.)
                                  or ``homework`` split, by MTAT folder
    decode_to_dataset             mp3 -> int16 clips with worker processes,
                                  written with :class:`~helpers.prepare.writer.DatasetWriter`
    prepare_mtat                  all of the above, resumable at every step

The tag list (``data/mtat_top50.txt``, fixed order) and the checksums
(``data/mtat_md5.txt``, ``md5sum`` format, from third-party sources) live in
the repository's ``data`` folder and are read from there only.

Sizes are in bytes, durations in seconds, audio lengths in samples at
16 kHz unless stated otherwise.
"""
from __future__ import annotations

import bisect
import contextlib
import csv
import hashlib
import http.client
import io
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..audio import AudioLoadError, load_audio
from ..config import REPO, SAMPLE_RATE, atomic_write, data_root, tqdm
from ..data import SPLITS, TaggedAudio
from .writer import ClipInfo, DatasetWriter, float_to_int16

# --------------------------------------------------------------------------- constants

BASE_URL = "https://mirg.city.ac.uk/datasets/magnatagatune/"
PARTS = ("mp3.zip.001", "mp3.zip.002", "mp3.zip.003")
JOINED_ZIP = "mp3.zip"  # the three parts concatenated (accepted in a --source folder)
ANNOTATIONS = "annotations_final.csv"
DATA_DIR = REPO / "data"
TOP50_FILE = DATA_DIR / "mtat_top50.txt"
MD5_FILE = DATA_DIR / "mtat_md5.txt"

CLIP_SAMPLES = 465_984  # 29.124 s at 16 kHz: what every MTAT mp3 decodes to
FOLDERS = "0123456789abcdef"
SPLIT_FOLDERS: dict[str, dict[str, str]] = {
    "clean": {"train": "0123456789ab", "valid": "c", "test": "def"},   # Won et al. 2020
    "homework": {"train": "012ab", "valid": "c", "test": "d"},         # KAIST GCT634 HW2
}
PUBLISHED_SIZES: dict[str, dict[str, int]] = {
    "clean": {"train": 15244, "valid": 1529, "test": 4332},
    "homework": {"train": 6206, "valid": 1529, "test": 1339},
}
KNOWN_EMPTY = frozenset({
    "6/norine_braun-now_and_zen-08-gently-117-146.mp3",
    "8/jacob_heringman-josquin_des_prez_lute_settings-19-gintzler__pater_noster-204-233.mp3",
    "9/american_baroque-dances_and_suites_of_rameau_and_couperin-25-le_petit_rien_xiveme_ordre_couperin-88-117.mp3",
})
LICENCE = "CC BY-NC-SA 3.0"
SKIPPED_REPORT = "skipped.csv"
USER_AGENT = "helpers-mtat/1 (music auto-tagging course; python urllib)"
MAX_BACKOFF = 60.0  # seconds


def _read_tag_list(path: Path) -> list[str]:
    tags = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(tags) != 50 or len(set(tags)) != 50:
        raise RuntimeError(f"{path} must list 50 different tags, one a line; it lists {len(tags)} "
                           f"({len(set(tags))} different). Restore it from the repository (git checkout).")
    return tags


TOP50_TAGS: list[str] = _read_tag_list(TOP50_FILE)


# --------------------------------------------------------------------------- errors

class MTATError(RuntimeError):
    """A problem preparing MTAT that the person running it can fix; the message says how."""


class DownloadError(MTATError):
    """A file could not be downloaded (after the allowed retries)."""


class ChecksumError(MTATError):
    """A file's MD5 differs from the expected one."""

    def __init__(self, path: str | os.PathLike, expected: str, actual: str, note: str = "") -> None:
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(f"{self.path.name} failed its checksum: MD5 {actual}, expected {expected} "
                         f"({self.path})" + (f". {note}" if note else ""))


class UnsafeArchiveError(MTATError):
    """An archive member would be written outside the target folder."""


class NotEnoughDiskError(MTATError):
    """Not enough free disk space for the dataset."""


class MTATCountWarning(UserWarning):
    """The prepared split sizes differ from the published ones."""


# --------------------------------------------------------------------------- checksums

def read_md5_file(path: str | os.PathLike = MD5_FILE) -> dict[str, str]:
    """Read ``md5  filename`` lines (``md5sum`` format) into ``{filename: md5}``."""
    path = Path(path)
    if not path.is_file():
        raise MTATError(f"no checksum file at {path}: give one with --md5-file (lines `md5  filename`)")
    sums = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"\s*([0-9a-fA-F]{32})\s+\*?(\S.*?)\s*", line)
        if not m:
            raise MTATError(f"{path}, line {n}: expected `md5  filename`, got {line!r}")
        sums[m[2]] = m[1].lower()
    return sums


def mirror() -> tuple[str, Path]:
    """Where MTAT is downloaded from, and the checksums its files must match:
    ``$COURSE_MTAT_URL`` and ``$COURSE_MTAT_MD5`` (a file of ``md5  filename``
    lines) when set (a class's own mirror, or a test's loopback server), else
    :data:`BASE_URL` and :data:`MD5_FILE`."""
    return (os.environ.get("COURSE_MTAT_URL") or BASE_URL,
            Path(os.environ.get("COURSE_MTAT_MD5") or MD5_FILE))


def file_md5(path: str | os.PathLike, progress: bool = False, chunk_bytes: int = 1 << 22) -> str:
    """MD5 hex digest of a file (read in ``chunk_bytes`` pieces, with a progress bar if asked)."""
    path = Path(path)
    h = hashlib.md5()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=f"MD5 {path.name}", disable=not progress, leave=False) as bar:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def verify_md5(path: str | os.PathLike, expected: str, progress: bool = False) -> str:
    """Check a file against its expected MD5; returns the digest.

    Raises :class:`ChecksumError` (naming the file, the expected and the
    actual sum) when they differ. The file itself is left alone: callers
    decide what to do with it.
    """
    actual = file_md5(path, progress=progress)
    if actual != expected.lower():
        raise ChecksumError(path, expected.lower(), actual)
    return actual


def _checksum(checksums: Mapping[str, str], name: str) -> str:
    try:
        return checksums[name]
    except KeyError:
        raise MTATError(f"the checksum table has no entry for {name}: add a line `md5  {name}` to it "
                        f"(see --md5-file)") from None


def _move_aside(path: Path, name: Path) -> Path:
    """Rename ``path`` to ``<name>.bad`` (replacing an older one) and return the new path."""
    aside = name.with_name(name.name + ".bad")
    os.replace(path, aside)
    return aside


# --------------------------------------------------------------------------- download

class _Retry(Exception):
    """A transient failure: try again (with backoff)."""


_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def download_file(url: str, dest: str | os.PathLike, md5: str | None = None, *, retries: int = 5,
                  backoff: float = 1.0, timeout: float = 60.0, chunk_bytes: int = 1 << 20,
                  progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resumably, and verify its MD5.

    - A ``dest`` already present that matches ``md5`` is kept (no request is
      made). One that does not match is renamed to ``<name>.bad`` (said on
      stdout) and downloaded again.
    - Bytes go to ``<dest>.part``; a partial file left by an earlier attempt
      is resumed with an HTTP ``Range`` request. A server that ignores Range
      (answers 200) is read from the start again.
    - A dropped connection, a timeout (``timeout`` seconds without data) or an
      HTTP 5xx answer is retried after ``backoff * 2**k`` seconds (at most
      60 s); ``retries`` bounds the failures in a row that bring no new bytes.
      HTTP 4xx answers are not retried.
    - Only when the MD5 matches is ``.part`` renamed to ``dest``. A mismatch
      renames it to ``<name>.bad`` and raises :class:`ChecksumError`.

    Returns ``dest``. Raises :class:`DownloadError` when the download fails.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if md5 is None:
            return dest
        try:
            verify_md5(dest, md5, progress=progress)
            return dest
        except ChecksumError as e:
            print(f"{e}. Moved it aside to {_move_aside(dest, dest)}; downloading it again.")
    part = dest.with_name(dest.name + ".part")
    best, failures = (part.stat().st_size if part.exists() else 0), 0
    print(f"Downloading {url} to {dest}" + (f" (resuming after {best:,} bytes)" if best else "") + ".")
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, disable=not progress,
              leave=False) as bar:
        while True:
            try:
                _fetch_into(url, part, md5, timeout, chunk_bytes, bar)
                break
            except _Retry as e:
                size = part.stat().st_size if part.exists() else 0
                if size > best:
                    best, failures = size, 0
                failures += 1
                if failures > retries:
                    raise DownloadError(
                        f"could not download {url} ({failures} failed tries in a row; last: {e.__cause__ or e}). "
                        f"{size:,} bytes are kept in {part} and the next run resumes from there. Check the network "
                        f"and run again; if the host is down, get the files another way and pass --source DIR"
                    ) from e
                time.sleep(min(backoff * 2 ** (failures - 1), MAX_BACKOFF))
    if md5 is not None:
        try:
            verify_md5(part, md5, progress=progress)
        except ChecksumError as e:
            aside = _move_aside(part, dest)
            raise ChecksumError(dest, e.expected, e.actual, note=(
                f"Downloaded from {url}; the file was moved aside to {aside} and is not used. Run again to "
                f"download it afresh. If it fails again, the host's file differs from the checksum table: "
                f"check it and pass your own sums with --md5-file")) from None
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, md5: str | None, timeout: float, chunk_bytes: int, bar: tqdm) -> None:
    """One attempt: append the rest of ``url`` to ``part`` (raises _Retry on transient failures)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            # Nothing left to send: the part is complete, or longer than the file (stale).
            if md5 is not None and file_md5(part) == md5.lower():
                return
            part.unlink()
            raise _Retry(f"{url}: stale partial file discarded") from e
        if e.code >= 500 or e.code in (408, 429):
            raise _Retry(f"HTTP {e.code}") from e
        raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}. Check the address (--base-url, default "
                            f"{BASE_URL}); if the host moved or is down, get the files another way and pass "
                            f"--source DIR") from None
    except _TRANSIENT as e:
        raise _Retry(str(e)) from e
    try:
        with resp:
            length = resp.headers.get("Content-Length")
            if resp.status == 206:
                m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
                if not m or int(m[1]) != offset:
                    part.unlink(missing_ok=True)
                    raise _Retry(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}; restarting")
                total = int(m[2]) if m[2] != "*" else None
                mode = "ab"
            else:  # 200: the whole file, whatever we asked for
                offset, mode = 0, "wb"
                total = int(length) if length else None
            end = offset + int(length) if length else None
            bar.reset(total=total)
            bar.update(offset)
            with open(part, mode) as f:
                while chunk := resp.read(chunk_bytes):
                    f.write(chunk)
                    bar.update(len(chunk))
    except _TRANSIENT as e:
        raise _Retry(str(e)) from e
    size = part.stat().st_size
    if end is not None and size < end:
        raise _Retry(f"connection closed after {size:,} of {end:,} bytes")


def fetch_files(names: Sequence[str], *, download_dir: str | os.PathLike | None = None,
                source: str | os.PathLike | None = None, base_url: str | None = None,
                checksums: Mapping[str, str] | None = None, progress: bool = True, retries: int = 5,
                backoff: float = 1.0, timeout: float = 60.0) -> dict[str, Path]:
    """Get verified copies of the MTAT files ``names``; returns ``{name: path}``.

    With ``source`` (a folder holding the files, e.g. on Google Drive), the
    files are used where they are, after an MD5 check; nothing is downloaded
    or moved. Otherwise they are downloaded from ``base_url`` into
    ``download_dir`` (default ``data_root('downloads')``) with
    :func:`download_file`; files already there and verified are kept.
    ``base_url`` and ``checksums`` default to the :func:`mirror`'s.
    """
    default_url, default_md5 = mirror()
    base_url = base_url or default_url
    checksums = read_md5_file(default_md5) if checksums is None else checksums
    out = {}
    for name in names:
        md5 = _checksum(checksums, name)
        if source is not None:
            path = Path(source) / name
            if not path.is_file():
                raise MTATError(f"{name} is not in the source folder {source}: copy it there (the folder needs "
                                f"{', '.join(PARTS)} or the joined {JOINED_ZIP}, and {ANNOTATIONS}), or leave out "
                                f"--source to download the files")
            try:
                verify_md5(path, md5, progress=progress)
            except ChecksumError as e:
                raise ChecksumError(path, e.expected, e.actual, note=(
                    "It was left in place (it is your copy) and not used: replace it with a good copy, or "
                    "leave out --source to download the files")) from None
            out[name] = path
        else:
            folder = Path(download_dir) if download_dir is not None else data_root("downloads")
            out[name] = download_file(base_url.rstrip("/") + "/" + name, folder / name, md5, retries=retries,
                                      backoff=backoff, timeout=timeout, progress=progress)
    return out


def fetch_archive(*, source: str | os.PathLike | None = None, **kwargs) -> list[Path]:
    """The verified archive as a list of paths to read one after another: the
    three parts, or (only in a ``source`` folder without the parts) the joined
    ``mp3.zip``. Keyword arguments as for :func:`fetch_files`."""
    if source is not None and not all((Path(source) / p).is_file() for p in PARTS) \
            and (Path(source) / JOINED_ZIP).is_file():
        return list(fetch_files([JOINED_ZIP], source=source, **kwargs).values())
    return list(fetch_files(PARTS, source=source, **kwargs).values())


# --------------------------------------------------------------------------- unpacking

class JoinedFile(io.RawIOBase):
    """Read-only, seekable file object over several files read one after the
    other (``cat a b c`` without writing the joined copy to disk)."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        super().__init__()
        self._files = [open(p, "rb") for p in paths]
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [0]
        for s in self._sizes[:-1]:
            self._starts.append(self._starts[-1] + s)
        self._size, self._pos = sum(self._sizes), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:
        if self._pos >= self._size:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        within = self._pos - self._starts[i]
        view = memoryview(buffer)[:self._sizes[i] - within]
        self._files[i].seek(within)
        n = self._files[i].readinto(view)
        self._pos += n
        return n

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _member_path(name: str) -> PurePosixPath | None:
    """The relative path of a zip member, or None when it is absolute or climbs with '..'."""
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", norm) or ".." in p.parts:
        return None
    return p


def unpack(archive: Sequence[str | os.PathLike], dest: str | os.PathLike, progress: bool = True) -> int:
    """Extract the zip formed by the files ``archive`` (joined in order) into ``dest``.

    Every member name is checked first: one with an absolute path or a
    ``..`` component stops the unpacking with :class:`UnsafeArchiveError`
    before anything is written. Members already extracted with the right
    size are skipped, so unpacking again is harmless; each file is written to
    a temporary name and renamed when complete. Returns the number of files
    extracted now.
    """
    dest = Path(dest)
    names = ", ".join(Path(p).name for p in archive)
    raw = JoinedFile(archive)
    try:
        with zipfile.ZipFile(io.BufferedReader(raw, buffer_size=1 << 20)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            for info in infos:
                if _member_path(info.filename) is None:
                    raise UnsafeArchiveError(
                        f"refusing to unpack {names}: the member {info.filename!r} has an absolute path or '..' "
                        f"and would be written outside {dest}. This is not the original MTAT archive: delete "
                        f"these files and download them again")
            extracted = 0
            for info in tqdm(infos, unit="file", desc="unpack", disable=not progress, leave=False):
                target = dest / _member_path(info.filename)
                if target.is_file() and target.stat().st_size == info.file_size:
                    continue
                def copy(tmp: Path, info: zipfile.ZipInfo = info) -> None:
                    with zf.open(info) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                atomic_write(target, copy)
                extracted += 1
    except zipfile.BadZipFile as e:
        raise MTATError(f"{names} do not form a valid zip archive ({e}): delete them and download them "
                        f"again") from None
    finally:
        raw.close()
    return extracted


# --------------------------------------------------------------------------- annotations and splits

@dataclass(frozen=True)
class Annotations:
    """The rows of ``annotations_final.csv``: MTAT clip ids (sparse ints),
    mp3 paths (``<folder>/<name>.mp3``) and the top-50 labels, uint8
    ``(n_rows, len(tags))`` in the order of ``tags``."""

    clip_ids: list[int]
    mp3_paths: list[str]
    labels: np.ndarray
    tags: list[str]


def read_annotations(path: str | os.PathLike, tags: Sequence[str] = TOP50_TAGS) -> Annotations:
    """Read MTAT's ``annotations_final.csv`` (TAB separated, quoted, 190
    columns: ``clip_id``, 188 tags of 0/1, ``mp3_path``), taking the ``tags``
    columns by name."""
    path = Path(path)
    try:
        return _read_annotations(path, list(tags))
    except UnicodeDecodeError:
        raise MTATError(f"{path} is not a text file, so not MTAT's {ANNOTATIONS}: delete it and download it "
                        f"again") from None


def _read_annotations(path: Path, tags: list[str]) -> Annotations:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f, delimiter="\t")
        header = next(rows, [])
        missing = [c for c in ("clip_id", "mp3_path", *tags) if c not in header]
        if missing:
            raise MTATError(f"{path} is not MTAT's {ANNOTATIONS} (TAB separated with a header line): it lacks the "
                            f"columns {missing[:5]}{' ...' if len(missing) > 5 else ''}. Delete it and download "
                            f"it again")
        id_col, path_col = header.index("clip_id"), header.index("mp3_path")
        tag_cols = [header.index(t) for t in tags]
        clip_ids, mp3_paths, labels = [], [], []
        for n, row in enumerate(rows, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise MTATError(f"{path}, line {n}: {len(row)} fields, the header has {len(header)}: the file is "
                                f"damaged; delete it and download it again")
            try:
                clip_ids.append(int(row[id_col]))
                labels.append([int(row[c]) for c in tag_cols])
            except ValueError:
                raise MTATError(f"{path}, line {n}: clip_id and tag columns must be integers; the file is "
                                f"damaged, delete it and download it again") from None
            mp3_paths.append(row[path_col])
    labels_arr = np.array(labels, dtype=np.uint8).reshape(len(clip_ids), len(tags))
    return Annotations(clip_ids, mp3_paths, labels_arr, tags)


@dataclass(frozen=True)
class SplitPlan:
    """The clips of a split rule, in dataset order (train, then valid, then
    test; annotation-file order within each): ``clips`` and uint8 ``labels``
    ``(n_clips, n_tags)``. Clips whose file turns out unreadable are excluded
    later, when decoding."""

    rule: str
    clips: list[ClipInfo]
    labels: np.ndarray
    tags: list[str]

    def sizes(self) -> dict[str, int]:
        """Clips per split before decoding."""
        return {s: sum(c.split == s for c in self.clips) for s in SPLITS}


def make_splits(annotations: Annotations, rule: str = "clean") -> SplitPlan:
    """Select and split the clips that carry at least one of the tags, by MTAT folder.

    ``clean`` (Won et al. 2020): folders 0-b train, c valid, d-f test.
    ``homework`` (GCT634 HW2): folders 0 1 2 a b train, c valid, d test.
    """
    if rule not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split rule {rule!r}: use one of {sorted(SPLIT_FOLDERS)}")
    split_of = {folder: s for s, folders in SPLIT_FOLDERS[rule].items() for folder in folders}
    picked: dict[str, list[int]] = {s: [] for s in SPLITS}
    tagged = annotations.labels.any(axis=1)
    for row, mp3 in enumerate(annotations.mp3_paths):
        split = split_of.get(mp3.split("/", 1)[0])
        if split is not None and tagged[row]:
            picked[split].append(row)
    rows = [r for s in SPLITS for r in picked[s]]
    clips = [ClipInfo(str(annotations.clip_ids[r]), s, annotations.mp3_paths[r]) for s in SPLITS for r in picked[s]]
    return SplitPlan(rule, clips, annotations.labels[rows], list(annotations.tags))


# --------------------------------------------------------------------------- decoding

def _decode_clip(path: str, mp3_path: str, sample_rate: int, clip_samples: int,
                 min_samples: int) -> tuple[np.ndarray | None, str]:
    """Worker: decode one mp3 to int16 ``(<= clip_samples,)``, or give the reason it is unusable.

    What the decoder prints on the C-level stderr (mpg123 notes on a damaged
    stream) is captured and added to the reason instead of reaching the
    terminal.
    """
    p = Path(path)
    if not p.is_file():
        return None, f"missing: {mp3_path} is not in the unpacked archive"
    if p.stat().st_size == 0:
        known = " (one of the three known empty MTAT files)" if mp3_path in KNOWN_EMPTY else ""
        return None, f"empty: {mp3_path} has 0 bytes{known}"
    with tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            y = load_audio(p, sample_rate)
            error = ""
        except AudioLoadError as e:
            y, error = None, str(e)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        notes = " ".join(log.read(2000).decode("utf-8", "replace").split())
    if y is None:
        return None, f"unreadable: {error}" + (f" [decoder: {notes}]" if notes else "")
    if len(y) < min_samples:
        return None, (f"truncated: {mp3_path} decodes to {len(y)} samples ({len(y) / sample_rate:.2f} s), "
                      f"expected {clip_samples} ({clip_samples / sample_rate:.2f} s)")
    return float_to_int16(y[:clip_samples]), ""


def _worker_context() -> multiprocessing.context.BaseContext:
    """'forkserver' where there is one (Linux, macOS), else 'spawn'.

    Both are safe in notebooks and threaded programs, where 'fork' is not. The
    fork server imports this module (and torch) once and forks the workers
    from it, so worker start costs about one import per Python session
    instead of one per worker and run.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _decode_stream(jobs: Sequence[tuple[int, str, str]], workers: int, decode_args: tuple
                   ) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """Yield ``(index, pcm or None, reason)`` for every job, in completion order."""
    if workers <= 0:
        for i, path, mp3 in jobs:
            yield (i, *_decode_clip(path, mp3, *decode_args))
        return
    ex = ProcessPoolExecutor(workers, mp_context=_worker_context())
    inflight: dict[Future, int] = {}
    todo = iter(jobs)
    try:
        def refill() -> None:
            while len(inflight) < 4 * workers:
                job = next(todo, None)
                if job is None:
                    return
                inflight[ex.submit(_decode_clip, job[1], job[2], *decode_args)] = job[0]

        refill()
        while inflight:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                i = inflight.pop(fut)
                yield (i, *fut.result())
            refill()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def decode_to_dataset(root: str | os.PathLike, plan: SplitPlan, mp3_dir: str | os.PathLike, *,
                      clip_samples: int = CLIP_SAMPLES, sample_rate: int = SAMPLE_RATE, workers: int | None = None,
                      min_fraction: float = 0.9, checkpoint_every: int = 32, overwrite: bool = False,
                      progress: bool = True, extra: dict | None = None,
                      on_clip: Callable[[int], None] | None = None) -> dict:
    """Decode the clips of ``plan`` from ``mp3_dir`` into the dataset folder ``root``.

    Clips are decoded with :func:`helpers.audio.load_audio` in ``workers``
    processes (0: in this process; default: the CPU count, at most 8) and
    written by this process with :class:`~helpers.prepare.writer.DatasetWriter`,
    int16, ``clip_samples`` samples each (longer clips are cut). A missing,
    empty, undecodable or truncated file (decoding to fewer than
    ``min_fraction * clip_samples`` samples) is marked failed and listed in
    ``root/skipped.csv``; nothing else stops the run. Progress is made durable
    every ``checkpoint_every`` clips and when the run is interrupted, so that
    running again resumes. ``on_clip(n)`` is called after each clip with the
    number of clips handled in this run. Returns the dataset's metadata.
    """
    root, mp3_dir = Path(root), Path(mp3_dir)
    workers = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
    writer = DatasetWriter(root, "mtat", plan.tags, clip_samples, plan.clips, plan.labels,
                           sample_rate=sample_rate, overwrite=overwrite)
    pending = writer.pending()
    jobs = [(i, str(mp3_dir / plan.clips[i].origin), plan.clips[i].origin) for i in pending]
    if jobs and not any(Path(path).is_file() for _, path, _ in jobs):
        raise MTATError(f"none of the {len(jobs):,} mp3 files to decode is under {mp3_dir}: unpack the archive "
                        f"there first (prepare_mtat does), or point --mp3-dir at the folder holding 0/ ... f/")
    if pending:
        how = f"{workers} worker process{'es' if workers != 1 else ''}" if workers else "this process"
        print(f"Decoding {len(pending):,} clips with {how}"
              + (f" ({writer.resumed_clips:,} done by an earlier run)" if writer.resumed_clips else "") + ".")
    decode_args = (sample_rate, clip_samples, int(np.ceil(min_fraction * clip_samples)))
    handled = 0
    stream = _decode_stream(jobs, workers, decode_args)
    try:
        with contextlib.closing(stream), tqdm(total=len(jobs), unit="clip", desc="decode", disable=not progress) as bar:
            for i, pcm, reason in stream:
                if pcm is None:
                    writer.fail(i, reason)
                else:
                    writer.write(i, pcm)
                handled += 1
                bar.update(1)
                if handled % checkpoint_every == 0:
                    writer.checkpoint()
                if on_clip is not None:
                    on_clip(handled)
    except BaseException:
        writer.checkpoint()  # keep what is written: the next run resumes after it
        raise
    _write_skipped(root / SKIPPED_REPORT, plan, writer.failed)
    return writer.finalize(extra={**(extra or {}), "skipped_report": SKIPPED_REPORT})


def _write_skipped(path: Path, plan: SplitPlan, failed: Mapping[int, str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["index", "clip_id", "split", "mp3_path", "reason"])
            for i, reason in sorted(failed.items()):
                c = plan.clips[i]
                w.writerow([i, c.clip_id, c.split, c.origin, reason])
    atomic_write(path, write)


# --------------------------------------------------------------------------- disk space

def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def format_bytes(n: float) -> str:
    """``19,668,000,000`` -> ``'19.7 GB'`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def check_disk_space(root: str | os.PathLike, n_clips: int, clip_samples: int = CLIP_SAMPLES,
                     free_bytes: Callable[[Path], int] | None = None) -> int:
    """Check that ``root`` has room for ``n_clips`` int16 clips of ``clip_samples``.

    The need is ``n_clips * clip_samples * 2`` bytes, less what an earlier,
    interrupted run already allocated for ``root/audio.npy``. Prints the need
    and the free space; raises :class:`NotEnoughDiskError` when it does not
    fit. ``free_bytes(path)`` gives the free bytes of the file system holding
    ``path`` (default :func:`shutil.disk_usage`; tests inject their own).
    Returns the bytes still needed.
    """
    root = Path(root)
    total = n_clips * clip_samples * 2
    audio = root / "audio.npy"
    have = audio.stat().st_blocks * 512 if audio.exists() else 0
    needed = max(0, total - have)
    where = _existing_ancestor(root)
    free = (free_bytes or _free_bytes)(where)
    print(f"Disk: the dataset takes {format_bytes(total)} ({n_clips:,} clips x {clip_samples:,} samples x 2 bytes)"
          f" in {root}; {format_bytes(needed)} still needed, {format_bytes(free)} free there.")
    if free < needed:
        raise NotEnoughDiskError(
            f"not enough disk space: the dataset needs {format_bytes(needed)} more at {root}, only "
            f"{format_bytes(free)} is free there. Free some space, or prepare it on a bigger disk with "
            f"--root DIR (the downloads can stay where they are)")
    return needed


# --------------------------------------------------------------------------- the whole preparation

def _describe_rule(rule: str) -> str:
    f = SPLIT_FOLDERS[rule]
    return " / ".join(f"{s} {_folders(f[s])}" for s in SPLITS)


def _folders(folders: str) -> str:
    return f"{folders[0]}-{folders[-1]}" if len(folders) > 2 and folders in FOLDERS else " ".join(folders)


def prepare_mtat(root: str | os.PathLike | None = None, *, split: str = "clean",
                 download_dir: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
                 mp3_dir: str | os.PathLike | None = None, base_url: str | None = None,
                 checksums: Mapping[str, str] | None = None, workers: int | None = None,
                 clip_samples: int = CLIP_SAMPLES, sample_rate: int = SAMPLE_RATE, overwrite: bool = False,
                 progress: bool = True, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                 checkpoint_every: int = 32, free_bytes: Callable[[Path], int] | None = None,
                 published: Mapping[str, int] | None = None,
                 on_clip: Callable[[int], None] | None = None) -> dict:
    """Take MTAT from nothing to a dataset folder; every step resumes.

    1. ``annotations_final.csv``, then the ``split`` plan (``clean`` or
       ``homework``), then the disk check (:func:`check_disk_space`).
    2. The archive parts: from ``source`` (used in place) or downloaded into
       ``download_dir`` (default ``data_root('downloads')``) from
       ``base_url``, MD5-verified against ``checksums`` (defaults: the
       :func:`mirror`, MTAT's host and ``data/mtat_md5.txt`` unless
       overridden). Skipped when every mp3 of the plan is already unpacked.
    3. Unpacking into ``mp3_dir`` (default ``data_root('mtat_mp3')``).
    4. Decoding into ``root`` (default ``data_root('mtat')``) with
       ``workers`` processes, ``clip_samples`` samples per clip.
    5. A :class:`MTATCountWarning` when the split sizes differ from
       ``published`` (default: the published sizes of ``split``), saying which
       files were skipped and why.

    A finished dataset of the same split is left as it is (``overwrite=True``
    prepares it again). Returns its metadata (``meta.json``).
    """
    if split not in SPLIT_FOLDERS:
        raise MTATError(f"unknown split {split!r}: use one of {sorted(SPLIT_FOLDERS)}")
    root = Path(root) if root is not None else data_root("mtat")
    mp3_dir = Path(mp3_dir) if mp3_dir is not None else data_root("mtat_mp3")
    published = dict(PUBLISHED_SIZES[split] if published is None else published)
    if (root / "meta.json").exists() and not overwrite:
        data = TaggedAudio(root)
        if data.meta.get("name") == "mtat" and data.meta.get("split_rule") == split \
                and data.meta.get("clip_samples") == clip_samples:
            print(f"MTAT ({split} split) is already prepared in {root}.")
            return data.meta
        held = (f"MTAT's {data.meta.get('split_rule')} split with {data.meta.get('clip_samples')} samples per clip"
                if data.meta.get("name") == "mtat" else repr(data))
        raise MTATError(f"{root} already holds another dataset ({held}): prepare this one in another folder with "
                        f"--root (e.g. {root.parent / (root.name + '_' + split)}), or pass --overwrite to replace it")
    default_url, default_md5 = mirror()
    base_url = base_url or default_url
    checksums = read_md5_file(default_md5) if checksums is None else checksums
    fetch = dict(download_dir=download_dir, source=source, base_url=base_url, checksums=checksums,
                 progress=progress, retries=retries, backoff=backoff, timeout=timeout)

    annotations_path = fetch_files([ANNOTATIONS], **fetch)[ANNOTATIONS]
    annotations = read_annotations(annotations_path)
    plan = make_splits(annotations, split)
    sizes = plan.sizes()
    print(f"Annotations: {annotations_path} ({len(annotations.clip_ids):,} clips). Split {split!r} "
          f"({_describe_rule(split)}): " + ", ".join(f"{s} {n:,}" for s, n in sizes.items())
          + " clips with a top-50 tag.")
    check_disk_space(root, len(plan.clips), clip_samples, free_bytes)

    if all((mp3_dir / c.origin).is_file() for c in plan.clips):
        print(f"All {len(plan.clips):,} mp3 files of the split are already in {mp3_dir}: the archive is not needed.")
    else:
        archive = fetch_archive(**fetch)
        print(f"Archive: {', '.join(str(p) for p in archive)} (MD5 verified).")
        n = unpack(archive, mp3_dir, progress=progress)
        print(f"Unpacked {n:,} mp3 files into {mp3_dir}.")

    extra = {"source": f"MagnaTagATune, {base_url if source is None else source}", "licence": LICENCE,
             "split_rule": split, "split_folders": SPLIT_FOLDERS[split], "published_split_sizes": published,
             "candidate_split_sizes": sizes}
    meta = decode_to_dataset(root, plan, mp3_dir, clip_samples=clip_samples, sample_rate=sample_rate,
                             workers=workers, checkpoint_every=checkpoint_every, overwrite=overwrite,
                             progress=progress, extra=extra, on_clip=on_clip)
    message = count_mismatch(meta, root)
    if message:
        warnings.warn(message, MTATCountWarning, stacklevel=2)
    return meta


def count_mismatch(meta: Mapping, root: str | os.PathLike) -> str | None:
    """Why the split sizes of a prepared MTAT dataset differ from the
    published ones (a sentence), or None when they match."""
    got, want = meta["split_sizes"], meta["published_split_sizes"]
    if all(got[s] == want.get(s) for s in SPLITS):
        return None
    with open(Path(root) / SKIPPED_REPORT, newline="", encoding="utf-8") as f:
        skipped = list(csv.DictReader(f))
    candidates = meta["candidate_split_sizes"]
    by_kind: dict[str, list[str]] = {}
    for row in skipped:
        by_kind.setdefault(row["reason"].split(":", 1)[0], []).append(row["mp3_path"])
    fmt = " / ".join
    msg = (f"MTAT {meta['split_rule']} split: {fmt(f'{got[s]:,}' for s in SPLITS)} clips (train / valid / test), "
           f"published {fmt(f'{want.get(s, 0):,}' for s in SPLITS)} ("
           + ", ".join(f"{s} {got[s] - want.get(s, 0):+,}" for s in SPLITS if got[s] != want.get(s)) + "). "
           f"The annotations give {fmt(f'{candidates[s]:,}' for s in SPLITS)} clips with a "
           f"top-50 tag in these folders")
    if skipped:
        msg += (f"; {len(skipped):,} of them were skipped (all listed in {Path(root) / SKIPPED_REPORT}): "
                + "; ".join(f"{len(paths)} {kind} ({', '.join(paths[:5])}{', ...' if len(paths) > 5 else ''})"
                            for kind, paths in sorted(by_kind.items())))
    known = sum(row["mp3_path"] in KNOWN_EMPTY for row in skipped)
    if known:
        msg += (f". The {known} known empty MTAT file{'s are' if known > 1 else ' is'} expected: the published "
                f"counts exclude {'them' if known > 1 else 'it'}")
    return msg + "."


def summary_line(root: str | os.PathLike | None = None) -> str:
    """One line describing a prepared MTAT dataset, for notebook 00, e.g.
    ``MagnaTagATune, clean split: 21,105 clips of 29.12 s at 16 kHz, 50 tags;
    train 15,244 / valid 1,529 / test 4,332; 3 skipped; 19.7 GB in data/mtat``."""
    root = Path(root) if root is not None else data_root("mtat")
    meta = TaggedAudio(root).meta
    sizes = meta["split_sizes"]
    return (f"MagnaTagATune, {meta.get('split_rule', '?')} split: {sum(sizes.values()):,} clips of "
            f"{meta['clip_samples'] / meta['sample_rate']:.2f} s at {meta['sample_rate'] / 1000:g} kHz, "
            f"{len(meta['tags'])} tags; " + " / ".join(f"{s} {sizes[s]:,}" for s in SPLITS)
            + f"; {len(meta.get('excluded', {})):,} skipped; "
            f"{format_bytes(meta['n_clips'] * meta['clip_samples'] * 2)} in "
            f"{root.resolve().relative_to(REPO) if root.resolve().is_relative_to(REPO) else root}")
