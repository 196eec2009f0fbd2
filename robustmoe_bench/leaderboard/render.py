"""Render the leaderboard: ``<root>/README.md`` and ``<root>/index.html``, one table per data set and
threat model, ranked as RobustBench ranks (``external`` when present, else ``autoattack_acc``, compared
as numbers, highest first). Output is deterministic, so rebuilding changes nothing unless an entry changed.

Every number our entries carry comes with its uncertainty: ``n`` (``n of N`` for a subset of the test
set) and the 95 % Wilson interval, from the entry's ``robustmoe_intervals`` or, for entries written
before those existed, recomputed from ``robustmoe_n_examples``. Plain RobustBench entries do not say
their ``n``, so they get none.

Every text that comes from an entry (title, link, authors, venue, architecture, footnote, model ID,
method, ...) is escaped for the format it lands in -- HTML entities in the page, HTML entities plus
backslash-escaped Markdown punctuation in the README -- and a link is rendered as a link only when it
is an http(s) URL (:func:`~robustmoe_bench.leaderboard.entry.link_problem`). The one markup a footnote
may carry is ``<br>`` (our own footnotes join notes with it); everything else in it is text.

The page is one self-contained file (inline CSS, JavaScript and SVG; no network resources): sortable
columns (click a header; again to reverse), a filter box, a robustness-vs-GFLOPs scatter per table
with the Pareto front (the models no other model beats on both robustness and cost), and per-model
details (click a row: per-attack accuracies in the cascade and alone, routing robustness, gradient-
masking checks with their evidence, intervals).
"""
from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..checkpoint import atomic_write_bytes
from ..stats import count_of, wilson
from .entry import TOPK_DESIGN_NAMES, BenchmarkDataset, LeaderboardEntry, ThreatModel, link_problem
from .validate import Problem, iter_entry_files, read_entry_file, validate_root


@dataclass(frozen=True)
class Ranked:
    """An entry with its model ID (file name) and rank (1 = best)."""

    rank: int
    model_id: str
    entry: LeaderboardEntry


Board = dict[tuple[BenchmarkDataset, ThreatModel], list[Ranked]]


def sort_key(entry: LeaderboardEntry) -> float:
    """RobustBench's ranking number: ``external`` if present, else ``autoattack_acc``."""
    return entry.ranking_acc


def load_board(root: str | os.PathLike[str], problems: Optional[list[Problem]] = None) -> Board:
    """Read and rank every valid entry under ``root``.

    ``problems``: a list that receives every problem found (warnings included); files with problems
    (not warnings) are left out of the board. Without it, any problem raises
    :class:`~robustmoe_bench.leaderboard.entry.LeaderboardError` (for callers that need the whole folder)."""
    from .entry import LeaderboardError

    root = Path(root)
    _, found = validate_root(root)
    errors = [p for p in found if not p.warning]
    if problems is None and errors:
        raise LeaderboardError(
            f"{len(errors)} problem(s) in {root}, e.g. {errors[0]}; run 'robustmoe-bench leaderboard validate'"
        )
    if problems is not None:
        problems.extend(found)
    bad = {p.path for p in errors}
    groups: dict[tuple[BenchmarkDataset, ThreatModel], list[tuple[str, LeaderboardEntry]]] = {}
    datasets = {m.value for m in BenchmarkDataset}
    threats = {m.value for m in ThreatModel}
    for path, ds, tm in iter_entry_files(root):
        if path in bad or ds not in datasets or tm not in threats:
            continue
        entry = LeaderboardEntry.from_json_dict(read_entry_file(path), tm)
        groups.setdefault((BenchmarkDataset(ds), ThreatModel(tm)), []).append((path.stem, entry))
    board: Board = {}
    order = {m: i for i, m in enumerate(BenchmarkDataset)}
    torder = {m: i for i, m in enumerate(ThreatModel)}
    for key in sorted(groups, key=lambda k: (order[k[0]], torder[k[1]])):
        # Highest ranking number first; ties by model ID so the table is stable.
        rows = sorted(groups[key], key=lambda r: (-sort_key(r[1]), r[0]))
        board[key] = [Ranked(i + 1, mid, e) for i, (mid, e) in enumerate(rows)]
    return board


