"""The review page: a queue of the doubtful decisions, each with both postings and its evidence.

``GET /review`` is the page, ``GET /review/queue`` its data: the links whose probability lies
between the service's two bounds, not reviewed yet, both postings live, most doubtful (nearest
0.5) first. Each card shows both images (``GET /postings/{id}/image``, when the catalogue knows
the images folder), both titles, every signal against its threshold and the pair model's top
features, and posts a 'same' or 'different' verdict to ``POST /reviews`` with the token typed
into the page. Titles are user data: the page writes them as text, never as HTML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from pipeline.catalogue.service import Service, service

router = APIRouter(tags=["review"])
STATIC = Path(__file__).with_name("review_page.html")


class Side(BaseModel):
    posting_id: str
    title: str
    group: int
    image_url: str | None


class QueueItem(BaseModel):
    link: int
    a: Side
    b: Side
    probability: float
    accepted: bool
    evidence: dict[str, Any]


QUEUE_SQL = """
SELECT l.id, l.probability, l.accepted, l.evidence,
       pa.posting_id, pa.title, pa.group_id, pa.images_dir, pb.posting_id, pb.title, pb.group_id, pb.images_dir
FROM links l JOIN postings pa ON pa.id = l.a JOIN postings pb ON pb.id = l.b
WHERE l.kind = 'rule' AND l.probability BETWEEN ? AND ? AND pa.removed IS NULL AND pb.removed IS NULL
  AND NOT EXISTS (SELECT 1 FROM reviews r WHERE (r.a = l.a AND r.b = l.b) OR (r.a = l.b AND r.b = l.a))
ORDER BY ABS(l.probability - 0.5), l.id
LIMIT ?
"""


@router.get("/review", response_class=HTMLResponse)
def page() -> str:
    return STATIC.read_text(encoding="utf-8")


@router.get("/review/queue")
def queue(
    svc: Annotated[Service, Depends(service)], limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[QueueItem]:
    """The doubtful links, each pair once, most doubtful first."""
    low, high = svc.bounds
    with svc.reading() as cat:
        rows = cat.con.execute(QUEUE_SQL, (low, high, 4 * limit)).fetchall()
    out, seen = [], set()
    for lid, prob, accepted, evidence, *sides in rows:
        a = Side(posting_id=sides[0], title=sides[1], group=sides[2], image_url=_image_url(sides[0], sides[3]))
        b = Side(posting_id=sides[4], title=sides[5], group=sides[6], image_url=_image_url(sides[4], sides[7]))
        pair = tuple(sorted((a.posting_id, b.posting_id)))
        if pair in seen:
            continue
        seen.add(pair)
        out.append(
            QueueItem(link=lid, a=a, b=b, probability=prob, accepted=bool(accepted), evidence=json.loads(evidence))
        )
    return out[:limit]


def _image_url(posting_id: str, images_dir: str | None) -> str | None:
    return f"/postings/{posting_id}/image" if images_dir else None


@router.get("/postings/{posting_id}/image")
def image(posting_id: str, svc: Annotated[Service, Depends(service)]) -> FileResponse:
    """A posting's image, from the folder it was added with (only a file inside that folder)."""
    with svc.reading() as cat:
        row = cat.con.execute("SELECT image, images_dir FROM postings WHERE posting_id = ?", (posting_id,)).fetchone()
    if row is None or not row[1]:
        raise HTTPException(404, f"no image of {posting_id!r}")
    folder = Path(row[1]).resolve()
    path = (folder / row[0]).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise HTTPException(404, f"no image of {posting_id!r}")
    return FileResponse(path)
