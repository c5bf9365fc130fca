"""Writing an evaluation out: CSV, JSON, a text table, and the RD plot (matplotlib, optional)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from .runner import BDRow, Curve, Report

CSV_FIELDS = (
    "kind",
    "codec",
    "setting",
    "quality",
    "image",
    "images",
    "width",
    "height",
    "bytes",
    "bpp",
    "psnr",
    "ms_ssim",
    "payload_bpp",
    "encode_s",
    "decode_s",
)
INSTALL_HINT = "pip install 'tcm-serve[eval]' (or: pip install matplotlib)"


def _num(v: float | None, digits: int) -> str:
    if v is None:
        return ""
    return str(v) if math.isinf(v) else f"{v:.{digits}f}"


def _finite(v: Any) -> Any:
    """JSON has no inf/NaN: they become null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def csv_text(report: Report) -> str:
    """One row per (codec, setting, image), then one ``mean`` row per (codec, setting)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for m in report.measurements:
        w.writerow(
            {
                "kind": "image",
                "codec": m.codec,
                "setting": m.setting,
                "quality": m.quality,
                "image": m.image,
                "images": 1,
                "width": m.width,
                "height": m.height,
                "bytes": m.bytes,
                "bpp": _num(m.bpp, 6),
                "psnr": _num(m.psnr, 4),
                "ms_ssim": _num(m.ms_ssim, 6),
                "payload_bpp": _num(m.payload_bpp, 6),
                "encode_s": _num(m.encode_s, 4),
                "decode_s": _num(m.decode_s, 4),
            }
        )
    for s in report.summaries():
        w.writerow(
            {
                "kind": "mean",
                "codec": s.codec,
                "setting": s.setting,
                "quality": s.quality,
                "image": "",
                "images": s.images,
                "width": "",
                "height": "",
                "bytes": "",
                "bpp": _num(s.bpp, 6),
                "psnr": _num(s.psnr, 4),
                "ms_ssim": _num(s.ms_ssim, 6),
                "payload_bpp": _num(s.payload_bpp, 6),
                "encode_s": _num(s.encode_s, 4),
                "decode_s": _num(s.decode_s, 4),
            }
        )
    return buf.getvalue()


def _bd_json(row: BDRow) -> dict[str, Any]:
    return {
        "test": row.test,
        "anchor": row.anchor,
        "bd_rate_percent": _finite(row.bd_rate),
        "bd_psnr_db": _finite(row.bd_psnr),
        "psnr_range_db": list(row.psnr_range) if row.psnr_range else None,
        **({"note": row.note} if row.note else {}),
    }


def json_doc(
    report: Report, bd: Sequence[BDRow], anchor: str, psnr_range: tuple[float, float] | None
) -> dict[str, Any]:
    """Summary per codec and setting, the published curves used, and the BD-rate table."""
    codecs: dict[str, Any] = {}
    for s in report.summaries():
        c = codecs.setdefault(s.codec, {"label": report.labels.get(s.codec, s.codec), "settings": []})
        c["settings"].append(
            {
                "setting": s.setting,
                "quality": s.quality,
                "images": s.images,
                "bpp": s.bpp,
                "psnr": _finite(s.psnr),
                "ms_ssim": s.ms_ssim,
                **({"payload_bpp": s.payload_bpp} if s.payload_bpp is not None else {}),
                "encode_s": s.encode_s,
                "decode_s": s.decode_s,
            }
        )
    return {
        "dataset": {
            "path": str(report.dataset.root),
            "images": len(report.dataset),
            "names": list(report.dataset.names),
        },
        "method": {
            "bpp": "8 * encoded file bytes / (width * height), mean over images",
            "psnr": "RGB PSNR (peak 255) of the decoded 8-bit image, mean of per-image values",
            "ms_ssim": f"pytorch_msssim {_version('pytorch_msssim')} ms_ssim (5 scales, Gaussian 11/1.5, "
            "data range 255), float32, channel mean, mean over images",
            "bd_rate": f"Bjontegaard delta rate, bjontegaard {_version('bjontegaard')} {report.bd_method.upper()} "
            "of log10(bpp) over PSNR on the shared PSNR interval",
        },
        "codecs": codecs,
        "published": [
            {"name": c.name, "label": c.label, "bpp": list(c.bpp), "psnr": list(c.psnr)} for c in report.published
        ],
        "bd_rate": {
            "anchor": anchor,
            "method": report.bd_method,
            "psnr_range_db": list(psnr_range) if psnr_range else None,
            "rows": [_bd_json(r) for r in bd],
        },
        "models": report.models,
        "environment": report.environment,
        "notes": report.notes,
    }


def _version(distribution: str) -> str:
    """Installed version of a package the numbers come from (they are part of the method)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution.replace("_", "-"))
    except PackageNotFoundError:
        return "(not installed)"


