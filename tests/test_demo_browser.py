"""The demo in headless Chromium: two tabs share notes live, before and after the master dies.

Uses Debian's ``/usr/bin/chromium`` through Playwright (never a downloaded browser); the
screenshots stay in ``test-artifacts/`` for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from demo.process import RunningDemo

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_MS = 20_000  # a failover in the sandbox takes 1-3 s; edits wait for it
TAB_ATTEMPTS = 12  # tabs opened until one lands on the other worker (each: 1 in 2)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium: CHANNELS_HA_BROWSER=1 ./scripts/setup"
)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[RunningDemo]:
    """The demo on its embedded Sentinel sandbox, stopped (with everything it started) after."""
    with RunningDemo(tmp_path / "notes.sqlite3") as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium, closed after the test."""
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


def open_tab(browser: Browser, url: str, name: str) -> Page:
    """A tab of its own (own storage, so its own name), connected; returns once it has a pid."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.add_init_script(f"localStorage.setItem('demo-name', {name!r})")
    page = context.new_page()
    page.goto(url)
    playwright.expect(page.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
    return page


def open_tab_on_other_worker(browser: Browser, url: str, name: str, pid: str) -> Page:
    """Open tabs until the kernel hands one's socket to a worker other than ``pid``."""
    for _ in range(TAB_ATTEMPTS):
        page = open_tab(browser, url, name)
        if page.locator("#worker-pid").inner_text() != pid:
            return page
        page.context.close()
    raise AssertionError(f"{TAB_ATTEMPTS} tabs all landed on worker {pid}")


def add_note(page: Page, text: str) -> None:
    page.fill("#new-note", text)
    page.press("#new-note", "Enter")


def wait_for_note(page: Page, text: str) -> None:
    page.wait_for_function(
        "text => [...document.querySelectorAll('#notes input')].some(i => i.value === text)",
        arg=text,
        timeout=WAIT_MS,
    )


def test_two_tabs_share_notes_before_and_after_a_master_kill(
    demo: RunningDemo, browser: Browser
) -> None:
    """Tabs on two workers see each other's notes and presence, across a kill -9 of the master."""
    alice = open_tab(browser, demo.url, "Alice")
    bob = open_tab_on_other_worker(
        browser, demo.url, "Bob", alice.locator("#worker-pid").inner_text()
    )
    playwright.expect(alice.locator("#people")).to_contain_text("Bob", timeout=WAIT_MS)
    add_note(alice, "Hello from Alice")
    wait_for_note(bob, "Hello from Alice")

    kill = alice.locator("#kill-master")
    playwright.expect(kill).to_be_enabled(timeout=WAIT_MS)  # the sandbox reports healthy
    master_before = alice.locator("#master").inner_text()
    kill.click()
    playwright.expect(alice.locator("#toast")).to_contain_text("Killed", timeout=WAIT_MS)
    add_note(bob, "Bob typed this while the master was down")
    wait_for_note(alice, "Bob typed this while the master was down")
    playwright.expect(alice.locator("#master")).not_to_have_text(master_before, timeout=WAIT_MS)
    add_note(alice, "Alice, after the failover")
    wait_for_note(bob, "Alice, after the failover")

    playwright.expect(alice.locator("#kill-master")).to_be_enabled(timeout=WAIT_MS)  # healed
    ARTIFACTS.mkdir(exist_ok=True)
    alice.screenshot(path=ARTIFACTS / "demo-alice.png", full_page=True)
    bob.screenshot(path=ARTIFACTS / "demo-bob.png", full_page=True)
    for page in (alice, bob):
        assert page.evaluate("state.closes") == 0, "a socket closed during the failover"
        playwright.expect(page.locator("#status")).to_have_text("connected")
