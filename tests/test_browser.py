"""The search page in a real browser: Debian's headless Chromium driven by Playwright (no browser downloads).

Skips with the reason when /usr/bin/chromium or the playwright package is missing; ``make browser`` (run by
``make test``) installs Debian's chromium. Screenshots go to the test's tmp dir, and also to
``$UNIMIR_SCREENSHOT_DIR`` when it is set.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("UNIMIR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _missing() -> str | None:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"Debian chromium not found at {CHROMIUM} (install it with 'make browser' or 'apt-get install chromium')"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install 'unimir[dev]')"
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return "the serve extra is not installed (pip install 'unimir[serve]')"
    return None


pytestmark = [pytest.mark.browser, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A live server on 127.0.0.1 over a 42-item index; yields (base url, data root)."""
    from unimir.index import Index
    from unimir.serve import create_app
    from unimir.serve.testing import ServerThread, sample_pool

    root = tmp_path_factory.mktemp("browser-data")
    out = tmp_path_factory.mktemp("browser-index") / "idx"
    index = Index.build(sample_pool(root), out, root=root, encoder="builtin")
    with ServerThread(create_app(index, warm_up=True)) as server:
        yield server.url, root


@pytest.fixture
def page(live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            pg = context.new_page()
            pg.set_default_timeout(30_000)
            pg.page_errors = []
            pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
            yield pg
        finally:
            browser.close()


def _shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("UNIMIR_SCREENSHOT_DIR"):
        target = Path(os.environ["UNIMIR_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def _card_ids(page) -> list[str]:
    return page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")


def _wait_for_query(page, fragment: str) -> None:
    page.wait_for_function(
        "f => { const s = document.getElementById('summary'); return !s.hidden && s.textContent.includes(f); }",
        arg=fragment)
    page.wait_for_selector("#search-button:not([disabled])")


def _thumbnails_loaded(page) -> None:
    page.wait_for_function("""() => {
        const imgs = [...document.querySelectorAll('.card .thumb img')];
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
    }""")


def test_search_page_text_and_image_searches(live, page, tmp_path):
    url, root = live
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('stats').textContent.includes('42 items')")
    assert page.title() == "unimir search"
    assert page.locator("#preset option").count() == 10  # "Custom" + 9 task presets

    # 1. text search: a grid of cards with thumbnails, score, id, modality and the timing line
    page.fill("#q-text", "a red car")
    page.click("#search-button")
    _wait_for_query(page, "A red car.")
    assert page.locator(".card").count() == 12
    ids = _card_ids(page)
    assert ids[0] == "txt:3" and "cap:red_square" in ids
    _thumbnails_loaded(page)
    first = page.locator(".card").first  # a text item: text, no picture
    assert first.locator(".thumb").count() == 0
    assert first.locator(".text").inner_text() == "A red sports car parked on a city street."
    assert first.locator(".badge").inner_text().lower() == "text"
    assert first.locator(".rank").inner_text() == "#1"
    assert float(first.locator(".score").inner_text()) > 0
    caption = page.locator(".card[data-id='cap:red_square']")  # image+text: picture and text
    assert caption.locator(".thumb img").count() == 1 and caption.locator(".text").inner_text() == "A red square."
    assert caption.locator(".badge").inner_text().lower() == "image+text"
    assert "encode" in page.inner_text("#timing") and "round trip" in page.inner_text("#timing")
    _shot(page, tmp_path, "search-page-text.png")

    # 2. image upload through the picker, restricted to images, identical image kept
    page.fill("#q-text", "")
    page.check("#modality input[value='image']", force=True)
    page.uncheck("#exclude")
    page.set_input_files("#q-file", str(root / "shapes" / "orange_square.png"))
    assert page.locator(".drop-filled").is_visible()
    page.click("#search-button")
    _wait_for_query(page, "uploaded image")
    ids = _card_ids(page)
    assert ids[0] == "shapes/orange_square.png"
    assert all(i.startswith("shapes/") for i in ids)
    _thumbnails_loaded(page)
    _shot(page, tmp_path, "search-page-image.png")

    # 3. drag and drop a file onto the drop zone
    png = base64.b64encode((root / "shapes" / "teal_triangle.png").read_bytes()).decode()
    page.evaluate("""b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        const zone = document.getElementById('drop');
        zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", png)
    assert "dropped.png" in page.inner_text("#drop-name")
    page.click("#search-button")
    page.wait_for_function("() => document.querySelector('.card') && "
                           "document.querySelector('.card').dataset.id === 'shapes/teal_triangle.png'")

    # 4. clicking a result's image searches with it
    target = page.locator(".card").nth(1)
    clicked = target.get_attribute("data-id")
    target.locator(".thumb").click()
    _wait_for_query(page, "image of " + clicked)
    assert page.locator(".card").count() > 0
    assert clicked in page.inner_text("#drop-name")

    assert page.page_errors == []


def test_search_page_shows_errors_in_the_page(live, page, tmp_path):
    url, _ = live
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('stats').textContent.includes('items')")
    # nothing to search with: the page says so instead of calling the server
    page.click("#search-button")
    assert page.locator("#error").is_visible()
    assert "Type a query" in page.inner_text("#error")
    # an undecodable upload: the server's 400 message appears in the page, which keeps working
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n definitely not a picture")
    page.set_input_files("#q-file", str(bad))
    page.click("#search-button")
    page.wait_for_function("() => !document.getElementById('error').hidden && "
                           "document.getElementById('error').textContent.includes('cannot decode')")
    _shot(page, tmp_path, "search-page-error.png")
    page.click("#drop-clear")
    page.fill("#q-text", "hot soup")
    page.fill("#k", "5000")
    page.click("#search-button")
    page.wait_for_function("() => document.getElementById('error').textContent.includes('k must be')")
    page.fill("#k", "4")
    page.click("#search-button")
    _wait_for_query(page, "Hot soup.")
    assert page.locator("#error").is_hidden()
    assert page.locator(".card").count() == 4
    assert page.page_errors == []
