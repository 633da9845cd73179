"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real
server process rendering a real POV-Ray job. Sign in, watch a job submitted from the CLI appear
and finish on the front page without reloading (server-sent events), check the frames' states
against `distren status --json`, open a frame's image and log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import SCENES, last_line

CHROMIUM = "/usr/bin/chromium"
FRAMES = 5
# Where the screenshots go: docs/screenshots holds the README's, made with
# DISTREN_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest tests/test_dashboard_browser.py
SHOTS = os.environ.get("DISTREN_SCREENSHOTS")


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Chromium's own sandbox needs a user namespace it cannot make as root; tests run as root here.
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield b
        b.close()


def test_a_job_renders_live_on_the_dashboard(start_server, browser, tmp_path):
    def shoot(page, name: str) -> None:
        page.screenshot(path=str(Path(SHOTS or tmp_path) / f"{name}.png"), full_page=True)

    server = start_server("alpha", "--slots", "1")
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.set_default_timeout(30_000)
    page.goto(server.http + "/jobs/1")
    assert page.url.startswith(server.http + "/signin?next=")
    page.fill("input[name=token]", "not the token")
    page.click("button[type=submit]")
    assert "not valid on this server" in page.inner_text("[role=alert]")
    page.goto(server.http + "/")
    page.fill("input[name=token]", server.token)
    page.click("button[type=submit]")
    page.wait_for_url(server.http + "/")
    page.wait_for_selector("#live-status.on")
    page.evaluate("window.loadedOnce = true")  # still set later only if the page never reloaded

    url = last_line(server.cli("submit", str(SCENES / "textured" / "textured.ini"), "--width", "32",
                               "--height", "24", "--frames", f"1-{FRAMES}"))
    page.wait_for_selector("tr.job td.name a")  # the new job appears by itself
    assert page.evaluate("window.loadedOnce") is True, "the page reloaded"
    shoot(page, "jobs")
    page.click("tr.job td.name a")
    page.wait_for_url(server.http + "/jobs/1")
    page.evaluate("window.loadedOnce = true")
    at_first = page.inner_text("#job-head .count")
    shoot(page, "job-rendering")
    page.wait_for_selector("#job-head h1 .state.done")
    page.wait_for_function("() => [...document.querySelectorAll('#frames img')].filter("
                           "i => i.complete && i.naturalWidth > 0).length === %d" % FRAMES)
    assert page.evaluate("window.loadedOnce") is True, "the page reloaded"
    assert at_first != f"{FRAMES}/{FRAMES}" and page.inner_text("#job-head .count") == f"{FRAMES}/{FRAMES}"
    shoot(page, "job-done")
    st = json.loads(server.cli("status", url, "--json").stdout)
    shown = page.eval_on_selector_all("#frames a.frame", "cells => cells.map(c => [c.id, c.className])")
    assert st["state"] == "done" and shown == [[f"f{f['id']}", f"frame {f['state']}"] for f in st["frames"]]

    page.click("#f2")
    page.wait_for_url(server.http + "/jobs/1/frames/2")
    assert "Persistence of Vision" in page.inner_text("pre.log")
    page.wait_for_function("() => document.querySelector('img.full').naturalWidth === 32")
    with page.expect_response(lambda r: r.url.endswith(".png") or "image.png" in r.url) as image:
        page.click("img.full")
    assert image.value.status == 200 and image.value.headers["content-type"] == "image/png"

    page.goto(server.http + "/servers")
    assert "this server" in page.inner_text("#servers") and "online" in page.inner_text("#servers")
    shoot(page, "servers")


def test_steering_from_the_dashboard_agrees_with_the_cli(start_server, browser):
    """Pause, resume, raise the priority of one job and cancel another with the pages' buttons;
    a server with no slots renders nothing, so every state shown is the one set."""
    server = start_server("alpha", "--slots", "0")
    scene = str(SCENES / "textured" / "textured.ini")
    first = last_line(server.cli("submit", scene, "--width", "32", "--height", "24", "--frames", "1-2"))
    second = last_line(server.cli("submit", scene, "--width", "32", "--height", "24", "--frames", "1-2"))
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(server.http + "/jobs/1")
    page.fill("input[name=token]", server.token)
    page.click("button[type=submit]")
    page.wait_for_url(server.http + "/jobs/1")

    def shown_and_told(url: str) -> tuple[str, str]:
        return (page.inner_text("#job-head h1 .state"),
                json.loads(server.cli("status", url, "--json").stdout)["state"])

    page.click("button.pause")
    page.wait_for_selector("#job-head h1 .state.paused")
    assert shown_and_told(first) == ("paused", "paused")
    page.click("button.resume")
    page.wait_for_selector("#job-head h1 .state.queued")
    assert shown_and_told(first) == ("queued", "queued")

    page.goto(server.http + "/jobs/2")
    page.fill("input[name=priority]", "7")
    page.click("button.priority")
    page.wait_for_selector("#job-head .priority:text('7')")
    assert json.loads(server.cli("status", second, "--json").stdout)["priority"] == 7

    page.goto(server.http + "/jobs/1")
    page.click("button.cancel")
    page.wait_for_selector("#job-head h1 .state.cancelled")
    assert shown_and_told(first) == ("cancelled", "cancelled")
    page.goto(server.http + "/")
    rows = page.eval_on_selector_all("tr.job", "rows => rows.map(r => [r.dataset.job, r.querySelector('.state').textContent, r.querySelector('.priority').textContent])")
    assert rows == [["2", "queued", "7"], ["1", "cancelled", "0"]]
