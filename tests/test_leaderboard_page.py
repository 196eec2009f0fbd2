"""The leaderboard page in a real browser (headless Chromium, tests/helpers_browser.py): the scatter is
drawn where its points are, a header click re-sorts, the filter hides rows, a row click shows details.
Plus what needs no browser: the page fetches nothing, the Pareto front, uncertainty in every row."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from robustmoe_bench.leaderboard import build, publish_results
from robustmoe_bench.leaderboard.render import FRONT_COLOUR, POINT_COLOUR, pareto_front

from helpers_browser import Browser
from test_leaderboard import make_results

#: model ID -> (GFLOPs, worst case %, kind). Pareto front: Sparse-D, MoE-B, MoE-A, Dense-C; SDense-E dominated.
MODELS = {
    "MoE-A": (0.27, 54.2, "moe"),
    "MoE-B": (0.10, 50.0, "moe"),
    "Dense-C": (0.50, 60.0, "dense"),
    "Sparse-D": (0.05, 30.0, "sparse"),
    "SDense-E": (0.60, 40.0, "sdense"),
}
RANKED = ["Dense-C", "MoE-A", "MoE-B", "SDense-E", "Sparse-D"]


def _board(root: Path) -> Path:
    for mid, (g, worst, kind) in MODELS.items():
        model = {"arch": "resnet18", "kind": kind, "experts": 2, "scale": 0.5, "router": "layer",
                 "dataset": "cifar10", "num_classes": 10, "input_shape": [3, 32, 32]}
        res = make_results(robust_acc={"pgd-50": worst + 6, "autoattack": worst + 2, "worst_case": worst},
                           gflops={"pathway": g, "router": 0.0, "total": g}, model=model,
                           attacks=[{"name": "pgd-50", "attack": "pgd", "params": {}, "robust_acc": worst + 6,
                                     "robust_acc_alone": worst + 6, "n_attacked": 400, "n_broken": 10,
                                     "routing_change": None, "scope": "robust", "seconds": 1.0, "skipped": None}])
        if mid == "SDense-E":
            res["flags"]["square_vs_whitebox"] = {"passed": False, "evidence": "Square broke 30 of 40 survivors"}
        publish_results(res, mid, root)
    build(root)
    return root / "index.html"


@pytest.fixture()
def page(tmp_path: Path) -> Path:
    return _board(tmp_path / "lb")


def test_page_fetches_nothing_and_shows_uncertainty(page: Path) -> None:
    html = page.read_text()
    # no external resources of any kind; links to papers would be <a href>, never loaded
    assert not re.search(r"<(script|img|link|iframe|embed|object|audio|video|source)\b[^>]*\b(src|href)=", html, re.I)
    assert "url(" not in html and "@import" not in html
    assert "default-src 'none'" in html  # and the page forbids it even if a field slipped through
    # every row: AutoAttack with its 95 % interval and n
    assert html.count('<span class="ci">[') >= 3 * len(MODELS)
    assert "500</td>" in html


def test_pareto_front() -> None:
    pts = [(g, a, mid) for mid, (g, a, _) in MODELS.items()]
    assert [p[2] for p in pareto_front(pts)] == ["Sparse-D", "MoE-B", "MoE-A", "Dense-C"]
    # equal cost: only the more robust one; equal robustness at higher cost: not on the front
    assert [p[2] for p in pareto_front([(1, 50, "a"), (1, 60, "b"), (2, 60, "c")])] == ["b"]


def test_screenshot_shows_the_scatter_with_every_point_and_the_front(page: Path, tmp_path: Path) -> None:
    from PIL import Image

    with Browser(tmp_path / "profile") as b:
        b.open(page)
        svg = b.evaluate("(() => { const r = document.querySelector('svg.scatter').getBoundingClientRect();"
                         " return [r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]; })()")
        centres = b.evaluate("Array.from(document.querySelectorAll('svg.scatter circle')).map(c => {"
                             " const r = c.getBoundingClientRect();"
                             " return [c.dataset.id, r.left + r.width / 2 + scrollX, r.top + r.height / 2 + scrollY]; })")
        png = b.screenshot()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    px = img.load()
    red = tuple(int(POINT_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    blue = tuple(int(FRONT_COLOUR[i:i + 2], 16) for i in (1, 3, 5))

    def near(c: tuple[int, int, int], ref: tuple[int, int, int]) -> bool:
        return all(abs(a - b) <= 12 for a, b in zip(c, ref))

    reds = [(x, y) for y in range(img.height) for x in range(img.width) if near(px[x, y], red)]
    blues = [(x, y) for y in range(img.height) for x in range(img.width) if near(px[x, y], blue)]
    # every marker is painted, inside the plot, at the position the page says
    assert sorted(c[0] for c in centres) == sorted(MODELS)
    for mid, cx, cy in centres:
        assert near(px[round(cx), round(cy)], red), (mid, px[round(cx), round(cy)])
    assert len(reds) >= 60 * len(MODELS)
    left, top, right, bottom = svg
    assert all(left <= x <= right and top <= y <= bottom for x, y in reds)  # no red outside the scatter
    assert len(blues) >= 150 and all(left <= x <= right and top <= y <= bottom for x, y in blues)
    # higher robustness is drawn higher, more GFLOPs further right
    pos = {mid: (cx, cy) for mid, cx, cy in centres}
    assert pos["Dense-C"][1] < pos["MoE-A"][1] < pos["MoE-B"][1] < pos["Sparse-D"][1]
    assert pos["Sparse-D"][0] < pos["MoE-B"][0] < pos["MoE-A"][0] < pos["Dense-C"][0] < pos["SDense-E"][0]


def _order(b: Browser) -> list[str]:
    return b.evaluate("Array.from(document.querySelector('table.board').tBodies).map(t => t.dataset.id)")


def _column(b: Browser, name: str) -> int:
    heads = b.evaluate("Array.from(document.querySelectorAll('table.board thead th')).map(th => th.textContent)")
    return heads.index(name) + 1


def test_clicking_a_header_resorts_the_table(page: Path, tmp_path: Path) -> None:
    with Browser(tmp_path / "profile") as b:
        b.open(page)
        assert _order(b) == RANKED
        g = _column(b, "GFLOPs")
        b.click(f"table.board thead th:nth-child({g})")
        assert _order(b) == ["Sparse-D", "MoE-B", "MoE-A", "Dense-C", "SDense-E"]  # numbers, ascending
        assert b.evaluate(f"document.querySelector('table.board thead th:nth-child({g})').getAttribute('aria-sort')") \
            == "ascending"
        b.click(f"table.board thead th:nth-child({g})")
        assert _order(b) == ["SDense-E", "Dense-C", "MoE-A", "MoE-B", "Sparse-D"]
        b.click(f"table.board thead th:nth-child({_column(b, 'Model ID')})")
        assert _order(b) == sorted(MODELS, key=str.lower)
        b.click(f"table.board thead th:nth-child({_column(b, '#')})")
        assert _order(b) == RANKED
        # each row keeps its own detail row while sorting; a click on the row shows it
        b.click("tbody.entry[data-id='SDense-E'] tr.main td:nth-child(3)")
        shown = b.evaluate("(() => { const d = document.querySelector(\"tbody.entry[data-id='SDense-E'] tr.detail\");"
                           " return [d.hidden, d.innerText]; })()")
        assert shown[0] is False
        assert "AutoAttack alone" in shown[1] and "FAILED" in shown[1] and "Square broke 30 of 40 survivors" in shown[1]
        assert "pgd-50" in shown[1] and "95% interval" in shown[1]


def test_filter_box_hides_other_models(page: Path, tmp_path: Path) -> None:
    with Browser(tmp_path / "profile") as b:
        b.open(page)
        b.type_text("#filter", "dense")
        visible = b.evaluate("Array.from(document.querySelectorAll('tbody.entry')).filter(t => !t.hidden)"
                             ".map(t => t.dataset.id)")
        assert sorted(visible) == ["Dense-C", "SDense-E"]
        faded = b.evaluate("Array.from(document.querySelectorAll('svg.scatter circle'))"
                           ".filter(c => c.getAttribute('opacity') === '0.15').map(c => c.dataset.id)")
        assert sorted(faded) == ["MoE-A", "MoE-B", "Sparse-D"]
