"""The shared training loop, resume, logs, embedding, datasets and device helpers, on CPU with tiny models."""

from __future__ import annotations

import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import ImageConfig, TextConfig
from pipeline.data import DataError
from pipeline.data.datasets import ImageDataset, TitleCollate, TitleDataset, label_index, make_dataset, train_transform
from pipeline.device import autocast_dtype, pick_device
from pipeline.inference.embedding import embed_items, make_loader
from pipeline.models.config import HeadConfig
from pipeline.models.encoders import build_encoder, load_encoder
from pipeline.training.checkpoint import ADDED_KEYS, RunStateError, check_same_run
from pipeline.training.config import TrainConfig
from pipeline.training.loop import train_encoder
from pipeline.training.progress import format_duration
from pipeline.training.session import build_optimizer, build_scheduler

MODALITIES = ["image", "text"]
EPOCHS = 4
LOG_COLUMNS = {"epoch", "steps", "loss", "lr", "head_lr", "margin", "seconds", "items_per_s"}


def make_cfg(modality: str, bert_dir, epochs: int = EPOCHS, **train_kwargs) -> ImageConfig | TextConfig:
    train = TrainConfig(
        **{
            "epochs": epochs,
            "batch_size": 8,
            "lr": 3e-3,
            "head_lr": 3e-2,
            "warmup_frac": 0.1,
            "num_workers": 0,
            "amp": "off",
            **train_kwargs,
        }
    )
    head = HeadConfig(scale=30.0, margin_start_rad=0.1, margin_rad=0.3, margin_warmup_epochs=2.0)
    if modality == "image":
        return ImageConfig(
            backbone="test_resnet", pretrained=False, image_size=32, embed_dim=16, train=train, head=head
        )
    return TextConfig(model=str(bert_dir), max_length=24, embed_dim=16, train=train, head=head)


def items_of(modality: str, synth: dict, split: str = "train") -> list[str]:
    return synth[f"{split}_paths"] if modality == "image" else synth[split]["title"].tolist()


def top1(x: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose nearest other row shares their label."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return float((labels[sims.argmax(1)] == labels).mean())


class Killed(Exception):
    """Stands in for a job killed after some epoch's checkpoint."""


def held_out_eval(modality: str, synth: dict, kill_at_call: int | None = None):
    items, labels = items_of(modality, synth, "test"), synth["test"]["label_group"].to_numpy()
    calls = []

    def evaluate(model) -> dict[str, float]:
        calls.append(1)
        if len(calls) == kill_at_call:
            raise Killed
        return {"val_top1": top1(embed_items(model, items, batch_size=16, progress=False), labels)}

    return evaluate


@pytest.fixture(scope="module", params=MODALITIES)
def runs(request, tmp_path_factory, tiny_synth, tiny_bert_dir) -> dict:
    """An uninterrupted run, a run killed after epoch 2 (a copy kept) and that run resumed."""
    modality = request.param
    root = tmp_path_factory.mktemp(f"runs_{modality}")
    cfg = make_cfg(modality, tiny_bert_dir)
    items, labels = items_of(modality, tiny_synth), tiny_synth["train"]["label_group"].to_numpy()

    def train(out: Path, **kwargs):
        return train_encoder(modality, cfg, items, labels, out, seed=7, progress=False, **kwargs)

    full = train(root / "full", eval_fn=held_out_eval(modality, tiny_synth))
    with pytest.raises(Killed):
        train(root / "resumed", eval_fn=held_out_eval(modality, tiny_synth, kill_at_call=3))
    shutil.copytree(root / "resumed", root / "killed")
    resumed = train(root / "resumed", eval_fn=held_out_eval(modality, tiny_synth), resume=True)
    return {
        "modality": modality,
        "cfg": cfg,
        "root": root,
        "items": items,
        "labels": labels,
        "full": full,
        "resumed": resumed,
        "train": train,
    }


# --- the loop --------------------------------------------------------------------------------------


def test_loss_decreases(runs):
    losses = [row["loss"] for row in runs["full"]["history"]]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_log_has_one_row_per_epoch(runs):
    out = runs["root"] / "full"
    log = pd.read_csv(out / "log.csv")
    assert len(log) == EPOCHS and list(log["epoch"]) == list(range(1, EPOCHS + 1))
    assert LOG_COLUMNS | {"val_top1"} <= set(log.columns)
    assert log["steps"].is_monotonic_increasing and log["steps"].iloc[-1] == runs["full"]["steps"]
    # Margin ramps from margin_start_rad to margin_rad over 2 epochs; the LR decays to near 0.
    assert log["margin"].iloc[0] < log["margin"].iloc[-1] == pytest.approx(0.3)
    assert log["lr"].iloc[-1] < 0.1 * runs["cfg"].train.lr and (log["head_lr"] > log["lr"]).all()
    assert (log["items_per_s"] > 0).all() and log["val_top1"].between(0, 1).all()

    meta = pd.read_json(out / "log.json", typ="series")
    assert meta["done"] and meta["run"]["seed"] == 7 and meta["code_version"]
    assert meta["run"]["cfg"]["train"]["lr"] == runs["cfg"].train.lr
    # last.pt goes once the run is finished (train.keep_last is off by default).
    assert {p.name for p in out.iterdir()} == {"model.pt", "log.csv", "log.json"}


def test_resume_reproduces_the_uninterrupted_run(runs):
    killed = pd.read_csv(runs["root"] / "killed" / "log.csv")
    assert len(killed) == 2  # the kill came in epoch 3, after epoch 2's checkpoint
    full = torch.load(runs["full"]["model_path"], weights_only=True)["state_dict"]
    resumed = torch.load(runs["resumed"]["model_path"], weights_only=True)["state_dict"]
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], atol=1e-6, rtol=0, msg=key)
    assert [r["loss"] for r in runs["resumed"]["history"]] == pytest.approx(
        [r["loss"] for r in runs["full"]["history"]], abs=1e-6
    )


