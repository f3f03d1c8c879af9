"""MagnaTagATune preparation against a miniature MTAT in the real formats,
served from a local HTTP server (see mtat_fixtures.py)."""
from __future__ import annotations

import csv
import shutil
import warnings

import numpy as np
import pytest

from helpers.__main__ import main
from helpers.audio import load_audio
from helpers.data import TaggedAudio
from helpers.prepare import mtat
from helpers.prepare.writer import float_to_int16
from mtat_fixtures import (ANNOTATION_COLUMNS, BROKEN, CORRUPT, EMPTY, MISSING, TRUNCATED, FileServer, build_fixture,
                           closed_port_url, md5_hex, zip_parts)

FAST = dict(progress=False, retries=3, backoff=0.001, timeout=10.0)
CLEAN = {"train": 24, "valid": 2, "test": 6}        # after decoding (the fixture's good clips)
HOMEWORK = {"train": 10, "valid": 2, "test": 2}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_fixture(tmp_path_factory.mktemp("mtat_fixture"))


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def prepare(fx, root, **kw):
    """prepare_mtat on the fixture, from its source folder unless told otherwise."""
    args = dict(source=fx.dir, mp3_dir=root.parent / f"{root.name}_mp3", checksums=fx.checksums,
                clip_samples=fx.clip_samples, workers=0, published=fx.expected[kw.get("split", "clean")], **FAST)
    args.update(kw)
    return mtat.prepare_mtat(root, **args)


# --------------------------------------------------------------------------- constants

def test_tag_list_and_checksums_come_from_the_data_folder():
    assert len(mtat.TOP50_TAGS) == 50 == len(set(mtat.TOP50_TAGS))
    assert mtat.TOP50_TAGS[:5] == ["guitar", "classical", "slow", "techno", "strings"]
    assert mtat.TOP50_TAGS[-5:] == ["weird", "country", "metal", "female voice", "choral"]   # metal before female voice
    assert set(mtat.TOP50_TAGS) <= set(ANNOTATION_COLUMNS)
    assert len(ANNOTATION_COLUMNS) == 190
    assert (ANNOTATION_COLUMNS[0], ANNOTATION_COLUMNS[-1]) == ("clip_id", "mp3_path")
    sums = mtat.read_md5_file()
    assert sums["mp3.zip.001"] == "179c91c8c2a6e9b3da3d4e69d306fd3b"
    assert set(sums) >= {*mtat.PARTS, mtat.ANNOTATIONS, mtat.JOINED_ZIP}


# --------------------------------------------------------------------------- download

def test_fresh_download_is_verified_and_not_repeated(fx, tmp_path):
    name = "mp3.zip.002"
    with FileServer(fx.files) as server:
        dest = mtat.download_file(server.url + name, tmp_path / name, fx.checksums[name], **FAST)
        assert dest.read_bytes() == fx.files[name]
        assert not (tmp_path / (name + ".part")).exists()
        mtat.download_file(server.url + name, tmp_path / name, fx.checksums[name], **FAST)
    assert server.requests == [(name, None, 200)]


def test_download_resumes_after_a_dropped_connection(fx, tmp_path):
    name = "mp3.zip.001"
    with FileServer(fx.files, cut_after=10_000) as server:
        dest = mtat.download_file(server.url + name, tmp_path / name, fx.checksums[name], **FAST)
    assert dest.read_bytes() == fx.files[name]
    assert server.requests == [(name, None, 200), (name, "bytes=10000-", 206)]


def test_download_resumes_a_partial_file_left_by_an_earlier_run(fx, tmp_path):
    name = mtat.ANNOTATIONS
    (tmp_path / (name + ".part")).write_bytes(fx.files[name][:7000])
    with FileServer(fx.files) as server:
        dest = mtat.download_file(server.url + name, tmp_path / name, fx.checksums[name], **FAST)
    assert dest.read_bytes() == fx.files[name]
    assert server.requests == [(name, "bytes=7000-", 206)]


def test_complete_partial_file_is_accepted_when_the_server_has_nothing_more(fx, tmp_path):
    name = mtat.ANNOTATIONS        # killed after the last byte, before the rename: the server answers 416
    (tmp_path / (name + ".part")).write_bytes(fx.files[name])
    with FileServer(fx.files) as server:
        mtat.download_file(server.url + name, tmp_path / name, fx.checksums[name], **FAST)
    assert (tmp_path / name).read_bytes() == fx.files[name]
    assert server.requests == [(name, f"bytes={len(fx.files[name])}-", 416)]


