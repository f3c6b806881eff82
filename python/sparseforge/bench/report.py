"""Terminal table, JSON and a self-contained HTML page (plots embedded) for a bench result."""

from __future__ import annotations

import base64
import html
import io
import json

from .._table import format_table


def table(result: dict) -> str:
    head = ["method", "kind", "sparsity", "dense acc", "sparse acc", "delta"]
    for b in result["backends"]:
        head += [f"{b} x b={n}" for n in result["batches"]]
    # wasm beside cpu: the exported model's time on wasm over its time on cpu (> 1: wasm is slower).
    both = "wasm" in result["backends"] and "cpu" in result["backends"]
    if both:
        head += [f"wasm/cpu time b={n}" for n in result["batches"]]
    rows = []
    for r in result["rows"]:
        q = r["quality"]
        line = [r["method"], r["kind"], f"{q['sparse']['sparsity']:.3f}", f"{q['dense']['accuracy']:.4f}",
                f"{q['sparse']['accuracy']:.4f}", f"{q['sparse']['accuracy'] - q['dense']['accuracy']:+.4f}"]
        for b in result["backends"]:
            for n in result["batches"]:
                s = r["speed"].get(b, {}).get(str(n))
                line.append(f"{s['speedup']:.2f}x" if s else "-")
        if both:
            for n in result["batches"]:
                c, w = r["speed"].get("cpu", {}).get(str(n)), r["speed"].get("wasm", {}).get(str(n))
                line.append(f"{w['sparse_ms'] / c['sparse_ms']:.2f}" if c and w else "-")
        rows.append(line)
    out = format_table(head, rows, align="ll" + "r" * (len(head) - 2))
    out += (f"\n\nquality: {result['quality_workload']}; speed: {result['speed_workload']}, speedup = dense ms / "
            f"sparse ms (median, interleaved), {result['threads']} threads")
    if "wasm" in result["backends"]:
        out += ("\nwasm: the exported sparse layers run in the WebAssembly module (wasmtime, 1 thread), the rest of "
                "the model in torch; wasm/cpu time = wasm ms / cpu ms of the same exported model")
    for r in result["rows"]:
        for b, why in r.get("speed_skipped_backends", {}).items():
            out += f"\nnot measured on {b}: {r['method']}: {why}"
    for name, why in result["errors"].items():
        out += f"\nnot measured: {name}: {why}"
    return out


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=str)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def to_html(result: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = result["rows"]
    fig1, ax = plt.subplots(figsize=(7, 4))
    # A legend, not labels at the points: methods often land on the same point (cast and srste reach the
    # same 2:4 mask), and labels drawn there overprint each other. Hollow markers of distinct shapes keep
    # coincident points visible.
    markers = "os^Dvp<>hX"
    for i, r in enumerate(rows):
        q = r["quality"]
        ax.scatter(q["sparse"]["sparsity"], q["sparse"]["accuracy"], s=50, marker=markers[i % len(markers)],
                   facecolors="none", edgecolors=f"C{i % 10}", linewidths=1.5, label=r["method"])
    if rows:
        ax.axhline(rows[0]["quality"]["dense"]["accuracy"], color="gray", ls="--", label="dense")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("weight sparsity")
    ax.set_ylabel("test accuracy")
    ax.set_title("quality vs sparsity")
    ax.grid(alpha=0.3)
    img1 = _png(fig1)
    fig2, ax2 = plt.subplots(figsize=(7, 4))
    labels = [r["method"] for r in rows]
    series = [(b, n) for b in result["backends"] for n in result["batches"]]
    width = 0.8 / max(1, len(series))
    # Bars grow from 1x on a log axis: a 0.5x slowdown is as visible as a 2x speedup, and one outlier
    # (quick runs on a busy machine can show 10x) does not flatten every other bar.
    for i, (b, n) in enumerate(series):
        vals = [r["speed"].get(b, {}).get(str(n), {}).get("speedup", float("nan")) for r in rows]
        ax2.bar([j + i * width for j in range(len(rows))], [v - 1.0 for v in vals], width, bottom=1.0,
                label=f"{b}, batch {n}")
    ax2.set_yscale("log")
    # At least 0.5x..2x, ticks at 1-2-5 ratios only: matplotlib's default minor labels on a narrow log range
    # read "9 x 10^-1".
    got = [r["speed"][b][str(n)]["speedup"] for r in rows for b, n in series if str(n) in r["speed"].get(b, {})]
    lo, hi = min([0.5] + [v / 1.3 for v in got]), max([2.0] + [v * 1.3 for v in got])
    ax2.set_ylim(lo, hi)
    ax2.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(
        [f * 10.0**e for e in range(-3, 4) for f in (1, 2, 5) if lo <= f * 10.0**e <= hi]))
    ax2.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.axhline(1.0, color="black", lw=0.8)
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], labels, rotation=30, ha="right")
    ax2.set_ylabel("speedup vs dense")
    ax2.set_title("speedup per backend")
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    img2 = _png(fig2)
    plt.close("all")
    esc = html.escape
    # The fixed-width table stays in <pre>; its notes (long free text) become paragraphs so they wrap.
    grid, _, notes = table(result).partition("\n\n")
    notes_html = "".join(f"<p>{esc(line)}</p>" for line in notes.splitlines() if line)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>sparseforge bench</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}
.plots{{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}} .plots img{{flex:1 1 24em;min-width:0;max-width:100%;height:auto}}
.note{{color:#444;font-size:90%}}</style></head>
<body><h1>sparseforge bench</h1>
<p>Quality workload: {esc(result['quality_workload'])}. Speed workload: {esc(result['speed_workload'])}.
Speedup is dense time over sparse time, medians of interleaved repeats, {result['threads']} threads.</p>
<div class="plots"><img alt="quality vs sparsity" src="data:image/png;base64,{img1}">
<img alt="speedup per backend" src="data:image/png;base64,{img2}"></div>
<h2>Table</h2><pre>{esc(grid)}</pre>
<div class="note">{notes_html}</div>
</body></html>
"""
