"""The HTTP service on a temporary catalogue, through FastAPI's TestClient."""

from __future__ import annotations

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pipeline.catalogue import add_postings, check, init_from_run, open_catalogue
from pipeline.catalogue.service import create_app

from .conftest import postings

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def run_client(synth_run, tmp_path):
    """A service over a catalogue of the run's training postings; the test set as request bodies."""
    cat, _ = init_from_run(synth_run["run"], tmp_path / "C")
    cat.close()
    test = pd.read_csv(synth_run["data"] / "test.csv", dtype=str, keep_default_na=False)
    with TestClient(create_app(tmp_path / "C", TOKEN)) as client:
        yield client, test.to_dict("records"), tmp_path / "C"


def batches(root) -> int:
    cat = open_catalogue(root)
    try:
        return cat.con.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    finally:
        cat.close()


def test_match_reads_and_writes_need_the_token(run_client):
    client, rows, root = run_client
    got = client.post("/match", json={"postings": rows[:3], "top": 2})
    assert got.status_code == 200 and [m["posting_id"] for m in got.json()] == [r["posting_id"] for r in rows[:3]]
    assert all(len(m["candidates"]) <= 2 and m["verdict"] in ("match", "no confident match") for m in got.json())
    assert batches(root) == 1
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert client.post("/postings", json={"postings": rows[:3]}, headers=headers).status_code == 401
    assert batches(root) == 1
    added = client.post("/postings", json={"postings": rows[:10]}, headers=AUTH)
    assert added.status_code == 200 and len(added.json()) == 10
    assert {d["action"] for d in added.json()} <= {"new", "join", "merge"} and batches(root) == 2


def test_postings_and_groups_are_read_back(run_client):
    client, rows, _ = run_client
    decision = client.post("/postings", json={"postings": rows[:5]}, headers=AUTH).json()[0]
    posting = client.get(f"/postings/{decision['posting_id']}").json()
    assert posting["group"] == decision["group"] and posting["decision"]["action"] == decision["action"]
    group = client.get(f"/groups/{decision['group']}").json()
    assert decision["posting_id"] in group["postings"] and group["size"] == len(group["postings"])
    assert client.get("/postings/nobody").status_code == 404
    assert client.get("/groups/999999").status_code == 404


def test_bad_requests_are_refused_and_change_nothing(run_client):
    client, rows, root = run_client
    client.post("/postings", json={"postings": rows[:2]}, headers=AUTH)
    again = client.post("/postings", json={"postings": rows[1:4]}, headers=AUTH)
    assert again.status_code == 409 and rows[1]["posting_id"] in again.json()["detail"]
    bad = client.post("/postings", json={"postings": [{**rows[5], "image_phash": "xyz"}]}, headers=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "image_phash"
    twice = client.post("/postings", json={"postings": [rows[6], rows[6]]}, headers=AUTH)
    assert twice.status_code == 422 and "repeated" in twice.json()["detail"]
    assert batches(root) == 2
    skipped = client.post("/postings", json={"postings": rows[1:4], "skip_existing": True}, headers=AUTH)
    assert skipped.status_code == 200 and [d["posting_id"] for d in skipped.json()] == [
        r["posting_id"] for r in rows[2:4]
    ]


def test_the_queue_and_a_review_through_the_api(catalogue, space):
    add_postings(catalogue, postings(["mid"]), vectors={"text": space.near("A", "B")})
    root = catalogue.root
    catalogue.close()
    with TestClient(create_app(root, TOKEN, review_bounds=(0.5, 1.0))) as client:
        queue = client.get("/review/queue").json()
        assert queue and all(0.5 <= item["probability"] <= 1.0 for item in queue)
        item = next(i for i in queue if i["b"]["posting_id"].startswith("b"))
        assert item["a"]["posting_id"] == "mid" and item["evidence"]["thresholds"] == {"text": 0.9}
        body = {"a": "mid", "b": item["b"]["posting_id"], "verdict": "different", "link": item["link"]}
        assert client.post("/reviews", json=body).status_code == 401
        done = client.post("/reviews", json=body, headers=AUTH)
        assert done.status_code == 200 and done.json()["groups"]["mid"] != done.json()["groups"][body["b"]]
        assert item["link"] not in {i["link"] for i in client.get("/review/queue").json()}
        assert "Review doubtful matches" in client.get("/review").text
    cat = open_catalogue(root, write=True)
    decision = add_postings(cat, postings(["mid2"]), vectors={"text": space.near("A", "B")}).iloc[0]
    assert decision["action"] == "join" and check(cat) == []
