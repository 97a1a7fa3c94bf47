"""End to end in a real headless Chromium: type a query, get the grid, open an explanation.

Uses the system's Chromium (Debian's ``chromium``; or the binary named by $IVT_CHROMIUM) driven by
Playwright, since Playwright's own browser download is not available everywhere. `make test`
installs Chromium when it can; where no Chromium exists this one test is skipped, saying why.
"""
from __future__ import annotations

import os
import shutil

import pytest

import ivt
from ivt.index.build import add_to_index, build_index
from ivt.index.ingest import image_source
from ivt.serve import create_app, load_service
from search_helpers import ColourDetector, running_server, tiny_trained_run, write_clip


def _chromium() -> str | None:
    for candidate in (os.environ.get("IVT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def test_search_page_in_headless_chromium(tmp_path_factory, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                                         "playwright; `make test` does)")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set IVT_CHROMIUM); `make test` installs it "
                    "when it runs as root with apt")
    run, data = tiny_trained_run(tmp_path_factory.getbasetemp())
    model = ivt.load(run, device="cpu")
    index_dir = tmp_path / "idx"
    build_index(index_dir, model, images=image_source(data, split="test"), progress=False)
    clip = tmp_path / "walk.avi"
    write_clip(clip, frames=6)
    add_to_index(index_dir, model, videos=[clip], detector=ColourDetector(), progress=False)
    service = load_service(index_dir, device="cpu")
    with running_server(create_app(service=service)) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(base + "/")
            page.fill("#query", "a person in a red shirt, with blue trousers")
            page.select_option("#k", "10")
            page.click("#search-button")
            page.wait_for_selector("#grid[data-state=ready]", timeout=20_000)
            assert page.locator("#grid figure.result").count() == 10
            # Every thumbnail actually loaded from /api/images/{id}.
            page.wait_for_function("() => Array.from(document.querySelectorAll('#grid img'))"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=20_000)
            assert "of 20 indexed images" in page.inner_text("#status")
            first_caption = page.inner_text("#grid figure.result >> nth=0")
            assert first_caption.startswith("#1")
            # Open the explanation of a video crop: the provenance shows frame and time.
            page.click("#per-track")
            page.select_option("#k", "100")
            page.click("#search-button")                       # the grid goes to "loading", then "ready"
            page.wait_for_selector("#grid[data-state=ready]", timeout=20_000)
            assert page.locator("#grid figure.result").count() == 8 + 2   # 8 photos, 2 video tracks
            assert page.locator("#grid figure.result", has_text="walk.avi").count() == 2
            video_card = page.locator("#grid figure.result", has_text="walk.avi").first
            video_card.click()
            page.wait_for_selector("#explanation[data-state=ready]", timeout=30_000)
            assert page.evaluate("() => document.getElementById('explanation').naturalWidth") > 100
            provenance = page.inner_text("#provenance")
            assert "frame" in provenance and "time" in provenance and "track start" in provenance
            shot = tmp_path / "search-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert errors == []
        finally:
            browser.close()
