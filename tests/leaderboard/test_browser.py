"""The built site in a real browser: rank order, click-to-sort, entries and their seeds, record history,
compute classes, published results, no script injection, no errors.

Needs Debian's chromium (/usr/bin/chromium) and the playwright package; skipped without them.
"""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from leaderboard.published import DEFAULT_PUBLISHED
from leaderboard.site import build_site
from tests.leaderboard.factory import failed_record, make_record, method_hash, write_board

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS = "<script>alert(1)</script>"
LOSSES = [3.31, 3.05, 3.47, 3.12, 3.26]  # ranked order differs from file order and from name order
NAMES = ["delta", "echo", "alpha", "charlie", XSS]
SEEDED = "seeded"  # three seeds of one method and configuration: one entry
SEEDED_LOSSES = [3.0101, 3.0123, 3.0112]
OVER_CAP = "trained 16.2 min, past the tiny class's 15 min cap"
TINY = "section.track[data-track=synthetic][data-class=tiny] "

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium not found at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    records = [make_record(i, method__name=name, result__val_loss=loss)
               for i, (name, loss) in enumerate(zip(NAMES, LOSSES))]
    records.append(failed_record(9, method__name="zulu-crashed"))
    for seed, loss in enumerate(SEEDED_LOSSES):
        records.append(make_record(20 + seed, method__name=SEEDED, method__hash=method_hash(SEEDED), seed=seed,
                                   result__val_loss=loss))
    over = make_record(30, method__name="too-slow", result__val_loss=2.9, timings__train_s=972.0)
    over["timings"]["wall_s"] = 1100.0
    over["compute"].update({"hardware": {"gpu_model": "H100", "gpus_per_node": 8, "nodes": 1, "gpu_hours": 2.16},
                            "time_limit_s": 900.0})
    over["unranked_reasons"] = [OVER_CAP]
    records.append(over)
    records.append(make_record(31, method__name="hour-long", compute__class="limited"))
    write_board(root / "records", records)
    build_site(root / "records", root / "site", workers=1, published=DEFAULT_PUBLISHED)
    return root / "site"


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors, page errors and any dialog (an injected alert)."""
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.problems = []
    tab.on("console", lambda m: tab.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))

    def on_dialog(dialog):
        tab.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    yield tab
    context.close()


def ranked_names(page) -> list[str]:
    return page.locator(TINY + "table.board tbody.ranked tr td.method").all_inner_texts()


def loss_column(page) -> list[float]:
    return [float(t) for t in page.locator(TINY + "table.board tbody.ranked tr td:nth-child(3)").all_inner_texts()]


def by_loss(descending: bool = False) -> list[str]:
    pairs = list(zip(LOSSES, NAMES)) + [(sum(SEEDED_LOSSES) / 3, SEEDED)]
    return [name for _, name in sorted(pairs, reverse=descending)]


def tiny_button(page, name: str):
    return page.locator(TINY + "thead").get_by_role("button", name=name)


def test_rows_in_rank_order_and_header_clicks_sort(page, server):
    page.goto(f"{server}/index.html")
    assert ranked_names(page) == by_loss()
    assert page.locator(TINY + "table.board tbody.ranked tr td:first-child").all_inner_texts() == [
        "1", "2", "3", "4", "5", "6"]

    tiny_button(page, "Method").click()
    assert ranked_names(page) == sorted(NAMES + [SEEDED], key=str.lower)
    loss_header = tiny_button(page, "Val loss (nats/token)")
    loss_header.click()
    assert ranked_names(page) == by_loss()
    assert loss_column(page) == sorted(LOSSES + [3.0112])
    loss_header.click()
    assert ranked_names(page) == by_loss(descending=True)
    assert loss_column(page) == sorted(LOSSES + [3.0112], reverse=True)
    assert page.locator("th[aria-sort=descending]").count() == 1
    # the unranked runs stay below the ranking whatever the order
    assert sorted(page.locator(TINY + "table.board tbody.unranked tr td.method").all_inner_texts()) == [
        "too-slow", "zulu-crashed"]
    assert XSS in ranked_names(page)  # shown as text, not run
    assert page.problems == []


def test_record_page_has_plots_and_no_errors(page, server):
    page.goto(f"{server}/index.html")
    page.get_by_role("link", name=XSS).click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text().startswith(XSS)
    assert page.locator("table.seeds tbody tr").count() == 1
    page.locator("table.seeds tbody tr a").click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text().startswith(XSS)
    assert page.locator("svg.plot").count() == 2
    assert page.locator("svg.plot").first.bounding_box()["width"] > 100
    assert page.problems == []


def test_entry_page_lists_its_seeds(page, server):
    page.goto(f"{server}/index.html")
    row = page.locator(TINY + "tbody.ranked tr", has=page.get_by_role("link", name=SEEDED, exact=True))
    assert row.locator("td:nth-child(5)").inner_text() == "3"
    assert row.locator("td:nth-child(4)").inner_text().startswith("± ")
    row.get_by_role("link", name=SEEDED, exact=True).click()
    page.wait_for_load_state("load")
    seeds = page.locator("table.seeds tbody tr")
    assert seeds.count() == 3
    assert seeds.locator("td:first-child").all_inner_texts() == ["0", "1", "2"]
    assert [float(t) for t in seeds.locator("td:nth-child(2)").all_inner_texts()] == SEEDED_LOSSES
    assert "3.01120" in page.locator("section").first.inner_text()  # the mean, five decimals
    assert page.problems == []


def test_history_page_has_the_progression_plot(page, server):
    page.goto(f"{server}/index.html")
    page.locator(TINY + "p.table-note").get_by_role("link", name="Record history, progression and frontier plots").click()
    page.wait_for_load_state("load")
    assert page.locator("figure.progression svg.plot").count() == 1
    assert page.locator("figure.progression svg.plot").bounding_box()["width"] > 100
    assert page.locator("figure.frontier svg.plot").count() == 1
    assert page.locator("table.history tbody tr").count() >= 2
    assert page.problems == []


def test_classes_are_separate_tables_and_an_over_cap_run_says_why(page, server):
    page.goto(f"{server}/index.html")
    titles = page.locator("section.track h2").all_inner_texts()
    assert "synthetic · tiny data aaaaaaaaaaaa" in titles and "synthetic · limited data aaaaaaaaaaaa" in titles
    limited = page.locator("section.track[data-track=synthetic][data-class=limited]")
    assert limited.locator("tbody.ranked td.method").all_inner_texts() == ["hour-long"]
    over = page.locator(TINY + "tbody.unranked tr", has=page.get_by_role("link", name="too-slow"))
    assert over.locator("td:first-child").inner_text() == "—"
    assert OVER_CAP in over.locator("ul.reasons").inner_text()
    assert "8× H100 · 2.2 GPU-h" in over.inner_text() and "16.2 min" in over.inner_text()
    assert page.problems == []


def test_reported_rows_carry_their_badge_and_link_their_script(page, server):
    page.goto(f"{server}/index.html")
    reported = page.locator("section.track.reported")
    assert reported.count() == 4  # limited, tiny, two-hour, unlimited
    rows = page.locator("section.track.reported tbody tr")
    assert rows.count() == 52
    assert page.locator("section.track.reported tbody tr .badge.provenance-reported").count() == 52
    assert page.locator("section.track:not(.reported) .badge.provenance-reported").count() == 0
    page.locator("section.track.reported").first.locator("td.method a").first.click()
    page.wait_for_load_state("load")
    assert page.locator("a.script").get_attribute("href").startswith("https://github.com/")
    assert page.problems == []


def test_site_also_works_from_files(page, site, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(site, copy)
    page.goto((copy / "index.html").as_uri())
    tiny_button(page, "Val loss (nats/token)").click()
    tiny_button(page, "Val loss (nats/token)").click()
    assert ranked_names(page) == by_loss(descending=True)
    assert page.problems == []
