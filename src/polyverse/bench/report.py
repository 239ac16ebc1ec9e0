"""Benchmark output: results.json, report.md, and PNG plots (speedup, accepted tokens per pass)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

PLOTS = {"speedup": "speedup.png", "accepted": "accepted.png"}


def table_rows(doc: dict, set_name: str) -> list[list[str]]:
    """Markdown/terminal table cells for one data set: one row per contender."""
    greedy = doc["config"]["temperature"] == 0
    out = []
    for name, row in doc["sets"][set_name].items():
        s = row["summary"]
        tpp = "-" if s["tokens_per_pass"] is None else f"{s['tokens_per_pass']:.2f}"
        if not greedy or s["exact"] is None:
            exact = "n/a"
        else:
            exact = f"{s['exact']}/{s['judged']}"
            bad = [p for p in row["prompts"] if p["exact"] is False]
            if bad:
                m = bad[0]["mismatch"]
                exact += f" (first: {bad[0]['id']} at token {m['position']}, margin {m['margin']})"
        out.append([name, f"{s['rate_median']:.1f}", f"{s['ratio_median']:.2f}x", f"{s['ratio_mean']:.2f}x", tpp, exact])
    return out


HEADER = ["contender", "tok/s (median)", "x baseline (median)", "x baseline (mean)", "tokens/pass", "equal to ar"]


def markdown(doc: dict, command: str | None = None, image_prefix: str = "", depth: int = 1) -> str:
    """The report as Markdown; ``depth``: the heading level of its title (its sets one below)."""
    env, cfg = doc["environment"], doc["config"]
    mode = "greedy" if cfg["temperature"] == 0 else f"sampled at temperature {cfg['temperature']}"
    lines = ["#" * depth + " polyverse bench", "",
             f"{env['date']} · model {env['model']} ({env['dtype']}) · {env['cpu']}, {env['threads']} threads · "
             f"torch {env['torch']}, transformers {env['transformers']}", "",
             f"{cfg['max_new_tokens']} new tokens at most, {mode}; baseline `{cfg['baseline']}`. Ratios are medians "
             "(and means) of per-prompt ratios of tokens/s to the baseline on the same prompt; contenders ran "
             "interleaved prompt by prompt after a warm-up. Tokens/pass: new tokens per decode forward pass.", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    for set_name, rows in doc["sets"].items():
        n = len(next(iter(rows.values()))["prompts"])
        lines += ["#" * (depth + 1) + f" {set_name} ({n} prompts)", "", "| " + " | ".join(HEADER) + " |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        lines += ["| " + " | ".join(r) + " |" for r in table_rows(doc, set_name)]
        lines.append("")
    if doc.get("vllm"):
        from .vllm_peer import markdown as vllm_markdown

        lines += vllm_markdown(doc["vllm"], depth + 1)
    lines += [f"![speedup per method and data set]({image_prefix}{PLOTS['speedup']})", "",
              f"![accepted tokens per pass]({image_prefix}{PLOTS['accepted']})", ""]
    return "\n".join(lines)


def splice(page: str, key: str, section: str) -> str:
    """``page`` with the section it holds for ``key`` (between two marker comments) replaced by
    ``section``, or with the section appended where it holds none: a bench run rewrites its own
    part of a page that keeps other runs' and other machines' figures.

    Example: splice("a\n<!-- bench:x -->\nold\n<!-- /bench:x -->\nb", "x", "new")
    -> "a\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\nb"; splice("a", "x", "new") -> "a\n\n<!-- bench:x -->\nnew\n<!-- /bench:x -->\n".
    """
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{section.strip()}\n{end}"
    i, j = page.find(start), page.find(end)
    if i >= 0 and j > i:
        return page[:i] + block + page[j + len(end):]
    return (page.rstrip() + "\n\n" if page.strip() else "") + block + "\n"


def depth_at(page: str, key: str) -> int:
    """The heading level a run's section takes in ``page``: one below the last heading before its
    marker (a section kept under "#### Results" gets "#####"); 3 for a new section appended to a
    page, 1 for an empty page.

    Example: depth_at("# A\n#### B\n<!-- bench:x -->", "x") -> 5; depth_at("# A", "x") -> 3;
    depth_at("", "x") -> 1.
    """
    if not page.strip():
        return 1
    at = page.find(f"<!-- bench:{key} -->")
    if at < 0:
        return 3
    levels = [len(line) - len(line.lstrip("#")) for line in page[:at].splitlines() if line.startswith("#")]
    return min(levels[-1] + 1, 6) if levels else 1


def plot_speedup(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(doc["sets"])
    names = list(next(iter(doc["sets"].values())))
    width = 0.8 / max(len(sets), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    for j, s in enumerate(sets):
        vals = [doc["sets"][s][n]["summary"]["ratio_median"] for n in names]
        ax.bar([i + j * width for i in range(len(names))], vals, width, label=s)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks([i + width * (len(sets) - 1) / 2 for i in range(len(names))], names, rotation=30, ha="right")
    ax.set_ylabel(f"speed vs {doc['config']['baseline']} (median ratio)")
    ax.set_title(f"{doc['environment']['model']}: speedup per method and data set")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accepted(doc: dict, path: Path) -> None:
    """Histogram of new tokens per decode pass, per polyverse method, all data sets pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    counts: dict[str, Counter] = {}
    for rows in doc["sets"].values():
        for name, row in rows.items():
            for p in row["prompts"]:
                if p["accepted_per_pass"]:
                    counts.setdefault(name, Counter()).update(p["accepted_per_pass"])
    names = list(counts) or ["(no polyverse method)"]
    cols = min(4, len(names))
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        c = counts.get(name, Counter())
        total = sum(c.values()) or 1
        xs = sorted(c)
        ax.bar(xs, [c[x] / total for x in xs], color="tab:blue")
        mean = sum(x * c[x] for x in xs) / total
        ax.set_title(f"{name} (mean {mean:.2f})", fontsize=9)
        ax.set_xlabel("tokens per pass", fontsize=8)
        ax.set_xlim(0.4, max(xs, default=1) + 0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].set_ylabel("share of passes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(doc: dict, out: Path, command: str | None = None) -> dict[str, Path]:
    """results.json, report.md and the plots under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "report": out / "report.md"}
    doc = dict(doc, command=command)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(paths["results"])
    plot_speedup(doc, out / PLOTS["speedup"])
    plot_accepted(doc, out / PLOTS["accepted"])
    paths.update({k: out / v for k, v in PLOTS.items()})
    paths["report"].write_text(markdown(doc, command))
    return paths
