#!/usr/bin/env python3
"""`shardlm report DIR`: DIR/report.md and DIR/figures/*.png|svg from DIR/results.jsonl
alone (schema: perf/sweep_schema.py, docs/sweeps.md), drawn with matplotlib.

Figures (each skipped when no point has its data):
  cost_vs_latency   chip-ms per token against latency, per phase, one curve per
                    layout / chip count, Pareto front marked (Pope et al. Fig. 1)
  mfu_vs_tokens     MFU against tokens per forward pass, per feedforward layout (Fig. 7)
  latency_vs_chips  decode step latency against chip count, per layout (Fig. 6)
  predicted_vs_measured  every point and phase against y = x (measured sweeps)
  latency_percentiles    TTFT and ITL p50 / p90 / p99 per configuration
DIR/figures.json lists each figure's panels and the series drawn in them.
Errors: one `shardlm: error:` line naming the file, line and field; exit 1.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_schema  # noqa: E402

try:
    import matplotlib
except ImportError:
    print(f"shardlm: error: matplotlib is not installed for {sys.executable} (pip install "
          "matplotlib; scripts/install_deps.sh does)", file=sys.stderr)
    sys.exit(1)

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable SVGs
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

# Keys whose values name a configuration (curves are split by those that vary).
SETUP_KEYS = ("model", "hardware", "chips", "mesh", "pp", "micro_batches", "ffn_prefill",
              "attn_prefill", "ffn_decode", "attn_decode", "weights", "activations", "threads")
WORKLOAD_KEYS = ("batch", "prompt_len", "gen_len")
SHORT = {"model": "", "chips": "C=", "mesh": "mesh ", "pp": "pp=", "micro_batches": "mb=",
         "ffn_prefill": "ffn-p ", "attn_prefill": "attn-p ", "ffn_decode": "ffn-d ",
         "attn_decode": "attn-d ", "ffn": "ffn ", "attn": "attn ", "weights": "", "activations": "act ", "threads": "t=", "batch": "B=",
         "prompt_len": "L=", "gen_len": "n=", "hardware": ""}
MARKERS = "osD^v<>pPXh*"


def write_atomically(final: Path, write) -> None:
    """`write(tmp_path)` fills a temporary file beside `final`, which is then
    renamed into place; on any failure or interruption (KeyboardInterrupt, or
    SIGTERM turned into SystemExit by main) the temporary is removed, so the
    report's files are whole or absent, as shardlm's own outputs are."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        os.unlink(tmp)
        raise


def fail(msg: str) -> None:
    print(f"shardlm: error: {msg}", file=sys.stderr)
    sys.exit(1)


def varying(records, keys):
    """The keys among `keys` whose value differs between records; a phase pair
    (ffn_prefill, ffn_decode) that is always equal counts once, as its prefill key
    shown under the shorthand name."""
    # Keys older records lack (activations) read as "auto", their meaning then.
    out = [k for k in keys if len({json.dumps(r["config"].get(k, "auto")) for r in records}) > 1]
    for kind in ("ffn", "attn"):
        pre, dec = f"{kind}_prefill", f"{kind}_decode"
        if pre in out and dec in out and all(r["config"][pre] == r["config"][dec] for r in records):
            out.remove(dec)
            out[out.index(pre)] = kind
    return out


def config_value(rec, key):
    return rec["config"].get(f"{key}_prefill" if key in ("ffn", "attn") else key, "auto")


def series_name(rec, keys, extra=()):
    parts = list(extra)
    for k in keys:
        parts.append(f"{SHORT.get(k, k + '=')}{config_value(rec, k)}")
    return ", ".join(parts) if parts else "all points"


def layout_of(rec, phase):
    run = rec.get("run") or {}
    lay = (run.get("layouts") or {}).get(phase)
    if lay:
        return lay["ffn"], lay["attn"]
    c = rec["config"]
    return c[f"ffn_{phase}"], c[f"attn_{phase}"]


