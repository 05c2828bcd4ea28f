#!/usr/bin/env python3
"""Render dashboards/*.json from a live Prometheus into PNG grids (there is no
Grafana server here): each panel's expressions are run through
`/api/v1/query_range` (time series) or `/api/v1/query` (stat, bar gauge), and
drawn with matplotlib at the panel's gridPos, so a reviewer sees roughly what
on-call sees. Template variables become "all" (`.*`).

  scripts/render-dashboards.py --prometheus http://127.0.0.1:9090 --out docs/dashboards [--range 600]

Writes <out>/overview.png and <out>/access.png (name: the dashboard file name
without the `custos-` prefix). tests/observability/live_check.py --render-to
DIR runs this against its live Prometheus. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLORS = {"green": "#37872d", "red": "#c4162a", "orange": "#fa6400", "blue": "#1f60c4", "yellow": "#e0b400"}
UNIT_SCALE = {"percentunit": (100, "%"), "s": (1, "s"), "reqps": (1, "/s"), "bytes": (1, "B")}


def get(base: str, path: str, params: dict) -> list:
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=20) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(body.get("error"))
    return body["data"]["result"]


def substitute(expr: str, rng: int) -> str:
    return (expr.replace("$__rate_interval", "15s").replace("$__range", f"{rng}s").replace("$__interval", "5s")
            .replace("$cluster", ".*").replace("$instance", ".*"))


def legend(fmt: str, metric: dict) -> str:
    s = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(metric.get(m.group(1), "")), fmt or "")
    return s.strip() or "(empty)"


def human(v: float, unit: str | None) -> str:
    if unit == "bytes":
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(v) < 1024:
                return f"{v:.1f} {u}"
            v /= 1024
        return f"{v:.1f} PiB"
    if unit == "s":
        if abs(v) >= 86400:
            return f"{v / 86400:.1f} d"
        if abs(v) >= 3600:
            return f"{v / 3600:.1f} h"
        if abs(v) >= 60:
            return f"{v / 60:.1f} min"
        return f"{v * 1000:.2f} ms" if abs(v) < 1 else f"{v:.1f} s"
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    return f"{v:.3g}" + ("/s" if unit == "reqps" else "")


def color_of(v: float, p: dict) -> str:
    d = p.get("fieldConfig", {}).get("defaults", {})
    for m in d.get("mappings", []):
        o = m.get("options", {}).get(str(int(v)) if float(v).is_integer() else str(v))
        if o and o.get("color"):
            return COLORS.get(o["color"], o["color"])
    c = "green"
    for s in d.get("thresholds", {}).get("steps", []):
        if s["value"] is None or v >= s["value"]:
            c = s["color"]
    return COLORS.get(c, c)


def text_of(v: float, p: dict) -> str:
    d = p.get("fieldConfig", {}).get("defaults", {})
    for m in d.get("mappings", []):
        o = m.get("options", {}).get(str(int(v)) if float(v).is_integer() else "")
        if o and o.get("text"):
            return o["text"]
    return human(v, d.get("unit"))


def draw_panel(ax, p: dict, base: str, start: float, end: float, rng: int) -> None:
    ax.set_title(p["title"], fontsize=9, loc="left", fontweight="bold")
    unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
    kind = p["type"]
    if kind == "text":
        ax.axis("off")
        ax.text(0.01, 0.5, p["options"]["content"], fontsize=8, va="center", wrap=True, transform=ax.transAxes)
        return
    series = []
    for t in p.get("targets", []):
        expr = substitute(t["expr"], rng)
        if kind == "timeseries":
            res = get(base, "/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": 2})
            series += [(legend(t.get("legendFormat", ""), r["metric"]),
                        [float(x[0]) - end for x in r["values"]], [float(x[1]) for x in r["values"]]) for r in res]
        else:
            res = get(base, "/api/v1/query", {"query": expr, "time": end})
            series += [(legend(t.get("legendFormat", ""), r["metric"]), None, float(r["value"][1])) for r in res]
    if not series:
        ax.axis("off")
        ax.text(0.5, 0.5, "No data", ha="center", va="center", fontsize=11, color="#888", transform=ax.transAxes)
        return
    if kind == "timeseries":
        scale = UNIT_SCALE.get(unit, (1, ""))[0]
        for name, xs, ys in series[:12]:
            ax.plot([x / 60 for x in xs], [y * scale for y in ys], label=name[:40], linewidth=1.2)
        ax.set_xlabel("minutes before now", fontsize=7)
        suffix = UNIT_SCALE.get(unit, (1, ""))[1]
        if suffix:
            ax.set_ylabel(suffix, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", ncol=2 if len(series) > 6 else 1, framealpha=0.6)
    elif kind == "bargauge":
        series = series[:10]
        names = [s[0][:40] for s in series][::-1]
        vals = [s[2] for s in series][::-1]
        ax.barh(range(len(vals)), vals, color=[color_of(v, p) for v in vals], alpha=0.8)
        for i, (n, v) in enumerate(zip(names, vals)):
            ax.text(0, i, f" {n or '(none)'}: {human(v, unit)}", va="center", fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
        ax.margins(x=0.25)
    else:  # stat
        ax.axis("off")
        n = min(len(series), 6)
        for i, (name, _, v) in enumerate(series[:n]):
            x0 = i / n
            ax.add_patch(plt.Rectangle((x0 + 0.01, 0.05), 1 / n - 0.02, 0.85, color=color_of(v, p),
                                       transform=ax.transAxes))
            ax.text(x0 + 0.5 / n, 0.55, text_of(v, p), ha="center", va="center", fontsize=13 if n < 4 else 10,
                    color="white", fontweight="bold", transform=ax.transAxes)
            ax.text(x0 + 0.5 / n, 0.2, name[:32], ha="center", va="center", fontsize=7, color="white",
                    transform=ax.transAxes)


def render(dash: Path, base: str, out: Path, rng: int) -> Path:
    d = json.loads(dash.read_text())
    end = time.time()
    start = end - rng
    panels = d["panels"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit = 0.42  # inches per grid row
    fig = plt.figure(figsize=(20, bottom * unit + 0.8))
    fig.suptitle(f"{d['title']}  (last {rng // 60} min, rendered from live Prometheus)", fontsize=13, x=0.01,
                 ha="left")
    top = 1 - 0.8 / (bottom * unit + 0.8)
    for p in panels:
        g = p["gridPos"]
        x0, w = g["x"] / 24, g["w"] / 24
        y0 = top - (g["y"] + g["h"]) / bottom * top
        h = g["h"] / bottom * top
        if p["type"] == "row":
            ax = fig.add_axes((x0, y0, w, h))
            ax.axis("off")
            label = p["title"] + ("  [collapsed: " + ", ".join(q["title"] for q in p.get("panels", [])) + "]"
                                  if p.get("collapsed") else "")
            ax.text(0, 0.3, label, fontsize=11, fontweight="bold", color="#1f60c4", transform=ax.transAxes)
            continue
        ax = fig.add_axes((x0 + 0.035 * w, y0 + 0.12 * h, w * 0.93, h * 0.75))
        try:
            draw_panel(ax, p, base, start, end, rng)
        except Exception as e:  # noqa: BLE001 - show the error in the panel, like Grafana
            ax.axis("off")
            ax.text(0.5, 0.5, f"error: {e}", ha="center", fontsize=8, color="red", transform=ax.transAxes)
    out.mkdir(parents=True, exist_ok=True)
    name = dash.stem.removeprefix("custos-") + ".png"
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    return out / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "docs/dashboards")
    ap.add_argument("--range", type=int, default=600, help="seconds of history for time series")
    args = ap.parse_args()
    for dash in sorted((REPO / "dashboards").glob("*.json")):
        print(render(dash, args.prometheus.rstrip("/"), args.out, args.range))


if __name__ == "__main__":
    main()