# ------------------------------------------------------------------------------------ numbers

def interval(e: LeaderboardEntry, key: str, value: Optional[float]) -> Optional[tuple[float, float]]:
    """The 95 % interval of one of an entry's accuracies (``clean_acc``, ``autoattack_acc``,
    ``worst_case_acc``, ``pgd50_acc``, ``ranked``): stored, or recomputed from ``n``; ``None`` if unknown."""
    x = e.extras
    if x is None or value is None:
        return None
    if key == "ranked":
        key = "worst_case_acc" if e.external is not None else "autoattack_acc"
    if x.intervals and key in x.intervals:
        return x.intervals[key]
    n = x.n_examples
    if not n:
        return None
    iv = wilson(min(n, max(0, count_of(value, n))), n)
    return (round(iv.low, 2), round(iv.high, 2))


def n_label(e: LeaderboardEntry) -> str:
    """``"200 of 10000"`` (a subset), ``"10000"`` (the whole test set), ``""`` (unknown)."""
    x = e.extras
    if x is None or not x.n_examples:
        return ""
    if x.n_total and x.n_total != x.n_examples:
        return f"{x.n_examples} of {x.n_total}"
    return str(x.n_examples)


def _acc(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.2f}%"


def _acc_ci(e: LeaderboardEntry, key: str, v: Optional[float]) -> str:
    if v is None:
        return ""
    iv = interval(e, key, v)
    return f"{v:.2f}%" if iv is None else f"{v:.2f}% [{iv[0]:.1f}, {iv[1]:.1f}]"


def _moe_cell(e: LeaderboardEntry) -> str:
    x = e.extras
    if x is None:
        return ""
    if x.kind == "moe" and x.moe is not None:  # full-copy experts: the design and the gate's k
        design = TOPK_DESIGN_NAMES.get(x.moe, x.moe)
        return f"{design} N={x.experts}, top-{x.k}"
    if x.kind == "moe":
        return f"N={x.experts}, r={x.scale:g}, {x.router}"
    if x.kind in ("sdense", "sparse"):
        return f"{x.kind}, r={x.scale:g}"
    return x.kind


def _expert_use(e: LeaderboardEntry) -> str:
    """The busiest expert's share (highest over the MoE layers) with the collapse mark; ``not recorded``
    for an MoE whose results predate routing health; empty for a model without routing."""
    x = e.extras
    if x is None or x.kind != "moe":
        return ""
    if x.expert_use is None:
        return "not recorded"
    busiest = 100 * max(x.expert_use["busiest_share"])
    return ("COLLAPSED, " if x.collapsed else "") + f"busiest {busiest:.0f}%"


def _router_robustness(e: LeaderboardEntry) -> str:
    """A collapsed router cannot change, so its figure is marked (it measures nothing about routing);
    so is one whose routing health was not recorded."""
    x = e.extras
    if x is None or not x.router_robustness:
        return ""
    key = "pgd-50" if "pgd-50" in x.router_robustness else sorted(x.router_robustness)[0]
    mark = {True: " — COLLAPSED router", None: " — routing health not recorded"}.get(x.collapsed, "")
    return f"{x.router_robustness[key]:.2f}% ({key}){mark}"