def log_if_wide(ax, axis, values):
    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) > 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        # Plain numbers at 1, 2, 5 x 10^k read better than 10^k with exponents.
        target = ax.xaxis if axis == "x" else ax.yaxis
        subs = (1.0,) if max(vals) / min(vals) > 300 else (1.0, 2.0, 5.0)  # room for labels
        target.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        target.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(ticker.NullFormatter())


def group(records, key_fn):
    out = OrderedDict()
    for r in records:
        out.setdefault(key_fn(r), []).append(r)
    return out


class Figures:
    """Draws, saves PNG + SVG atomically, and keeps the manifest of series."""

    def __init__(self, out_dir: Path, predicted: bool):
        self.dir = out_dir / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.predicted = predicted
        self.manifest = []

    def label(self, text):
        return f"predicted {text}" if self.predicted else text

    def save(self, fig, name, axes, caption, legend_on_top=False):
        panels = []
        for ax in axes:
            handles, labels = ax.get_legend_handles_labels()
            data = [l for h, l in zip(handles, labels) if not getattr(h, "_guide", False)]
            guides = [l for h, l in zip(handles, labels) if getattr(h, "_guide", False)]
            panels.append({"title": ax.get_title(), "xlabel": ax.get_xlabel(),
                           "ylabel": ax.get_ylabel(), "series": data, "guides": guides})
        fig.tight_layout(rect=(0, 0, 1, 0.95) if legend_on_top else None)
        files = {}
        for ext in ("png", "svg"):
            final = self.dir / f"{name}.{ext}"
            write_atomically(final, lambda tmp: fig.savefig(tmp, format=ext, dpi=110))
            files[ext] = f"figures/{name}.{ext}"
        plt.close(fig)
        self.manifest.append({"name": name, "caption": caption, **files, "panels": panels})


def guide(artist):
    artist._guide = True  # not a data series: kept out of the manifest's series count
    return artist


def plot_series(ax, groups, x_fn, y_fn, connect=True):
    for i, (name, recs) in enumerate(groups.items()):
        pts = sorted((x_fn(r), y_fn(r)) for r in recs if x_fn(r) is not None and y_fn(r) is not None)
        if not pts:
            continue
        xs, ys = zip(*pts)
        # A line through points that share an x would be a vertical stroke, not a trend.
        joined = connect and len(set(xs)) == len(xs)
        ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], linestyle="-" if joined else "none",
                markersize=5, linewidth=1.2, label=name)


def legend(ax, n):
    if n > 10:  # beside the plot, where it hides no data
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 if n <= 24 else 2,
                  framealpha=0.8)
    elif n:
        ax.legend(fontsize=7 if n > 6 else 8, loc="best", framealpha=0.8)


def two_panels(n_series):
    """Side by side; one above the other when legends are long and go beside each panel."""
    if n_series > 10:
        return plt.subplots(2, 1, figsize=(10.5, 9.5))
    return plt.subplots(1, 2, figsize=(12, 4.8))


def pareto(points):
    """Points no other point beats on both axes (lower x and lower y)."""
    front, best_y = [], math.inf
    for x, y in sorted(points):
        if y < best_y:
            front.append((x, y))
            best_y = y
    return front


