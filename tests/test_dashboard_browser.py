"""The dashboard in a real headless Chromium (issue 12), against a real
supervisor and redis-server: log in, watch counts change live, read a failed
job's stack trace, retry it and watch it complete, search, see a busy child,
and be refused an action as a viewer. Screenshots go to docs/images/ with
RQSUP_SAVE_SCREENSHOTS=1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rqsup.dashboard.auth import hash_password
from tests.helpers import wait_until
from tests.procs import PROCS, config_text, uid, write

REPO = Path(__file__).resolve().parents[1]
#: RQSUP_SAVE_SCREENSHOTS=1 writes them to docs/images (for the README);
#: otherwise to the test's own folder, so a test run leaves the tree alone.
SAVE_TO_DOCS = os.environ.get("RQSUP_SAVE_SCREENSHOTS") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.fail("headless Chromium is needed: apt-get install chromium chromium-driver "
                    "(./dev test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_dashboard_in_a_real_browser(tmp_path: Path, redis_url: str, start: Any,
                                         queues: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    name, qname = f"sup-{uid()}", f"web-{uid()}"
    port = free_port()
    cfg = write(tmp_path / "s.toml", config_text(redis_url, name, [
        {"name": qname, "processor": f"{PROCS}:work", "concurrency": 2},
        {"name": f"{qname}-fix", "processor": f"{PROCS}:fails_until_marked"}])
        + f'\n[dashboard]\nlisten = "127.0.0.1:{port}"\n'
          f'[[dashboard.users]]\nname = "ola"\npassword_hash = "{hash_password("o-pass")}"\n'
          'role = "operator"\n'
          f'[[dashboard.users]]\nname = "vic"\npassword_hash = "{hash_password("v-pass")}"\n'
          'role = "viewer"\n')
    start(cfg)
    q, fixq = queues(qname), queues(f"{qname}-fix")
    q.add("warmup", {"n": 1}).wait(15)
    marker = tmp_path / "fixed"
    broken = fixq.add("repair", {"marker": str(marker), "word": "zebra"}, attempts=1)
    with pytest.raises(Exception, match="broken until"):
        broken.wait(15)
    dash = subprocess.Popen([str(REPO / ".venv" / "bin" / "rqsup"), "dashboard", "--config",
                             str(cfg)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        def answering() -> bool:
            try:
                with urllib.request.urlopen(base + "/login", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(answering, "the dashboard", 20)
        images = REPO / "docs" / "images" if SAVE_TO_DOCS else tmp_path / "images"
        wait_until(lambda: q.get_workers_count() == 1, "the supervisor's heartbeat listing it")
        images.mkdir(parents=True, exist_ok=True)

        def text(selector: str, by: str = By.CSS_SELECTOR) -> str:
            """An element's text, or "" while the page (re)loads."""
            from selenium.common.exceptions import WebDriverException

            try:
                return str(browser.find_element(by, selector).text)
            except WebDriverException:
                return ""

        def login(user: str, password: str) -> None:
            browser.get(base + "/login")
            browser.find_element(By.NAME, "user").send_keys(user)
            browser.find_element(By.NAME, "password").send_keys(password)
            browser.find_element(By.ID, "login").click()
            wait_until(lambda: "/login" not in browser.current_url, f"{user} logged in", 10)

        login("ola", "o-pass")
        cell = f'tr[data-queue="{qname}"] td[data-state="completed"]'
        assert browser.find_element(By.CSS_SELECTOR, cell).text == "1"
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-queue="{qname}"]').text
        assert "no consumers" not in row
        # Counts change as jobs run, without a reload (server-sent events).
        for i in range(5):
            q.add("square", {"n": i, "sleep": 0.2})
        wait_until(lambda: text(cell) == "6", "the completed count to reach 6 live", 30)
        browser.save_screenshot(str(images / "overview.png"))

        # A failed job: its stack trace; retry it and watch it complete.
        browser.get(f"{base}/queues/{qname}-fix/jobs/{broken.id}")
        trace = browser.find_element(By.ID, "stacktrace").text
        assert "Traceback" in trace and "broken until" in trace
        browser.save_screenshot(str(images / "job.png"))
        marker.write_text("ok")
        browser.find_element(By.ID, "retry").click()
        wait_until(lambda: text("state", By.ID) == "completed",
                   "the retried job completing on its page", 30)

        # Search by a word in the data.
        browser.get(f"{base}/queues/{qname}-fix?state=completed&q=zebra")
        rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]")
        assert [r.get_attribute("data-job") for r in rows] == [broken.id]
        browser.get(f"{base}/queues/{qname}?state=completed")
        browser.save_screenshot(str(images / "queue.png"))

        # A job list updates live too: a paused queue's new job appears.
        q.pause()
        browser.get(f"{base}/queues/{qname}?state=wait")
        browser.execute_script("window.rqsupMarker = 1")  # gone if the page reloads
        fresh = q.add("late", {"n": 99})
        row_sel = f'#jobs tr[data-job="{fresh.id}"]'
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, row_sel),
                   "the new job in the list, live", 20)
        assert browser.execute_script("return window.rqsupMarker") == 1
        q.resume()

        # The supervisors page shows a busy child, live (no reload).
        browser.get(f"{base}/supervisors")
        browser.execute_script("window.rqsupMarker = 2")
        slow = q.add("slow", {"sleep": 20})
        wait_until(lambda: f"job {slow.id}" in text("supervisors", By.ID),
                   "a busy child on the page, live", 20)
        assert browser.execute_script("return window.rqsupMarker") == 2
        assert browser.find_elements(By.CSS_SELECTOR, '.child[data-state="busy"]')
        browser.save_screenshot(str(images / "supervisors.png"))

        # A viewer is refused an action, by the server.
        browser.delete_all_cookies()
        login("vic", "v-pass")
        browser.get(f"{base}/queues/{qname}")
        assert not browser.find_elements(By.XPATH, "//button[text()='pause']")
        status = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/api/session').then(r => r.json()).then(s =>
              fetch('/api/queues/""" + qname + """/pause', {method: 'POST',
                    headers: {'x-csrf-token': s.csrf}})).then(r => done(r.status));
        """)
        assert status == 403 and not q.is_paused()
    finally:
        dash.terminate()
        try:
            dash.wait(10)
        except subprocess.TimeoutExpired:
            dash.kill()
            raise
