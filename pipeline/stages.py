"""The stages of a run. Each reads files in the run folder, calls the library and writes files.

``prepare`` -> ``train-image`` / ``train-text`` -> ``embed`` -> ``tune`` -> ``predict``; ``run`` does
them all and writes ``report.json``. Every stage can be rerun on its own (from the CLI or a
notebook), and the unsupervised signals (TF-IDF, phash) need no training stage at all.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import Config, ConfigError, dump_config, load_config
from pipeline.data import Dataset
from pipeline.folds import make_folds
from pipeline.matching import (
    FUSED_SIGNALS,
    Candidates,
    Gallery,
    MatchSettings,
    build_candidates,
    decide,
    gallery_neighbours,
    match_lists,
    prediction_floors,
)
from pipeline.neighbours import Neighbours
from pipeline.pairs import PAIR_SIGNAL, PairModel, cross_fit
from pipeline.paths import RunPaths
from pipeline.signals import compute_phash, phash_codes, tfidf_vectors
from pipeline.submission import build_submission, write_submission
from pipeline.tuning import cross_validated, tune

log = logging.getLogger("pipeline")


class StageError(RuntimeError):
    """A stage run out of order or on a run folder that lacks what it needs."""


# ---------------------------------------------------------------------------------------------
# Run folder state
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A run folder opened by a stage: its paths, resolved config and manifest."""

    paths: RunPaths
    cfg: Config
    manifest: dict[str, Any]

    @property
    def data(self) -> Dataset:
        return Dataset(Path(self.manifest["data_dir"]))

    def train_df(self) -> pd.DataFrame:
        return self.data.read("train")

    def test_df(self) -> pd.DataFrame:
        return self.data.read("test")

    def folds(self, train: pd.DataFrame | None = None) -> np.ndarray:
        """(N,) fold of each train row; checked against train.csv, which must not change after prepare."""
        df = pd.read_csv(self.paths.folds, dtype={"posting_id": str})
        ids = (self.train_df() if train is None else train)["posting_id"].to_numpy()
        if len(ids) != len(df) or (df["posting_id"].to_numpy() != ids).any():
            raise StageError(
                f"{self.data.train_csv} no longer lists the postings of {self.paths.folds} in the same order; "
                f"rerun `python -m pipeline prepare` into a new run folder"
            )
        return df["fold"].to_numpy()

    def record_timing(self, stage: str, seconds: float) -> None:
        self.manifest.setdefault("timings", {})[stage] = round(seconds, 2)
        io.write_json(self.manifest, self.paths.manifest)


def open_run(run_dir: str | Path) -> Run:
    paths = RunPaths(Path(run_dir))
    if not paths.manifest.exists() or not paths.config.exists():
        raise StageError(f"{paths.root} is not a prepared run folder: run `python -m pipeline prepare` first")
    return Run(paths, load_config(paths.config), io.read_json(paths.manifest))


@contextmanager
def stage(run: Run, name: str) -> Iterator[None]:
    log.info("[%s] started", name)
    t0 = time.perf_counter()
    yield
    seconds = time.perf_counter() - t0
    run.record_timing(name, seconds)
    log.info("[%s] done in %.1fs", name, seconds)


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------