def test_finished_run_is_skipped_unless_config_differs(runs, tiny_bert_dir):
    again = runs["train"](runs["root"] / "full")
    assert again["skipped"] and again["history"] == runs["full"]["history"]
    other = make_cfg(runs["modality"], tiny_bert_dir, lr=1e-4)
    with pytest.raises(RuntimeError, match="train.lr"):
        train_encoder(
            runs["modality"], other, runs["items"], runs["labels"], runs["root"] / "full", seed=7, progress=False
        )


def test_unfinished_run_needs_resume_or_overwrite(runs, tiny_bert_dir):
    killed = runs["root"] / "killed"
    with pytest.raises(RuntimeError, match="resume=True"):
        runs["train"](killed)
    other = make_cfg(runs["modality"], tiny_bert_dir, batch_size=4)
    with pytest.raises(RuntimeError, match="train.batch_size"):
        train_encoder(
            runs["modality"], other, runs["items"], runs["labels"], killed, seed=7, resume=True, progress=False
        )
    with pytest.raises(RuntimeError, match="seed: 7 there, 8 now"):
        train_encoder(
            runs["modality"], runs["cfg"], runs["items"], runs["labels"], killed, seed=8, resume=True, progress=False
        )


@pytest.mark.parametrize("modality", MODALITIES)
def test_overwrite_starts_over(modality, tiny_synth, tiny_bert_dir, tmp_path):
    items, labels = items_of(modality, tiny_synth), tiny_synth["train"]["label_group"].to_numpy()
    train_encoder(
        modality, make_cfg(modality, tiny_bert_dir, epochs=1), items, labels, tmp_path, seed=0, progress=False
    )
    result = train_encoder(
        modality,
        make_cfg(modality, tiny_bert_dir, epochs=2),
        items,
        labels,
        tmp_path,
        seed=0,
        progress=False,
        overwrite=True,
    )
    assert not result["skipped"] and len(pd.read_csv(tmp_path / "log.csv")) == 2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])  # fp16 also runs the GradScaler
