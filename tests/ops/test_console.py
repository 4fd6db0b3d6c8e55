"""The console in a real browser: Debian's headless Chromium, driven by selenium through
Debian's chromedriver, against a real `gateway run`, Redis and the carrier simulator.

Covers: log in; a carrier goes down when its simulator stops and comes back; stop and
start a link and see the queued traffic go out; search by number and see only the
masked form; fix and retry a dead letter; cancel a batch.  Screenshots of each step go
to var/test-artifacts/console/ (git-ignored).  Skips when chromium, chromedriver or
selenium is missing (.ci/run installs them as root).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from gateway.store.embedded import RedisServerProcess
from tests.ops.fleet import Fleet, carrier_view, running_fleet, wait_for

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "var" / "test-artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PHONE = "13800138000"
PASSWORD = "duty-officer-pw"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def _browser(profile: str) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    try:
        return webdriver.Chrome(options=options, service=service)
    except WebDriverException as e:
        pytest.skip(f"headless Chromium did not start: {e.msg}")


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    client = sync_redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    with running_fleet(tmp_path_factory.mktemp("console"), redis_server.url, processes=1) as running:
        # The first operator, made as the README says (a subprocess: no event loop here).
        made = running.cli("users", "add", "duty1", "--role", "operator", "--password-stdin",
                           input_text=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
        wait_for(lambda: carrier_view(running)["state"] == "bound", "bound")
        yield running


@pytest.fixture(scope="module")
def browser(fleet: Fleet) -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = _browser(profile)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(fleet.first.http_base + "/console/")
        wait_text(driver, "login-page", "Log in")
        driver.find_element(By.ID, "login-user").send_keys("duty1")
        driver.find_element(By.ID, "login-password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-submit").click()
        wait_for(lambda: "duty1 (operator)" in text_of(driver, "user"), "logged in")
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver: Any, fleet: Fleet, page: str) -> None:
    """Load the console afresh on `page` (a hash change alone would keep the old DOM)."""
    driver.get("about:blank")
    driver.get(f"{fleet.first.http_base}/console/#{page}")
    wait_for(lambda: "duty1" in text_of(driver, "user"), "the console loaded")


def text_of(driver: Any, element_id: str) -> str:
    try:
        return str(driver.find_element(By.ID, element_id).text)
    except (StaleElementReferenceException, WebDriverException):
        return ""


def wait_text(driver: Any, element_id: str, text: str, timeout_seconds: float = 30.0) -> None:
    wait_for(lambda: text in text_of(driver, element_id), f"{text!r} in #{element_id}", timeout_seconds)


def carrier_state(driver: Any) -> str:
    try:
        return str(driver.find_element(By.CSS_SELECTOR, "tr[data-carrier=cmcc] [data-state]").get_attribute("data-state"))
    except (StaleElementReferenceException, WebDriverException):
        return ""


def shot(driver: Any, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def confirm(driver: Any) -> str:
    """Accept the console's confirmation dialog; returns what it asked."""
    wait_for(lambda: driver.find_element(By.ID, "confirm").get_attribute("open") is not None, "confirmation shown")
    question = text_of(driver, "confirm-text")
    driver.find_element(By.ID, "confirm-yes").click()
    return question


def click_in_row(driver: Any, row_selector: str, label: str) -> None:
    """Click a row's button; the overview redraws every 2 s, so a button found just
    before a redraw is stale: find it again."""

    def click() -> bool:
        try:
            row = driver.find_element(By.CSS_SELECTOR, row_selector)
            next(b for b in row.find_elements(By.TAG_NAME, "button") if b.text == label).click()
        except (StaleElementReferenceException, StopIteration):
            return False
        return True

    wait_for(click, f"{label} clicked in {row_selector}")


def state_of(fleet: Fleet, notification_id: str) -> str:
    return str(fleet.call("GET", f"/v1/notifications/{notification_id}")[1].get("state", ""))


def test_overview_shows_a_carrier_going_down_and_coming_back(fleet: Fleet, browser: Any) -> None:
    """The overview says BOUND, then DOWN with the reason when the SMSC goes away, then
    BOUND again when it is back, without a reload."""
    open_page(browser, fleet, "overview")
    wait_for(lambda: carrier_state(browser) == "bound", "bound shown")
    wait_text(browser, "banner", "All 1 carriers bound")
    # the fleet-wide queue tiles, receipts parked (push.early_receipts_max) among them
    wait_text(browser, "tiles", "Receipts parked")
    # each process's clock: in time, its take-overs no longer held (settled after its start)
    wait_text(browser, "processes", "in time")
    shot(browser, "01-overview-bound")
    fleet.simulator.stop()
    wait_for(lambda: carrier_state(browser) == "down", "down shown", 40)
    assert "cmcc DOWN" in text_of(browser, "banner")
    shot(browser, "02-carrier-down")
    fleet.simulator.start()
    wait_for(lambda: carrier_state(browser) == "bound", "bound again", 40)
    shot(browser, "03-carrier-back")


