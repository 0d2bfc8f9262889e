"""The review page's screenshot in docs/catalogue.md, made on synthetic postings with images.

Run from the repository root (needs chromium on PATH and Playwright)::

    OMP_NUM_THREADS=1 python -m benchmarks.review_screenshot --out docs/catalogue_review.png

It writes a synthetic dataset (40 groups, 128 px photos), trains and tunes a TF-IDF + phash run on
it, makes a catalogue of its training postings, adds the test postings with their images, serves
the catalogue on a free local port and photographs the review page's first cards.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path


def serve(app) -> tuple[str, object, threading.Thread]:
    """``app`` under uvicorn on a free port of 127.0.0.1, started; (url, server, thread)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/catalogue_review.png"))
    parser.add_argument("--low", type=float, default=0.05, help="the queue's lower bound")
    parser.add_argument("--high", type=float, default=0.95, help="the queue's upper bound")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from pipeline.catalogue import add_postings, init_from_run
    from pipeline.catalogue.service import create_app
    from pipeline.cli import main as cli
    from pipeline.data.contract import read_postings
    from pipeline.data.synth import make_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_synthetic(root / "data", n_groups=40, seed=1, image_size=128, progress=False)
        run = ["run", "--data", str(root / "data"), "--out", str(root / "run"), "--modalities", "tfidf,phash"]
        assert cli([*run, "folds.n_splits=3", "decision.cv_estimate=false"]) == 0
        cat, _ = init_from_run(root / "run", root / "C")
        test = read_postings(root / "data" / "test.csv", labelled=False)
        add_postings(cat, test, root / "data" / "test_images", source="test.csv")
        cat.close()
        url, server, thread = serve(create_app(root / "C", "token", (args.low, args.high)))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 1250})
            page.goto(f"{url}/review")
            page.wait_for_selector(".card img")
            page.wait_for_load_state("networkidle")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
        server.should_exit = True
        thread.join(timeout=10)
    print(args.out)


if __name__ == "__main__":
    main()
