"""The live dashboard opened in a real browser, as an operator opens it: the page, the admin token typed into its
form, and every console error or page error collected (a test asserts there were none)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from conftest import Tracker


@contextlib.contextmanager
def signed_in(browser: Any, tracker: Tracker) -> Iterator[tuple[Any, list[str]]]:
    """(the page, the errors so far), the dashboard showing the tracker's numbers; the browser context closed after."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(f"http://127.0.0.1:{tracker.admin_port}/")
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token", tracker.admin_token())
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#status.good")
        yield page, problems
    finally:
        context.close()