def summary_table(report: Report) -> str:
    rows = [f"{'codec':<10} {'setting':<8} {'bpp':>8} {'PSNR dB':>8} {'MS-SSIM':>8} {'enc ms':>8} {'dec ms':>8}"]
    for s in report.summaries():
        rows.append(
            f"{s.codec:<10} {s.setting:<8} {s.bpp:>8.4f} {s.psnr:>8.2f} "
            f"{'-' if s.ms_ssim is None else f'{s.ms_ssim:.4f}':>8} {1000 * s.encode_s:>8.1f} {1000 * s.decode_s:>8.1f}"
        )
    return "\n".join(rows)


def bd_text(bd: Sequence[BDRow]) -> str:
    rows = [f"{'test':<18} {'anchor':<18} {'BD-rate':>9} {'BD-PSNR':>9}  PSNR interval"]
    for r in bd:
        if r.bd_rate is None:
            rows.append(f"{r.test:<18} {r.anchor:<18} {'n/a':>9} {'n/a':>9}  {r.note}")
            continue
        psnr_txt = "n/a" if r.bd_psnr is None else f"{r.bd_psnr:+.2f} dB"
        lo, hi = r.psnr_range or (float("nan"), float("nan"))
        rows.append(f"{r.test:<18} {r.anchor:<18} {r.bd_rate:>+8.1f}% {psnr_txt:>9}  {lo:.2f}-{hi:.2f} dB")
    return "\n".join(rows)


def text(report: Report, bd: Sequence[BDRow]) -> str:
    n = len(report.dataset)
    head = f"{report.dataset.root} ({n} image{'s' if n != 1 else ''}); bpp from the encoded file size"
    parts = [head, "", summary_table(report)]
    if bd:
        how = f"{report.bd_method.upper()}, shared PSNR interval; negative = fewer bits for the same PSNR"
        parts += ["", f"BD-rate ({how}):", bd_text(bd)]
    parts += [f"note: {n}" for n in report.notes]
    return "\n".join(parts)


# -- plot -------------------------------------------------------------------------------------
def require_matplotlib() -> None:
    """Fail early, in one line, when the plot cannot be drawn."""
    from .runner import EvalError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EvalError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def _msssim_db(v: float) -> float:
    return -10.0 * math.log10(max(1.0 - v, 1e-12))


def plot(report: Report, path: str | os.PathLike, title: str | None = None) -> None:
    """RD curves (bpp vs PSNR, and vs MS-SSIM in dB when measured) as a PNG, Agg backend."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI

    summaries = report.summaries()
    curves = report.curves()
    with_ms = any(s.ms_ssim is not None for s in summaries)
    fig = Figure(figsize=(13 if with_ms else 7.5, 5.5), dpi=120)
    axes = fig.subplots(1, 2 if with_ms else 1, squeeze=False)[0]
    focus = [c for c in curves if c.kind in ("ours", "published")]
    xmax = max((max(c.bpp) for c in focus), default=None)
    xmax = 1.25 * xmax if xmax else max(max(c.bpp) for c in curves) * 1.02

    def style(c: Curve) -> dict[str, Any]:
        if c.kind == "ours":
            return {"color": "black", "linewidth": 2.4, "marker": "o", "markersize": 6, "zorder": 5}
        if c.kind == "published":
            return {"linestyle": "--", "linewidth": 1.2, "marker": "x", "markersize": 5}
        return {"linewidth": 1.4, "marker": ".", "markersize": 6}

    ax = axes[0]
    for c in curves:
        ax.plot(c.bpp, c.psnr, label=c.label, **style(c))
    _frame(ax, xmax, "PSNR (dB, RGB)", [p for c in curves for b, p in zip(c.bpp, c.psnr) if b <= xmax])
    if with_ms:
        ax2 = axes[1]
        ys = []
        for c in [c for c in curves if c.kind != "published"]:
            pts = sorted(
                (s.bpp, _msssim_db(s.ms_ssim)) for s in summaries if s.codec == c.name and s.ms_ssim is not None
            )
            if pts:
                ax2.plot([b for b, _ in pts], [m for _, m in pts], label=c.label, **style(c))
                ys += [m for b, m in pts if b <= xmax]
        _frame(ax2, xmax, "MS-SSIM (dB: -10 log10(1 - MS-SSIM))", ys)
    n = len(report.dataset)
    fig.suptitle(title or f"{report.dataset.root.name}: {n} image{'s' if n != 1 else ''}, bpp from file size")
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def _frame(ax, xmax: float, ylabel: str, ys: list[float]) -> None:
    ax.set_xlim(0, xmax)
    finite = [y for y in ys if math.isfinite(y)]
    if finite:
        lo, hi = min(finite), max(finite)
        pad = 0.04 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    # Upper left (high quality at almost no rate) is the one region RD curves never reach;
    # "best" only avoids markers, and put the legend over our curve's line.
    ax.legend(fontsize=8, loc="upper left")


def json_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"
