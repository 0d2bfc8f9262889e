"""The review page in a real browser (Debian's chromium, driven by Playwright): a person clicks
"Different products", and the next ``add`` respects it."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import numpy as np
import pytest

from pipeline.catalogue import add_postings, check, open_catalogue
from pipeline.catalogue.service import create_app

from .conftest import postings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "page-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(catalogue, space):
    """The catalogue after a posting that merged A and B, served by uvicorn on a free local port."""
    import uvicorn

    add_postings(catalogue, postings(["mid"]), vectors={"text": space.near("A", "B")})
    root = catalogue.root
    catalogue.close()
    port = free_port()
    config = uvicorn.Config(
        create_app(root, TOKEN, review_bounds=(0.5, 1.0)), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", root
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_clicking_different_is_obeyed_by_the_next_add(served, space, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    url, root = served
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{url}/review")
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        card = page.locator(".card").filter(has_text="matched: b0")
        sync_api.expect(card).to_have_count(1)
        sync_api.expect(card.locator("td.pass")).to_have_text("passes")
        page.screenshot(path=str(tmp_path / "review.png"), full_page=False)
        card.get_by_role("button", name="Different products").click()
        sync_api.expect(card.locator(".done")).to_contain_text("Recorded: different")
        browser.close()
    cat = open_catalogue(root, write=True)
    assert cat.verdicts()[0] == [tuple(sorted(cat.ids_of(["mid", "b0"]).values()))]
    decision = add_postings(cat, postings(["mid2"]), vectors={"text": space.near("A", "B")}).iloc[0]
    assert decision["action"] == "join" and check(cat) == []
    groups = cat.groups_of(np.array(list(cat.ids_of(["a0", "b0"]).values())))
    assert len(set(groups.values())) == 2
    cat.close()