def fig_cost_vs_latency(figs, ok):
    keys = varying(ok, SETUP_KEYS)
    groups = group(ok, lambda r: series_name(r, keys))
    fig, axes = two_panels(len(groups) + 1)
    phases = [("decode", lambda r: r["metrics"]["itl_ms"]["mean"] if r["metrics"]["itl_ms"] else None,
               "decode_cost_chip_ms_per_token", "latency per generated token (ms)"),
              ("prefill", lambda r: r["metrics"]["prefill_ms"], "prefill_cost_chip_ms_per_token",
               "prefill time, whole batch (ms)")]
    for ax, (phase, x_fn, ykey, xlabel) in zip(axes, phases):
        y_fn = lambda r, k=ykey: r["metrics"][k]
        plot_series(ax, groups, x_fn, y_fn)
        pts = [(x_fn(r), y_fn(r)) for r in ok if x_fn(r) is not None]
        front = pareto(pts)
        if front:
            fx, fy = zip(*front)
            (line,) = ax.plot(fx, fy, color="black", linestyle=":", linewidth=1.5, marker="o",
                              markerfacecolor="none", markersize=11, label="Pareto front")
            guide(line)
        log_if_wide(ax, "x", [p[0] for p in pts])
        log_if_wide(ax, "y", [p[1] for p in pts])
        ax.set_xlabel(figs.label(xlabel))
        ax.set_ylabel(figs.label("cost (chip-ms per token)"))
        ax.set_title(f"{phase}: cost against latency")
        ax.grid(True, which="both", alpha=0.3)
        legend(ax, len(groups) + 1)
    figs.save(fig, "cost_vs_latency", axes,
              "Cost (chips x time per token) against latency, one curve per configuration over "
              "the workload keys (batch, prompt and generated lengths); the Pareto front is "
              "circled (after Pope et al. Fig. 1).")


def fig_mfu_vs_tokens(figs, ok):
    if all(len({r["metrics"][f"tokens_per_forward_{ph}"] for r in ok}) == 1
           for ph in ("prefill", "decode")):
        return "MFU against tokens per forward pass: not drawn, every point has the same batch " \
               "and prompt length (the MFU of each point is in the table below)"
    other = [k for k in varying(ok, SETUP_KEYS) if not k.startswith(("ffn", "attn"))]
    names = {ph: lambda r, ph=ph: series_name(r, other, [f"ffn {layout_of(r, ph)[0]}"])
             for ph in ("prefill", "decode")}
    fig, axes = two_panels(max(len({names[ph](r) for r in ok}) for ph in names))
    for ax, phase in zip(axes, ("prefill", "decode")):
        groups = group(ok, names[phase])
        plot_series(ax, groups, lambda r: r["metrics"][f"tokens_per_forward_{phase}"],
                    lambda r: 100 * r["metrics"][f"{phase}_mfu"])
        log_if_wide(ax, "x", [r["metrics"][f"tokens_per_forward_{phase}"] for r in ok])
        ax.set_xlabel("tokens per forward pass (batch x length)")
        ax.set_ylabel(figs.label("MFU (%)"))
        ax.set_title(f"{phase}: MFU per feedforward layout")
        ax.grid(True, which="both", alpha=0.3)
        legend(ax, len(groups))
    figs.save(fig, "mfu_vs_tokens", axes,
              "Model FLOPs utilisation (2 N FLOPs per token over chips x peak x time) against "
              "tokens per forward pass, per feedforward layout (after Pope et al. Fig. 7).")


