"""``catalogue serve``: the catalogue over HTTP (FastAPI), built by :func:`create_app`.

One router per resource: ``/match``, ``/postings``, ``/groups``, ``/reviews`` and the review page
(:mod:`pipeline.catalogue.review_page`). Writes (``POST /postings``, ``POST /reviews``) need the
token in an ``Authorization: Bearer`` header and run one at a time, each a transaction; reads use
their own read-only connection, so they are served while a write runs and see the last committed
batch. ``serve`` binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field

from pipeline.catalogue.catalogue import Catalogue, open_catalogue
from pipeline.catalogue.schema import CatalogueError

PHASH_PATTERN = r"^[0-9a-fA-F]{16}$"


class PostingIn(BaseModel):
    """A new posting in the data contract's columns; ``image`` names a file in the served images folder."""

    posting_id: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    title: str = Field(min_length=1, max_length=2000)
    image: str = ""
    image_phash: str = Field(default="0" * 16, pattern=PHASH_PATTERN)


class MatchRequest(BaseModel):
    postings: list[PostingIn] = Field(min_length=1, max_length=1000)
    top: int = Field(default=5, ge=1, le=50)


class AddRequest(BaseModel):
    postings: list[PostingIn] = Field(min_length=1, max_length=100_000)
    skip_existing: bool = False


class CandidateOut(BaseModel):
    posting_id: str
    group: int
    probability: float
    accepted: bool
    evidence: dict[str, Any]


class MatchOut(BaseModel):
    posting_id: str
    group: int | None
    verdict: str
    candidates: list[CandidateOut]


class DecisionOut(BaseModel):
    posting_id: str
    group: int
    action: Literal["new", "join", "merge"]
    confidence: float
    evidence: dict[str, Any]


class PostingOut(BaseModel):
    posting_id: str
    title: str
    image: str
    group: int
    removed: bool
    decision: dict[str, Any] | None


class GroupOut(BaseModel):
    group: int
    size: int
    postings: list[str]


class ReviewIn(BaseModel):
    a: str
    b: str
    verdict: Literal["same", "different"]
    link: int | None = None
    note: str = ""


class ReviewOut(BaseModel):
    review: int
    batch: int
    groups: dict[str, int]


@dataclass
class Service:
    """What the routes share: a writing and a reading catalogue, each used by one thread at a time."""

    root: Path
    token: str
    bounds: tuple[float, float]
    images_dir: Path | None
    threads: int
    _write: threading.Lock = field(default_factory=threading.Lock)
    _read: threading.Lock = field(default_factory=threading.Lock)
    _writer: Catalogue | None = None
    _reader: Catalogue | None = None

    @contextmanager
    def writing(self) -> Iterator[Catalogue]:
        with self._write:
            if self._writer is None:
                self._writer = open_catalogue(self.root, write=True, threads=self.threads)
            yield self._writer

    @contextmanager
    def reading(self) -> Iterator[Catalogue]:
        with self._read:
            if self._reader is None:
                self._reader = open_catalogue(self.root, threads=self.threads)
            yield self._reader


def service(request: Request) -> Service:
    return request.app.state.service


def writer_token(svc: Annotated[Service, Depends(service)], authorization: Annotated[str, Header()] = "") -> None:
    """Writes need ``Authorization: Bearer TOKEN`` (compared in constant time)."""
    given = authorization.removeprefix("Bearer ").strip()
    if not given or not hmac.compare_digest(given.encode(), svc.token.encode()):
        raise HTTPException(status_code=401, detail="writes need the catalogue's token: Authorization: Bearer TOKEN")


def _frame(postings: list[PostingIn]) -> pd.DataFrame:
    df = pd.DataFrame([p.model_dump() for p in postings], columns=["posting_id", "image", "image_phash", "title"])
    repeated = df["posting_id"].duplicated()
    if repeated.any():
        i = int(repeated.to_numpy().argmax())
        raise HTTPException(422, f"postings[{i}].posting_id: {df['posting_id'].iat[i]!r} is repeated in the request")
    return df


@contextmanager
def _user_errors() -> Iterator[None]:
    """A refused input (an id already there, an unknown posting) is the client's error: 409 / 404."""
    try:
        yield
    except CatalogueError as e:
        status = 404 if "is not" in str(e) else 409
        raise HTTPException(status_code=status, detail=str(e)) from None


matching = APIRouter(tags=["match"])


