"""``drivegpt report run_dir=...``: one self-contained HTML dashboard for a run directory.

The report walks a pipeline run directory (or a single stage's run directory): for every
stage it shows the headline metrics, training curves (plotted with matplotlib from
Lightning's CSV logs), every picture the stage wrote (PNG/GIF, inlined as data URIs),
every video (WebM/MP4, inlined when small, else linked beside the report) and markdown
tables (the closed-loop scoreboard, the export device report).

Plots are static PNGs from matplotlib: they need no JavaScript, no CDN and no network, so
the file opens anywhere (a laptop, an air-gapped cluster, a CI artifact viewer).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from drivegpt.runs import atomic_write_text, flatten_metrics
from drivegpt.scoreboard import scoreboard

IMAGE_TYPES = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".svg": "image/svg+xml"}
VIDEO_TYPES = {".webm": "video/webm", ".mp4": "video/mp4"}
INLINE_VIDEO_BYTES = 8 * 2**20
SKIP_DIRS = {".hydra", "checkpoints", "wandb", "shards", "tokens", "__pycache__"}

# Pipeline stage directories -> section titles (order of the report). Other run
# directories are shown after these, under their own names.
SECTIONS = [
    ("fleet", "Fleet"),
    ("inspect", "Fleet summary"),
    ("train_tokenizer", "Tokenizer training"),
    ("eval_tokenizer", "Tokenizer evaluation"),
    ("tokenize", "Tokenized fleet"),
    ("train_world_model", "World model training"),
    ("eval_world_model", "World model evaluation"),
    ("rollout", "Dreamed rollouts"),
    ("bc", "Behaviour cloning"),
    ("rl", "RL in the learned simulator"),
    ("eval_policy", "Closed-loop evaluation (ground truth)"),
    ("export", "Device export"),
]

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.5rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right} th{background:#f4f4f4}
td:first-child{text-align:left}
figure{display:inline-block;margin:.5rem;vertical-align:top}
figure img,figure video{max-width:min(100%,1100px);min-width:256px;border:1px solid #ccc;image-rendering:pixelated}
figcaption{font-size:.8rem;color:#555} pre{background:#f7f7f7;padding:.5rem;overflow:auto}
.muted{color:#888}
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def metrics_table(metrics: dict, limit: int = 60) -> str:
    flat = flatten_metrics(metrics)
    if not flat:
        return ""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>"
                   for k, v in list(flat.items())[:limit])
    more = f"<p class=muted>{len(flat) - limit} more in metrics.json</p>" if len(flat) > limit else ""
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>{more}"


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def curves_png(csv_paths: Path | list[Path]) -> bytes | None:
    """Plot every numeric column of Lightning CSVLogger metrics.csv files (a run and its
    resumed continuations, in order) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for p in [csv_paths] if isinstance(csv_paths, Path) else csv_paths:
        with open(p, newline="") as f:
            rows += list(csv.DictReader(f))
    xcol = next((c for c in ("step", "iteration", "it") if rows and c in rows[0]), None)
    if xcol is None:
        return None
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k in (xcol, "step", "epoch") or v in ("", None) or r.get(xcol) in ("", None):
                continue
            try:
                series.setdefault(k, []).append((float(r[xcol]), float(v)))
            except ValueError:
                pass
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return None
    keys = sorted(series)[:8]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, k in zip(axes[0], keys):
        xs, ys = zip(*series[k])
        ax.plot(xs, ys, lw=1.2)
        ax.set_title(k, fontsize=8)
        ax.set_xlabel(xcol, fontsize=7)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _media(stage_dir: Path, out_dir: Path) -> list[str]:
    parts = []
    for p in sorted(stage_dir.rglob("*")):
        if not p.is_file() or SKIP_DIRS & set(p.relative_to(stage_dir).parts[:-1]):
            continue
        ext = p.suffix.lower()
        cap = html.escape(str(p.relative_to(stage_dir)))
        if ext == ".gif" and any(p.with_suffix(v).exists() for v in VIDEO_TYPES):
            continue  # the GIF is the fallback of a video shown instead
        if ext in IMAGE_TYPES:
            parts.append(f'<figure><img src="{_data_uri(p, IMAGE_TYPES[ext])}" alt="{cap}">'
                         f"<figcaption>{cap}</figcaption></figure>")
        elif ext in VIDEO_TYPES:
            if p.stat().st_size <= INLINE_VIDEO_BYTES:
                src = _data_uri(p, VIDEO_TYPES[ext])
            else:
                src = html.escape(str(p.resolve().relative_to(out_dir.resolve()))
                                  if p.resolve().is_relative_to(out_dir.resolve()) else str(p.resolve()))
            parts.append(f'<figure><video src="{src}" controls loop muted autoplay playsinline '
                         f'preload="auto"></video><figcaption>{cap}</figcaption></figure>')
    return parts


def _markdown(stage_dir: Path) -> list[str]:
    return [f"<h3>{html.escape(p.name)}</h3><pre>{html.escape(p.read_text())}</pre>"
            for p in sorted(stage_dir.glob("*.md"))]


def _curve_sources(stage_dir: Path) -> list[Path]:
    """Lightning CSV logs (one version dir per (re)start, in order) or a stage's own CSV log."""
    lightning = sorted((stage_dir / "logs").glob("**/metrics.csv"),
                       key=lambda p: (len(p.parts), p.parent.name.split("_")[-1].zfill(6)))
    return lightning or sorted(stage_dir.glob("*_log.csv"))


