"""The ops console in a real headless Chromium (Debian's ``chromium`` and ``chromedriver``,
driven by Selenium) against the shared stack: without the ops key no page shows data; a
payment found by its order number shows its whole timeline; a review approved moves the
payment on; a reconciliation exception is resolved after its entries are previewed; a dead
letter is corrected and replayed. Each page is drawn to ``.paycore/artifacts/console/``.

One browser for the module, the session's one stack for everything (so it sits with the
integration tests: the stack is up already, and the e2e tests' own stacks run without it).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from console_flows import dead_lettered, duplicate_settlement, held_for_review, poll, sale

from streams.settings import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ARTIFACTS = ROOT / ".paycore" / "artifacts" / "console"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT_S = 30
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")
"""Chromium as root on a closed network hangs without these (and a fresh profile)."""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing} missing: scripts/install-system-deps.sh installs them"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The console's pages as a person uses them."""

    def __init__(self, driver, base_url: str) -> None:
        self.driver, self.base = driver, base_url

    def sign_in(self, key: str, who: str = "ana", page: str = "search") -> None:
        """A fresh session on ``page``: the key entered there, once."""
        self.driver.get(f"{self.base}/console#/{page}")
        self.driver.execute_script("sessionStorage.clear();")
        self.driver.refresh()
        self.typed("#ops-key", key)
        self.typed("#operator", who)
        self.click("#sign-in")

    def go(self, page: str) -> None:
        self.driver.get(f"{self.base}/console#/{page}")

    def find(self, css: str, text: str = ""):
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        def there(driver):
            try:
                for found in driver.find_elements(By.CSS_SELECTOR, css):
                    if text in found.text:
                        return found
            except StaleElementReferenceException:
                pass  # the page was drawn again meanwhile: look again
            return False

        try:
            return WebDriverWait(self.driver, WAIT_S).until(there)
        except Exception as exc:
            main = self.driver.find_element(By.ID, "main").text[-1500:]
            raise AssertionError(f"no {css!r} with {text!r}; the page shows:\n{main}") from exc

    def all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def typed(self, css: str, text: str) -> None:
        box = self.find(css)
        box.clear()
        box.send_keys(text)

    def click(self, css: str, text: str = "") -> None:
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(5):
            try:
                self.find(css, text).click()
                return
            except StaleElementReferenceException:  # drawn again between find and click
                time.sleep(0.2)
        self.find(css, text).click()

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        assert path.stat().st_size > 10_000, path  # a page, not an empty frame
        return path


@pytest.fixture
def console(browser, api_ready, stack_settings) -> Console:
    page = Console(browser, f"http://127.0.0.1:{stack_settings.api_port}")
    page.sign_in(stack_settings.ops_key.get_secret_value())
    page.find("#m-audit")  # the live strip came: the key works
    return page


def test_without_the_ops_key_no_page_shows_data(browser, api_ready, stack_settings, shop):
    page = Console(browser, f"http://127.0.0.1:{stack_settings.api_port}")
    page.sign_in("not-a-key-of-anyone-here")
    assert "unauthorized" in page.find("#refused").text

    refusals = {}
    for where in ("search/anything", "payment/pay_x", "reviews", "exceptions", "deadletters",
                  "deadletter/dl_x"):
        page.sign_in(shop.key, page=where)  # a merchant's key: valid, and not for this
        refusals[where] = page.find("#refused").text
        assert page.all("#main table, #timeline, #strip .metric") == [], where

    assert all("ops_key_required" in text for text in refusals.values()), refusals
    page.shot("signed-out")