def test_server_without_range_support_restarts_from_zero(fx, tmp_path):
    name = "mp3.zip.003"
    (tmp_path / (name + ".part")).write_bytes(b"junk" * 1000)   # not even a prefix of the file
    with FileServer(fx.files, honour_range=False, cut_after=5000) as server:
        dest = mtat.download_file(server.url + name, tmp_path / name, fx.checksums[name], **FAST)
    assert dest.read_bytes() == fx.files[name]
    assert server.requests == [(name, "bytes=4000-", 200), (name, "bytes=5000-", 200)]


def test_wrong_checksum_names_file_and_sums_and_moves_it_aside(fx, tmp_path):
    name = "mp3.zip.002"
    wrong = md5_hex(bytes(b ^ 0x5A for b in fx.files[name]))
    with FileServer(fx.files, wrong_bytes={name}) as server:
        with pytest.raises(mtat.ChecksumError) as err:
            mtat.download_file(server.url + name, tmp_path / name, fx.checksums[name], **FAST)
    msg = str(err.value)
    assert name in msg and fx.checksums[name] in msg and wrong in msg and "moved aside" in msg
    assert not (tmp_path / name).exists() and not (tmp_path / (name + ".part")).exists()
    assert (tmp_path / (name + ".bad")).exists()


def test_damaged_file_in_download_folder_is_replaced(fx, tmp_path, capsys):
    name = mtat.ANNOTATIONS
    (tmp_path / name).write_bytes(b"not the annotations")
    with FileServer(fx.files) as server:
        mtat.download_file(server.url + name, tmp_path / name, fx.checksums[name], **FAST)
    assert (tmp_path / name).read_bytes() == fx.files[name]
    assert (tmp_path / (name + ".bad")).read_bytes() == b"not the annotations"
    out = capsys.readouterr().out
    assert "moved it aside" in out.lower() and fx.checksums[name] in out


def test_download_failures_give_up_with_advice(fx, tmp_path):
    with pytest.raises(mtat.DownloadError, match="3 failed tries in a row.*--source"):
        mtat.download_file(closed_port_url() + "mp3.zip.001", tmp_path / "x", None, progress=False, retries=2,
                           backoff=0.001, timeout=5)
    with FileServer(fx.files) as server:
        with pytest.raises(mtat.DownloadError, match="HTTP 404.*--base-url"):
            mtat.download_file(server.url + "nothing.zip", tmp_path / "y", None, **FAST)
    assert server.requests == [("nothing.zip", None, 404)]   # a 4xx answer is not retried


# --------------------------------------------------------------------------- unpacking

def test_unpack_joined_parts_twice_is_harmless(fx, tmp_path):
    parts = [fx.dir / p for p in mtat.PARTS]
    assert mtat.unpack(parts, tmp_path, progress=False) == len(fx.members)
    for m in fx.members:
        assert (tmp_path / m).read_bytes() == (fx.tree / m).read_bytes()
    stamps = {m: (tmp_path / m).stat().st_mtime_ns for m in fx.members}
    assert mtat.unpack(parts, tmp_path, progress=False) == 0
    assert stamps == {m: (tmp_path / m).stat().st_mtime_ns for m in fx.members}
    victim = tmp_path / fx.members[3]
    victim.write_bytes(victim.read_bytes()[:100])             # a file cut short by someone else
    assert mtat.unpack(parts, tmp_path, progress=False) == 1
    assert victim.read_bytes() == (fx.tree / fx.members[3]).read_bytes()


@pytest.mark.parametrize("evil", ["../escape.mp3", "0/../../escape.mp3", "/tmp/absolute.mp3"])
def test_unpack_refuses_members_outside_the_folder(tmp_path, evil):
    parts = zip_parts({"0/fine.mp3": b"ok", evil: b"gotcha"}, dirs=False)
    paths = []
    for k, data in enumerate(parts, 1):
        paths.append(tmp_path / f"mp3.zip.00{k}")
        paths[-1].write_bytes(data)
    dest = tmp_path / "out" / "mp3"
    with pytest.raises(mtat.UnsafeArchiveError, match="refusing") as err:
        mtat.unpack(paths, dest, progress=False)
    assert repr(evil) in str(err.value)
    assert not dest.exists() and not (tmp_path / "out" / "escape.mp3").exists()


def test_unpack_says_what_to_do_with_a_broken_archive(tmp_path):
    (tmp_path / "a").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(mtat.MTATError, match="download them again"):
        mtat.unpack([tmp_path / "a"], tmp_path / "out", progress=False)


# --------------------------------------------------------------------------- annotations and splits

