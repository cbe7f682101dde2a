"""The harness's report from its JSON: a markdown table, the targets of issue 11, PNG plots, and the generated
section of docs/BENCHMARKS.md (between `<!-- bench:begin -->` and `<!-- bench:end -->`).

    python bench/harness/report.py RESULT.json [--plots DIR] [--docs]   (scripts/bench.sh --report ...)
"""
import argparse
import math
import os
import re
import sys

MIB = 2 ** 20


def markers(section="bench"):
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


BEGIN, END = markers()


def _key(r):
    return r["N"], r["causal"], r["mechanism"]


def groups(data):
    """{(N, causal, mechanism): {contender: result}} in run order."""
    out = {}
    for r in data["results"]:
        out.setdefault(_key(r), {})[r["contender"]] = r
    return out


def med(r, mode):
    m = r.get(mode)
    return m.get("median") if m else None


def _ms(x):
    return "-" if x is None else (f"{x * 1e3:.0f}" if x >= 0.1 else f"{x * 1e3:.1f}")


def _mib(x):
    return "-" if x is None else f"{max(0, x) / MIB:.0f}"


def best_peer(group, mode="fwdbwd"):
    peers = [(med(r, mode), c) for c, r in group.items() if c != "eformer" and med(r, mode)]
    return min(peers) if peers else (None, None)


def table(data):
    lines = ["| N | direction | mechanism | contender | fwd ms | fwd+bwd ms | ours faster by (fwd+bwd) | "
             "peak RSS MiB (fwd+bwd) | alloc peak MiB | check (max diff / max ours) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (N, causal, mech), group in groups(data).items():
        ours = group.get("eformer")
        t_ours = med(ours, "fwdbwd") if ours else None
        for c, r in group.items():
            t = med(r, "fwdbwd")
            if c == "eformer":
                tb, pb = best_peer(group)
                ratio = f"{tb / t:.2f}x vs {pb}" if tb and t else "-"
            else:
                ratio = f"{t / t_ours:.2f}x" if t and t_ours else "-"
            ck = r.get("check")
            check = "-" if not ck else f"{ck.get('rel_diff', float('nan')):.1e}"
            fb = r.get("fwdbwd") or {}
            lines.append(f"| {N} | {'causal' if causal else 'bidir'} | {mech} | {c} | {_ms(med(r, 'fwd'))} | "
                         f"{_ms(t)} | {ratio} | {_mib(fb.get('rss_peak'))} | {_mib(fb.get('alloc_peak'))} | "
                         f"{check} |")
    return "\n".join(lines)


def skipped_lines(data):
    """Skips folded by (contender, why), with the N and directions they cover."""
    folded = {}
    for s in data["skipped"]:
        lines = [line.strip() for line in s["why"].splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].startswith("failed:"):  # a worker's traceback: its last line says why
            lines = ["failed:", lines[-1]]
        why = re.sub(r"predicted [\d.]+ (s|GB)", r"predicted", " ".join(lines))[:300]
        folded.setdefault((s["mechanism"], s["contender"], why), set()).add(
            (s["N"], "causal" if s["causal"] else "bidir"))
    out = []
    for (mech, c, why), where in folded.items():
        at = ", ".join(f"{n} {d}" for n, d in sorted(where))
        out.append(f"- {mech} / {c} at {at}: {why}")
    return out


def targets(data):
    """Issue 11's targets: flash vs torch SDPA fwd+bwd (>= 1.5x at 4096, >= 1x at 1024); each efficient
    mechanism >= 2x its best peer at 4096 and at that peer's largest N, with no more peak RSS."""
    g = groups(data)
    rows = ["| mechanism | direction | N | best peer | ours ms | peer ms | speedup | target | met | "
            "our RSS MiB | peer RSS MiB | memory |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    exact = set(data["peers"].get("torch-sdpa", {}).get("serves", []))  # exact attention: full, flash
    for m in [x["name"] for x in data["mechanisms"]]:
        for causal in (False, True):
            runs = {N: grp for (N, c, mm), grp in g.items() if mm == m and c == causal}
            if not runs:
                continue
            peer_ns = {}
            for N, grp in runs.items():
                for c, r in grp.items():
                    if c != "eformer" and med(r, "fwdbwd"):
                        peer_ns[c] = max(peer_ns.get(c, 0), N)
            if m in exact:
                checks = [(N, 1.5 if N >= 4096 else 1.0) for N in (1024, 4096) if N in runs]
            else:
                ns = {4096} | set(peer_ns.values())
                checks = [(N, 2.0) for N in sorted(ns) if N in runs]
            for N, goal in checks:
                grp = runs[N]
                ours = grp.get("eformer")
                tb, pb = best_peer(grp)
                t = med(ours, "fwdbwd") if ours else None
                if not (tb and t):
                    rows.append(f"| {m} | {'causal' if causal else 'bidir'} | {N} | - | {_ms(t)} | - | - | "
                                f"{goal:g}x | no peer ran | - | - | - |")
                    continue
                rss_o, rss_p = ours["fwdbwd"]["rss_peak"], grp[pb]["fwdbwd"]["rss_peak"]
                sp = tb / t
                rows.append(f"| {m} | {'causal' if causal else 'bidir'} | {N} | {pb} | {_ms(t)} | {_ms(tb)} | "
                            f"{sp:.2f}x | {goal:g}x | {'yes' if sp >= goal else '**no**'} | {_mib(rss_o)} | "
                            f"{_mib(rss_p)} | {'ok' if rss_o <= rss_p else '**more**'} |")
    return "\n".join(rows)


def _crossings(ns, ours, theirs):
    """(N, t) where two log-log lines cross between measured points (sign change of log(ours / theirs))."""
    out = []
    pts = [(n, a, b) for n, a, b in zip(ns, ours, theirs) if a and b]
    for (n0, a0, b0), (n1, a1, b1) in zip(pts, pts[1:]):
        r0, r1 = math.log(a0 / b0), math.log(a1 / b1)
        if r0 * r1 < 0:
            f = r0 / (r0 - r1)
            n = math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0)))
            t = math.exp(math.log(a0) + f * (math.log(a1) - math.log(a0)))
            out.append((n, t))
    return out


