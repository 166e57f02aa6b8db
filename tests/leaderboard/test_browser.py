"""The built site in a real browser: rank order, click-to-sort, entries and their seeds, record history,
compute classes, published results, no script injection, no errors; and at 1280 px, every page without
sideways scrolling, every table row on one line, and no column that is empty for its whole table.

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
from tests.leaderboard.test_holdout import section as held_out_section

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
WIDE = "wide"  # a table of the longest texts a row can hold: its name, flags, a bound, a reason
LONG_NAME = ("a-method-whose-name-goes-on-and-on-" * 3)[:95]  # as long as a name may be, less "-over"
LONG_REASON = "trained 31.7 min, past the tiny class's 15 min cap; " * 3
VIEWPORT = {"width": 1280, "height": 900}

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
    records += wide_records()
    write_board(root / "records", records)
    build_site(root / "records", root / "site", workers=1, published=DEFAULT_PUBLISHED)
    return root / "site"


def wide_records() -> list[dict]:
    """Entries whose cells are as long as the board makes them: a long name, every flag, a bound with its note,
    multi-node hardware, and an unranked run with a long reason."""
    host = {"kind": "landlock", "abi": 7, "network": {"kind": "host", "interfaces": ["lo", "eth0"], "processes": "host"}}
    long = make_record(40, track__name=WIDE, method__name=LONG_NAME, sandbox=host,
                       result__data_efficiency={"multiplier": None, "bound": ">20.5x", "flag": "below-table"})
    long["snapshots"][0]["evaluated_by"] = "method code"
    long["compute"]["hardware"] = {"gpu_model": "H100", "gpus_per_node": 8, "nodes": 16, "gpu_hours": 1234.5}
    seeds = [make_record(41 + seed, track__name=WIDE, method__name="seeded-wide", method__hash=method_hash("w"),
                         seed=seed, sandbox={"kind": "none"}, result__val_loss=3.01 + 0.001 * seed,
                         verified={"ok": True, "kind": "re-evaluated"}, budget_epochs=32.0,
                         metered={"epochs": 31.933, "train_tokens": 3_193_300, "per_stream": {"main": 3_193_300},
                                  "fitness_tokens": 0})
             for seed in range(3)]
    for record in seeds:
        record["snapshots"][0]["evaluated_by"] = "method code"  # two flags on every run, as on webtext
    # scored on a held-out test split: the table gains its Test loss column, one entry with a flagged gap
    for record, test_loss in ((long, 3.4321), *((seed, 3.0105) for seed in seeds)):
        record.update(schema_version=3, test=held_out_section(test_loss))
    unranked = make_record(44, track__name=WIDE, method__name=LONG_NAME + "-over", unranked_reasons=[LONG_REASON])
    return [long, *seeds, unranked]


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
    context = browser.new_context(viewport=VIEWPORT)
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
    loss_header = tiny_button(page, "Val loss")
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
    assert over.locator("span.reasons").inner_text() == OVER_CAP
    assert "8×H100" in over.inner_text() and "16.2 min" in over.inner_text()
    over.get_by_role("link", name="too-slow").click()
    page.wait_for_load_state("load")
    assert "8× H100 · 2.2 GPU-h" in page.locator("table.kv").inner_text()  # spelled out on the entry page
    assert OVER_CAP in page.locator("table.kv ul.reasons").inner_text()
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
    tiny_button(page, "Val loss").click()
    tiny_button(page, "Val loss").click()
    assert ranked_names(page) == by_loss(descending=True)
    assert page.problems == []


# --- layout at 1280 px ----------------------------------------------------------------------------------

LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth) problems.push(`page ${root.scrollWidth} > ${root.clientWidth} px wide`);
  document.querySelectorAll(".scroll").forEach((box, i) => {
    if (box.scrollWidth > box.clientWidth) problems.push(`scroll box ${i}: ${box.scrollWidth} > ${box.clientWidth}`);
  });
  document.querySelectorAll("table").forEach((table, i) => {
    const right = table.getBoundingClientRect().right;
    if (right > root.clientWidth) problems.push(`table ${i} (${table.className}) ends at ${right} px`);
  });
  document.querySelectorAll("table.fit td:not(.method):not(.status):not(.run), table.fit th").forEach((cell) => {
    const text = document.createRange();
    text.selectNodeContents(cell);
    const style = getComputedStyle(cell);
    const room = cell.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const width = text.getBoundingClientRect().width;
    if (width > room + 0.5) problems.push(`cell "${cell.innerText}" is cut: ${width} px in ${room}`);
  });
  document.querySelectorAll("table.oneline tbody tr").forEach((row) => {
    const cell = row.cells[0], style = getComputedStyle(cell);
    const line = parseFloat(style.lineHeight);
    const frame = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom) + 2;
    const height = row.getBoundingClientRect().height;
    if (height > frame + 1.5 * line) problems.push(`row "${row.innerText.slice(0, 40)}" is ${height} px tall`);
  });
  return problems;
}"""


def layout_problems(page) -> list[str]:
    return page.evaluate(LAYOUT_PROBLEMS)


