"""The built site in a real browser: rank order, click-to-sort, plots, no script injection, no errors.

Needs Debian's chromium (/usr/bin/chromium) and the playwright package; skipped without them.
"""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from leaderboard.site import build_site
from tests.leaderboard.factory import failed_record, make_record, write_board

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS = "<script>alert(1)</script>"
LOSSES = [3.31, 3.05, 3.47, 3.12, 3.26]  # ranked order differs from file order and from name order
NAMES = ["delta", "echo", "alpha", "charlie", XSS]

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
    write_board(root / "records", records)
    build_site(root / "records", root / "site", workers=1)
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
    return page.locator("table.board tbody.ranked tr td.method").all_inner_texts()


def loss_column(page) -> list[float]:
    return [float(t) for t in page.locator("table.board tbody.ranked tr td:nth-child(3)").all_inner_texts()]


def by_loss(descending: bool = False) -> list[str]:
    return [name for _, name in sorted(zip(LOSSES, NAMES), reverse=descending)]


def test_rows_in_rank_order_and_header_clicks_sort(page, server):
    page.goto(f"{server}/index.html")
    assert ranked_names(page) == by_loss()
    assert page.locator("table.board tbody.ranked tr td:first-child").all_inner_texts() == ["1", "2", "3", "4", "5"]

    page.get_by_role("button", name="Method").click()
    assert ranked_names(page) == sorted(NAMES, key=str.lower)
    loss_header = page.get_by_role("button", name="Val loss (nats/token)")
    loss_header.click()
    assert ranked_names(page) == by_loss()
    assert loss_column(page) == sorted(LOSSES)
    loss_header.click()
    assert ranked_names(page) == by_loss(descending=True)
    assert loss_column(page) == sorted(LOSSES, reverse=True)
    assert page.locator("th[aria-sort=descending]").count() == 1
    # the unranked run stays below the ranking whatever the order
    assert page.locator("table.board tbody.unranked tr td.method").all_inner_texts() == ["zulu-crashed"]
    assert XSS in ranked_names(page)  # shown as text, not run
    assert page.problems == []


def test_record_page_has_plots_and_no_errors(page, server):
    page.goto(f"{server}/index.html")
    page.get_by_role("link", name=XSS).click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text().startswith(XSS)
    assert page.locator("svg.plot").count() == 2
    assert page.locator("svg.plot").first.bounding_box()["width"] > 100
    assert page.problems == []


def test_site_also_works_from_files(page, site, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(site, copy)
    page.goto((copy / "index.html").as_uri())
    page.get_by_role("button", name="Val loss (nats/token)").click()
    page.get_by_role("button", name="Val loss (nats/token)").click()
    assert ranked_names(page) == by_loss(descending=True)
    assert page.problems == []