def plots(data, folder):
    """One PNG per mechanism: time and peak RSS vs N (fwd+bwd), log-log, bidirectional and causal, a line per
    contender, crossings with ours marked. None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots: matplotlib is not installed here (scripts/install-peers.sh has it)", file=sys.stderr)
        return []
    os.makedirs(folder, exist_ok=True)
    g = groups(data)
    paths = []
    for m in [x["name"] for x in data["mechanisms"]]:
        dirs = [c for c in (False, True) if any(k[2] == m and k[1] == c for k in g)]
        if not dirs:
            continue
        fig, axes = plt.subplots(2, len(dirs), figsize=(4.2 * len(dirs), 6), squeeze=False)
        for col, causal in enumerate(dirs):
            ns = sorted(N for (N, c, mm) in g if mm == m and c == causal)
            contenders = []
            for N in ns:
                for c in g[(N, causal, m)]:
                    if c not in contenders:
                        contenders.append(c)
            for row, (what, fn) in enumerate((("fwd+bwd s", lambda r: med(r, "fwdbwd")),
                                              ("peak RSS MiB", lambda r: (r.get("fwdbwd") or {}).get(
                                                  "rss_peak", 0) / MIB or None))):
                ax = axes[row][col]
                series = {c: [fn(g[(N, causal, m)][c]) if c in g[(N, causal, m)] else None for N in ns]
                          for c in contenders}
                for c, ys in series.items():
                    xs = [n for n, y in zip(ns, ys) if y]
                    ax.loglog(xs, [y for y in ys if y], "o-" if c == "eformer" else "s--",
                              label="eformer " + m if c == "eformer" else c, lw=2 if c == "eformer" else 1)
                for c, ys in series.items():
                    if c != "eformer" and "eformer" in series:
                        for n, t in _crossings(ns, series["eformer"], ys):
                            ax.plot([n], [t], "kx", ms=10, mew=2)
                            ax.annotate(f"{n:.0f}", (n, t), textcoords="offset points", xytext=(4, 4), fontsize=7)
                ax.set_title(f"{m}, {'causal' if causal else 'bidirectional'}", fontsize=9)
                ax.set_xlabel("N", fontsize=8)
                ax.set_ylabel(what, fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=6)
        fig.tight_layout()
        path = os.path.join(folder, f"{m}.png")
        fig.savefig(path, dpi=70)
        plt.close(fig)
        paths.append(path)
    return paths


def docs_section(data, json_path, plots_dir, docs_dir, section="bench"):
    mc = data["machine"]
    tp = mc.get("torch") or {}
    blas = re.findall(r"BLAS_INFO=([^,\s]+)", tp.get("config", "")) or ["?"]
    lapack = re.findall(r"LAPACK_INFO=([^,\s]+)", tp.get("config", "")) or ["?"]
    mkldnn = "yes" if "USE_MKLDNN=ON" in tp.get("config", "") or "MKL-DNN" in tp.get("config", "") else "?"
    rel = lambda p: os.path.relpath(os.path.abspath(p), docs_dir)  # noqa: E731
    peers = [f"- `{n}` ({s['package']} {s['version'] or 'not installed'}): "
             + (f"serves {', '.join(s['serves'])}; check: {s['check']}"
                if s["available"] else f"**not available**: {s['why']}") for n, s in data["peers"].items()
             if s["serves"] or not s["available"]]
    shape = data["shape"]
    begin, end = markers(section)
    lines = [
        begin,
        "<!-- generated by bench/harness/report.py from the JSON below: do not edit by hand -->",
        f"Command: `{data['command']}` ({data['date']}, {data['minutes']:.1f} minutes). JSON: "
        f"`{rel(json_path)}`; plots: `{rel(plots_dir)}/<mechanism>.png`.",
        "",
        f"Machine: {mc['cpu']}, {mc['cores']} cores, {mc['threads']} threads for every library; load average "
        f"{', '.join(f'{x:.2f}' for x in mc['load_average'])} at the start and "
        f"{', '.join(f'{x:.2f}' for x in mc.get('load_average_after', []))} at the end"
        # A 1-minute load above the core count: other work held the cores (this run alone stays near its threads).
        + (" (**a loaded machine**: other builds ran; ratios were measured interleaved in one run, absolute "
           "times are inflated)" if mc["load_average"][0] > mc["cores"] else "") + ". "
        f"sgemm 2048³ measured in the run: eformer (oneDNN) {mc['eformer_sgemm_gflops']:.0f} GFLOP/s, torch "
        f"{tp.get('sgemm_gflops', float('nan')):.0f} GFLOP/s. eformer {mc['eformer']}, torch "
        f"{tp.get('version', 'not installed')} (BLAS_INFO={blas[0]}, LAPACK_INFO={lapack[0]}, mkldnn {mkldnn}), "
        f"Python {mc['python']}.",
        "",
        f"Shapes: B={shape['B']}, H={shape['H']}, d={shape['d']}, {data['dtype']}, q/k/v [B, H, N, d]; every "
        "mechanism at its registry defaults (Performer m = 266 with the same ω for every peer, AFT's bias at "
        "its default window/kernel, one bias head for aft_full/aft_local). Modes timed: "
        f"{', '.join(data['modes'])} (fwd: the forward under no_grad; fwd+bwd: forward then backward to q, k, v). "
        "Each contender in a fresh process, ours first, then its "
        f"peers on the same inputs; median of {data['reps']} timed calls after {data['warmup']} warm-up "
        f"(x {data['rounds']} rounds). Peak RSS: VmHWM above the RSS with the inputs made and the peer set up, "
        "before any call (reset before each mode; the same measure for both libraries); alloc peak: eformer's allocator peak above its live bytes. "
        "A peer is timed only after its forward matched ours on the same inputs (last column). "
        f"Not run: an N whose extrapolated time passed {data['call_limit_s']:g} s per call or whose memory "
        f"passed {data['mem_limit_bytes'] / 1e9:.1f} GB, or past the {data['budget_minutes']:g}-minute budget.",
        "",
        "Peers:",
        *peers,
        "",
        "**Targets** (issue 11; fwd+bwd; speedup = best peer's time / ours; memory = peak RSS):",
        "",
        targets(data),
        "",
        "**All results:**",
        "",
        table(data),
        "",
        "Not run or refused:",
        *(skipped_lines(data) or ["- none"]),
        end,
    ]
    return "\n".join(lines)


def replace_section(md_path, section, body, heading):
    """Puts `body` (which starts and ends with the section's markers) in place of the section's old text, or
    appends it under `heading` when the file has no such section."""
    with open(md_path) as f:
        text = f.read()
    begin, end = markers(section)
    if begin in text and end in text:
        text = text[:text.index(begin)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n" + body + "\n"
    with open(md_path, "w") as f:
        f.write(text)
    print(f"updated {md_path}", file=sys.stderr)


def update_docs(data, md_path, json_path, plots_dir, section="bench"):
    body = docs_section(data, json_path, plots_dir, os.path.dirname(os.path.abspath(md_path)), section)
    replace_section(md_path, section, body, "## Side by side: every mechanism and its PyTorch peers")


def main():
    import json
    p = argparse.ArgumentParser()
    p.add_argument("json")
    p.add_argument("--plots")
    p.add_argument("--docs", action="store_true")
    p.add_argument("--section", default="bench")
    a = p.parse_args()
    with open(a.json) as f:
        data = json.load(f)
    plots_dir = a.plots or os.path.splitext(os.path.abspath(a.json))[0]
    print(table(data))
    print()
    print(targets(data))
    plots(data, plots_dir)
    if a.docs:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        update_docs(data, os.path.join(root, "docs", "BENCHMARKS.md"), a.json, plots_dir, a.section)


if __name__ == "__main__":
    main()