@matching.post("/match")
def match(body: MatchRequest, svc: Annotated[Service, Depends(service)]) -> list[MatchOut]:
    """Read-only: each posting's top candidates and predicted group, or 'no confident match'."""
    from pipeline.catalogue.reading import match_postings

    df = _frame(body.postings)
    with svc.reading() as cat, _user_errors():
        results = match_postings(cat, df, svc.images_dir, top=body.top)
    return [MatchOut(**asdict(r)) for r in results]


postings = APIRouter(prefix="/postings", tags=["postings"])


@postings.post("", dependencies=[Depends(writer_token)])
def add(body: AddRequest, svc: Annotated[Service, Depends(service)]) -> list[DecisionOut]:
    """Add the postings as one batch (one transaction); their decisions."""
    import json

    from pipeline.catalogue.adding import add_postings

    df = _frame(body.postings)
    with svc.writing() as cat, _user_errors():
        decisions = add_postings(cat, df, svc.images_dir, skip_existing=body.skip_existing, source="POST /postings")
    return [
        DecisionOut(
            posting_id=r.posting_id,
            group=r.group,
            action=r.action,
            confidence=r.confidence,
            evidence=json.loads(r.evidence),
        )
        for r in decisions.itertuples()
    ]


@postings.get("/{posting_id}")
def get_posting(posting_id: str, svc: Annotated[Service, Depends(service)]) -> PostingOut:
    import json

    with svc.reading() as cat:
        row = cat.con.execute(
            "SELECT p.posting_id, p.title, p.image, p.group_id, p.removed, d.action, d.confidence, d.evidence, d.batch "
            "FROM postings p LEFT JOIN decisions d ON d.posting = p.id WHERE p.posting_id = ?",
            (posting_id,),
        ).fetchone()
    if row is None:
        raise HTTPException(404, f"{posting_id!r} is not in the catalogue")
    decision = None
    if row[5] is not None:
        decision = {"action": row[5], "confidence": row[6], "evidence": json.loads(row[7]), "batch": row[8]}
    return PostingOut(
        posting_id=row[0], title=row[1], image=row[2], group=row[3], removed=row[4] is not None, decision=decision
    )


groups = APIRouter(prefix="/groups", tags=["groups"])


@groups.get("/{group_id}")
def get_group(group_id: int, svc: Annotated[Service, Depends(service)]) -> GroupOut:
    with svc.reading() as cat:
        size = cat.con.execute("SELECT size FROM groups WHERE id = ?", (group_id,)).fetchone()
        members = [
            r[0]
            for r in cat.con.execute(
                "SELECT posting_id FROM postings WHERE group_id = ? AND removed IS NULL ORDER BY id", (group_id,)
            )
        ]
    if size is None:
        raise HTTPException(404, f"group {group_id} is not in the catalogue")
    return GroupOut(group=group_id, size=size[0], postings=members)


reviews = APIRouter(prefix="/reviews", tags=["reviews"])


@reviews.post("", dependencies=[Depends(writer_token)])
def post_review(body: ReviewIn, svc: Annotated[Service, Depends(service)]) -> ReviewOut:
    """Record a verdict on two postings and obey it: 'different' splits or keeps apart, 'same' merges."""
    from pipeline.catalogue.reviews import review

    with svc.writing() as cat, _user_errors():
        return ReviewOut(**review(cat, body.a, body.b, body.verdict, body.link, body.note))


def create_app(
    root: str | Path,
    token: str,
    review_bounds: tuple[float, float] = (0.2, 0.8),
    images_dir: str | Path | None = None,
    threads: int = 1,
) -> FastAPI:
    """The service of the catalogue at ``root``.

    Args:
        token: the secret a write must carry (``Authorization: Bearer TOKEN``).
        review_bounds: the review queue holds the links whose probability lies in [low, high].
        images_dir: where new postings' images are read from (when the run's rule reads images).
    """
    from pipeline.catalogue.review_page import router as review_router

    if not token:
        raise CatalogueError("the service needs a write token")
    open_catalogue(root).close()  # fail now, not on the first request, if root is no catalogue
    app = FastAPI(title="Product catalogue", description="Match, add and review postings (docs/catalogue.md).")
    app.state.service = Service(Path(root), token, review_bounds, Path(images_dir) if images_dir else None, threads)
    for router in (matching, postings, groups, reviews, review_router):
        app.include_router(router)
    return app
