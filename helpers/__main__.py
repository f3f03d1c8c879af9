"""Command line of the course: ``python -m helpers COMMAND``.

  prepare synthetic [--root DIR]     generate the synthetic dataset (about 30 s)
  prepare mtat [...]                 download and prepare MagnaTagATune
  run [--profile cpu] [--out DIR]    execute every notebook, write a summary
  student OUT_DIR                    write the student version of the notebooks
  grade SUBMISSION... [--out CSV]    execute and grade submitted notebooks
  tag FILE... [--model CKPT] [--top K] [--taggram PNG] [--json]
                                     tag audio files with a trained checkpoint
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _prepare_synthetic(args: argparse.Namespace) -> int:
    from .datasets import TaggedAudio, default_root
    from .synth import SynthConfig, prepare_synthetic

    root = Path(args.root) if args.root else default_root("synthetic")
    cfg = SynthConfig(n_songs=args.songs, seed=args.seed)
    start = time.perf_counter()
    prepare_synthetic(root, cfg, workers=args.workers, overwrite=args.overwrite)
    data = TaggedAudio(root)
    size_mb = sum(p.stat().st_size for p in root.iterdir()) / 1e6
    print(f"{data!r}\nat {root} ({size_mb:.0f} MB on disk, ready in {time.perf_counter() - start:.1f} s)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .course import run_notebooks

    return run_notebooks(Path(args.notebooks), Path(args.out), args.profile, args.dataset, args.timeout,
                         args.inplace, args.only)


def _student(args: argparse.Namespace) -> int:
    from .grading import MarkerError, write_student_version

    try:
        written = write_student_version(Path(args.notebooks), Path(args.out_dir))
    except MarkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} student notebooks to {args.out_dir}")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from .grading import grade

    rows = grade([Path(p) for p in args.submissions], Path(args.out), args.timeout, Path(args.solutions))
    for r in rows:
        checks = ", ".join(f"{k[6:]} {v}" for k, v in r.items() if k.startswith("check_"))
        print(f"{r['submission']}: {r['status']}" + (f" ({checks})" if checks else ""))
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def _tag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3; any rate)")
    parser.add_argument("--model", metavar="CHECKPOINT", default=None,
                        help="checkpoint to tag with (default: checkpoints/synthetic/best.pt, saved by notebooks 03 and 05)")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="how many tags to print (default 5)")
    parser.add_argument("--taggram", metavar="PNG", default=None,
                        help="also draw the taggram (time x tags) into this picture; with several files, one "
                             "picture each, named after PNG and the audio file (PNGSTEM_AUDIOSTEM.png)")
    parser.add_argument("--hop", type=float, default=1.0, metavar="SECONDS",
                        help="hop between analysis windows in seconds (default 1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of text")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _tag(args: argparse.Namespace) -> int:
    from .tagging import tag_files_cli

    return tag_files_cli(args)


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
    mtat = which.add_parser("mtat", help="download, verify and prepare MagnaTagATune")
    try:
        from . import mtat as mtat_module
    except ImportError as e:  # pragma: no cover - only while the module is missing
        mtat.set_defaults(func=lambda a: print(f"MagnaTagATune support is not available: {e}") or 1)
    else:
        mtat_module.add_arguments(mtat)
        mtat.set_defaults(func=mtat_module.cli)
    run = sub.add_parser("run", help="execute every notebook and write a results summary")
    run.add_argument("--profile", default="cpu", choices=("ci", "cpu", "gpu"))
    run.add_argument("--dataset", default="synthetic", choices=("synthetic", "mtat"))
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
    grade = sub.add_parser("grade", help="execute submitted notebooks (ci profile) and grade their exercises")
    grade.add_argument("submissions", nargs="+", help="submitted notebooks, or folders of them")
    grade.add_argument("--out", default="grades.csv", help="CSV file, one row per submission (default grades.csv)")
    grade.add_argument("--timeout", type=int, default=600, help="time limit per cell in seconds (default 600)")
    grade.add_argument("--solutions", default="notebooks",
                       help="solution notebooks, to know which checks each notebook must pass")
    grade.set_defaults(func=_grade)
    tag = sub.add_parser("tag", help="tag audio files with a trained checkpoint (top tags, taggram)")
    _tag_arguments(tag)
    tag.set_defaults(func=_tag)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
