"""Training under torchrun's DDP, run as 2 gloo processes on the CPU.

One global batch gives the same training whether 1 or 2 processes share it; a checkpoint written
by one number of processes resumes under another; embedding is sharded and gathered. Every test
name holds "distributed", so ``pytest -k distributed`` selects them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

from pipeline import cli, distributed, stages
from pipeline.config import HeadConfig, ImageConfig, TextConfig, TrainConfig, load_config
from pipeline.data.datasets import make_dataset
from pipeline.distributed import GlobalBatchNorm, RankBatches, epoch_order, global_batchnorm
from pipeline.inference.embedding import embed_items, forward
from pipeline.models.encoders import build_encoder, load_encoder
from pipeline.paths import RunPaths
from pipeline.training.loop import train_encoder

EPOCHS = 3
# 2 processes against 1: the same arithmetic summed in another order (the gradient all-reduce,
# BatchNorm's statistics), so equal up to float32 rounding, which AdamW amplifies in one place:
# a bias that only feeds BatchNorm (the text neck's, the last LayerNorm's) has a true gradient of
# 0, and AdamW turns its rounding noise into steps of the learning rate's size. BatchNorm in
# training mode cancels those biases, so the encoders are compared there; in eval mode, the
# running mean lags the wandering bias, which moves the eval probe by ~0.1 %.
LOSS_RTOL = 1e-3
EMBEDDING_ATOL = 1e-3
EVAL_RTOL = 5e-3


# --- running ranks ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn: Callable, queue) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "TOKENIZERS_PARALLELISM": "false",
            "CUDA_VISIBLE_DEVICES": "",
        }
    )  # gloo on the CPU, as in CI, even on a GPU machine
    torch.set_num_threads(1)
    try:
        # Pickled here by value: a queue would share tensors through file descriptors, which die
        # with this process.
        queue.put((rank, True, pickle.dumps(fn())))
    except BaseException as e:  # reported to the parent, which raises it
        queue.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        distributed.shutdown()


def run_ranks(fn: Callable[[], Any], world: int = 2, timeout: float = 300) -> list[Any]:
    """``fn()`` in ``world`` forked processes that torchrun's variables join into one gloo group;
    each rank's return value, in rank order. A rank's exception is raised here with its traceback."""
    ctx = multiprocessing.get_context("fork")  # the children inherit the imports: fast, and fn may be a closure
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, fn, queue)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = dict((rank, (ok, value)) for rank, ok, value in (queue.get(timeout=timeout) for _ in procs))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [f"rank {r}: {v}" for r, (ok, v) in sorted(results.items()) if not ok]
    if errors:
        raise RuntimeError("\n".join(errors))
    return [pickle.loads(results[r][1]) for r in range(world)]


# --- configs and data -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_without_dropout(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT with dropout off: each rank draws its own dropout masks, so only a model
    without dropout can train identically on 1 and 2 processes."""
    out = tmp_path_factory.mktemp("bert_no_dropout")
    shutil.copytree(tiny_bert_dir, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config))
    return out


def make_cfg(modality: str, bert_dir: Path, **head_kwargs) -> ImageConfig | TextConfig:
    train = TrainConfig(epochs=EPOCHS, batch_size=8, lr=3e-3, head_lr=3e-2, num_workers=0, amp="off", keep_last=True)
    head = HeadConfig(margin_start_rad=0.1, margin_rad=0.3, margin_warmup_epochs=1.0, **head_kwargs)
    if modality == "image":
        return ImageConfig(
            backbone="test_resnet", pretrained=False, image_size=32, embed_dim=16, train=train, head=head
        )
    return TextConfig(model=str(bert_dir), max_length=24, embed_dim=16, train=train, head=head)


# The image runs also switch on the class-size options and sampled classes, which under DDP need
# the global batch's labels (a gather) and weigh rows without a per-batch normaliser.
OPTIONS = {"text": ({}, 0.0), "image": ({"sample_rate": 0.5, "margin_size_power": 0.5}, 0.4)}


class Killed(Exception):
    """Stands in for a job killed after some epoch's checkpoint."""


def probe(items: list, kill_at_call: int | None = None):
    """An eval_fn: embeds a few items (sharded under DDP) and reports a number that depends on every row."""
    calls = []

    def evaluate(model) -> dict[str, float]:
        calls.append(1)
        if len(calls) == kill_at_call:
            raise Killed
        x = embed_items(model, items, batch_size=3, progress=False)  # (n, D), 3 rounds over 2 ranks, last short
        return {"val_probe": float(np.abs(x).sum(axis=1) @ np.arange(1, len(x) + 1))}

    return evaluate


