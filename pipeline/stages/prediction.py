"""``predict``: match test.csv with the tuned settings and write a validated submission."""

from __future__ import annotations

from pathlib import Path

from pipeline import io
from pipeline.data import Dataset
from pipeline.ensemble.members import load_members, test_members
from pipeline.matching.predict import load_pair_model, match_postings, posting_vectors
from pipeline.reporting.report import settings_digest, write_report
from pipeline.runs.folder import log, open_run, stage
from pipeline.submission import write_submission


def predict(
    run_dir: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """Match test.csv with the tuned settings and write a validated submission.

    Args:
        out: the submission path (default ``RUN/submission.csv``).
        data_dir: read test.csv from here instead of the run's data folder; learned modalities are
            then embedded on the fly with the model that ``train.final`` names.
    """
    run = open_run(run_dir)
    settings = run.tuned_settings()
    data = run.data if data_dir is None else Dataset(Path(data_dir).resolve())
    path = Path(out) if out is not None else run.paths.submission
    with stage(run, "predict", data=None if data_dir is None else data, record=path == run.paths.submission):
        test = data.read("test", check_images=data_dir is not None and run.cfg.needs_images)
        ids = test["posting_id"].to_numpy()
        if data_dir is None:
            embeddings = {m: run.embeddings(m, "test", ids) for m in run.cfg.learned}
            encoders = {}
        else:
            embeddings = {}
            # Every member of an ensemble, every fold model of a fold average, or the one test model.
            encoders = {m: load_members(members) for m, members in test_members(run.paths.root, run.cfg).items()}
        vectors = posting_vectors(
            run.cfg, test, data.images_dir("test"), encoders=encoders, embeddings=embeddings, progress=progress
        )
        pair_model = load_pair_model(run.paths.pair_model, settings, run.cfg.threads)
        sub = match_postings(
            vectors,
            ids,
            settings,
            run.cfg.search,
            pair_model,
            blend_method=run.cfg.fusion.blend_method,
            titles=test["title"].to_numpy(),
        )
        write_submission(sub, path, ids)
        if path.resolve() == run.paths.submission.resolve():
            # The settings it was made with: a later re-tune can tell that it is stale.
            run.manifest["submission_settings"] = settings_digest(io.read_json(run.paths.thresholds)["settings"])
        log.info(
            "[predict] %d postings, %.2f matches each on average -> %s",
            len(sub),
            sub["matches"].str.count(" ").mean() + 1,
            path,
        )
    write_report(run.paths.root)
    return path