def test_search_a_payment_and_see_its_whole_timeline(console, shop, api):
    paid = sale(shop, "ui-twice", amount=10_207)  # the channel answers twice, and notifies
    poll(lambda: api.get(f"/v1/ops/payments/{paid['payment_id']}/timeline"),
         lambda r: any("3 of 3" in i["detail"] for i in r.json()["items"]))

    console.go("search")
    console.typed("#search-input", "ui-twice")
    console.click("#search-go")
    console.find("#timeline li[data-kind=ledger]", "3 of 3")

    kinds = [li.get_attribute("data-kind") for li in console.all("#timeline li")]
    wanted = ["risk", "routing", "channel", "callback", "status", "ledger"]
    assert [k for k in kinds if k in wanted][:6] == wanted, kinds
    answered = console.find("#timeline li[data-kind=callback]").text
    assert re.search(r"×(\d+)\n", answered) and re.search(
        r"\d+ cop(y|ies) of the same answer again: ignored", answered), answered
    assert console.find("#payment-status").text == "succeeded"
    console.shot("timeline")


def test_approve_a_review_and_see_the_payment_move_on(console, shop, api):
    held = held_for_review(shop, "ui-review")
    payment_id = held["payment_id"]

    console.go("reviews")
    row = console.find(f"#review-{payment_id}")
    assert "card-usd-large +50" in row.find_element("css selector", ".rules").text
    console.shot("reviews")
    row.find_element("css selector", ".review-comment").send_keys("known customer")
    row.find_element("css selector", "button.approve").click()
    outcome = console.find(f"#outcome-{payment_id}")

    assert outcome.text == "approved: the payment is now succeeded"
    history = api.get(f"/v1/payments/{payment_id}").json()["history"]
    assert "approved in review by ana: known customer" in [h["reason"] for h in history]


def test_resolve_a_reconciliation_exception_after_previewing_its_entries(
        console, shop, api, producer):
    paid, exception = duplicate_settlement(shop, api, producer, "ui-dup")
    exception_id = exception["exception_id"]

    console.go("exceptions?kind=duplicate_settlement&state=open")
    console.click(f'tr.exception[data-id="{exception_id}"]')
    console.find("#exception-card", "Records involved")
    console.typed("#resolve-comment", "the acquirer paid it twice")
    console.click("#preview-resolve")
    shown = console.find("#preview-entries", "suspense:USD")
    console.shot("exception-preview")
    console.click("#confirm-resolve")
    outcome = console.find("#resolution-outcome")

    assert "These entries will be posted" in shown.text and "10,000 USD" in shown.text
    assert outcome.text == "Resolved by ana: write_off; reconciliation item closed"
    state = api.get(f"/v1/ops/recon/exceptions/{exception_id}").json()["state"]
    assert (state["resolver"], state["comment"]) == ("ana", "the acquirer paid it twice")
    console.go(f"payment/{paid['payment_id']}")
    console.find("#timeline li[data-kind=resolution]", "resolved by ana: write_off")
    console.shot("exception-in-timeline")


def test_replay_a_corrected_dead_letter(console, shop, api, producer):
    dead = dead_lettered(producer, api, shop.id, "ui-dead")

    console.go("deadletters")
    console.find("#stage-filter option", "intake").click()
    console.typed("#reason-filter", "amount_minor")
    console.click("#filter-go")
    ours = f'tr.dead-letter[data-id="{dead["dead_letter_id"]}"]'
    console.find(ours)
    console.shot("dead-letters")
    console.click(ours)  # the list may be drawn again after the filter: CI saw a stale row
    raw = console.find("#raw-message", "10.5").text
    console.typed("#replay-value", json.dumps({**json.loads(raw), "amount_minor": 1_050}))
    console.typed("#replay-comment", "amount in minor units")
    console.click("#replay")
    state = console.find("#dead-letter-state", "replayed by ana")

    assert "amount in minor units" in state.text
    payment = poll(lambda: api.get(f"/v1/payments/{dead['payment_id']}"),
                   lambda r: r.status_code == 200 and r.json()["status"] == "succeeded")
    assert (payment.json()["status"], payment.json()["amount_minor"]) == ("succeeded", 1_050)
    console.shot("dead-letter-replayed")

