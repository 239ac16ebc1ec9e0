"""The chat page at / in headless Chromium: it streams a reply and colours it by forward pass.

Needs the chromium binary (Debian's package; `make test` installs it); skipped only where it is missing.
"""

import shutil
from pathlib import Path

import pytest
from server_util import running

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason=f"no chromium binary at {CHROMIUM}: install it (apt-get install -y chromium; `make test` does)")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def chat(page, base: str, prompt: str, max_tokens: int, method: str | None = None) -> None:
    page.goto(base + "/")
    page.wait_for_function("document.getElementById('method').options.length > 0", timeout=10_000)
    if method:
        page.select_option("#method", method)
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#temperature", "0")
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    page.wait_for_selector(".assistant[data-state=done], .assistant[data-state=error]", timeout=30_000)


def test_the_page_streams_a_reply_coloured_by_pass(tiny, browser):
    with running(tiny, method="ar") as r:
        page = browser.new_page()
        chat(page, r.base, "hi", 24, method="jacobi")
        reply = page.locator(".assistant").last
        assert reply.get_attribute("data-state") == "done", reply.inner_text()
        spans = reply.locator("span.p")
        text = "".join(spans.all_text_contents())
        assert text == tiny.generate([{"role": "user", "content": "hi"}], method="ar", max_new_tokens=24).text
        passes = [int(p) for p in spans.evaluate_all("els => els.map(e => e.dataset.pass)")]
        assert passes == sorted(passes) and len(set(passes)) == len(passes) >= 2
        colours = spans.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
        assert all(a != b for a, b in zip(colours, colours[1:]))  # each pass its own colour
        assert "forward passes" in reply.locator(".stats").inner_text() and "jacobi" in reply.inner_text()
        assert page.locator(".user").last.inner_text() == "hi"
        page.close()


def test_the_page_uses_the_api_key_it_is_given(tiny, browser):
    with running(tiny, method="ar", api_key="k3y") as r:
        page = browser.new_page()
        page.goto(r.base + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('unavailable')", timeout=10_000)
        page.fill("#api-key", "k3y")
        page.dispatch_event("#api-key", "change")
        chat(page, r.base, "hi", 8)  # the key is kept in localStorage across the reload
        reply = page.locator(".assistant").last
        assert reply.get_attribute("data-state") == "done", reply.inner_text()
        assert len("".join(reply.locator("span.p").all_text_contents())) > 0
        page.close()