def test_annotations_and_both_split_rules(fx):
    ann = mtat.read_annotations(fx.dir / mtat.ANNOTATIONS)
    assert len(ann.clip_ids) == 40 and ann.labels.shape == (40, 50) and ann.labels.dtype == np.uint8
    assert len(set(ann.clip_ids)) == 40 and max(ann.clip_ids) > 40          # sparse ids, as in MTAT
    with open(fx.dir / mtat.ANNOTATIONS, newline="") as f:
        row = next(r for r in csv.DictReader(f, delimiter="\t") if r["mp3_path"] == EMPTY)
    k = ann.mp3_paths.index(EMPTY)
    assert ann.clip_ids[k] == int(row["clip_id"])
    assert [t for t, y in zip(mtat.TOP50_TAGS, ann.labels[k]) if y] == [t for t in mtat.TOP50_TAGS if row[t] == "1"]

    clean, homework = mtat.make_splits(ann, "clean"), mtat.make_splits(ann, "homework")
    assert clean.sizes() == {"train": 26, "valid": 3, "test": 7} == fx.candidates["clean"]
    assert homework.sizes() == {"train": 11, "valid": 3, "test": 3} == fx.candidates["homework"]
    assert [c.split for c in clean.clips] == sorted((c.split for c in clean.clips), key=mtat.SPLITS.index)
    assert all(c.origin.split("/")[0] in "012ab" for c in homework.clips if c.split == "train")
    assert not any("untagged" in c.origin for c in clean.clips)
    for c, y in zip(clean.clips, clean.labels):
        assert y.any() and (y == ann.labels[ann.clip_ids.index(int(c.clip_id))]).all()


def test_annotations_that_are_not_mtat_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text("clip_id,guitar,mp3_path\n1,0,x.mp3\n")
    with pytest.raises(mtat.MTATError, match="download it again"):
        mtat.read_annotations(tmp_path / "a.csv")


# --------------------------------------------------------------------------- decoding and the whole preparation

def test_prepare_clean_split_skips_broken_files_and_reports_them(fx, tmp_path):
    root = tmp_path / "mtat"
    meta = prepare(fx, root)
    assert meta["split_sizes"] == CLEAN and meta["split_rule"] == "clean"
    data = TaggedAudio(root)
    assert data.audio.shape == (36, fx.clip_samples) and data.tags == mtat.TOP50_TAGS
    with open(root / "skipped.csv", newline="") as f:
        skipped = {r["mp3_path"]: r for r in csv.DictReader(f)}
    assert {p: r["reason"].split(":")[0] for p, r in skipped.items()} == BROKEN
    assert "known empty" in skipped[EMPTY]["reason"]
    assert set(meta["excluded"]) == {r["clip_id"] for r in skipped.values()}
    ann = mtat.read_annotations(fx.dir / mtat.ANNOTATIONS)
    for c in data.clips:
        assert (c["split"] == "excluded") == (c["origin"] in BROKEN)
        assert (data.labels[c["index"]] == ann.labels[ann.mp3_paths.index(c["origin"])]).all()
    good = next(c for c in data.clips if c["split"] == "test")
    assert good["n_samples"] == fx.clip_samples and np.abs(data.waveform(good["index"])).max() > 0.1
    expected = float_to_int16(load_audio(fx.tree / good["origin"])[:fx.clip_samples])
    assert np.array_equal(data.audio[good["index"]], expected)            # exactly what load_audio decodes
    line = mtat.summary_line(root)
    assert "clean split" in line and "train 24 / valid 2 / test 6" in line and "4 skipped" in line and str(root) in line


def test_homework_split_and_the_count_warning(fx, tmp_path):
    with pytest.warns(mtat.MTATCountWarning) as record:
        meta = prepare(fx, tmp_path / "hw", split="homework", published=None)
    assert meta["split_sizes"] == HOMEWORK
    msg = str(record[0].message)
    assert "published 6,206 / 1,529 / 1,339" in msg and "train -6,196" in msg
    assert CORRUPT in msg and TRUNCATED in msg and MISSING in msg and "skipped.csv" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # matching counts: no warning
        assert prepare(fx, tmp_path / "hw2", split="homework")["split_sizes"] == HOMEWORK