def fig_latency_vs_chips(figs, ok):
    if len({r["config"]["chips"] for r in ok}) == 1:
        return "decode step latency against chip count: not drawn, every point has the same chips"
    others = varying(ok, ("model", "weights", "threads") + WORKLOAD_KEYS)
    groups = group(ok, lambda r: series_name(
        r, others, ["{} + {}".format(*layout_of(r, "decode"))]))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x_fn = lambda r: r["config"]["chips"]
    y_fn = lambda r: r["metrics"]["itl_ms"]["mean"] if r["metrics"]["itl_ms"] else None
    plot_series(ax, groups, x_fn, y_fn)
    chips = sorted({x_fn(r) for r in ok})
    if len(chips) > 1 and chips[-1] / chips[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(chips, [str(c) for c in chips])
    log_if_wide(ax, "y", [y_fn(r) for r in ok])
    ax.set_xlabel("chips (ranks)")
    ax.set_ylabel(figs.label("decode step latency (ms)"))
    ax.set_title("decode step latency against chip count, per decode layout (ffn + attention)")
    ax.grid(True, which="both", alpha=0.3)
    legend(ax, len(groups))
    figs.save(fig, "latency_vs_chips", [ax],
              "Mean decode step latency against chip count, per decode layout "
              "(after Pope et al. Fig. 6).")


def phase_errors(ok):
    """(phase, predicted ms, measured ms) for every point and phase with a prediction."""
    out = []
    for r in ok:
        if not r.get("predicted"):
            continue
        for phase in ("prefill", "decode"):
            out.append((phase, 1e3 * r["predicted"][phase]["latency_s"], r["metrics"][f"{phase}_ms"]))
    return out


def error_text(pairs):
    errs = [abs(p / m - 1) * 100 for _, p, m in pairs if m > 0]
    if not errs:
        return "no points"
    return f"median |error| {statistics.median(errs):.0f}%, max {max(errs):.0f}%, {len(errs)} points"


def fig_predicted_vs_measured(figs, ok):
    pairs = phase_errors(ok)
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    texts = {}
    for i, phase in enumerate(("prefill", "decode")):
        sel = [p for p in pairs if p[0] == phase]
        if not sel:
            continue
        texts[phase] = error_text(sel)
        ax.scatter([m for _, _, m in sel], [p for _, p, _ in sel], marker=MARKERS[i], s=28,
                   label=f"{phase} ({texts[phase]})")
    vals = [v for _, p, m in pairs for v in (p, m) if v > 0]
    lo, hi = min(vals) / 1.5, max(vals) * 1.5
    (line,) = ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="y = x")
    guide(line)
    if hi / lo > 20:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured phase time (ms)")
    ax.set_ylabel("predicted phase time (ms)")
    ax.set_title("planner's prediction against measurement")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    figs.save(fig, "predicted_vs_measured", [ax],
              "Predicted against measured time of every point's prefill and decode phases; "
              "points on the line are predicted exactly.")
    return texts