@pytest.mark.parametrize("modality", MODALITIES)
def test_low_precision_step_on_cpu(modality, amp, tiny_synth, tiny_bert_dir, tmp_path):
    cfg = make_cfg(modality, tiny_bert_dir, epochs=1, amp=amp, keep_last=True)  # the scaler's state is read below
    items, labels = items_of(modality, tiny_synth)[:8], tiny_synth["train"]["label_group"].to_numpy()[:8]
    result = train_encoder(modality, cfg, items, labels, tmp_path, seed=0, progress=False, device="cpu")
    assert result["steps"] == 1 and math.isfinite(result["final"]["loss"])
    model = load_encoder(result["model_path"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    scaler = torch.load(tmp_path / "last.pt", weights_only=True)["scaler"]
    # fp16 alone needs loss scaling: the scaler ran (and backed off from its 2**16 start) only then.
    assert (scaler["scale"] < 2.0**16) if amp == "fp16" else not scaler


@pytest.mark.parametrize("modality", MODALITIES)
def test_fewer_rows_than_batch_size(modality, tiny_synth, tiny_bert_dir, tmp_path):
    cfg = make_cfg(modality, tiny_bert_dir, epochs=2, batch_size=32)
    items, labels = items_of(modality, tiny_synth)[:3], [1, 1, 2]
    result = train_encoder(modality, cfg, items, labels, tmp_path, seed=0, progress=False)
    assert result["steps"] == 2  # one batch of all 3 rows per epoch
    with pytest.raises(ValueError, match="at least 2 rows"):
        train_encoder(modality, cfg, items[:1], labels[:1], tmp_path / "one", seed=0, progress=False)


# --- embedding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", MODALITIES)
def test_embed_writes_unit_float32_npy(modality, tiny_synth, tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model = build_encoder(modality, make_cfg(modality, tiny_bert_dir)).eval()
    items = items_of(modality, tiny_synth, "test")
    path = tmp_path / "vectors.npy"
    embed_items(model, items, out_path=path, batch_size=5, progress=False)  # last batch partial

    x = np.load(path)
    assert x.shape == (len(items), model.embed_dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]  # no temporary file left
    # Another batch size changes kernel blocking, so equal up to float rounding, not bitwise.
    np.testing.assert_allclose(x, embed_items(model, items, batch_size=16, progress=False), atol=1e-5)


def test_embed_of_nothing_writes_an_empty_array(tiny_bert_dir, tmp_path):
    model = build_encoder("text", make_cfg("text", tiny_bert_dir))
    x = embed_items(model, [], batch_size=4, out_path=tmp_path / "empty.npy", progress=False)
    assert x.shape == (0, 16) and np.load(tmp_path / "empty.npy").shape == (0, 16)


@pytest.mark.parametrize(("modality", "epochs"), [("image", 30), ("text", 8)])
def test_trained_embeddings_group_the_training_rows(modality, epochs, tiny_synth, tiny_bert_dir, tmp_path, monkeypatch):
    """The loss could fall through the head alone; the embeddings themselves must learn the groups.

    Image augmentations are switched off: a from-scratch 32 px CNN needs far more than a test's
    steps to learn through them (the loss still falls, see test_loss_decreases).
    """
    import pipeline.data.datasets

    monkeypatch.setattr(pipeline.data.datasets, "train_transform", pipeline.data.datasets.eval_transform)
    cfg = make_cfg(modality, tiny_bert_dir, epochs=epochs)
    items, labels = items_of(modality, tiny_synth), tiny_synth["train"]["label_group"].to_numpy()
    torch.manual_seed(0)
    untrained = build_encoder(modality, cfg)
    result = train_encoder(modality, cfg, items, labels, tmp_path, seed=7, progress=False)
    before, after = (
        top1(embed_items(m, items, batch_size=16, progress=False), labels)
        for m in (untrained, load_encoder(result["model_path"]))
    )
    assert after >= 0.75 and after > before + 0.2, (before, after)


# --- schedule, optimiser, data order -----------------------------------------------------------------


def test_scheduler_warms_up_linearly_then_decays_by_cosine():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [(s + 1) / 5 for s in range(4)] + [0.5 * (1 + math.cos(math.pi * (s - 4) / 16)) for s in range(4, 20)]
    assert lrs == pytest.approx(expected)


def test_optimizer_groups_split_lr_and_weight_decay(tiny_bert_dir):
    from pipeline.models.heads import ArcFace

    model = build_encoder("image", make_cfg("image", tiny_bert_dir))
    head = ArcFace(16, 5)
    tc = TrainConfig(lr=1e-4, head_lr=1e-2, weight_decay=0.05)
    groups = {g["name"]: g for g in build_optimizer(model, head, tc).param_groups}
    assert groups["encoder"]["lr"] == 1e-4 and groups["head"]["lr"] == 1e-2
    assert groups["encoder"]["weight_decay"] == 0.05 and groups["encoder_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in groups["encoder_no_decay"]["params"])
    assert any(p is model.pool.p for p in groups["encoder_no_decay"]["params"])
    n_params = sum(1 for _ in model.parameters()) + sum(1 for _ in head.parameters())
    assert sum(len(g["params"]) for g in groups.values()) == n_params


def test_data_order_depends_on_seed_only():
    dataset = TitleDataset([str(i) for i in range(20)])

    def order(seed: int) -> list[str]:
        loader = make_loader(dataset, list, 4, device=torch.device("cpu"), shuffle_seed=seed)
        return [t for batch in loader for t in batch]

    torch.manual_seed(0)
    a = order(11)
    torch.manual_seed(1)  # the global RNG must not matter
    assert order(11) == a and order(12) != a and sorted(a) == sorted(dataset.titles)


def test_workers_do_not_change_the_batches(tiny_synth, tiny_bert_dir):
    model = build_encoder("image", make_cfg("image", tiny_bert_dir))
    dataset, _ = make_dataset(model, tiny_synth["train_paths"][:12], np.arange(12), train=True)
    dataset.set_epoch_seed(5)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = make_loader(dataset, None, 4, device=torch.device("cpu"), num_workers=workers, shuffle_seed=9)
        return [x for x, _ in loader]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2), strict=True))


# --- datasets -------------------------------------------------------------------------------------------


def test_label_index_maps_groups_to_dense_ids():
    labels = np.array([900, 12, 900, 5, 12])
    ids, classes = label_index(labels)
    assert ids.dtype == np.int64 and set(ids) == {0, 1, 2}
    np.testing.assert_array_equal(classes[ids], labels)


def test_image_dataset_augmentation_is_seeded_per_item(tiny_synth):
    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    dataset = ImageDataset(tiny_synth["train_paths"][:2], [0, 1], train_transform(config), min_size=32)
    dataset.set_epoch_seed(3)
    x, y = dataset[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    assert torch.equal(dataset[1][0], x)  # the same (seed, item) gives the same picture
    dataset.set_epoch_seed(4)
    assert not torch.equal(dataset[1][0], x)


def test_unreadable_image_error_names_the_file(tmp_path, tiny_bert_dir):
    bad = tmp_path / "broken_picture.jpg"
    bad.write_bytes(b"not a jpeg")
    model = build_encoder("image", make_cfg("image", tiny_bert_dir))
    dataset, _ = make_dataset(model, [str(bad)], None, train=False)
    with pytest.raises(DataError, match="broken_picture.jpg"):
        dataset[0]


def test_title_collate_tokenises_with_labels(tiny_bert_dir):
    model = build_encoder("text", make_cfg("text", tiny_bert_dir))
    collate = TitleCollate(model.tokenizer, max_length=24)
    batch, labels = collate(list(TitleDataset(["a b", "c"], [3, 4])))
    assert batch["input_ids"].shape == (2, 4) and labels.tolist() == [3, 4]
    assert set(collate(["a b"])) >= {"input_ids", "attention_mask"}


# --- device helpers -----------------------------------------------------------------------------------------


def test_pick_device_prefers_accelerators():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device().type == expected


@pytest.mark.parametrize(
    ("device", "amp", "expected"),
    [
        ("cpu", "auto", None),
        ("cpu", "off", None),
        ("cpu", "bf16", torch.bfloat16),
        ("cpu", "fp16", torch.float16),
        ("mps", "auto", None),
        ("cuda", "off", None),
        ("cuda", "fp16", torch.float16),
    ],
)
def test_autocast_dtype(device, amp, expected):
    assert autocast_dtype(device, amp) is expected


def test_autocast_dtype_rejects_unknown_mode():
    with pytest.raises(ValueError, match="auto, bf16, fp16, off"):
        autocast_dtype("cpu", "fp8")


# --- per-epoch lines, last.pt, run identity --------------------------------------------------------------


def test_each_epoch_logs_one_line_with_loss_f1_seconds_and_eta(tiny_synth, tiny_bert_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    items, labels = items_of("text", tiny_synth), tiny_synth["train"]["label_group"].to_numpy()
    result = train_encoder(
        "text",
        make_cfg("text", tiny_bert_dir, epochs=3),
        items,
        labels,
        tmp_path,
        seed=0,
        progress=False,
        eval_fn=held_out_eval("text", tiny_synth),
        label="text fold0",
        later_row_epochs=2 * 3 * len(items),
    )  # two more models of this size
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.training"]
    assert len(lines) == 3
    pattern = (
        r"text fold0 epoch (\d)/3: loss \d+\.\d{4}, val_top1 [01]\.\d{4}, \d+\.\ds; "
        r"ETA (\d+)s for this model, (\d+)s for the stage"
    )
    for k, (line, row) in enumerate(zip(lines, result["history"], strict=True), start=1):
        match = re.fullmatch(pattern, line)
        assert match, line
        assert int(match[1]) == k and f"loss {row['loss']:.4f}" in line
        assert int(match[3]) >= int(match[2])
    assert re.search(r"ETA 0s for this model", lines[-1])

    caplog.clear()
    again = train_encoder(
        "text",
        make_cfg("text", tiny_bert_dir, epochs=3),
        items,
        labels,
        tmp_path,
        seed=0,
        progress=False,
        label="text fold0",
    )
    assert again["skipped"] and [r.getMessage() for r in caplog.records] == [
        f"text fold0: finished earlier in {tmp_path}, skipped"
    ]


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (42, "42s"), (185, "3m05s"), (7620, "2h07m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_keep_last_keeps_the_checkpoint_and_is_not_part_of_the_run(tiny_synth, tiny_bert_dir, tmp_path):
    items, labels = items_of("text", tiny_synth), tiny_synth["train"]["label_group"].to_numpy()
    kept = train_encoder(
        "text",
        make_cfg("text", tiny_bert_dir, epochs=1, keep_last=True),
        items,
        labels,
        tmp_path,
        seed=0,
        progress=False,
    )
    assert (tmp_path / "last.pt").exists() and (tmp_path / "model.pt").exists()
    again = train_encoder(
        "text", make_cfg("text", tiny_bert_dir, epochs=1), items, labels, tmp_path, seed=0, progress=False
    )
    assert again["skipped"] and again["history"] == kept["history"]


def test_runs_saved_before_a_key_existed_match_its_neutral_value(tmp_path):
    """A run saved before e.g. head.sample_rate existed is the same run as one with the value that
    reproduces it (1.0, the full head), and another run otherwise."""
    now = {
        "cfg": {
            "train": {"lr": 0.1, "keep_last": False, "sample_weight_power": 0.0},
            "head": {"sample_rate": 1.0, "margin_size_power": 0.0, "margin_size_min": 0.5, "margin_size_max": 1.5},
        }
    }
    saved = {"cfg": {"train": {"lr": 0.1}, "head": {}}}
    check_same_run(saved, now, tmp_path)
    assert set(ADDED_KEYS) == {f"{s}.{k}" for s, keys in now["cfg"].items() for k in keys if k != "lr"}
    now["cfg"]["head"]["sample_rate"] = 0.1
    with pytest.raises(RunStateError, match="head.sample_rate: 1.0 there, 0.1 now"):
        check_same_run(saved, now, tmp_path)