class Setup:
    def __init__(self, modality: str, synth: dict, bert_dir: Path, root: Path):
        head_kwargs, weight_power = OPTIONS[modality]
        self.modality, self.root = modality, root
        self.cfg = make_cfg(modality, bert_dir, **head_kwargs)
        self.cfg.train.sample_weight_power = weight_power
        self.items = synth["train_paths"] if modality == "image" else synth["train"]["title"].tolist()
        self.labels = synth["train"]["label_group"].to_numpy()
        self.probe_items = self.items[:7]

    def train(self, name: str, kill_at_call: int | None = None, resume: bool = False) -> dict:
        try:
            return train_encoder(
                self.modality,
                self.cfg,
                self.items,
                self.labels,
                self.root / name,
                seed=3,
                progress=False,
                resume=resume,
                eval_fn=probe(self.probe_items, kill_at_call),
            )
        except Killed:
            return {"killed": True}

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        return torch.load(self.root / name / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module", params=["text", "image"])
def setup(request, tiny_synth, bert_without_dropout, tmp_path_factory) -> Setup:
    s = Setup(request.param, tiny_synth, bert_without_dropout, tmp_path_factory.mktemp(f"ddp_{request.param}"))
    s.single = s.train("single")
    return s


def training_mode_embeddings(path: Path, items: list) -> torch.Tensor:
    """(n, D) embeddings of ``items`` as one batch by the encoder in ``path``, in training mode."""
    model = load_encoder(path).train()
    dataset, collate = make_dataset(model, items, None, train=False)
    rows = [dataset[i] for i in range(len(items))]
    with torch.no_grad():
        return forward(model, collate(rows) if collate else torch.stack(rows))


def assert_same_training(setup: Setup, a: dict, b: dict, b_name: str) -> None:
    assert [r["steps"] for r in a["history"]] == [r["steps"] for r in b["history"]]
    assert [r["loss"] for r in b["history"]] == pytest.approx([r["loss"] for r in a["history"]], rel=LOSS_RTOL)
    assert [r["val_probe"] for r in b["history"]] == pytest.approx(
        [r["val_probe"] for r in a["history"]], rel=EVAL_RTOL
    )
    assert setup.weights("single").keys() == setup.weights(b_name).keys()
    items = setup.items[:12]
    torch.testing.assert_close(
        training_mode_embeddings(setup.root / b_name / "model.pt", items),
        training_mode_embeddings(setup.root / "single" / "model.pt", items),
        atol=EMBEDDING_ATOL,
        rtol=0,
    )


# --- the tests ----------------------------------------------------------------------------------------------


def test_distributed_training_matches_one_process(setup):
    ranks = run_ranks(lambda: setup.train("ddp"))
    timed = ("seconds", "items_per_s")
    a, b = ([{k: v for k, v in row.items() if k not in timed} for row in r["history"]] for r in ranks)
    assert a == b  # every rank reports the global loss and the same eval
    assert_same_training(setup, setup.single, ranks[0], "ddp")
    log = json.loads((setup.root / "ddp" / "log.json").read_text())
    assert log["world_size"] == 2 and log["batch_size"] == 8 and log["done"]


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_distributed_resume_under_another_world_size(setup, first, then):
    """Killed after epoch 1 under ``first`` processes, resumed under ``then``: the same run as one
    process training without a break."""
    name = f"resume_{first}to{then}"

    def launch(world: int, **kwargs) -> dict:
        if world == 1:
            return setup.train(name, **kwargs)
        return run_ranks(lambda: setup.train(name, **kwargs), world)[0]

    assert launch(first, kill_at_call=2)["killed"]
    assert json.loads((setup.root / name / "log.json").read_text())["history"][-1]["epoch"] == 1
    resumed = launch(then, resume=True)
    assert not resumed["skipped"] and len(resumed["history"]) == EPOCHS
    assert_same_training(setup, setup.single, resumed, name)


def test_distributed_embedding_gathers_every_row_in_order(tiny_synth, tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model = build_encoder("text", make_cfg("text", tiny_bert_dir)).eval()
    titles = tiny_synth["train"]["title"].tolist()[:11]  # 2 ranks x 2 rows per round: the last round is short
    alone = embed_items(model, titles, batch_size=2, progress=False)

    def embed() -> tuple[np.ndarray, np.ndarray]:
        in_memory = embed_items(model, titles, batch_size=2, progress=False)
        on_disk = embed_items(model, titles, batch_size=2, out_path=tmp_path / "x.npy", progress=False)
        return in_memory, np.asarray(on_disk)

    for in_memory, on_disk in run_ranks(embed):
        np.testing.assert_allclose(in_memory, alone, atol=1e-6)
        np.testing.assert_array_equal(on_disk, in_memory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # one file, no temporary left


def test_distributed_batchnorm_uses_the_global_batch():
    """Forward, running statistics and gradients of 2 ranks' halves equal BatchNorm on the whole batch."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3) * 3 + 1  # (B, C, H, W)
    reference = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-1, 1)
    own = torch.nn.Sequential(torch.nn.BatchNorm2d(4))
    own.load_state_dict({f"0.{k}": v for k, v in reference.state_dict().items()})
    assert global_batchnorm(own) == 1 and isinstance(own[0], GlobalBatchNorm)
    xr = x.clone().requires_grad_()
    expected = reference(xr)  # one training step's forward: running statistics updated once
    (expected**3).sum().backward()

    def half():
        distributed.init_if_launched()
        rows = slice(0, 3) if distributed.rank() == 0 else slice(3, 6)
        xh = x[rows].clone().requires_grad_()
        y = own(xh)
        (y**3).sum().backward()
        grads = [p.grad.clone() for p in own.parameters()]
        for g in grads:  # summed over ranks, as DDP's average times the number of ranks
            torch.distributed.all_reduce(g)
        return y.detach(), xh.grad, grads, own[0].running_mean, own[0].running_var

    ranks = run_ranks(half)
    torch.testing.assert_close(torch.cat([r[0] for r in ranks]), expected.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([r[1] for r in ranks]), xr.grad, atol=1e-4, rtol=1e-5)
    for mine, theirs in zip(ranks[0][2], [reference.weight.grad, reference.bias.grad], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r[3], reference.running_mean, atol=1e-6, rtol=0)
        torch.testing.assert_close(r[4], reference.running_var, atol=1e-6, rtol=0)


def test_distributed_batches_split_each_global_batch_of_the_one_process_order():
    n, batch, seed = 29, 8, 1234
    one = list(RankBatches(n, seed, batch))
    two = [list(RankBatches(n, seed, batch, rank=r, world=2)) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == n // batch
    for t, whole in enumerate(one):
        assert two[0][t] + two[1][t] == whole and len(two[0][t]) == batch // 2
    # The order is the one torch's RandomSampler gives under a DataLoader seeded alike, which the
    # loop used before: a run started before DDP existed resumes on the same batches.
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        range(n),
        batch_size=batch,
        sampler=RandomSampler(range(n), generator=generator),
        generator=generator,
        drop_last=True,
    )
    assert [b.tolist() for b in loader] == one
    assert sorted(epoch_order(n, seed)) == list(range(n))
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        RankBatches(n, seed, batch, world=3)


def test_distributed_init_is_a_no_op_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_if_launched() == 1
    assert distributed.world_size() == 1 and distributed.is_main() and distributed.train_device() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_PORT"):
        distributed.init_if_launched()


# --- the command line under torchrun ----------------------------------------------------------------------


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "pipeline",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_distributed_cli_trains_under_torchrun_and_embed_stage_shards(tiny_synth, tiny_bert_dir, tmp_path):
    """``torchrun --nproc_per_node 2 -m pipeline train-text --run-dir R``: every model once, one log
    line per epoch (rank 0's); then the embed stage on 2 ranks gives one process's embeddings.
    (``--run`` would be taken by torchrun's own parser for its ``--run-path``.)"""
    cfg = load_config(
        None,
        [
            "modalities=[text,tfidf]",
            "folds.n_splits=2",
            f"text.model={tiny_bert_dir}",
            "text.embed_dim=16",
            "text.train.epochs=2",
            "text.train.num_workers=0",
            "text.train.batch_size=8",
            "text.train.final=fold0",
            "baseline_untrained=false",
            # The embed stage below runs in forked ranks: a stage that grew their OpenMP pool past the
            # one thread _rank_main set would hang in a pool the parent left behind (libgomp is not fork-safe).
            "threads=1",
        ],
    )
    run = tmp_path / "run"
    stages.prepare(tiny_synth["root"], run, cfg)

    trained = torchrun("train-text", "--run-dir", str(run), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    epoch_lines = re.findall(r"^text fold(\d) epoch (\d)/2: .*$", trained.stderr, flags=re.M)
    assert sorted(epoch_lines) == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")], trained.stderr[-3000:]
    for fold in (0, 1):
        folder = run / "models" / "text" / f"fold{fold}"
        assert sorted(p.name for p in folder.iterdir()) == ["log.csv", "log.json", "model.pt"]
        assert json.loads((folder / "log.json").read_text())["world_size"] == 2

    shutil.copytree(run, tmp_path / "alone")
    run_ranks(lambda: stages.embed(run, progress=False))  # the embed stage's ranks, without a second launch
    stages.embed(tmp_path / "alone", progress=False)
    for name in ("oof_fold0", "oof_fold1", "test"):
        vec, ids = RunPaths(run).embeddings("text", name)
        vec_alone, ids_alone = RunPaths(tmp_path / "alone").embeddings("text", name)
        np.testing.assert_allclose(np.load(vec), np.load(vec_alone), atol=1e-5)
        assert ids.read_text() == ids_alone.read_text()


def test_distributed_cli_refuses_the_other_stages_under_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["synth", "--out", str(tmp_path / "synth")]) == 2  # both ranks would write the same files
    assert "under torchrun only train-image, train-text, embed run" in capsys.readouterr().err
    assert not (tmp_path / "synth").exists()