def test_interrupted_decode_resumes_to_the_same_bytes(fx, tmp_path):
    reference, mp3 = tmp_path / "reference", tmp_path / "mp3"
    prepare(fx, reference, mp3_dir=mp3)

    class Stop(Exception):
        pass

    def stop_after_10(n):
        if n == 10:
            raise Stop

    root = tmp_path / "resumed"
    with pytest.raises(Stop):
        prepare(fx, root, mp3_dir=mp3, checkpoint_every=4, on_clip=stop_after_10)
    assert not (root / "meta.json").exists() and (root / "progress.npy").exists()
    with pytest.raises(Exception, match="incomplete"):
        TaggedAudio(root)
    handled = []
    prepare(fx, root, mp3_dir=mp3, workers=1, checkpoint_every=4, on_clip=handled.append)
    assert len(handled) == 36 - 10                           # only the clips not written before
    for name in ("audio.npy", "labels.npy", "clips.csv", "skipped.csv", "meta.json"):
        assert (root / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_source_folder_is_used_in_place_and_checked(fx, tmp_path, capsys):
    downloads = tmp_path / "downloads"
    meta = prepare(fx, tmp_path / "mtat", download_dir=downloads)
    assert meta["split_sizes"] == CLEAN and not downloads.exists()
    assert str(fx.dir / mtat.ANNOTATIONS) in capsys.readouterr().out

    joined = tmp_path / "joined"                             # a folder with the joined mp3.zip instead of parts
    joined.mkdir()
    shutil.copy(fx.dir / mtat.ANNOTATIONS, joined)
    (joined / mtat.JOINED_ZIP).write_bytes(b"".join(fx.files[p] for p in mtat.PARTS))
    assert prepare(fx, tmp_path / "mtat2", source=joined)["split_sizes"] == CLEAN

    damaged = tmp_path / "damaged"
    shutil.copytree(fx.dir, damaged)
    (damaged / "mp3.zip.002").write_bytes(b"x" * 100)
    with pytest.raises(mtat.ChecksumError, match="mp3.zip.002.*left in place") as err:
        prepare(fx, tmp_path / "mtat3", source=damaged)
    assert fx.checksums["mp3.zip.002"] in str(err.value) and md5_hex(b"x" * 100) in str(err.value)
    assert (damaged / "mp3.zip.002").exists()

    shutil.rmtree(tmp_path / "mtat3_mp3", ignore_errors=True)
    (damaged / "mp3.zip.002").unlink()
    with pytest.raises(mtat.MTATError, match="mp3.zip.002 is not in the source folder"):
        prepare(fx, tmp_path / "mtat3", source=damaged)


def test_not_enough_disk_stops_before_the_archive_is_downloaded(fx, tmp_path):
    seen = []

    def tiny_disk(path):
        seen.append(path)
        return 100_000

    with FileServer(fx.files) as server:
        with pytest.raises(mtat.NotEnoughDiskError, match=r"576\.0 kB more .*only 100\.0 kB.*--root"):
            prepare(fx, tmp_path / "mtat", source=None, download_dir=tmp_path / "dl", base_url=server.url,
                    free_bytes=tiny_disk)
    assert server.names() == [mtat.ANNOTATIONS]                # the parts were not requested
    assert seen == [tmp_path.resolve()]                        # the nearest existing folder of the root
    assert not (tmp_path / "mtat" / "audio.npy").exists()


def test_cli_end_to_end_against_the_local_server(fx, tmp_path, capfd):
    root = tmp_path / "data" / "mtat"
    argv = ["prepare", "mtat", "--root", str(root), "--download-dir", str(tmp_path / "dl"), "--mp3-dir", str(tmp_path / "mp3"),
            "--md5-file", str(fx.md5_file), "--clip-samples", str(fx.clip_samples), "--workers", "2",
            "--no-progress", "--backoff", "0.001"]
    with FileServer(fx.files, cut_after=20_000) as server:
        args = argv + ["--base-url", server.url]
        with pytest.warns(mtat.MTATCountWarning, match="published 15,244"):
            assert main(args) == 0
        first = list(server.requests)
        assert main(args) == 0                                # finished: nothing is fetched again
    assert sorted(set(n for n, _, _ in first)) == sorted(fx.files) and server.requests == first
    assert first[0] == (mtat.ANNOTATIONS, None, 200) and (mtat.ANNOTATIONS, "bytes=20000-", 206) in first
    for name in fx.files:
        assert (tmp_path / "dl" / name).read_bytes() == fx.files[name]
    out, err = capfd.readouterr()
    assert err == ""
    assert f"MTAT is ready in {root}" in out and "train 24, valid 2, test 6" in out
    assert mtat.summary_line(root) in out and "already prepared" in out
    assert TaggedAudio(root).meta["split_sizes"] == CLEAN

    bad = argv + ["--root", str(tmp_path / "other"), "--source", str(tmp_path / "nowhere")]
    assert main(bad) == 1
    out, err = capfd.readouterr()
    assert "annotations_final.csv is not in the source folder" in err
    other_split = argv + ["--split", "homework"]                     # the root holds the clean split
    assert main(other_split) == 1
    out, err = capfd.readouterr()
    assert "clean split" in err and "--root" in err and "--overwrite" in err