def fig_percentiles(figs, ok, predicted):
    recs = ok[:40]  # grid order
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.0, 0.32 * len(recs) + 1.6)))
    names = [r["_name"] for r in recs]
    qs = ("mean",) if predicted else ("p50", "p90", "p99")
    for ax, key, title in zip(axes, ("ttft_ms", "itl_ms"), ("time to first token", "inter-token latency")):
        h = 0.8 / len(qs)
        for j, q in enumerate(qs):
            vals = [(r["metrics"][key] or {}).get(q) or 0 for r in recs]
            ax.barh([i + (j - (len(qs) - 1) / 2) * h for i in range(len(recs))], vals, height=h,
                    label=figs.label(q))
        ax.set_yticks(range(len(recs)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(figs.label(f"{title} (ms)"))  # linear: bar lengths must compare
        ax.set_title(title)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[1].set_yticklabels([])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9)
    figs.save(fig, "latency_percentiles", axes,
              "TTFT and ITL per configuration" + (
                  " (the cost model gives one time per phase, so only means)." if predicted else
                  ": p50, p90 and p99 over repetitions (TTFT) and over every decode step of every "
                  "repetition (ITL)."), legend_on_top=True)


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1e7 or a < 1e-3:
            return f"{v:.3e}"
        return f"{v:.0f}" if a >= 100 else f"{v:.3g}"
    return str(v)


def ran_as(rec):
    """'4x4x4 pp2, wg-xy+heads / 2d+batch': the mesh and layouts that ran."""
    run = rec.get("run")
    if not run:
        return "-"
    m = run["mesh"]
    lay = run["layouts"]
    pp = f" pp{m['pp']}" if m["pp"] > 1 else ""
    return (f"{m['x']}x{m['y']}x{m['z']}{pp}, {lay['prefill']['ffn']}+{lay['prefill']['attn']} / "
            f"{lay['decode']['ffn']}+{lay['decode']['attn']}")


def load_line(records):
    """How busy the machine was: other work skews measured times."""
    loads = [r["provenance"]["load_average"][0] for r in records if r["provenance"]["load_average"]]
    if not loads:
        return "- machine load: unknown"
    return (f"- machine load (1-minute load average at each point's start): {min(loads):.1f} to "
            f"{max(loads):.1f}")


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(out)


def report(out_dir: Path):
    try:
        records = sweep_schema.load_results(out_dir / "results.jsonl")
    except sweep_schema.SchemaError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{out_dir / 'results.jsonl'}: {e.strerror}")
    predicted = records[0]["mode"] == "predicted"
    # Each point is named by the settings that vary across the whole file
    # (the stored `label` may predate points added with --resume).
    keys = varying(records, SETUP_KEYS + WORKLOAD_KEYS)
    for r in records:
        r["_name"] = " ".join(f"{k}={config_value(r, k)}" for k in keys) or "single point"
    ok = [r for r in records if r["status"] == "ok"]
    bad = [r for r in records if r["status"] != "ok"]
    figs = Figures(out_dir, predicted)
    errors = None
    skipped = []  # figures whose x axis the sweep did not vary
    if ok:
        fig_cost_vs_latency(figs, ok)
        skipped.append(fig_mfu_vs_tokens(figs, ok))
        skipped.append(fig_latency_vs_chips(figs, ok))
        if not predicted:
            errors = fig_predicted_vs_measured(figs, ok)
        fig_percentiles(figs, ok, predicted)
    skipped = [s for s in skipped if s]

    P = "predicted " if predicted else ""
    prov = records[-1]["provenance"]
    counts = {s: sum(r["status"] == s for r in records) for s in sweep_schema.STATUSES}
    lines = [f"# Sweep report: {records[0]['experiment']}", ""]
    if predicted:
        lines += ["**Every number in this report is *predicted* by the planner's cost model "
                  "(`shardlm sweep --dry-run`); nothing was run.**", ""]
    lines += [
        f"- points: {len(records)} ({', '.join(f'{n} {s}' for s, n in counts.items() if n)})",
        f"- hardware spec: {prov['hardware']['name']} ({prov['hardware']['file']}), peak "
        f"{fmt(prov['hardware']['peak_flops_per_chip'])} FLOP/s and "
        f"{fmt(prov['hardware']['memory_bandwidth_per_chip'])} B/s per chip",
        f"- git commit {prov['git_commit'][:12]}{' (with local changes)' if prov['git_dirty'] else ''}"
        f", host {prov['host']}, {prov['cpu']}",
        load_line(records),
        f"- BLAS / backend: {prov['blas']}; MPI: {prov['versions'].get('mpi')}; compiler "
        f"{prov['versions'].get('compiler')}; oneDNN {prov['versions'].get('onednn')}",
        f"- swept with: `{' '.join(prov['sweep_command'])}`; redraw with "
        f"`shardlm report {out_dir}`",
        "",
    ]
    if figs.manifest:
        lines += ["## Figures", ""]
        for f in figs.manifest:
            lines += [f"### {f['name'].replace('_', ' ')}", "", f["caption"], "",
                      f"![{f['name']}]({f['png']})", "", f"([SVG]({f['svg']}))", ""]
    lines += [f"- {s}." for s in skipped] + ([""] if skipped else [])
    if errors:
        lines += ["Prediction error: " + "; ".join(f"{k}: {v}" for k, v in errors.items()) + ".", ""]

    if ok:
        lines += ["## Best configuration per objective", ""]
        objectives = [
            ("lowest end-to-end latency", lambda r: r["metrics"]["e2e_ms"]["mean"], min, "ms"),
            ("lowest time to first token", lambda r: r["metrics"]["ttft_ms"]["mean"], min, "ms"),
            ("lowest inter-token latency",
             lambda r: r["metrics"]["itl_ms"]["mean"] if r["metrics"]["itl_ms"] else None, min, "ms"),
            ("lowest decode cost", lambda r: r["metrics"]["decode_cost_chip_ms_per_token"], min,
             "chip-ms/token"),
            ("highest decode throughput", lambda r: r["metrics"]["decode_tokens_per_s"], max,
             "tokens/s"),
            ("highest prefill throughput", lambda r: r["metrics"]["prefill_tokens_per_s"], max,
             "tokens/s"),
            ("highest prefill MFU", lambda r: 100 * r["metrics"]["prefill_mfu"], max, "%"),
        ]
        rows = []
        for what, key, pick, unit in objectives:
            cands = [r for r in ok if key(r) is not None]
            if cands:
                best = pick(cands, key=key)
                rows.append([what, f"{fmt(key(best))} {unit}", best["_name"]])
        lines += [md_table(["objective", P + "value", "configuration"], rows), ""]

        lines += ["## Every point", ""]
        header = ["configuration", "ran as: mesh, prefill / decode layouts", "TTFT ms", "ITL ms mean / p50 / p99", "e2e ms",
                  "prefill tok/s", "decode tok/s", "MFU prefill / decode %", "MBU decode %",
                  "peak MB/rank", "prefill ms pred / meas", "decode ms pred / meas"]
        rows = []
        for r in ok:
            m = r["metrics"]
            itl = m["itl_ms"] or {}
            pr = r.get("predicted")
            pred = lambda ph: fmt(1e3 * pr[ph]["latency_s"]) if pr else "-"
            rows.append([
                r["_name"], ran_as(r), fmt(m["ttft_ms"]["mean"]),
                " / ".join(fmt(itl.get(q)) for q in ("mean", "p50", "p99")), fmt(m["e2e_ms"]["mean"]),
                fmt(m["prefill_tokens_per_s"]), fmt(m["decode_tokens_per_s"]),
                f"{fmt(100 * m['prefill_mfu'])} / {fmt(100 * m['decode_mfu'])}",
                fmt(100 * m["decode_mbu"]), fmt(max(m["peak_memory_mb_per_rank"])),
                f"{pred('prefill')} / {'-' if predicted else fmt(m['prefill_ms'])}",
                f"{pred('decode')} / {'-' if predicted else fmt(m['decode_ms'])}",
            ])
        lines += [("All numbers *predicted*. " if predicted else "") +
                  "Mesh and layouts as they ran (`auto` resolved by the planner).", "",
                  md_table(header, rows), ""]
    lines += ["## Failed points", ""]
    if bad:
        lines += [md_table(["configuration", "status", "reason"],
                           [[r["_name"], r["status"], r["error"]] for r in bad]), ""]
    else:
        lines += ["None.", ""]
    lines += [
        "## Definitions", "",
        "- TTFT: start of prefill to the first tokens sampled; ITL: one decode step (all "
        "sequences); e2e: TTFT + decode time. Percentiles interpolate linearly between order "
        "statistics (TTFT over repetitions, ITL over every decode step of every repetition).",
        "- MFU = 2 N x tokens / (chips x peak FLOP/s x phase time), N every parameter as the "
        "paper counts them (embeddings and LM head included: for a small model with a large "
        "vocabulary that is more than prefill computes, as the head runs on the last position "
        "only, so MFU can pass 100%); MBU = the cost model's bytes each chip must read in the "
        "phase / (its bandwidth x phase time). Peaks are the hardware spec's.",
        "- cost = chips x phase time / tokens of the phase (chip-ms per token).",
        "- the planner prices gen_len decode passes per sequence; a measured decode phase runs "
        "gen_len - 1 steps (the first token comes from prefill), so on a short generation the "
        "predicted decode time is longer by gen_len / (gen_len - 1) for that reason alone.",
        "- statuses: ok; failed (the job exited with an error); timeout (timeout_s passed); oom "
        "(out of memory, or predicted not to fit); invalid (the configuration cannot run as "
        "written: impossible mesh or layout, unknown flag).",
        "",
    ]
    text = "\n".join(lines)
    for name, content in (("report.md", text), ("figures.json", json.dumps(figs.manifest, indent=1))):
        write_atomically(out_dir / name, lambda tmp: Path(tmp).write_text(content, encoding="utf-8"))
    print(f"report: {out_dir / 'report.md'} ({len(figs.manifest)} figures in "
          f"{out_dir / 'figures'}; {len(ok)} ok, {len(bad)} failed points)")


def main(argv):
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if len(argv) != 2:
        fail("usage: sweep_report.py DIR (a `shardlm sweep --out` directory)")
    report(Path(argv[1]))


if __name__ == "__main__":
    main(sys.argv)