def _columns(r: Ranked) -> dict[str, str]:
    """The table's cells as plain text (escaped by each renderer)."""
    e, x = r.entry, r.entry.extras
    if e.threat_model is ThreatModel.corruptions:
        return {
            "#": str(r.rank), "Model ID": r.model_id, "Clean": _acc(e.clean_acc),
            "Corruptions": _acc(e.corruptions.get("corruptions_acc")),
            "mCE": _acc(e.corruptions.get("corruptions_mce")),
            "Architecture": e.architecture, "Venue": e.venue,
        }
    return {
        "#": str(r.rank),
        "Model ID": r.model_id,
        "Clean": _acc_ci(e, "clean_acc", e.clean_acc),
        "AutoAttack": _acc_ci(e, "autoattack_acc", e.autoattack_acc),
        "Robust (ranked)": _acc_ci(e, "ranked", e.ranking_acc),
        "PGD-50": "" if x is None else _acc_ci(e, "pgd50_acc", x.pgd50_acc),
        "n": n_label(e),
        "Expert use": _expert_use(e),
        "Router robustness": _router_robustness(e),
        "Corruptions": _acc(e.corruptions.get("corruptions_acc")),  # an l_p entry may carry its corruption result
        "Method": "" if x is None or x.method is None else x.method,
        "MoE": _moe_cell(e),
        "GFLOPs": "" if x is None or x.gflops_total is None else f"{x.gflops_total:.4g}",
        "Architecture": e.architecture,
        "Venue": e.venue,
        "Unreliable": "yes" if e.unreliable else "",
    }


def _eps_title(key: tuple[BenchmarkDataset, ThreatModel], rows: list[Ranked]) -> str:
    ds, tm = key
    eps = sorted({r.entry.eps_str for r in rows if r.entry.eps is not None})
    return f"{ds.value} / {tm.value}" + (f" (eps = {', '.join(eps)})" if eps else "")


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """``(gflops, robust %, id)`` points no other point beats (at most as costly and at least as robust,
    better in one), cheapest first."""
    front: list[tuple[float, float, str]] = []
    best = float("-inf")
    for p in sorted(points, key=lambda p: (p[0], -p[1], p[2])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


# ------------------------------------------------------------------------------------ Markdown

#: Markdown punctuation that can start markup inside a table cell (a cell never starts a line, so
#: headings and lists cannot; ``<`` and ``&`` become entities first).
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]|~$])")


def md_text(text: str) -> str:
    """Text safe anywhere in a Markdown table cell or list item: HTML entities for ``& < >``, a
    backslash before the punctuation that can start Markdown markup, newlines as spaces. No markup
    (HTML, links, images, emphasis, code) survives."""
    text = " ".join(str(text).split("\n"))
    text = html.escape(text, quote=False)  # quotes only matter inside a tag, and no tag can form
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_link(title: str, link: str) -> str:
    """``[title](link)`` for an http(s) link, else the title in italics (both escaped)."""
    if link and link_problem(link) is None:
        url = link.replace("(", "%28").replace(")", "%29").replace("<", "%3C").replace(">", "%3E")
        url = url.replace("|", "%7C").replace(" ", "%20")
        return f"[{md_text(title)}]({url})"
    return f"*{md_text(title)}*"


def _note_parts(note: str) -> list[str]:
    return [p.strip() for p in re.split(r"<br\s*/?>", note.replace("\n", " "), flags=re.I)]


