"""Screenshots of each page kind of the leaderboard, at 1280 px in Chromium, for docs/board/.

Builds the board from leaderboard/records and Slowrun's published tables into a temporary folder, opens
it in Debian's chromium through playwright (never a downloaded browser) and writes 256-colour PNGs:

    python docs/board/screenshots.py [--out docs/board]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from leaderboard.naming import DEFAULT_RECORDS_DIR
from leaderboard.published import DEFAULT_PUBLISHED
from leaderboard.site import build_site

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}
TALLEST = 2200  # px: longer pages are cut here


def save_small(png: bytes, path: Path) -> None:
    """The screenshot cut to TALLEST px and reduced to 256 colours (text and flat colours survive it)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.crop((0, 0, image.width, min(image.height, TALLEST)))
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    out = Path(parser.parse_args().out)
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder) / "site"
        build_site(DEFAULT_RECORDS_DIR, site, workers=1, published=DEFAULT_PUBLISHED)
        table = next(p for p in sorted((site / "t").glob("*.html")) if "webtext" in p.name)
        entry = max((p for p in (site / "e").glob("q0-*.html")), key=lambda p: "32.000" in p.read_text())
        record = next(p for p in sorted((site / "r").glob("*.html")) if "webtext__q0" in p.name and "e32-s0" in p.name)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport=VIEWPORT)
            page.goto((site / "index.html").as_uri())
            save_small(page.screenshot(full_page=True), out / "board-index.png")
            save_small(page.locator("section.track[data-track=webtext]").screenshot(), out / "board-table-webtext.png")
            for name, path in (("track-page-webtext", table), ("entry-page-q0", entry), ("record-page-q0", record)):
                page.goto(path.as_uri())
                save_small(page.screenshot(full_page=True), out / f"{name}.png")
            browser.close()


if __name__ == "__main__":
    main()
