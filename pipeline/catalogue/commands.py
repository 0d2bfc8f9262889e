"""``python -m pipeline catalogue ACTION ...``: the command line of a catalogue (docs/catalogue.md).

Each action reads its input and checks it whole (the data contract) before it opens the catalogue
for writing, so bad input exits 2 with one ``error:`` line and changes nothing. Results go to
stdout (JSON lines, or text for ``explain``); progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

TOKEN_ENV = "PIPELINE_CATALOGUE_TOKEN"


def add_catalogue_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``catalogue`` and its actions with the top-level parser's ``add`` helper."""
    p = add("catalogue", _usage, "A living catalogue: add postings in batches, match, explain, review, serve.")
    p.set_defaults(parser=p)
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))

    def action(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help, description=help)
        q.set_defaults(func=func)
        return q

    _writing_actions(action)
    _reading_actions(action)


def _writing_actions(action: Callable[..., argparse.ArgumentParser]) -> None:
    q = action("init", _init, "Create a catalogue from a trained and tuned run (its training postings by default).")
    q.add_argument("--run", required=True, type=Path, help="the trained and tuned run folder")
    q.add_argument("--out", required=True, type=Path, help="the catalogue folder to create (new or empty)")
    q.add_argument("--postings", type=Path, help="a CSV in the data contract instead of the run's train.csv")
    q.add_argument("--images", type=Path, help="the images of --postings")
    q.add_argument(
        "--index",
        default="auto",
        choices=["auto", "flat", "ivf", "ivfsq", "hnsw"],
        help="dense index kind (auto: exact below 200,000 live postings, IVF from there)",
    )
    q.add_argument("--size", type=int, default=0, help="gallery size thresholds move to (0: live postings)")
    q.add_argument(
        "--group",
        default="auto",
        choices=["auto", "run", "components", "average"],
        help="how groups form (auto: the run's group step when it has one, else components)",
    )
    q.add_argument(
        "--unseen-terms",
        default="hashed",
        choices=["hashed", "ignored"],
        help="a title term no training title held: a hashed term at the highest idf (default), or no weight",
    )
    _threads(q)

    q = action("add", _add, "Add a batch of postings (one transaction); writes its decisions CSV.")
    _catalogue_and_postings(q)
    q.add_argument("--skip-existing", action="store_true", help="leave out postings already in the catalogue")
    q.add_argument("--decisions", type=Path, help="decisions CSV to write (default C/decisions/batch_SEQ.csv)")

    q = action("remove", _remove, "Remove postings (tombstones: out of their groups and every index).")
    q.add_argument("catalogue", type=Path)
    q.add_argument("posting_ids", nargs="+", metavar="POSTING_ID")

    q = action("review", _review, "Record that two postings are the same product or different ones, and obey it.")
    q.add_argument("catalogue", type=Path)
    q.add_argument("a", metavar="POSTING_A")
    q.add_argument("b", metavar="POSTING_B")
    q.add_argument("verdict", choices=["same", "different"])

    q = action("serve", _serve, f"Serve the catalogue over HTTP with a review page (writes need ${TOKEN_ENV}).")
    q.add_argument("catalogue", type=Path)
    q.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--low", type=float, default=0.2, help="review queue: probabilities from (default 0.2)")
    q.add_argument("--high", type=float, default=0.8, help="review queue: probabilities up to (default 0.8)")
    q.add_argument("--images", type=Path, help="the images folder of postings added through the service")
    _threads(q)


def _reading_actions(action: Callable[..., argparse.ArgumentParser]) -> None:
    q = action("match", _match, "Read-only: each posting's top candidates and group, or 'no confident match'.")
    _catalogue_and_postings(q)
    q.add_argument("--top", type=int, default=5, help="candidates listed per posting (default 5)")

    q = action("explain", _explain, "Why a posting is in its group: each signal against its threshold, the pair model.")
    q.add_argument("catalogue", type=Path)
    q.add_argument("posting_id", metavar="POSTING_ID")
    q.add_argument("--json", action="store_true", help="print the JSON instead of text")

    q = action("export", _export, "Write the groups in the submission format (posting_id,matches).")
    q.add_argument("catalogue", type=Path)
    q.add_argument("--out", required=True, type=Path, help="submission CSV to write")
    q.add_argument("--only", type=Path, help="a CSV whose posting_id column lists the postings to export")

    q = action("check", _check, "The integrity check; exits 1 and lists the problems when there are any.")
    q.add_argument("catalogue", type=Path)