def render_markdown(board: Board) -> str:
    """The README: one Markdown table per data set and threat model."""
    lines = [
        "# Leaderboards",
        "",
        "Generated by `robustmoe-bench leaderboard build` from the entries in this folder; do not edit by hand.",
        "Ranked as RobustBench ranks: by `external` (a stronger evaluation: robustmoe-bench's per-example "
        "worst case over its whole suite, when lower than AutoAttack) when present, else by AutoAttack accuracy "
        "(AutoAttack alone).",
        "Accuracies with their 95% Wilson interval in brackets; `n` is the number of test examples evaluated "
        "(\"n of N\": a subset of the N-example test set). Differences inside the intervals are not evidence.",
        "",
    ]
    if not board:
        lines.append("No entries yet.")
    for key, rows in board.items():
        lines += [f"## {md_text(_eps_title(key, rows))}", ""]
        cols = list(_columns(rows[0]))
        lines.append("| " + " | ".join(md_text(c) for c in cols) + " |")
        lines.append("|" + "|".join(":---:" if c not in ("Model ID", "Architecture") else "---" for c in cols) + "|")
        for r in rows:
            c = {k: md_text(v) for k, v in _columns(r).items()}
            c["Model ID"] = f"**{md_text(r.model_id)}**<br>" + md_link(r.entry.name, r.entry.link)
            lines.append("| " + " | ".join(c[k] for k in cols) + " |")
        notes = [(r.model_id, r.entry.footnote) for r in rows if r.entry.footnote]
        if notes:
            lines.append("")
            for mid, note in notes:
                lines.append(f"- **{md_text(mid)}**: " + "<br>".join(md_text(p) for p in _note_parts(note)))
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1em;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
table.board td:nth-child(2){min-width:16em}
th{background:#f2f2f2;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tbody.entry>tr.main{cursor:pointer}tbody.entry>tr.main:hover{background:#f7f9ff}
tbody.unreliable>tr.main td{color:#999}
tr.detail>td{background:#fafafa}
.ci{color:#666;font-size:12px;white-space:nowrap}
.flag-ok{color:#2a7a2a}.flag-bad{color:#b00020;font-weight:bold}
#filter{font-size:15px;padding:4px 8px;width:24em;margin-bottom:1em}
svg.scatter{border:1px solid #ddd;background:#fff;margin-bottom:1.5em}
.detail table{margin:4px 0}
"""

_JS = r"""
(function(){
  function key(td,type){var v=td.getAttribute('data-value');if(v===null)v=td.textContent;
    if(type==='num'){var f=parseFloat(v);return isNaN(f)?-Infinity:f;}return v.toLowerCase();}
  document.querySelectorAll('table.board').forEach(function(table){
    var ths=table.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths,function(th,col){
      th.addEventListener('click',function(){
        var asc=th.getAttribute('aria-sort')!=='ascending';
        Array.prototype.forEach.call(ths,function(h){h.removeAttribute('aria-sort');});
        th.setAttribute('aria-sort',asc?'ascending':'descending');
        var type=th.getAttribute('data-type');
        var bodies=Array.prototype.slice.call(table.tBodies);
        bodies.sort(function(a,b){var x=key(a.rows[0].cells[col],type),y=key(b.rows[0].cells[col],type);
          if(x<y)return asc?-1:1;if(x>y)return asc?1:-1;
          return parseInt(a.getAttribute('data-rank'))-parseInt(b.getAttribute('data-rank'));});
        bodies.forEach(function(b){table.appendChild(b);});
      });
    });
    Array.prototype.forEach.call(table.tBodies,function(tb){
      tb.rows[0].addEventListener('click',function(ev){if(ev.target.closest('a'))return;
        var d=tb.rows[1];if(d)d.hidden=!d.hidden;});
    });
  });
  var box=document.getElementById('filter');
  box.addEventListener('input',function(){var q=box.value.toLowerCase();
    document.querySelectorAll('tbody.entry').forEach(function(tb){
      tb.hidden=q!==''&&tb.rows[0].textContent.toLowerCase().indexOf(q)<0;});
    document.querySelectorAll('svg.scatter circle[data-id]').forEach(function(c){
      var hit=q===''||c.getAttribute('data-id').toLowerCase().indexOf(q)>=0;
      c.setAttribute('opacity',hit?'1':'0.15');});
  });
})();
"""

#: Colours of the scatter (tests look for them in a screenshot).
POINT_COLOUR = "#d62728"
FRONT_COLOUR = "#1f77b4"
_NUMERIC = {"#", "Clean", "AutoAttack", "Robust (ranked)", "PGD-50", "n", "Expert use", "Router robustness", "GFLOPs",
            "Corruptions", "mCE"}


def _sort_value(col: str, text: str) -> str:
    """The number a numeric column sorts by (its first number), or the text."""
    if col in _NUMERIC:
        m = re.search(r"-?\d+(\.\d+)?(e-?\d+)?", text)
        return m.group(0) if m else ""
    return text


def _cell_html(col: str, text: str) -> str:
    esc = html.escape
    m = re.fullmatch(r"(.*%) (\[.*\])", text)
    inner = f"{esc(m.group(1))} <span class=\"ci\">{esc(m.group(2))}</span>" if m else esc(text)
    return f'<td data-value="{esc(_sort_value(col, text))}">{inner}</td>'


def _footnote_html(note: str) -> str:
    return "<br>".join(html.escape(p) for p in _note_parts(note))


def _detail_html(r: Ranked, ncols: int) -> str:
    esc = html.escape
    e, x = r.entry, r.entry.extras
    parts: list[str] = []
    if e.authors or e.venue:
        parts.append(f"<p>{esc(e.authors)}{' — ' if e.authors and e.venue else ''}{esc(e.venue)}</p>")
    if x is not None:
        rows = []
        for k, label in (("clean_acc", "clean"), ("autoattack_acc", "AutoAttack alone"),
                         ("worst_case_acc", "worst case (every attack)"), ("pgd50_acc", "PGD-50")):
            v = {"clean_acc": e.clean_acc, "autoattack_acc": e.autoattack_acc, "worst_case_acc": x.worst_case_acc,
                 "pgd50_acc": x.pgd50_acc}[k]
            iv = interval(e, k, v)
            if v is not None:
                rows.append(f"<tr><td>{esc(label)}</td><td>{v:.2f}%</td><td>"
                            + ("" if iv is None else f"[{iv[0]:.2f}, {iv[1]:.2f}]") + "</td></tr>")
        parts.append(f"<p><b>Evaluation</b>: suite {esc(x.suite)}, n = {esc(n_label(e))} test examples; "
                     "95% Wilson intervals.</p><table><tr><th>accuracy</th><th>%</th><th>95% interval</th></tr>"
                     + "".join(rows) + "</table>")
        if x.attacks:
            arows = "".join(
                f"<tr><td>{esc(name)}</td><td>{_acc(c)}</td><td>{_acc(a)}</td>"
                f"<td>{_acc((x.router_robustness or {}).get(name))}</td></tr>"
                for name, (c, a) in x.attacks.items())
            parts.append("<p><b>Per attack</b> (accuracy in the per-example cascade, alone where measured, "
                         "routing unchanged):</p><table><tr><th>attack</th><th>cascade</th><th>alone</th>"
                         "<th>routing robustness</th></tr>" + arows + "</table>")
        elif x.router_robustness:
            rr = "".join(f"<tr><td>{esc(k)}</td><td>{v:.2f}%</td></tr>" for k, v in sorted(x.router_robustness.items()))
            parts.append("<p><b>Routing robustness</b> (% of inputs whose routing is unchanged):</p>"
                         f"<table><tr><th>attack</th><th>routing unchanged</th></tr>{rr}</table>")
        if x.kind == "moe":
            parts.append("<p><b>Expert use</b> " + _expert_use_html(x) + "</p>")
        if x.flags:
            items = "".join(
                f"<li><span class=\"{'flag-ok' if ok else 'flag-bad'}\">{'passed' if ok else 'FAILED'}</span> "
                f"<b>{esc(name)}</b>: {esc(ev)}</li>" for name, (ok, ev) in x.flags.items())
            parts.append(f"<p><b>Gradient-masking checks</b>:</p><ul>{items}</ul>")
        elif x.failed_checks:
            parts.append(f"<p><b>Gradient-masking checks failed</b>: {esc(', '.join(x.failed_checks))}</p>")
        if x.gflops_total is not None:
            parts.append(f"<p><b>GFLOPs per input</b>: pathway {x.gflops_pathway:.4g}, router "
                         f"{(x.gflops_router or 0):.4g}, total {x.gflops_total:.4g}</p>")
    if e.footnote:
        parts.append(f"<p><b>Notes</b>: {_footnote_html(e.footnote)}</p>")
    return f'<tr class="detail" hidden><td colspan="{ncols}">{"".join(parts)}</td></tr>'


def _expert_use_html(x: Any) -> str:
    esc = html.escape
    u = x.expert_use
    if u is None:
        return ("(routing health): not recorded by the evaluation that produced this entry; its router-robustness "
                "figures cannot be read as robustness of a router that routes.")
    per_layer = ", ".join(f"{100 * b:.0f}%" for b in u["busiest_share"])
    text = (f"on the {u['n_inputs']} clean evaluated inputs: busiest expert per MoE layer {esc(per_layer)} "
            f"(balanced: {100 / u['n_experts']:.0f}%)")
    if u["collapsed"]:
        text += (". <span class=\"flag-bad\">COLLAPSED</span>: (almost) every input takes one expert, so the "
                 "router cannot change and its router-robustness figures measure nothing")
    return text + "."


def _scatter_svg(rows: list[Ranked], label: str) -> str:
    """Robustness (ranked number) against GFLOPs per input, log-scaled x, with the Pareto front."""
    esc = html.escape
    pts = [(r.entry.extras.gflops_total, r.entry.ranking_acc, r.model_id) for r in rows
           if r.entry.extras is not None and r.entry.extras.gflops_total]
    if not pts:
        return "<p><i>No entry of this table records its GFLOPs: no cost plot.</i></p>"
    import math

    w, h, ml, mr, mt, mb = 640, 360, 60, 20, 20, 50
    xs = [math.log10(p[0]) for p in pts]
    lo, hi = min(xs), max(xs)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    y_lo, y_hi = 0.0, 100.0
    ys = [p[1] for p in pts]
    y_lo = max(0.0, 10 * math.floor(min(ys) / 10) - 10)
    y_hi = min(100.0, 10 * math.ceil(max(ys) / 10) + 10)

    def sx(g: float) -> float:
        return round(ml + (math.log10(g) - lo) / (hi - lo) * (w - ml - mr), 2)

    def sy(a: float) -> float:
        return round(mt + (y_hi - a) / (y_hi - y_lo) * (h - mt - mb), 2)

    out = [f'<svg class="scatter" role="img" aria-label="{esc(label)}" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">',
           f'<rect x="{ml}" y="{mt}" width="{w - ml - mr}" height="{h - mt - mb}" fill="none" stroke="#999"/>']
    for t in range(int(y_lo), int(y_hi) + 1, 10):
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{sy(t)}" y2="{sy(t)}" stroke="#eee"/>'
                   f'<text x="{ml - 6}" y="{sy(t) + 4}" font-size="11" text-anchor="end">{t}</text>')
    for d in range(math.floor(lo), math.ceil(hi) + 1):  # ticks at 1, 2, 5 x 10^d inside the range
        for mult in (1, 2, 5):
            g = mult * 10.0 ** d
            if lo <= math.log10(g) <= hi:
                out.append(f'<line x1="{sx(g)}" x2="{sx(g)}" y1="{mt}" y2="{h - mb}" stroke="#eee"/>'
                           f'<text x="{sx(g)}" y="{h - mb + 16}" font-size="11" text-anchor="middle">{g:g}</text>')
    out.append(f'<text x="{(w + ml - mr) / 2}" y="{h - 10}" font-size="12" text-anchor="middle">'
               'GFLOPs per input (log scale)</text>')
    out.append(f'<text x="14" y="{(h - mb + mt) / 2}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {(h - mb + mt) / 2})">robust accuracy % (ranked)</text>')
    out.append(f'<line x1="{w - mr - 150}" x2="{w - mr - 130}" y1="{mt + 14}" y2="{mt + 14}" stroke="{FRONT_COLOUR}" '
               f'stroke-width="2.5"/><text x="{w - mr - 124}" y="{mt + 18}" font-size="11">Pareto front</text>')
    front = pareto_front(pts)
    if len(front) > 1:
        path = " ".join(f"{sx(g)},{sy(a)}" for g, a, _ in front)
        out.append(f'<polyline class="pareto" points="{path}" fill="none" stroke="{FRONT_COLOUR}" stroke-width="2.5"/>')
    on_front = {p[2] for p in front}
    for g, a, mid in sorted(pts, key=lambda p: p[2]):
        ring = f' stroke="{FRONT_COLOUR}" stroke-width="2.5"' if mid in on_front else ""
        out.append(f'<circle data-id="{esc(mid)}" cx="{sx(g)}" cy="{sy(a)}" r="6" fill="{POINT_COLOUR}"{ring}>'
                   f'<title>{esc(mid)}: {a:.2f}% at {g:.4g} GFLOPs</title></circle>')
        right_half = sx(g) > (ml + w - mr) / 2  # labels grow towards the middle, never off the plot
        out.append(f'<text x="{sx(g) + (-8 if right_half else 8)}" y="{sy(a) - 8}" font-size="11" '
                   f'text-anchor="{"end" if right_half else "start"}">{esc(mid)}</text>')
    out.append("</svg>")
    return "".join(out)


def render_html(board: Board) -> str:
    """A standalone HTML page: per data set and threat model, a scatter and a sortable table."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may be fetched: no scripts, styles, fonts or images from anywhere.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        "<title>robustmoe-bench leaderboards</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Leaderboards</h1>",
        "<p>Ranked by <code>external</code> when present, else AutoAttack accuracy (AutoAttack alone, as "
        "RobustBench ranks). Accuracies carry their 95% Wilson interval; <i>n</i> is the number of test "
        "examples evaluated (<i>n of N</i> for a subset). Click a column header to sort, a row for details.</p>",
        '<input id="filter" type="search" placeholder="Filter models (ID, method, architecture, ...)" '
        'aria-label="Filter models">',
    ]
    if not board:
        out.append("<p>No entries yet.</p>")
    for key, rows in board.items():
        ds, tm = key
        title = _eps_title(key, rows)
        out.append(f'<h2 id="{esc(ds.value)}-{esc(tm.value)}">{esc(title)}</h2>')
        if tm is not ThreatModel.corruptions:
            out.append(_scatter_svg(rows, f"robustness against GFLOPs, {title}"))
        cols = list(_columns(rows[0]))
        out.append(f'<table class="board" data-dataset="{esc(ds.value)}" data-threat-model="{esc(tm.value)}">')
        out.append("<thead><tr>" + "".join(
            f'<th data-type="{"num" if c in _NUMERIC else "text"}">{esc(c)}</th>' for c in cols) + "</tr></thead>")
        for r in rows:
            c = _columns(r)
            title_text = esc(r.entry.name)
            paper = (f'<a href="{esc(r.entry.link)}" rel="noopener noreferrer">{title_text}</a>'
                     if r.entry.link and link_problem(r.entry.link) is None else f"<i>{title_text}</i>")
            cells = []
            for k in cols:
                if k == "Model ID":
                    cells.append(f'<td data-value="{esc(r.model_id)}"><b>{esc(r.model_id)}</b><br>{paper}</td>')
                else:
                    cells.append(_cell_html(k, c[k]))
            cls = "entry unreliable" if r.entry.unreliable else "entry"
            out.append(f'<tbody class="{cls}" data-id="{esc(r.model_id)}" data-rank="{r.rank}">'
                       f'<tr class="main">{"".join(cells)}</tr>{_detail_html(r, len(cols))}</tbody>')
        out.append("</table>")
    out.append(f"<script>{_JS}</script>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def build(root: str | os.PathLike[str]) -> tuple[list[Path], Board, list[Problem]]:
    """Write ``<root>/README.md`` and ``<root>/index.html`` (atomically, mode 0644 under umask 022)
    from every valid entry; returns the paths, the board and the problems found (files with problems
    are left out and reported, never the reason to write nothing)."""
    root = Path(root)
    problems: list[Problem] = []
    board = load_board(root, problems)
    md, page = root / "README.md", root / "index.html"
    atomic_write_bytes(md, render_markdown(board).encode("utf-8"))
    atomic_write_bytes(page, render_html(board).encode("utf-8"))
    return [md, page], board, problems


__all__ = ["Board", "Ranked", "build", "interval", "load_board", "md_link", "md_text", "n_label", "pareto_front",
           "render_html", "render_markdown"]