def pages_of_each_kind(site) -> list[str]:
    """The board, every table page, every entry page and a record page of each table."""
    pages = ["index.html"] + sorted(f"t/{p.name}" for p in (site / "t").glob("*.html"))
    pages += sorted(f"e/{p.name}" for p in (site / "e").glob("*.html"))
    return pages + sorted(f"r/{p.name}" for p in (site / "r").glob("*.html"))[::10]


def test_every_page_fits_1280_px_and_every_table_row_is_one_line(page, server, site):
    assert page.viewport_size == VIEWPORT
    checked = 0
    for name in pages_of_each_kind(site):
        page.goto(f"{server}/{name}")
        assert layout_problems(page) == [], name
        checked += page.locator("table.oneline tbody tr").count()
    assert checked > 150  # the boards, histories, frontiers and seed tables were all measured
    assert page.problems == []


def test_the_widest_rows_are_cut_not_wrapped(page, server):
    page.goto(f"{server}/index.html")
    wide = page.locator(f"section.track[data-track={WIDE}]")
    row = wide.locator("tbody.ranked tr", has=page.get_by_role("link", name=LONG_NAME, exact=True))
    assert row.locator("td.method a").get_attribute("title") == LONG_NAME  # whole in the tooltip
    assert row.locator("td.method").evaluate("td => td.scrollWidth > td.clientWidth")  # and cut on the row
    assert row.locator(".badge").all_inner_texts() == ["measured", "method code", "host network", "host processes"]
    assert "16×8×H100" in row.inner_text()
    reason = wide.locator("tbody.unranked span.reasons")
    assert reason.get_attribute("title") == LONG_REASON
    assert layout_problems(page) == []


def test_the_test_loss_column_fits_beside_val_loss_with_its_flag(page, server):
    page.goto(f"{server}/index.html")
    wide = f"section.track[data-track={WIDE}]"
    columns = headers(page, wide)
    assert columns[columns.index("Val loss") + 1] == "Test loss"
    flagged = page.locator(f"{wide} tbody.ranked tr", has=page.get_by_role("link", name=LONG_NAME, exact=True))
    cell = flagged.locator("td", has=page.locator("span.flag.test-gap"))
    assert cell.count() == 1 and cell.evaluate("td => td.scrollWidth <= td.clientWidth")  # loss and flag whole
    calm = page.locator(f"{wide} tbody.ranked tr", has=page.get_by_role("link", name="seeded-wide", exact=True))
    assert calm.locator("span.flag.test-gap").count() == 0
    assert layout_problems(page) == []


def test_two_flags_fit_their_status_cells(page, server):
    page.goto(f"{server}/index.html")
    row = page.locator(f"section.track[data-track={WIDE}] tbody.ranked tr",
                       has=page.get_by_role("link", name="seeded-wide", exact=True))
    cell = row.locator("td.status")
    assert cell.locator(".badge").all_inner_texts() == ["unsandboxed", "method code"]
    assert cell.evaluate("td => td.scrollWidth <= td.clientWidth")  # both whole, nothing cut
    row.get_by_role("link", name="seeded-wide", exact=True).click()
    page.wait_for_load_state("load")
    for cell in page.locator("table.seeds td.status").all():
        assert cell.evaluate("td => td.scrollWidth <= td.clientWidth")
    columns = [" ".join(t.split()) for t in page.locator("table.seeds thead th").all_inner_texts()]
    epochs = columns.index("Epochs") + 1
    assert page.locator(f"table.seeds tbody td:nth-child({epochs})").all_inner_texts() == ["31.933"] * 3
    test_loss = columns.index("Test loss") + 1  # each seed's own, after its val loss
    assert columns[test_loss - 2] == "Val loss"
    assert page.locator(f"table.seeds tbody td:nth-child({test_loss})").all_inner_texts() == ["3.01050"] * 3


def headers(page, selector: str) -> list[str]:
    return [" ".join(t.split()) for t in page.locator(selector + " table.board thead th").all_inner_texts()]


def test_columns_empty_for_a_whole_table_are_left_out(page, server):
    page.goto(f"{server}/index.html")
    limited = headers(page, "section.track.reported[data-class=limited]")
    # published: single runs (no interval), no metered epochs, no flags; their time and hardware as published
    assert limited == ["Rank", "Method", "Val loss", "n", "Data efficiency", "Training time", "Hardware", "Date",
                       "Provenance"]
    unlimited = headers(page, "section.track.reported[data-class=unlimited]")
    assert "Hardware" in unlimited and "Epochs" not in unlimited  # some unlimited rows state their hardware
    tiny = headers(page, TINY)
    assert tiny == ["Rank", "Method", "Val loss", "95% CI", "n", "Data efficiency", "Epochs", "Training time",
                    "Hardware", "Date", "Provenance", "Status"]
    for gone in ("Bits/byte", "Ensemble K", "Wall time", "Downstream avg acc (%)"):
        assert gone not in tiny  # on the entry page instead
    assert page.locator(TINY + "tbody.ranked td:nth-child(5)").all_inner_texts() == ["3", "1", "1", "1", "1", "1"]
