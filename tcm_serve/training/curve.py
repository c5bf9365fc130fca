"""What a training run has bought so far: its validation curve, read back from ``train.log``.

The issue asks "what would more training buy?"; the honest answer is the trend of the
validation numbers against steps. Validation reports a forward-pass bpp and PSNR at whatever
rate the model currently chooses, and that rate drifts while the network learns, so raw
PSNR is not comparable between steps. Two derived columns make it comparable:

* the rate-distortion cost ``lambda * 255^2 * MSE + bpp``: what training minimises, lower is
  better, no assumption needed;
* PSNR moved to a fixed rate along the tangent of the RD curve at the operating point. A
  model trained with ``lambda`` sits where ``dMSE/dbpp = -1 / (lambda * 255^2)``, hence
  ``dPSNR/dbpp = 10 / (ln 10 * MSE * lambda * 255^2)``. A first-order correction: good for the
  small rate drifts of one run (a few hundredths of a bpp), not for comparing models.

A resumed run re-logs the steps between its last checkpoint and the interruption; the last
record of a step wins (it is the one the surviving checkpoint continued from).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_writer

PEAK = 255.0


@dataclass(frozen=True)
class ValPoint:
    """One validation record: forward-pass estimates on the --val images at ``step``."""

    step: int
    bpp: float
    psnr: float
    images: int

    @property
    def mse(self) -> float:
        """MSE (images in [0, 1]) implied by the PSNR (the mean of per-image PSNRs: an
        approximation of the mean MSE, adequate for a trend)."""
        return 10.0 ** (-self.psnr / 10.0)

    def rd_cost(self, lmbda: float) -> float:
        return lmbda * PEAK**2 * self.mse + self.bpp

    def psnr_at(self, bpp: float, lmbda: float) -> float:
        slope = 10.0 / (math.log(10.0) * self.mse * lmbda * PEAK**2)
        return self.psnr + (bpp - self.bpp) * slope


@dataclass(frozen=True)
class TrainPoint:
    step: int
    loss: float
    bpp: float
    psnr: float
    s_per_step: float


def read_log(path: str | os.PathLike) -> tuple[list[TrainPoint], list[ValPoint]]:
    """Training and validation records of a ``train.log``, by step, last record per step."""
    p = Path(path)
    if p.is_dir():
        p = p / "train.log"
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read training log {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:  # e.g. RUN/checkpoint.pt given instead of RUN
        raise ConfigError(f"{p} is not a training log (binary data; give the run directory or its train.log)") from None
    train: dict[int, TrainPoint] = {}
    val: dict[int, ValPoint] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            step = int(rec["step"])
            if "val" in rec:
                v = rec["val"]
                val[step] = ValPoint(step, float(v["bpp"]), float(v["psnr"]), int(v.get("images", 0)))
            else:
                train[step] = TrainPoint(
                    step, float(rec["loss"]), float(rec["bpp"]), float(rec["psnr"]), float(rec.get("s_per_step", 0.0))
                )
        except (ValueError, KeyError, TypeError, OverflowError) as exc:  # OverflowError: "step": Infinity
            raise ConfigError(f"{p}:{n}: not a train.log record ({exc})") from None
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


def chain(
    logs: list[tuple[list[TrainPoint], list[ValPoint]]], ends: list[int | None] | None = None
) -> tuple[list[TrainPoint], list[ValPoint]]:
    """One curve from runs that continue each other (each later run started with ``--init``
    from the previous run's final weights): a later run's steps are shifted by the step
    the runs before it ended at, so the x axis counts every step the weights have had.
    ``ends[i]`` is run i's final step (its checkpoint's); without it, its last logged step."""
    train: list[TrainPoint] = []
    val: list[ValPoint] = []
    offset = 0
    for i, (t, v) in enumerate(logs):
        train += [TrainPoint(p.step + offset, p.loss, p.bpp, p.psnr, p.s_per_step) for p in t]
        val += [ValPoint(p.step + offset, p.bpp, p.psnr, p.images) for p in v]
        known = ends[i] if ends else None
        end = known if known is not None else max([p.step for p in t] + [p.step for p in v] + [0])
        offset += end
    return train, val


def smoothed(points: list[TrainPoint], window: int) -> list[tuple[int, float, float, float]]:
    """(last step, mean loss, mean bpp, mean PSNR) over consecutive groups of ``window``
    records: single training records are too noisy to read (random crops)."""
    out = []
    for i in range(0, len(points) - window + 1, window):
        g = points[i : i + window]
        out.append(
            (
                g[-1].step,
                sum(p.loss for p in g) / window,
                sum(p.bpp for p in g) / window,
                sum(p.psnr for p in g) / window,
            )
        )
    return out


def markdown_table(val: list[ValPoint], lmbda: float, at_bpp: float, every: int = 1) -> str:
    """The validation curve as a Markdown table (every ``every``-th record, and the last)."""
    rows = [v for i, v in enumerate(val) if i % every == 0 or i == len(val) - 1]
    head = (
        f"| step | bpp | PSNR dB | RD cost (lambda {lmbda:g}) | PSNR at {at_bpp:g} bpp (tangent) |\n"
        "| --- | --- | --- | --- | --- |\n"
    )
    body = "".join(
        f"| {v.step} | {v.bpp:.3f} | {v.psnr:.2f} | {v.rd_cost(lmbda):.3f} | {v.psnr_at(at_bpp, lmbda):.2f} |\n"
        for v in rows
    )
    return head + body


def plot(
    train: list[TrainPoint],
    val: list[ValPoint],
    lmbda: float,
    at_bpp: float,
    path: str | os.PathLike,
    title: str,
    window: int = 25,
) -> None:
    """Validation PSNR (raw and at a fixed rate) and bpp, and the smoothed training loss,
    against steps; Agg backend, no pyplot state."""
    from ..evaluation.report import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=110)
    ax_psnr, ax_loss = fig.subplots(1, 2)
    steps = [v.step for v in val]
    ax_psnr.plot(
        steps, [v.psnr_at(at_bpp, lmbda) for v in val], "o-", color="black", label=f"PSNR at {at_bpp:g} bpp (tangent)"
    )
    ax_psnr.plot(steps, [v.psnr for v in val], ".--", color="grey", label="PSNR at its own rate")
    ax_psnr.set_xlabel("training step")
    ax_psnr.set_ylabel("validation PSNR (dB)")
    ax_psnr.grid(alpha=0.3)
    ax_bpp = ax_psnr.twinx()
    ax_bpp.plot(steps, [v.bpp for v in val], "s:", color="tab:blue", markersize=3, label="bpp")
    ax_bpp.set_ylabel("validation bpp", color="tab:blue")
    lines = ax_psnr.get_legend_handles_labels()
    more = ax_bpp.get_legend_handles_labels()
    ax_psnr.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
    sm = smoothed(train, window)
    if sm:
        ax_loss.plot([s[0] for s in sm], [s[1] for s in sm], color="tab:red")
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel(f"training loss (mean of {window} log records)")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_writer(path) as f:
        fig.savefig(f, format="png")
