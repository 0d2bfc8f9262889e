"""One function bounds every CPU thread pool, from the config's ``threads``."""

from __future__ import annotations

import os

import faiss
import pytest
import torch
from threadpoolctl import threadpool_info

from pipeline.device import THREAD_VARIABLES, bound_threads


@pytest.fixture()
def restore_threads():
    before = torch.get_num_threads(), faiss.omp_get_max_threads(), {v: os.environ.get(v) for v in THREAD_VARIABLES}
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])
    for var, value in before[2].items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def test_bound_threads_caps_torch_faiss_blas_and_the_environment(restore_threads):
    import numpy as np

    np.ones((64, 64)) @ np.ones((64, 64))  # NumPy's BLAS is loaded
    assert bound_threads(1) == 1
    assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    assert all(os.environ[v] == "1" for v in THREAD_VARIABLES)
    pools = [p for p in threadpool_info() if p["user_api"] in ("blas", "openmp")]
    assert pools and all(p["num_threads"] == 1 for p in pools)
    with pytest.raises(ValueError, match="threads"):
        bound_threads(0)


def test_every_stage_applies_the_configs_threads(tiny_synth, tmp_path, restore_threads):
    from pipeline.cli import main

    torch.set_num_threads(2)
    run = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--data",
                str(tiny_synth["root"]),
                "--out",
                str(run),
                "--modalities",
                "tfidf,phash",
                "folds.n_splits=2",
                "decision.cv_estimate=false",
                "threads=1",
            ]
        )
        == 0
    )
    assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    assert "threads: 1" in (run / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((6, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
    ids=["P100", "T4", "A100", "H100"],
)
def test_amp_auto_takes_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, capability, expected):
    from pipeline.device import autocast_dtype

    # torch says bf16 is supported on a T4 or P100 too (emulated, slower than fp16): not the test.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert autocast_dtype(torch.device("cuda"), "auto") is expected
    assert autocast_dtype(torch.device("cuda"), "fp16") is torch.float16  # asked for: taken as asked
    assert autocast_dtype(torch.device("cpu"), "auto") is None