def stage_section(title: str, stage_dir: Path, out_dir: Path, headline: str = "") -> str:
    body = [f"<h2 id='{html.escape(stage_dir.name)}'>{html.escape(title)}</h2>",
            f"<p class=muted>{html.escape(str(stage_dir))}</p>"]
    if headline:
        body.append(f"<p><b>{html.escape(headline)}</b></p>")
    sources = _curve_sources(stage_dir)
    png = curves_png(sources) if sources else None
    if png:
        body.append('<figure><img src="data:image/png;base64,'
                    f'{base64.b64encode(png).decode()}" alt="training curves">'
                    "<figcaption>training curves</figcaption></figure>")
    body += _media(stage_dir, out_dir)
    body += _markdown(stage_dir)
    mpath = stage_dir / "metrics.json"
    if mpath.exists():
        metrics = json.loads(mpath.read_text())
        body.append(f"<details><summary>all metrics ({len(flatten_metrics(metrics))})</summary>"
                    f"{metrics_table(metrics, limit=400)}</details>")
    return "\n".join(body)


def scoreboard_table(run_dir: Path, preset: str) -> str:
    """The learning scoreboard (drivegpt.scoreboard): target, measured, baseline, met, in pipeline order."""
    rows = scoreboard(run_dir, preset)
    met = {True: "<td style='color:#080'>yes</td>", False: "<td style='color:#c00'><b>no</b></td>",
           None: "<td class=muted>not measured</td>"}
    body = "".join(
        f"<tr><td>{html.escape(r['stage'])}</td><td style='text-align:left'>{html.escape(r['target'])}</td>"
        f"<td>{'' if r['value'] is None else _fmt(r['value'])}</td>"
        f"<td>{'' if r['baseline'] is None else _fmt(r['baseline'])} "
        f"<span class=muted>{html.escape(r['baseline_name'])}</span></td>{met[r['met']]}</tr>"
        for r in rows)
    n = sum(1 for r in rows if r["met"])
    return (f"<h2>Scoreboard ({html.escape(preset)} targets: {n}/{len(rows)} met)</h2>"
            "<table><tr><th>stage</th><th>target</th><th>measured</th><th>baseline</th><th>met</th></tr>"
            f"{body}</table>")


def summary_table(stages: dict) -> str:
    """The pipeline's per-stage summary (status, seconds, headline metrics), in pipeline order."""
    stages = dict(sorted(stages.items(), key=lambda kv: str(kv[1].get("dir", kv[0]))))
    rows = "".join(f"<tr><td><a href='#{html.escape(v.get('dir', ''))}'>{html.escape(k)}</a></td>"
                   f"<td>{html.escape(str(v.get('status', '')))}</td><td>{_fmt(v.get('seconds', ''))}</td>"
                   f"<td style='text-align:left'>{html.escape(v.get('headline', ''))}</td></tr>"
                   for k, v in stages.items())
    return ("<h2>Summary</h2><table><tr><th>stage</th><th>status</th><th>seconds</th><th>headline</th></tr>"
            f"{rows}</table>")


def stage_dirs(run_dir: Path) -> list[tuple[str, Path]]:
    """(title, dir) for each stage directory under a pipeline run, in pipeline order."""
    subdirs = [d for d in sorted(run_dir.iterdir()) if d.is_dir() and d.name not in SKIP_DIRS]
    ordered, seen = [], set()
    for key, title in SECTIONS:
        for d in subdirs:
            if d not in seen and (d.name == key or d.name.split("_", 1)[-1] == key):
                ordered.append((title, d))
                seen.add(d)
    ordered += [(d.name, d) for d in subdirs if d not in seen and (d / "metrics.json").exists()]
    if not ordered and (run_dir / "metrics.json").exists():
        ordered = [(run_dir.name, run_dir)]
    return ordered


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"report: run_dir={run_dir} is not a directory")
    out = Path(out) if out else run_dir / "report.html"
    stages = stage_dirs(run_dir)
    if not stages:
        raise ValueError(f"report: no stage with a metrics.json under {run_dir}")
    summary, headlines = "", {}
    if (run_dir / "metrics.json").exists() and stages[0][1] != run_dir:
        top = json.loads((run_dir / "metrics.json").read_text())
        if isinstance(top.get("stages"), dict):
            summary = scoreboard_table(run_dir, str(top.get("targets") or "demo")) + summary_table(top["stages"])
            headlines = {v.get("dir"): v.get("headline", "") for v in top["stages"].values()}
        else:
            summary = "<h2>Summary</h2>" + metrics_table(top)
    toc = " · ".join(f"<a href='#{html.escape(d.name)}'>{html.escape(t)}</a>" for t, d in stages)
    sections = "\n".join(stage_section(t, d, out.parent, headlines.get(d.name, "")) for t, d in stages)
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>DriveGPT report: {html.escape(run_dir.name)}</title><style>{CSS}</style></head>"
            f"<body><h1>DriveGPT report</h1><p class=muted>{html.escape(str(run_dir.resolve()))}</p>"
            f"<nav>{toc}</nav>{summary}{sections}</body></html>")
    atomic_write_text(out, page)
    return out