def test_stop_and_start_a_link_moves_the_traffic(fleet: Fleet, browser: Any) -> None:
    """Stopping the link from the console holds new traffic in its lane; starting it
    sends it (lane back to 0, notification delivered)."""
    open_page(browser, fleet, "overview")
    wait_for(lambda: carrier_state(browser) == "bound", "bound shown")
    click_in_row(browser, "tr[data-carrier=cmcc]", "Stop")
    assert "Stop carrier cmcc" in confirm(browser)
    wait_for(lambda: carrier_state(browser) == "stopped", "stopped shown")
    code, body = fleet.call("POST", "/v1/notifications", [
        {"id": f"held-{i}", "type": "verification_code", "to": PHONE, "params": {"code": "1", "minutes": "5"}}
        for i in range(3)])
    assert code == 202, body

    def high_lane() -> str:
        try:
            return str(browser.find_element(By.CSS_SELECTOR, "tr[data-lane=high] td:nth-child(2)").text)
        except (StaleElementReferenceException, WebDriverException):
            return ""

    wait_for(lambda: high_lane() == "3", "3 waiting in the high lane")
    shot(browser, "04-link-stopped-traffic-waiting")
    click_in_row(browser, "tr[data-carrier=cmcc]", "Start")
    confirm(browser)
    wait_for(lambda: carrier_state(browser) == "bound", "bound after start", 40)
    wait_for(lambda: high_lane() == "0", "the lane drained")
    wait_for(lambda: all(state_of(fleet, f"held-{i}") == "delivered" for i in range(3)), "delivered")
    shot(browser, "05-link-started-traffic-sent")


def test_search_by_number_shows_only_the_masked_form(fleet: Fleet, browser: Any) -> None:
    """A full number typed into search finds the notifications; the page then holds only
    138****8000; the notification page shows its timeline."""
    fleet.call("POST", "/v1/notifications", {"id": "to-search", "type": "verification_code", "to": PHONE,
                                             "params": {"code": "246810", "minutes": "5"}})
    open_page(browser, fleet, "search")
    browser.find_element(By.ID, "search-q").send_keys(PHONE)
    browser.find_element(By.ID, "search-submit").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-id=to-search]"), "the result row")
    cells = {c.text for c in browser.find_elements(By.CSS_SELECTOR, "#results td.to")}  # search does not redraw
    assert cells == {"138****8000"}
    assert PHONE not in browser.page_source
    shot(browser, "06-search-masked")
    browser.find_element(By.LINK_TEXT, "to-search").click()
    wait_for(lambda: "accepted" in text_of(browser, "n-timeline"), "timeline shown")
    assert PHONE not in browser.page_source


def test_fix_and_retry_a_dead_letter(fleet: Fleet, browser: Any) -> None:
    """A notification rejected for a missing parameter is fixed in the dead-letter page
    and delivered."""
    code, _ = fleet.call("POST", "/v1/notifications", {"id": "dead-one", "type": "verification_code", "to": PHONE,
                                                        "params": {"code": "1"}})
    assert code == 422
    open_page(browser, fleet, "dead")
    browser.find_element(By.ID, "dead-type").send_keys("verification_code")
    browser.find_element(By.CSS_SELECTOR, "#dead-form button[type=submit]").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-id=dead-one]"), "the dead letter listed")
    click_in_row(browser, "tr[data-id=dead-one]", "Fix…")
    browser.find_element(By.ID, "fix-new-name").send_keys("minutes")
    browser.find_element(By.ID, "fix-new-value").send_keys("5")
    shot(browser, "07-dead-letter-fix")
    browser.find_element(By.CSS_SELECTOR, "#fix-form button[type=submit]").click()
    confirm(browser)
    wait_text(browser, "dead-error", "fixed and handed back")
    wait_for(lambda: state_of(fleet, "dead-one") == "delivered", "delivered after the fix")


def test_cancel_a_batch_after_seeing_the_count(fleet: Fleet, browser: Any) -> None:
    """With the carrier isolated a batch waits; the console shows how many it would
    cancel, and after confirming they are expired and never sent."""
    fleet.call("POST", "/v1/carriers/cmcc/isolate")
    wait_for(lambda: carrier_view(fleet)["state"] == "isolated", "isolated")
    try:
        code, body = fleet.call("POST", "/v1/notifications", [
            {"type": "verification_code", "to": f"1380013800{i}", "params": {"code": "1", "minutes": "5"}}
            for i in range(4)])
        assert code == 202
        batch = body["batch"]
        open_page(browser, fleet, "search")
        browser.find_element(By.ID, "search-by").send_keys("Batch")
        browser.find_element(By.ID, "search-q").send_keys(batch)
        browser.find_element(By.ID, "search-submit").click()
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == 4, "4 rows")
        browser.find_element(By.ID, "batch-cancel").click()
        question = confirm(browser)
        assert question.startswith(f"Cancel 4 notifications of batch {batch}")
        wait_text(browser, "batch-result", "Cancelled 4")
        shot(browser, "08-batch-cancelled")
    finally:
        fleet.call("POST", "/v1/carriers/cmcc/start")
    for row in body["accepted"]:
        assert state_of(fleet, row["id"]) == "expired"
    # The overview screenshot the README shows, with the traffic of the tests above.
    open_page(browser, fleet, "overview")
    wait_text(browser, "banner", "All 1 carriers bound")
    shot(browser, "console-overview")
    (ARTIFACTS / "run.json").write_text(json.dumps({"at": time.time()}))