def prepare(data_dir: str | Path, run_dir: str | Path, cfg: Config) -> Run:
    """Validate the data, assign GroupKFold folds, and write the resolved config and manifest.

    Nothing is written when the data breaks the contract.
    """
    t0 = time.perf_counter()
    data = Dataset(Path(data_dir).resolve())
    train = data.read("train", check_images=cfg.needs_images)
    test = data.read("test", check_images=cfg.needs_images)
    folds = make_folds(train["label_group"].to_numpy(), cfg.folds.n_splits, cfg.folds.seed)

    paths = RunPaths(Path(run_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    io.write_text(dump_config(cfg), paths.config)
    io.write_csv(
        pd.DataFrame({"posting_id": train["posting_id"], "label_group": train["label_group"], "fold": folds}),
        paths.folds,
    )
    manifest = {
        "data_dir": str(data.root),
        "code_version": io.code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train_rows": len(train),
        "train_groups": int(train["label_group"].nunique()),
        "test_rows": len(test),
        "timings": {},
    }
    run = Run(paths, cfg, manifest)
    run.record_timing("prepare", time.perf_counter() - t0)
    log.info(
        "[prepare] %d train rows in %d groups, %d test rows, %d folds -> %s",
        len(train), manifest["train_groups"], len(test), cfg.folds.n_splits, paths.root,
    )
    return run


# ---------------------------------------------------------------------------------------------
# train-image / train-text
# ---------------------------------------------------------------------------------------------


def encoder_items(data: Dataset, modality: str, df: pd.DataFrame, split: str) -> list[str]:
    """What an encoder reads for each row: image paths (image) or titles (text)."""
    if modality == "image":
        root = data.images_dir(split)
        return [str(root / name) for name in df["image"]]
    return df["title"].tolist()


def _modality_cfg(cfg: Config, modality: str):
    if modality not in ("image", "text"):
        raise ConfigError(f"no encoder for modality {modality!r}; learned modalities are image and text")
    return cfg.image if modality == "image" else cfg.text


def train(run_dir: str | Path, modality: str, folds: Sequence[int | None] | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train one encoder per fold (on the other folds) and, when ``train.final`` is full, one on all rows.

    Args:
        folds: which to train: fold numbers, and None for the full model. Default: all of them.
        resume: continue each model from its last full-state checkpoint.
        overwrite: discard models the folder already holds and train them again.
    """
    from pipeline.train import RunStateError, train_encoder

    run = open_run(run_dir)
    mcfg = _modality_cfg(run.cfg, modality)
    df = run.train_df()
    fold_of = run.folds(df)
    labels = df["label_group"].to_numpy()
    items = np.asarray(encoder_items(run.data, modality, df, "train"), dtype=object)
    if folds is None:
        folds = list(range(run.cfg.folds.n_splits)) + ([None] if mcfg.train.final == "full" else [])
    results = {}
    with stage(run, f"train-{modality}"):
        for fold in folds:
            rows = np.ones(len(df), bool) if fold is None else fold_of != fold
            name = "full" if fold is None else f"fold{fold}"
            log.info("[train-%s] %s: %d rows, %d groups", modality, name, rows.sum(), len(np.unique(labels[rows])))
            eval_fn = None if fold is None else _held_out_eval(run, modality, items, labels, fold_of == fold)
            try:
                results[name] = train_encoder(
                    modality, mcfg, items[rows].tolist(), labels[rows], run.paths.model_dir(modality, fold),
                    seed=run.cfg.seed + (0 if fold is None else fold + 1),
                    resume=resume, overwrite=overwrite, eval_fn=eval_fn, progress=progress,
                )
            except RunStateError as e:
                raise StageError(f"{e} (from the command line: --resume or --overwrite)") from e
    return results


def _held_out_eval(run: Run, modality: str, items: np.ndarray, labels: np.ndarray, held_out: np.ndarray):
    """Per-epoch F1 of the signal alone on the held-out fold (searched within the fold, for speed)."""
    from pipeline.train import embed_items
    from pipeline.tuning import Scorer, threshold_grid

    fold_items = items[held_out].tolist()
    fold_labels = labels[held_out]
    k = min(run.cfg.match.k, len(fold_items))

    def evaluate(model) -> dict[str, float]:
        x = embed_items(model, fold_items, batch_size=_mcfg_batch(run.cfg, modality), progress=False)
        g = Gallery(np.arange(len(x)), np.arange(len(x)), {modality: x})
        nb = gallery_neighbours(g, MatchSettings(), k=k)
        c = build_candidates(g, nb, len(x))
        scorer = Scorer(c, fold_labels)
        _, f1 = scorer.curve(modality, threshold_grid(c.sims[modality], 41)).best
        return {"val_f1": f1}

    return evaluate


def _mcfg_batch(cfg: Config, modality: str) -> int:
    return _modality_cfg(cfg, modality).train.batch_size * 2


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------


def embed(run_dir: str | Path, modalities: Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the L2-normalised embeddings the tune and predict stages search.

    For fold f, the fold's model embeds its gallery (every train row, or the fold's own rows when
    ``folds.gallery`` is ``fold``); the model that ``train.final`` names embeds test.csv. With
    ``baseline_untrained``, the encoder as built before training embeds every train row too, for
    the report.
    """
    from pipeline.encoders import build_encoder, load_encoder
    from pipeline.train import seed_everything

    run = open_run(run_dir)
    modalities = [m for m in (modalities or run.cfg.learned)]
    df, test = run.train_df(), run.test_df()
    fold_of = run.folds(df)
    written = {}
    with stage(run, "embed"):
        for m in modalities:
            mcfg = _modality_cfg(run.cfg, m)
            bs = _mcfg_batch(run.cfg, m)
            items = np.asarray(encoder_items(run.data, m, df, "train"), dtype=object)
            for fold in range(run.cfg.folds.n_splits):
                model = load_encoder(_model_file(run, m, fold))
                rows = _gallery_rows(run.cfg, fold_of, fold)
                written[f"{m}/oof_fold{fold}"] = _embed_to(run, m, f"oof_fold{fold}", model, items[rows].tolist(),
                                                          df["posting_id"].to_numpy()[rows], bs, progress)
            if run.cfg.baseline_untrained:
                seed_everything(run.cfg.seed)
                model = build_encoder(m, mcfg).eval()
                written[f"{m}/untrained"] = _embed_to(run, m, "untrained", model, items.tolist(),
                                                     df["posting_id"].to_numpy(), bs, progress)
            if mcfg.train.final != "none":
                model = load_encoder(test_model_file(run, m))
                written[f"{m}/test"] = _embed_to(run, m, "test", model, encoder_items(run.data, m, test, "test"),
                                                test["posting_id"].to_numpy(), bs, progress)
    return written


def test_model_file(run: Run, modality: str) -> Path:
    """The model that embeds test.csv, as ``train.final`` says."""
    final = _modality_cfg(run.cfg, modality).train.final
    if final == "none":
        raise StageError(f"{modality}.train.final is none: no model embeds test.csv")
    return _model_file(run, modality, None if final == "full" else 0)


def _model_file(run: Run, modality: str, fold: int | None) -> Path:
    path = run.paths.model_dir(modality, fold) / "model.pt"
    if not path.exists():
        raise StageError(f"{path} missing: run `python -m pipeline train-{modality} --run {run.paths.root}` first")
    return path


def _gallery_rows(cfg: Config, fold_of: np.ndarray, fold: int) -> np.ndarray:
    return np.arange(len(fold_of)) if cfg.folds.gallery == "all" else np.flatnonzero(fold_of == fold)


def _embed_to(run: Run, modality: str, name: str, model, items: list, ids: np.ndarray, batch_size: int,
              progress: bool) -> str:
    from pipeline.train import embed_items

    vec_path, ids_path = run.paths.embeddings(modality, name)
    embed_items(model, items, batch_size=batch_size, out_path=vec_path, progress=progress)
    io.write_csv(pd.DataFrame({"posting_id": ids}), ids_path)
    return str(vec_path)


def _load_embeddings(run: Run, modality: str, name: str, expected_ids: np.ndarray) -> np.ndarray:
    vec_path, ids_path = run.paths.embeddings(modality, name)
    for path in (vec_path, ids_path):
        if not path.exists():
            raise StageError(f"{path} missing: run `python -m pipeline embed --run {run.paths.root}` first")
    ids = pd.read_csv(ids_path, dtype=str)["posting_id"].to_numpy()
    if len(ids) != len(expected_ids) or (ids != expected_ids).any():
        raise StageError(f"{ids_path} does not list the expected postings; rerun the embed stage")
    return np.load(vec_path, mmap_mode="r")


# ---------------------------------------------------------------------------------------------
# Signals of a gallery
# ---------------------------------------------------------------------------------------------


def unsupervised_vectors(cfg: Config, df: pd.DataFrame, images_dir: Path | None = None) -> dict[str, Any]:
    """TF-IDF (fitted on these titles) and phash codes, for the modalities that are on."""
    out: dict[str, Any] = {}
    if "tfidf" in cfg.modalities:
        out["tfidf"] = tfidf_vectors(df["title"].tolist(), cfg.tfidf)
    if "phash" in cfg.modalities:
        if cfg.match.phash_source == "image":
            if images_dir is None:
                raise StageError("match.phash_source=image needs the images folder")
            hashes = compute_phash(images_dir / name for name in df["image"])
        else:
            hashes = df["image_phash"].tolist()
        out["phash"] = phash_codes(hashes)
    return out


def oof_galleries(run: Run, df: pd.DataFrame, fold_of: np.ndarray, variant: str = "oof"
                  ) -> tuple[list[Gallery], list[dict[str, Neighbours]]]:
    """One gallery per held-out fold, with a neighbour cache each.

    ``variant`` picks the learned embeddings: ``oof`` (the fold models) or ``untrained``.
    Unsupervised signals are fitted once on the whole gallery and shared by every fold.
    """
    cfg = run.cfg
    ids = df["posting_id"].to_numpy()
    shared_all = unsupervised_vectors(cfg, df, run.data.images_dir("train"))
    # Neighbours of the shared signals, searched once when the gallery is all of train.
    shared_cache: dict[str, Neighbours] = {}
    galleries, caches = [], []
    learned = cfg.learned
    if not learned and cfg.folds.gallery == "all":
        everything = np.arange(len(df))
        return [Gallery(everything, everything, shared_all)], [{}]
    for fold in range(cfg.folds.n_splits):
        rows = _gallery_rows(cfg, fold_of, fold)
        queries = np.flatnonzero(fold_of[rows] == fold)
        if cfg.folds.gallery == "all":
            vectors = dict(shared_all)
            cache = SharedCache(shared_cache)
        else:
            vectors = unsupervised_vectors(cfg, df.iloc[rows], run.data.images_dir("train"))
            cache = {}
        for m in learned:
            name = "untrained" if variant == "untrained" else f"oof_fold{fold}"
            if variant == "untrained":
                vectors[m] = np.asarray(_load_embeddings(run, m, name, ids))[rows]
            else:
                vectors[m] = np.asarray(_load_embeddings(run, m, name, ids[rows]))
        galleries.append(Gallery(rows, queries, vectors))
        caches.append(cache)
    return galleries, caches


class SharedCache(dict):
    """A per-gallery neighbour cache whose unsupervised entries live in one dict shared by all folds."""

    SHARED = ("tfidf", "phash")

    def __init__(self, shared: dict):
        super().__init__()
        self._shared = shared

    def _is_shared(self, key: str) -> bool:
        # "tfidf", or its blend: "blend:<method>:tfidf:<rounds>:<threshold>".
        parts = key.split(":")
        return key in self.SHARED or (parts[0] == "blend" and len(parts) > 2 and parts[2] in self.SHARED)

    def __contains__(self, key) -> bool:
        return key in self._shared if self._is_shared(key) else super().__contains__(key)

    def __getitem__(self, key):
        return self._shared[key] if self._is_shared(key) else super().__getitem__(key)

    def __setitem__(self, key, value) -> None:
        if self._is_shared(key):
            self._shared[key] = value
        else:
            super().__setitem__(key, value)


def _builder(galleries: list[Gallery], caches: list[dict], n: int, cfg: Config):
    m = cfg.match

    def build(settings: MatchSettings) -> Candidates:
        parts = [
            build_candidates(g, gallery_neighbours(g, settings, k=m.k, batch_size=m.batch_size, index=m.index, cache=c,
                                                  blend_method=m.blend_method), n)
            for g, c in zip(galleries, caches)
        ]
        return Candidates.concat(parts)

    return build


# ---------------------------------------------------------------------------------------------
# tune
# ---------------------------------------------------------------------------------------------


def tune_stage(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Tune thresholds and fusion on out-of-fold candidates; write thresholds.json, tune.json, the plot."""
    from pipeline.plots import plot_threshold_f1

    run = open_run(run_dir)
    cfg = run.cfg
    df = run.train_df()
    fold_of = run.folds(df)
    labels = df["label_group"].to_numpy()
    kwargs = dict(
        n_thresholds=cfg.match.n_thresholds, blend_rounds=cfg.match.blend_rounds, union=cfg.match.union,
        min2=cfg.match.min2, fusion_weights=cfg.match.fusion_weights or None,
        pair_model=cfg.match.pair_model, seed=cfg.seed,
    )
    with stage(run, "tune"):
        galleries, caches = oof_galleries(run, df, fold_of)
        build = _builder(galleries, caches, len(df), cfg)
        result = tune(build, labels, folds=fold_of, **kwargs)
        report: dict[str, Any] = {
            "gallery": cfg.folds.gallery,
            "final": result.steps["final"],
            "steps": result.steps,
        }
        log.info("[tune] out-of-fold F1 %.4f (%s)", result.steps["final"]["f1"], _summary(result.steps))
        if cfg.match.cv_estimate:
            report["final_cv"] = cross_validated(build, labels, fold_of, **kwargs)
            log.info("[tune] cross-validated F1 (tuned on other folds) %.4f", report["final_cv"]["f1"])
        if cfg.baseline_untrained and cfg.learned:
            report["untrained"] = _untrained_scores(run, df, fold_of, labels)
        run.paths.pair_model.unlink(missing_ok=True)
        if uses_pair_model(result.settings):
            result.pair_model.save(run.paths.pair_model)
        io.write_json({"settings": result.settings.to_dict(), "oof_f1": result.steps["final"]["f1"]},
                      run.paths.thresholds)
        io.write_json(report, run.paths.tune_report)
        chosen = dict(result.settings.thresholds)
        plot_threshold_f1(result.curves, chosen, run.paths.plots / "threshold_f1.png")
    write_report(run.paths.root)  # so that report.json never shows an earlier tuning
    return report


def _summary(steps: dict[str, dict]) -> str:
    return ", ".join(f"{k} {v['f1']:.3f}" for k, v in steps.items() if k != "final" and "f1" in v)


def _untrained_scores(run: Run, df: pd.DataFrame, fold_of: np.ndarray, labels: np.ndarray) -> dict[str, dict]:
    """Each learned signal alone, tuned, with the untrained encoders' embeddings."""
    from pipeline.tuning import Scorer, threshold_grid

    galleries, caches = oof_galleries(run, df, fold_of, variant="untrained")
    c = _builder(galleries, caches, len(df), run.cfg)(MatchSettings())
    scorer = Scorer(c, labels)
    out = {}
    for m in run.cfg.learned:
        t, f1 = scorer.curve(m, threshold_grid(c.sims[m], run.cfg.match.n_thresholds)).best
        out[m] = {"f1": f1, "threshold": t}
    return out


# ---------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------


def predict(run_dir: str | Path, out: str | Path | None = None, data_dir: str | Path | None = None,
            progress: bool = True) -> Path:
    """Match test.csv with the tuned settings and write a validated submission.

    Args:
        out: the submission path (default ``RUN/submission.csv``).
        data_dir: read test.csv from here instead of the run's data folder; learned modalities are
            then embedded on the fly with the model that ``train.final`` names.
    """
    from pipeline.encoders import load_encoder
    from pipeline.train import embed_items

    run = open_run(run_dir)
    settings = _tuned_settings(run)
    data = run.data if data_dir is None else Dataset(Path(data_dir).resolve())
    with stage(run, "predict"):
        test = data.read("test", check_images=data_dir is not None and run.cfg.needs_images)
        ids = test["posting_id"].to_numpy()
        vectors = unsupervised_vectors(run.cfg, test, data.images_dir("test"))
        for m in run.cfg.learned:
            if data_dir is None:
                vectors[m] = np.asarray(_load_embeddings(run, m, "test", ids))
            else:
                vectors[m] = embed_items(load_encoder(test_model_file(run, m)), encoder_items(data, m, test, "test"),
                                         batch_size=_mcfg_batch(run.cfg, m), progress=progress)
        sub = match_submission(vectors, ids, settings, run.cfg, pair_model=load_pair_model(run.paths.root, settings))
        path = Path(out) if out is not None else run.paths.submission
        write_submission(sub, path, ids)
        log.info("[predict] %d postings, %.2f matches each on average -> %s",
                 len(sub), sub["matches"].str.count(" ").mean() + 1, path)
    write_report(run.paths.root)
    return path


def uses_pair_model(settings: MatchSettings) -> bool:
    return PAIR_SIGNAL in settings.thresholds or settings.min2_signal == PAIR_SIGNAL


def load_pair_model(folder: str | Path, settings: MatchSettings) -> PairModel | None:
    """The pair model saved beside thresholds.json, when the settings use it."""
    if not uses_pair_model(settings):
        return None
    path = Path(folder) / "pair_model.pkl"
    if not path.exists():
        raise StageError(f"{path} missing: the tuned settings use the pair model; rerun the tune stage")
    return PairModel.load(path)


def _signals_needed(settings: MatchSettings, pair_model: PairModel | None) -> set[str]:
    """The base signals (modalities) that the tuned settings read."""
    names = set(settings.thresholds) | set(settings.fusion_weights)
    names |= {s for s in (settings.blend_signal, settings.min2_signal) if s}
    if pair_model is not None and uses_pair_model(settings):
        names |= set(pair_model.signals)
    return names - set(FUSED_SIGNALS) - {PAIR_SIGNAL}


def match_submission(vectors: dict[str, Any], ids: np.ndarray, settings: MatchSettings, cfg: Config,
                     timings: dict[str, float] | None = None, pair_model: PairModel | None = None) -> pd.DataFrame:
    """The whole predict path on one gallery: neighbours, fusion, blending, decision, submission.

    Args:
        timings: when given, seconds per step are added to it.
        pair_model: needed when the settings use the ``pair`` signal.
    """
    timings = {} if timings is None else timings
    missing = sorted(_signals_needed(settings, pair_model) - set(vectors))
    if missing:
        raise StageError(f"the tuned settings use {missing}, but only {sorted(vectors)} were given: "
                         "turn those modalities on, or tune again without them")
    n = len(ids)
    everything = np.arange(n)
    gallery = Gallery(everything, everything, vectors)
    m = cfg.match
    nb = gallery_neighbours(gallery, settings, k=m.k, batch_size=m.batch_size, index=m.index, timings=timings,
                            blend_method=m.blend_method)
    t0 = time.perf_counter()
    if uses_pair_model(settings):
        if pair_model is None:
            raise StageError("the tuned settings use the pair model, but none was given")
        # The pair model reads every signal's evidence, so no signal's pairs can be dropped early.
        c = build_candidates(gallery, nb, n)
        timings["candidates"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        c.sims[PAIR_SIGNAL] = pair_model.predict(c)
        timings["pair_model"] = time.perf_counter() - t0
    else:
        c = build_candidates(gallery, nb, n, floors=prediction_floors(settings))
        timings["candidates"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mask = decide(c, settings)
    order_by = next(iter(settings.thresholds), None)
    lists = match_lists(c, mask, n, score=order_by)
    timings["decide"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sub = build_submission(ids, lists)
    timings["build_submission"] = time.perf_counter() - t0
    return sub


# ---------------------------------------------------------------------------------------------
# run and demo
# ---------------------------------------------------------------------------------------------


def run_all(data_dir: str | Path, run_dir: str | Path, cfg: Config, resume: bool = False,
            overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Every stage in order; returns and writes report.json."""
    run = prepare(data_dir, run_dir, cfg)
    for m in cfg.learned:
        train(run.paths.root, m, resume=resume, overwrite=overwrite, progress=progress)
    if cfg.learned:
        embed(run.paths.root, progress=progress)
    tune_stage(run.paths.root, progress=progress)
    if all(_modality_cfg(cfg, m).train.final != "none" for m in cfg.learned):
        predict(run.paths.root, progress=progress)
    else:
        log.info("[predict] skipped: train.final is none, so no model embeds test.csv")
    return write_report(run.paths.root)


def _tuned_settings(run: Run) -> MatchSettings:
    for path in (run.paths.thresholds, run.paths.tune_report):
        if not path.exists():
            raise StageError(f"{path} missing: run `python -m pipeline tune --run {run.paths.root}` first")
    return MatchSettings.from_dict(io.read_json(run.paths.thresholds)["settings"])


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Gather the run's figures into report.json."""
    run = open_run(run_dir)
    _tuned_settings(run)
    tune_report = io.read_json(run.paths.tune_report)
    steps = tune_report["steps"]
    per_signal = {k: v for k, v in steps.items() if k in ("image", "text", "tfidf", "phash", "concat", "blend", PAIR_SIGNAL)}
    report = {
        "oof_f1": tune_report["final"]["f1"],
        "oof": tune_report["final"],
        "oof_cv": tune_report.get("final_cv"),
        "gallery": tune_report["gallery"],
        "per_modality": per_signal,
        "steps": steps,
        "untrained": tune_report.get("untrained"),
        "training": _training_summary(run),
        "thresholds": io.read_json(run.paths.thresholds)["settings"],
        "timings": run.manifest.get("timings", {}),
        "data": {k: run.manifest[k] for k in ("data_dir", "train_rows", "train_groups", "test_rows")},
        "submission": str(run.paths.submission) if run.paths.submission.exists() else None,
        "config": run.cfg.to_dict(),
        "code_version": io.code_version(),
    }
    io.write_json(report, run.paths.report)
    return report


def training_logs(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Per-epoch log of every trained model, keyed ``modality/fold0`` ... ``modality/full``."""
    run = open_run(run_dir)
    logs = {}
    for m in run.cfg.learned:
        for model_dir in sorted((run.paths.root / "models" / m).glob("*")):
            if (model_dir / "log.csv").exists():
                logs[f"{m}/{model_dir.name}"] = pd.read_csv(model_dir / "log.csv")
    return logs


def _training_summary(run: Run) -> dict[str, Any]:
    """Last epoch's metrics of each trained model."""
    return {
        name: {k: (round(v, 5) if isinstance(v, float) else v) for k, v in df.iloc[-1].to_dict().items()}
        for name, df in training_logs(run.paths.root).items()
    }


def demo(out: str | Path = "runs/demo", data: str | Path | None = None, groups: int = 160, seed: int = 0,
         overrides: Sequence[str] = (), progress: bool = True) -> dict[str, Any]:
    """Synthetic data, then a full run with every modality at a size that suits 2 CPU cores.

    Args:
        out: the run folder.
        data: where the synthetic dataset is written (default ``data/synthetic``).
        overrides: ``key=value`` pairs applied over the ``demo`` preset.
    """
    from pipeline.paths import PROJECT_ROOT
    from pipeline.submission import read_matches, read_truth
    from pipeline.metric import score_matches
    from pipeline.synth import make_synthetic

    t0 = time.perf_counter()
    out = Path(out)
    data_dir = Path(data) if data is not None else PROJECT_ROOT / "data" / "synthetic"
    log.info("[synth] %d groups -> %s", groups, data_dir)
    t_synth = time.perf_counter()
    make_synthetic(data_dir, n_groups=groups, seed=seed, progress=progress)
    t_synth = time.perf_counter() - t_synth
    cfg = load_config("demo", overrides)
    if RunPaths(out).manifest.exists():
        log.info("[demo] starting over in %s", out)
    report = run_all(data_dir, out, cfg, overwrite=True, progress=progress)
    sub_path = PROJECT_ROOT / "submissions" / "submission.csv"
    sub_path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(sub_path) as tmp:
        shutil.copyfile(out / "submission.csv", tmp)
    report["test_score"] = score_matches(read_matches(sub_path), read_truth(data_dir / "test_truth.csv"))
    report["timings"]["synth"] = round(t_synth, 2)
    report["demo_seconds"] = round(time.perf_counter() - t0, 1)
    report["submission_copy"] = str(sub_path)
    io.write_json(report, RunPaths(out).report)
    return report


def oof_pairs(run_dir: str | Path) -> pd.DataFrame:
    """Every out-of-fold candidate pair under the tuned settings, for error analysis.

    Columns: query and match posting ids, titles and images, ``same`` (true match), ``predicted``,
    and one similarity column per signal (-inf where that signal did not list the pair).
    """
    run = open_run(run_dir)
    settings = _tuned_settings(run)
    df = run.train_df()
    fold_of = run.folds(df)
    galleries, caches = oof_galleries(run, df, fold_of)
    c = _builder(galleries, caches, len(df), run.cfg)(settings)
    labels = df["label_group"].to_numpy()
    if uses_pair_model(settings):
        signals = load_pair_model(run.paths.root, settings).signals
        c.sims[PAIR_SIGNAL], _ = cross_fit(c, labels, fold_of, signals, run.cfg.seed)
    out = pd.DataFrame({
        "query_id": df["posting_id"].to_numpy()[c.query],
        "match_id": df["posting_id"].to_numpy()[c.match],
        "query_title": df["title"].to_numpy()[c.query],
        "match_title": df["title"].to_numpy()[c.match],
        "query_image": df["image"].to_numpy()[c.query],
        "match_image": df["image"].to_numpy()[c.match],
        "same": labels[c.query] == labels[c.match],
        "predicted": decide(c, settings),
    })
    for name, sims in c.sims.items():
        out[name] = sims
    return out


def hardest_errors(pairs: pd.DataFrame, n: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(false positives with the highest similarity, false negatives with the highest similarity).

    The score used to rank is the best similarity over the signals, so the rows shown are the
    confident mistakes and the near misses.
    """
    signal_cols = [c for c in pairs.columns if c in ("image", "text", "tfidf", "phash", "concat", "blend", PAIR_SIGNAL)]
    score = pairs[signal_cols].max(axis=1)
    fp = pairs[pairs["predicted"] & ~pairs["same"]].assign(score=score).sort_values("score", ascending=False)
    fn = pairs[~pairs["predicted"] & pairs["same"]].assign(score=score).sort_values("score", ascending=False)
    # Each pair appears from both ends; keep one.
    dedup = lambda d: d[d["query_id"] < d["match_id"]]  # noqa: E731
    return dedup(fp).head(n), dedup(fn).head(n)
