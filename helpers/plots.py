"""Every figure the notebooks show. Each function draws on a new matplotlib
figure (or the given axes), labels its axes with units, and returns the
figure so a notebook can save it."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch

from .audio import LogMelSpectrogram
from .config import SAMPLE_RATE

# --- figures of notebooks 00-03 ----------------------------------------------


def _series(history, key: str) -> list:
    """``history.key`` for a :class:`helpers.train.History`, or ``history[key]``
    for its dict form (as stored in the results file)."""
    return list(history[key] if isinstance(history, dict) else getattr(history, key))


def plot_tag_frequencies(labels, tags, title: str = "How many clips carry each tag"):
    """Bar chart of the clips per tag, most frequent first: ``labels`` is a
    ``(n_clips, n_tags)`` 0/1 matrix with columns named by ``tags``. The right
    axis gives the same count as a share of all clips (%)."""
    y = np.asarray(labels) > 0
    counts = y.sum(0)
    order = np.argsort(-counts, kind="stable")
    fig, ax = plt.subplots(figsize=(max(7.0, 0.28 * len(tags)), 3.8))
    ax.bar(np.arange(len(order)), counts[order], color="tab:blue")
    ax.set_xticks(np.arange(len(order)), [tags[i] for i in order], rotation=75, fontsize=8)
    ax.set_xlim(-0.7, len(order) - 0.3)
    ax.set_xlabel("tag (most frequent first)")
    ax.set_ylabel("clips with the tag")
    n = max(len(y), 1)
    share = ax.secondary_yaxis("right", functions=(lambda c: 100 * c / n, lambda p: p * n / 100))
    share.set_ylabel("share of all clips (%)")
    ax.set_title(f"{title} ({len(y):,} clips)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_cooccurrence(labels, tags, title: str = "Which tags come together"):
    """Heatmap of ``P(column tag | row tag)``: the share of the clips carrying
    the row's tag that also carry the column's tag (1 on the diagonal). Tags
    are ordered by frequency, most frequent first."""
    y = (np.asarray(labels) > 0).astype(np.float64)
    counts = y.T @ y
    order = np.argsort(-np.diag(counts), kind="stable")
    cond = counts / np.maximum(np.diag(counts), 1)[:, None]
    cond = cond[np.ix_(order, order)]
    names = [tags[i] for i in order]
    size = max(6.0, 0.24 * len(tags) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(cond, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("tag B (also carried)")
    ax.set_ylabel("tag A (clips that carry it)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="P(B | A): share of the clips with A that also carry B", shrink=0.8)
    fig.tight_layout()
    return fig


def plot_clip(waveform, sample_rate: int = SAMPLE_RATE, title: str = "A clip", n_mels: int = 96):
    """A clip as its waveform (top) and its log-mel spectrogram in dB (bottom,
    the course's front end: n_fft 512, hop 256, up to 8 kHz), on the same time
    axis in seconds. ``waveform``: float ``(samples,)`` in [-1, 1]."""
    wave = np.asarray(waveform, dtype=np.float32)
    front = LogMelSpectrogram(sample_rate=sample_rate, n_mels=n_mels)
    with torch.no_grad():
        mel = front(torch.from_numpy(wave)[None])[0, 0].numpy()
    seconds = len(wave) / sample_rate
    fig = plt.figure(figsize=(8, 5), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.6], width_ratios=[40, 1])
    ax1, ax2, cax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    block = max(1, len(wave) // 2000)                 # draw the envelope: min and max of short blocks
    blocks = wave[:len(wave) // block * block].reshape(-1, block)
    ax1.fill_between(np.arange(len(blocks)) * block / sample_rate, blocks.min(1), blocks.max(1), lw=0,
                     color="tab:blue")
    ax1.set_xlim(0, seconds)
    ax1.set_ylim(-1, 1)
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("amplitude")
    ax1.set_title(title)
    top = float(mel.max())
    im = ax2.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                    extent=(0, seconds, -0.5, n_mels - 0.5), interpolation="nearest")
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("mel band (0 = lowest)")
    ax2.set_title(f"log-mel spectrogram ({n_mels} mel bands, 0-8 kHz)")
    fig.colorbar(im, cax=cax, label="power (dB)")
    cax.set_label("<colorbar>")
    return fig


def plot_mel_filterbank(filterbank, sample_rate: int = SAMPLE_RATE, title: str = "The mel filterbank"):
    """The triangular mel filters, ``filterbank`` ``(n_freqs, n_mels)`` as
    :func:`helpers.audio.mel_filterbank` returns them, against frequency in Hz
    (left: every filter, every 8th drawn darker; right: each filter's centre
    frequency, which grows linearly at first and then exponentially)."""
    fb = np.asarray(filterbank)
    n_freqs, n_mels = fb.shape
    freqs = np.linspace(0, sample_rate // 2, n_freqs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    for m in range(n_mels):
        dark = m % 8 == 0
        ax1.plot(freqs, fb[:, m], lw=1.2 if dark else 0.6, color="tab:blue" if dark else "lightsteelblue")
    ax1.set_xlabel("frequency (Hz)")
    ax1.set_ylabel("filter weight")
    ax1.set_title(f"{title}: {n_mels} triangles over {n_freqs} STFT bins")
    centres = freqs[np.argmax(fb, axis=0)]
    ax2.plot(np.arange(n_mels), centres, marker=".", lw=0.8)
    ax2.set_xlabel("mel band")
    ax2.set_ylabel("centre frequency (Hz)")
    ax2.set_title("where each band sits")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_learning_curves(histories: dict, title: str = "Learning curves", floor: float | None = None):
    """Per-epoch curves of one or more training runs: ``histories`` maps a
    label to a :class:`helpers.train.History` (or its dict form). Left: the
    training loss (dashed) and validation loss (solid), with ``floor`` (the
    validation loss of the prior-only predictor, which a model must beat) as
    a grey line; middle and right: the validation macro ROC-AUC and PR-AUC."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if floor is not None:
        axes[0].axhline(floor, color="grey", lw=1.2, ls=":", label=f"prior only, validation ({floor:.3f})")
    for i, (label, h) in enumerate(histories.items()):
        colour = f"C{i}"
        epoch = _series(h, "epoch")
        axes[0].plot(epoch, _series(h, "train_loss"), ls="--", marker="o", ms=3, color=colour,
                     label=f"{label}, training")
        axes[0].plot(epoch, _series(h, "valid_loss"), ls="-", marker="o", ms=3, color=colour,
                     label=f"{label}, validation")
        axes[1].plot(epoch, _series(h, "valid_roc_auc"), marker="o", ms=3, color=colour, label=label)
        axes[2].plot(epoch, _series(h, "valid_pr_auc"), marker="o", ms=3, color=colour, label=label)
    axes[0].set_ylabel("binary cross-entropy per tag")
    axes[0].set_title("loss")
    axes[1].set_ylabel("macro ROC-AUC (0.5 = chance)")
    axes[1].set_title("validation ROC-AUC")
    axes[2].set_ylabel("macro PR-AUC")
    axes[2].set_title("validation PR-AUC")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_per_tag_scores(per_tag: dict, order=None, chance=0.5, metric: str = "ROC-AUC",
                        title: str = "Test score of each tag", counts: dict | None = None):
    """Grouped bars of a per-tag score for one or more models: ``per_tag``
    maps a model label to ``{tag: score}``. ``order``: the tags to draw, in
    order (default: the first model's tags, best first); the figure's size
    depends only on their number. ``chance``: what random
    guessing scores, one number (a dashed line, 0.5 for ROC-AUC) or ``{tag:
    value}`` (a black mark per tag, e.g. its exact chance PR-AUC).
    ``counts``: ``{tag: (positive clips, their songs)}`` of the test split
    (:func:`helpers.data.positive_counts`), written under each tag: a score
    measured on 4 clips of 2 songs is not one measured on 60."""
    labels = list(per_tag)
    first = per_tag[labels[0]]
    tags = list(order) if order is not None else sorted(first, key=lambda t: -first[t])
    x = np.arange(len(tags))                # a tag without a score (no positive clip) keeps its place, empty
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.3 * len(tags) + 2), 3.8))
    for i, label in enumerate(labels):
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, [per_tag[label].get(t, np.nan) for t in tags], width,
               label=label, color=f"C{i}")
    if isinstance(chance, dict):
        ax.scatter(x, [chance.get(t, np.nan) for t in tags], marker="_", s=120, color="black", zorder=3,
                   label="chance")
    elif chance is not None:
        ax.axhline(chance, color="black", lw=0.9, ls="--", label=f"chance ({chance:g})")
    names = [f"{t} ({counts[t][0]}/{counts[t][1]})" if counts and t in counts else t for t in tags]
    ax.set_xticks(x, names, rotation=75, fontsize=8)
    ax.set_xlim(-0.7, len(tags) - 0.3)
    ax.set_xlabel("tag (positive test clips / their songs)" if counts else "tag")
    ax.set_ylabel(f"test {metric}")
    ax.set_ylim(0, 1.14)                    # headroom for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=len(labels) + 1)
    fig.tight_layout()
    return fig


