"""End to end in a real headless Chromium: type a query, get the grid, open an explanation; a
shared URL, a result's frame with its box, its track, and "find this person".

Uses the system's Chromium (Debian's ``chromium``; or the binary named by $IVT_CHROMIUM) driven by
Playwright, since Playwright's own browser download is not available everywhere. `make test`
installs Chromium when it can; where no Chromium exists these tests are skipped, saying why.
"""
from __future__ import annotations

import contextlib
import os
import shutil

import pytest

import ivt
from ivt.index.build import add_to_index, build_index
from ivt.index.ingest import image_source
from ivt.serve import create_app, load_service
from ivt.video import read_frames
from search_helpers import ColourDetector, running_server, tiny_trained_run, write_clip


def _chromium() -> str | None:
    for candidate in (os.environ.get("IVT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


@contextlib.contextmanager
def _served_page(tmp_path_factory, tmp_path, clip_size=(160, 120), viewport=(1200, 900)):
    """The tiny model's index (8 test photos, a 6-frame clip of two walkers) served on a free
    port, and a page of the system Chromium; yields (page, base URL, service, clip, errors)."""
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
    write_clip(clip, frames=6, size=clip_size)
    add_to_index(index_dir, model, videos=[clip], detector=ColourDetector(), progress=False)
    service = load_service(index_dir, device="cpu")
    with running_server(create_app(service=service)) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield page, base, service, clip, errors
        finally:
            browser.close()


def test_search_page_in_headless_chromium(tmp_path_factory, tmp_path):
    with _served_page(tmp_path_factory, tmp_path) as (page, base, _service, _clip, errors):
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


def test_shared_url_frame_view_and_find_this_person_in_chromium(tmp_path_factory, tmp_path):
    """A query URL reproduces its search; a video result opens its frame with the box drawn where
    the crop was (checked in a screenshot) and its track strip; "find this person" searches by
    the result, leaves it out, and its URL reproduces that search too."""
    import io

    import numpy as np
    from PIL import Image

    with _served_page(tmp_path_factory, tmp_path, clip_size=(320, 240), viewport=(1400, 1000)) as (
            page, base, service, clip, errors):
        page.goto(base + "/?q=a+person+in+a+red+shirt&k=5")
        page.wait_for_selector("#grid[data-state=ready]", timeout=20_000)
        assert page.locator("#grid figure.result").count() == 5
        assert page.input_value("#query") == "a person in a red shirt"
        assert not page.is_visible("#like-chip")          # no person sought yet
        # The per-track search of a URL; open a video crop: its frame, boxed, and its track.
        page.goto(base + "/?q=a+person+in+a+red+shirt&k=100&per_track=1")
        page.wait_for_selector("#grid[data-state=ready]", timeout=20_000)
        card = page.locator("#grid figure.result", has_text="walk.avi").first
        item = int(card.get_attribute("data-id"))
        card.click()
        page.wait_for_selector("#frame[data-state=ready]", timeout=20_000)
        page.wait_for_selector("#strip[data-state=ready]", timeout=20_000)
        assert page.locator("#strip img").count() == 6
        assert "camera walk" in page.inner_text("#frame-info")
        shot = Image.open(io.BytesIO(page.locator("#frame").screenshot())).convert("RGB")
        assert page.evaluate("() => document.getElementById('frame').naturalWidth") == 320
        assert abs(shot.size[0] - 320) <= 2 and abs(shot.size[1] - 240) <= 2     # shown at its own size
        shot = shot.crop((0, 0, 320, 240))            # the element's box may round a pixel wider
        frame_no = service.gallery.describe(item)["frame"]
        original = next(f.image for f in read_frames(clip, 1) if f.index == frame_no)
        original = np.asarray(Image.fromarray(original).resize(shot.size, Image.BILINEAR)).astype(int)
        changed = np.abs(np.asarray(shot).astype(int) - original).sum(axis=2) > 150
        scale = shot.size[0] / 320
        x, y, w, h = service.gallery.describe(item)["box"]
        for px, py in ((x - 1, y + h / 2), (x + w, y + h / 2), (x + w / 2, y - 1), (x + w / 2, y + h)):
            col, row = round(px * scale), round(py * scale)
            assert changed[max(0, row - 2):row + 3, max(0, col - 2):col + 3].any(), (px, py)   # the box is drawn
        rows, cols = np.nonzero(changed)                                                   # and nothing else
        assert rows.min() >= (y - 5) * scale and rows.max() <= (y + h + 5) * scale
        assert cols.min() >= (x - 5) * scale and cols.max() <= (x + w + 5) * scale
        assert not changed[round((y + 3) * scale):round((y + h - 3) * scale),
                           round((x + 3) * scale):round((x + w - 3) * scale)].any()     # the person is untouched
        # Find this person from a result: the URL says so, the person's own track is left out.
        card = page.locator("#grid figure.result", has_text="walk.avi").first
        liked = card.get_attribute("data-id")
        card.locator("button.like").click()
        page.wait_for_function(f"() => location.search.includes('like={liked}')", timeout=20_000)
        page.wait_for_selector("#grid[data-state=ready]", timeout=20_000)
        found = page.locator("#grid figure.result").evaluate_all("els => els.map(e => e.dataset.id)")
        assert liked not in found and len(found) == 8 + 1 and page.is_visible("#like-chip")
        assert "each camera's look taken out" in page.inner_text("#status")       # ranked as the same person
        shared = page.url
        page.goto("about:blank")
        page.goto(shared)
        page.wait_for_selector("#grid[data-state=ready]", timeout=20_000)
        assert page.locator("#grid figure.result").evaluate_all("els => els.map(e => e.dataset.id)") == found
        page.screenshot(path=str(tmp_path / "find-this-person.png"), full_page=True)
        assert errors == []