def _catalogue_and_postings(q: argparse.ArgumentParser) -> None:
    q.add_argument("catalogue", type=Path)
    q.add_argument("--postings", required=True, type=Path, help="CSV in the data contract (no label_group)")
    q.add_argument("--images", type=Path, help="their images folder (needed when the run reads images)")
    _threads(q)


def _threads(q: argparse.ArgumentParser) -> None:
    q.add_argument("--threads", type=int, default=1, help="CPU threads of FAISS and the pair model (default 1)")


def _usage(args) -> int:
    args.parser.print_help(sys.stderr)
    return 2


def _read(args, cat) -> tuple:
    """The postings CSV, checked against the data contract (images too when the rule reads them)."""
    from pipeline.data.contract import read_postings

    needs_images = "image" in cat.rule.learned() or cat.rule.phash_source == "image"
    df = read_postings(args.postings, labelled=False, images_dir=args.images if needs_images else None)
    return df, args.images  # kept with the postings either way, for the review page


def _init(args) -> int:
    from pipeline.catalogue import IndexConfig, init_from_run

    cat, decisions = init_from_run(
        args.run,
        args.out,
        args.postings,
        args.images,
        IndexConfig(kind=args.index),
        args.size,
        args.threads,
        args.unseen_terms,
        group=args.group,
    )
    print(json.dumps({"catalogue": str(args.out), "postings": cat.live_count(), "groups": _groups(cat)}))
    return 0


def _groups(cat) -> int:
    return int(cat.con.execute("SELECT COUNT(*) FROM groups WHERE size > 0").fetchone()[0])


def _add(args) -> int:
    from pipeline.catalogue import add_postings, open_catalogue
    from pipeline.io import write_csv

    cat = open_catalogue(args.catalogue, write=True, threads=args.threads)
    df, images = _read(args, cat)
    decisions = add_postings(cat, df, images, skip_existing=args.skip_existing, source=str(args.postings))
    seq = int(cat.con.execute("SELECT MAX(seq) FROM batches").fetchone()[0])
    out = args.decisions or args.catalogue / "decisions" / f"batch_{seq}.csv"
    write_csv(decisions, out)
    counts = decisions["action"].value_counts().to_dict()
    print(json.dumps({"added": len(decisions), "actions": counts, "decisions": str(out), "postings": cat.live_count()}))
    return 0


def _match(args) -> int:
    from pipeline.catalogue import match_postings, open_catalogue

    cat = open_catalogue(args.catalogue, threads=args.threads)
    df, images = _read(args, cat)
    for result in match_postings(cat, df, images, top=args.top):
        print(json.dumps(asdict(result)))
    return 0


def _explain(args) -> int:
    from pipeline.catalogue import explain, open_catalogue
    from pipeline.catalogue.reading import explain_text

    info = explain(open_catalogue(args.catalogue), args.posting_id)
    print(json.dumps(info) if args.json else explain_text(info))
    return 0


def _remove(args) -> int:
    from pipeline.catalogue import open_catalogue, remove

    cat = open_catalogue(args.catalogue, write=True)
    seq = remove(cat, args.posting_ids)
    print(json.dumps({"removed": len(args.posting_ids), "batch": seq, "postings": cat.live_count()}))
    return 0


def _review(args) -> int:
    from pipeline.catalogue import open_catalogue, review

    print(json.dumps(review(open_catalogue(args.catalogue, write=True), args.a, args.b, args.verdict)))
    return 0


def _export(args) -> int:
    from pipeline.catalogue import export_groups, open_catalogue
    from pipeline.data.contract import read_table

    only = read_table(args.only, ["posting_id"])[0]["posting_id"].tolist() if args.only else None
    sub = export_groups(open_catalogue(args.catalogue), args.out, only)
    print(json.dumps({"submission": str(args.out), "rows": len(sub)}))
    return 0


def _check(args) -> int:
    from pipeline.catalogue import check, open_catalogue

    cat = open_catalogue(args.catalogue)
    cat.load()
    problems = check(cat)
    for line in problems:
        print(line)
    print(json.dumps({"problems": len(problems), "postings": cat.live_count()}))
    return 1 if problems else 0


def _serve(args) -> int:
    import uvicorn

    from pipeline.catalogue.service import create_app

    token = os.environ.get(TOKEN_ENV)
    if not token:
        token = secrets.token_urlsafe(16)
        print(f"no ${TOKEN_ENV} set; this session's write token: {token}", file=sys.stderr)
    app = create_app(args.catalogue, token, (args.low, args.high), args.images, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