def plot_top_k(probs, tags, true_tags, k: int = 5, title: str = "Top predicted tags"):
    """Horizontal bars of the ``k`` most probable tags of one clip
    (``probs``: ``(n_tags,)`` probabilities), green for a tag the clip really
    carries, grey otherwise; the true tags outside the top k are named below
    the axis."""
    probs = np.asarray(probs, dtype=float)
    top = list(np.argsort(-probs, kind="stable")[:k])
    truth = set(true_tags)
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * k + 1.6))
    names = [tags[i] for i in top][::-1]
    values = [probs[i] for i in top][::-1]
    colours = ["tab:green" if n in truth else "tab:gray" for n in names]
    ax.barh(names, values, color=colours)
    for y, v in enumerate(values):
        ax.text(min(v + 0.01, 0.9), y, f"{v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1)
    missed = [t for t in true_tags if t not in {tags[i] for i in top}]
    ax.set_xlabel("predicted probability" + (f"\ntrue tags not in the top {k}: {', '.join(missed)}" if missed else ""))
    ax.set_ylabel("tag")
    ax.set_title(title)
    ax.legend(handles=[Patch(color="tab:green", label="a true tag"), Patch(color="tab:gray", label="not a true tag")],
              fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


# --- figures of notebooks 04-06 ----------------------------------------------


def _new_axes(ax=None, figsize=(7, 4)):

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def plot_recall_at_k(results: dict, title: str = "Multi-label Recall@K on the test split", ax=None):
    """Recall@K against K (log2 axis) for several embedders: ``results`` maps
    a label to ``{'R@1': ..., 'R@2': ..., ...}``."""
    fig, ax = _new_axes(ax)
    for label, recall in results.items():
        ks = sorted(int(k[2:]) for k in recall)
        ax.plot(ks, [recall[f"R@{k}"] for k in ks], marker="o", label=label)
        ks_all = ks
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.set_xlabel("K (neighbours retrieved)")
    ax.set_ylabel("Recall@K (fraction of the query's tags found)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_triplet_histories(histories: dict, title: str = "Metric learning: training curves"):
    """Per epoch, for several runs (``label -> helpers.retrieval.TripletHistory``):
    the training triplet loss, the share of training triplets whose loss was
    zero (already ranked right by the margin: they give no gradient), and the
    validation mean Recall@K (mean of R@1/2/4/8, query's song left out)."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 3.6))
    for label, h in histories.items():
        ax1.plot(h.epoch, h.train_loss, marker="o", label=label)
        share = getattr(h, "zero_loss_share", None)
        if share:
            ax2.plot(h.epoch[:len(share)], share, marker="o", label=label)
        ax3.plot(h.epoch, h.valid_score, marker="o", label=label)
    ax1.set_title("training triplet loss")
    ax1.set_ylabel("mean triplet loss")
    ax2.set_title("training triplets with zero loss")
    ax2.set_ylabel("share of the epoch's triplets")
    ax2.set_ylim(0, 1)
    ax3.set_title("validation: mean of R@1, R@2, R@4, R@8")
    ax3.set_ylabel("mean Recall@K")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_embedding_map(points, labels, tags, show: tuple = ("classical", "techno"),
                       title: str = "Test clips in the embedding space (PCA to 2D)", method: str = "PCA"):
    """Scatter of 2D points ``(N, 2)`` (e.g. PCA of the embeddings), one panel
    per tag in ``show``: clips with the tag in colour, the others in grey.
    ``labels`` is ``(N, n_tags)`` 0/1 with columns named by ``tags``."""
    show = [t for t in show if t in tags]
    fig, axes = plt.subplots(1, len(show), figsize=(4.6 * len(show), 4.2), squeeze=False)
    for ax, tag in zip(axes[0], show):
        has = np.asarray(labels)[:, list(tags).index(tag)] > 0
        ax.scatter(points[~has, 0], points[~has, 1], s=10, c="lightgrey", label=f"without '{tag}' ({(~has).sum()})")
        ax.scatter(points[has, 0], points[has, 1], s=12, c="tab:red", label=f"with '{tag}' ({has.sum()})")
        ax.set_title(f"coloured by the tag '{tag}'")
        ax.set_xlabel(f"{method} component 1 (arbitrary units)")
        ax.set_ylabel(f"{method} component 2 (arbitrary units)")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_speed_vs_score(rows: list, score: str = "roc_auc",
                        title: str = "Quality against training speed (this run)"):
    """Each model of the course as a point: training throughput (clips per
    second, log axis) against its test ``score`` (rows of
    :func:`helpers.course.read_results`; rows without both are skipped)."""
    fig, ax = _new_axes(figsize=(7, 4.2))
    for r in rows:
        if r.get(score) is None or not r.get("train_clips_per_s"):
            continue
        ax.scatter(r["train_clips_per_s"], r[score], s=40)
        ax.annotate(r.get("label", r["model"]), (r["train_clips_per_s"], r[score]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training speed (clips per second, log scale)")
    ax.set_ylabel(f"test macro {'ROC-AUC' if score == 'roc_auc' else 'PR-AUC' if score == 'pr_auc' else score}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_taggram(result, max_tags: int | None = 20, title: str | None = None, ax=None):
    """The taggram of a :class:`helpers.tagging.TagResult`: tag probability
    over time (one column per analysis window, at its start time), for the
    ``max_tags`` tags most probable over the whole file (all tags if None),
    most probable at the top."""
    order = np.argsort(-result.probs, kind="stable")[:max_tags]
    fig, ax = _new_axes(ax, figsize=(8, 0.22 * len(order) + 1.6))
    step = float(np.median(np.diff(result.starts))) if len(result.starts) > 1 else result.window
    extent = (result.starts[0], result.starts[-1] + step, len(order) - 0.5, -0.5)
    im = ax.imshow(result.taggram[:, order].T, aspect="auto", cmap="magma", vmin=0, vmax=1,
                   interpolation="nearest", extent=extent)
    ax.set_yticks(range(len(order)), [result.tags[i] for i in order], fontsize=8)
    ax.set_xlabel(f"time (s): window start, windows of {result.window:.2f} s")
    ax.set_ylabel("tag (most probable first)")
    name = str(result.source).replace("\\", "/").split("/")[-1]
    ax.set_title(title or f"Taggram of {name}")
    fig.colorbar(im, ax=ax, label="tag probability", pad=0.01)
    fig.tight_layout()
    return fig



def plot_front_ends(course_db, musicnn_log, sample_rate: int = SAMPLE_RATE, hop: int = 256,
                    title: str = "Two front ends of the field, on the same clip"):
    """The course's log-mel (dB, HTK mel scale) beside musicnn's (Slaney mel
    scale and normalisation, ``log10(1 + 10000 x)``), each ``(n_mels, frames)``."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), constrained_layout=True)
    for ax, spec, name, unit in ((axes[0], course_db, "course: HTK mels, dB", "dB"),
                                 (axes[1], musicnn_log, "musicnn: Slaney mels, log10(1 + 10000 x)", "")):
        spec = np.asarray(spec)
        im = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma",
                       extent=(0, spec.shape[1] * hop / sample_rate, 0, spec.shape[0]))
        ax.set(title=name, xlabel="time (s)", ylabel="mel band")
        fig.colorbar(im, ax=ax, label=unit)
    fig.suptitle(title)
    return fig
