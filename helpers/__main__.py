"""Command line of the course: ``python -m helpers COMMAND``.

  prepare synthetic [--root DIR]     generate the synthetic dataset (about 30 s)
  prepare mtat [...]                 download and prepare MagnaTagATune
  run [--profile cpu] [--out DIR]    execute every notebook, write a summary
  student OUT_DIR                    write the student version of the notebooks
  grade SUBMISSION... [--out CSV]    execute and grade submitted notebooks
  train MODEL [--recipe homework|won2020] [--dataset synthetic|mtat] [--epochs N]
                                     train a model, measure it on test, save a checkpoint
  tag FILE... [--model MTT_musicnn|CKPT] [--top K] [--hop S] [--taggram PNG] [--json]
                                     tag audio files with musicnn's published models
                                     or a course checkpoint
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")          # the command line draws into files (taggrams), never on a screen

import matplotlib.pyplot as plt  # noqa: E402

from .audio import AudioLoadError  # noqa: E402
from .config import DATASETS, PROFILES, checkpoint_path, choose_device, choose_fast_paths, data_root, runs_folder  # noqa: E402
from .course.grading import GradingError, MarkerError, grade, write_student_version  # noqa: E402
from .course.run import run_notebooks  # noqa: E402
from .course.setup import open_dataset  # noqa: E402
from .data import SPLITS, DatasetNotReadyError, TaggedAudio  # noqa: E402
from .models import MODEL_NAMES, build_model, count_parameters, model_options  # noqa: E402
from .plots import plot_taggram  # noqa: E402
from .prepare import mtat  # noqa: E402
from .prepare.musicnn import PRETRAINED, PretrainedError, pretrained_checkpoint  # noqa: E402
from .prepare.synth import SynthConfig, prepare_synthetic  # noqa: E402
from .tagging import Tagger  # noqa: E402
from .train import (RECIPES, estimate_training_time, evaluate, fit, kept_value, model_checkpoint,  # noqa: E402
                    save_checkpoint, seed_everything)


# --------------------------------------------------------------------------- prepare

def _prepare_synthetic(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else data_root("synthetic")
    cfg = SynthConfig(n_songs=args.songs, seed=args.seed)
    start = time.perf_counter()
    prepare_synthetic(root, cfg, workers=args.workers, overwrite=args.overwrite)
    data = TaggedAudio(root)
    size_mb = sum(p.stat().st_size for p in root.iterdir()) / 1e6
    print(f"{data!r}\nat {root} ({size_mb:.0f} MB on disk, ready in {time.perf_counter() - start:.1f} s)")
    return 0


def _mtat_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m helpers prepare mtat``."""
    parser.description = ("Download MagnaTagATune (about 3 GB), verify and unpack it, and decode the clips of a "
                          "split into the course's dataset format (about 20 GB for the clean split). Every step "
                          "resumes: run the same command again after an interruption.")
    parser.add_argument("--root", type=Path, default=None,
                        help="dataset folder (default: data/mtat, or $COURSE_DATA/mtat)")
    parser.add_argument("--split", choices=sorted(mtat.SPLIT_FOLDERS), default="clean",
                        help="clean: Won et al. 2020, folders 0-b / c / d-f (15,244 / 1,529 / 4,332 clips); "
                             "homework: folders 0 1 2 a b / c / d (6,206 / 1,529 / 1,339). Default: clean")
    parser.add_argument("--source", type=Path, default=None,
                        help="folder that already holds mp3.zip.001-.003 (or the joined mp3.zip) and "
                             "annotations_final.csv, e.g. on Google Drive: used in place, nothing is downloaded")
    parser.add_argument("--download-dir", type=Path, default=None,
                        help="where to download the files (default: data/downloads, or $COURSE_DATA/downloads); "
                             "a folder on Google Drive keeps them across Colab runtimes")
    parser.add_argument("--mp3-dir", type=Path, default=None,
                        help="where to unpack the mp3 files (default: data/mtat_mp3, or $COURSE_DATA/mtat_mp3)")
    parser.add_argument("--base-url", default=None,
                        help=f"where to download from (default: $COURSE_MTAT_URL, else {mtat.BASE_URL})")
    parser.add_argument("--md5-file", type=Path, default=None,
                        help="checksums, lines `md5  filename` (default: $COURSE_MTAT_MD5, else data/mtat_md5.txt)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: the CPU count, at most 8; 0 decodes in this process)")
    parser.add_argument("--clip-samples", type=int, default=mtat.CLIP_SAMPLES,
                        help=f"samples kept per clip (default: {mtat.CLIP_SAMPLES:,} = 29.124 s at 16 kHz)")
    parser.add_argument("--retries", type=int, default=5,
                        help="failed download attempts in a row without progress before giving up (default: 5)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="seconds before the first retry, doubled each time (default: 1)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds without data before a connection counts as dropped (default: 60)")
    parser.add_argument("--overwrite", action="store_true", help="prepare again over a finished dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def _prepare_mtat(args: argparse.Namespace) -> int:
    """``prepare mtat``: returns the exit status (0: done)."""
    try:
        meta = mtat.prepare_mtat(args.root, split=args.split, download_dir=args.download_dir, source=args.source,
                                 mp3_dir=args.mp3_dir, base_url=args.base_url,
                                 checksums=mtat.read_md5_file(args.md5_file) if args.md5_file else None,
                                 workers=args.workers,
                                 clip_samples=args.clip_samples, overwrite=args.overwrite,
                                 progress=not args.no_progress, retries=args.retries, backoff=args.backoff,
                                 timeout=args.timeout)
    except (mtat.MTATError, DatasetNotReadyError, FileExistsError) as e:
        print(f"prepare mtat: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prepare mtat: interrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 130
    root = Path(args.root) if args.root is not None else data_root("mtat")
    sizes = meta["split_sizes"]
    print(f"MTAT is ready in {root}")
    print("Split sizes: " + ", ".join(f"{s} {sizes[s]:,}" for s in SPLITS)
          + f" ({len(meta.get('excluded', {}))} clips skipped, listed in {root / mtat.SKIPPED_REPORT})")
    print(mtat.summary_line(root))
    mp3_dir = Path(args.mp3_dir) if args.mp3_dir is not None else data_root("mtat_mp3")
    print(f"The unpacked mp3 files in {mp3_dir} are no longer needed: delete that folder to free about 3 GB.")
    return 0


# --------------------------------------------------------------------------- run, student, grade

def _run(args: argparse.Namespace) -> int:
    return run_notebooks(Path(args.notebooks), Path(args.out), args.profile, args.dataset, args.timeout,
                         args.inplace, args.only)


def _student(args: argparse.Namespace) -> int:
    try:
        written = write_student_version(Path(args.notebooks), Path(args.out_dir))
    except MarkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} student notebooks to {args.out_dir}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    try:
        rows = grade([Path(p) for p in args.submissions], Path(args.out), args.timeout, Path(args.solutions),
                     whole_notebook=not args.exercises_only)
    except GradingError as e:
        print(f"error: {e}; the rows so far are in {args.out}", file=sys.stderr)
        return 1
    for r in rows:
        checks = ", ".join(f"{k[6:]} {v}" for k, v in r.items() if k.startswith("check_"))
        print(f"{r['submission']}: {r['status']}" + (f" ({checks})" if checks else ""))
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


# --------------------------------------------------------------------------- tag

def _tag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3; any rate)")
    parser.add_argument("--model", metavar="MODEL", default="MTT_musicnn",
                        help=f"a published model ({', '.join(PRETRAINED)}: Pons & Serra's musicnn, trained on "
                             f"MagnaTagATune or the Million Song Dataset) or a course checkpoint, e.g. "
                             f"checkpoints/mtat/best.pt (saved by notebooks 03 and 05). Default: MTT_musicnn")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="how many tags to print (default 5)")
    parser.add_argument("--taggram", metavar="PNG", default=None,
                        help="also draw the taggram (time x tags) into this picture; with several files, one "
                             "picture each, named after PNG and the audio file (PNGSTEM_AUDIOSTEM.png)")
    parser.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                        help="hop between analysis windows in seconds (default: 3 for the published models, "
                             "musicnn's non-overlapping patches; 1 for course checkpoints)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of text")
    parser.add_argument("--with-taggram", action="store_true",
                        help="with --json: add each window's start (s) and tag probabilities")
    parser.add_argument("--with-embedding", action="store_true",
                        help="with --json: add the file's embedding (mean window embedding, L2-normalised)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _taggram_path(base: Path, audio: Path, several: bool) -> Path:
    return base.with_name(f"{base.stem}_{audio.stem}{base.suffix or '.png'}") if several else base


def _tag(args: argparse.Namespace) -> int:
    """``tag``: 0 when every file was tagged, 1 when some
    file could not be read, 2 when the checkpoint is missing or unreadable.
    Errors go to stderr as one line naming the file, without a traceback."""
    def error(msg: str) -> None:
        print(f"error: {msg}", file=sys.stderr)

    if args.top < 1:
        error(f"--top must be at least 1, got {args.top}")
        return 2
    if args.hop is not None and args.hop <= 0:
        error(f"--hop must be a positive number of seconds, got {args.hop}")
        return 2
    if args.model in PRETRAINED:
        try:
            ckpt = pretrained_checkpoint(args.model)
        except PretrainedError as e:
            error(str(e))
            return 2
    else:
        ckpt = Path(args.model)
        if not ckpt.is_file():
            error(f"no checkpoint at {ckpt}: pass a published model ({', '.join(PRETRAINED)}) or a course "
                  f"checkpoint (notebooks 03 and 05 save checkpoints/<dataset>/best.pt; `make run` runs them)")
            return 2
    try:
        tagger = Tagger(ckpt, device=choose_device(args.device),
                        hop_seconds=args.hop or (3.0 if args.model in PRETRAINED else 1.0))
    except (ValueError, KeyError, RuntimeError) as e:
        error(f"cannot use the checkpoint {ckpt}: {e}")
        return 2
    if tagger.checkpoint.get("dataset") == "synthetic":
        print(f"warning: {ckpt} was trained on the course's synthetic dataset: its tags describe synthetic "
              f"music, not real recordings (for real tags use --model MTT_musicnn, or a model trained on MTAT)",
              file=sys.stderr)
    results, failed = [], 0
    several = len(args.files) > 1
    for name in args.files:
        path = Path(name)
        try:
            result = tagger.tag_file(path)
        except FileNotFoundError:
            error(f"{path}: no such file")
            failed += 1
            continue
        except (AudioLoadError, ValueError) as e:
            error(f"{path}: cannot read this audio file ({e})")
            failed += 1
            continue
        entry = result.to_dict(args.top)
        if args.with_taggram:
            entry["taggram"] = {"starts_s": [round(float(t), 3) for t in result.starts],
                                "tags": result.tags, "probabilities": np.round(result.taggram, 4).tolist()}
        if args.with_embedding:
            entry["embedding"] = np.round(result.embedding, 6).tolist()
        if args.taggram:
            png = _taggram_path(Path(args.taggram), path, several)
            png.parent.mkdir(parents=True, exist_ok=True)
            fig = plot_taggram(result)
            fig.savefig(png, dpi=120, bbox_inches="tight")
            plt.close(fig)
            entry["taggram_png"] = str(png)
        results.append(entry)
        if not args.json:
            print(result.describe(args.top) + (f"\n  taggram: {entry['taggram_png']}" if args.taggram else ""))
    if args.json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0


# --------------------------------------------------------------------------- train

def _train(args: argparse.Namespace) -> int:
    """Train one model with a named recipe, measure it once on the test split,
    and save it as a course checkpoint (resumable: the same command continues
    an interrupted run)."""
    try:
        data = TaggedAudio(args.root) if args.root else open_dataset(args.dataset, progress=not args.quiet)
    except DatasetNotReadyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    dataset = data.meta.get("name") or args.dataset
    device = choose_device(args.device)
    changes = {k: v for k, v in (("epochs", args.epochs), ("max_batches", args.max_batches)) if v is not None}
    fast = choose_fast_paths()
    recipe = replace(RECIPES[args.recipe], amp=fast, channels_last=fast, **changes)
    options = {k: v for k, v in (("width", args.width), ("input_samples", args.input_samples)) if v is not None}
    try:
        unknown = sorted(set(options) - set(model_options(args.model)))
        if unknown:
            raise ValueError(f"{args.model} has no option {', '.join(unknown)}; its options: "
                             f"{', '.join(model_options(args.model)) or 'none'}")
        seed_everything(recipe.seed)
        model = build_model(args.model, n_tags=len(data.tags), **options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.model} ({count_parameters(model):,} parameters) on {dataset}, recipe {args.recipe}: {recipe}")
    print(f"expected: {estimate_training_time(model, data, recipe, device=device)}")
    history = fit(model, data, recipe, args.model, model_options=options, runs_dir=runs_folder(dataset),
                  device=device, progress=not args.quiet)
    scores, _, _ = evaluate(model, data, "test", device=device, progress=not args.quiet)
    best = history.best_epoch
    print(f"kept epoch {best} of {len(history.epoch)} (validation loss {kept_value(history, 'valid_loss'):.4f}); "
          f"test: {scores}")
    out = Path(args.out) if args.out else checkpoint_path(f"{args.model}-{args.recipe}", dataset)
    save_checkpoint(out, model_checkpoint(model, args.model, data.tags, options, recipe=args.recipe, epoch=best,
                                          valid_roc_auc=kept_value(history, "valid_roc_auc"),
                                          test_roc_auc=scores.roc_auc, test_pr_auc=scores.pr_auc, dataset=dataset))
    print(f"saved {out} (tag with it: python -m helpers tag FILE --model {out})")
    return 0


# --------------------------------------------------------------------------- the parser

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="prepare a dataset in the on-disk format")
    which = prepare.add_subparsers(dest="dataset", required=True)
    syn = which.add_parser("synthetic", help="generate the synthetic tagged-music dataset")
    syn.add_argument("--root", help="dataset folder (default: data/synthetic, or $COURSE_DATA/synthetic)")
    syn.add_argument("--songs", type=int, default=500, help="number of songs, 4 clips each (default 500)")
    syn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    syn.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 2)")
    syn.add_argument("--overwrite", action="store_true", help="generate again even if the folder is complete")
    syn.set_defaults(func=_prepare_synthetic)
    mtat_parser = which.add_parser("mtat", help="download, verify and prepare MagnaTagATune")
    _mtat_arguments(mtat_parser)
    mtat_parser.set_defaults(func=_prepare_mtat)
    run = sub.add_parser("run", help="execute every notebook and write a results summary")
    run.add_argument("--profile", default="cpu", choices=tuple(PROFILES))
    run.add_argument("--dataset", default="synthetic", choices=DATASETS)
    run.add_argument("--notebooks", default="notebooks", help="folder of the notebooks (default notebooks)")
    run.add_argument("--out", default="output", help="folder for executed notebooks and the summary")
    run.add_argument("--timeout", type=int, default=1800, help="time limit per cell in seconds")
    run.add_argument("--inplace", action="store_true",
                     help="also save the executed notebooks over the originals (to commit their outputs)")
    run.add_argument("--only", nargs="+", metavar="PREFIX", help="run only notebooks starting with these, e.g. 00 01")
    run.set_defaults(func=_run)
    student = sub.add_parser("student", help="write the student version of every notebook")
    student.add_argument("out_dir", help="folder for the student notebooks")
    student.add_argument("--notebooks", default="notebooks", help="folder of the solution notebooks")
    student.set_defaults(func=_student)
    grade_parser = sub.add_parser("grade", help="execute submitted notebooks (ci profile) and grade their exercises")
    grade_parser.add_argument("submissions", nargs="+", help="submitted notebooks, or folders of them")
    grade_parser.add_argument("--out", default="grades.csv", help="CSV file, one row per submission (default grades.csv)")
    grade_parser.add_argument("--timeout", type=int, default=600, help="time limit per cell in seconds (default 600)")
    grade_parser.add_argument("--solutions", default="notebooks",
                              help="the course's solution notebooks (their set-up cells run before each exercise)")
    grade_parser.add_argument("--exercises-only", action="store_true",
                              help="grade the exercises only, without running each whole notebook")
    grade_parser.set_defaults(func=_grade)
    train = sub.add_parser("train", help="train one model with a named recipe and save it as a checkpoint")
    train.add_argument("model", choices=MODEL_NAMES, help="the model to train")
    train.add_argument("--recipe", default="homework", choices=sorted(RECIPES),
                       help="homework (SGD, 10 epochs) or won2020 (Won et al.: Adam, then SGD, 200 epochs)")
    train.add_argument("--dataset", default="synthetic", choices=DATASETS)
    train.add_argument("--root", help="a prepared dataset folder (default: the dataset's usual place)")
    train.add_argument("--epochs", type=int, help="override the recipe's epochs")
    train.add_argument("--max-batches", type=int, help="cap the batches per epoch (a quick check)")
    train.add_argument("--width", type=float, help="channel multiplier of the models that take one")
    train.add_argument("--input-samples", type=int,
                       help="crnn's input length in samples (Won et al.: 465600, 29.1 s; default 48000)")
    train.add_argument("--device", help="cpu, cuda... (default: the GPU when there is one)")
    train.add_argument("--out", help="checkpoint to write (default checkpoints/<dataset>/<model>-<recipe>.pt)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_train)
    tag = sub.add_parser("tag", help="tag audio files with a trained checkpoint (top tags, taggram)")
    _tag_arguments(tag)
    tag.set_defaults(func=_tag)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
