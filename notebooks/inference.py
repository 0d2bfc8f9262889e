# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Shopee product matching: offline inference
#
# Runs with the internet off. It reads two folders only:
# - `PACKAGE_DIR`, written by `python -m pipeline package --run RUN --out DIR` and uploaded as a
#   Kaggle dataset: the code, extra wheels, trained weights, thresholds and config;
# - `DATA_DIR`, the competition data (`test.csv` and `test_images/`).
#
# It writes `submission.csv` in the working folder and nothing else there: the code is installed
# into a temporary folder, removed at the end. Progress lines (one a minute while embedding) show
# below the cells.
#
# `PACKAGE_DIR` is the folder that holds `manifest.json`. A dataset made from the training
# notebook's output holds it under `package/` (`../input/<your-dataset-slug>/package`); a folder one
# level above it is accepted too.

# %% tags=["parameters"]
PACKAGE_DIR = "../input/shopee-pipeline-package"
DATA_DIR = "../input/shopee-product-matching"
OUT_CSV = "submission.csv"

# %%
# Install from the package's own wheels into a temporary folder (not the working folder, whose
# contents Kaggle keeps as the notebook's output), removed when the notebook ends; nothing is downloaded.
import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations would look for a newer version online
if not os.path.isfile(os.path.join(PACKAGE_DIR, "manifest.json")):
    # A dataset made from a notebook's output holds the package one level down (package/).
    found = glob.glob(os.path.join(PACKAGE_DIR, "*", "manifest.json"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{PACKAGE_DIR} holds no manifest.json (nor one sub-folder with one: found {found}): set PACKAGE_DIR "
            "to the folder `python -m pipeline package` wrote, e.g. ../input/<your-dataset-slug>/package"
        )
    PACKAGE_DIR = os.path.dirname(found[0])
print("package:", os.path.abspath(PACKAGE_DIR))
site = tempfile.mkdtemp(prefix="pipeline_site_")
atexit.register(shutil.rmtree, site, ignore_errors=True)  # also when a cell below fails
wheels = sorted(glob.glob(os.path.join(PACKAGE_DIR, "wheels", "*.whl")))
subprocess.run(
    [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-deps",
        "--quiet",
        "--upgrade",
        "--disable-pip-version-check",
        "--target",
        site,
        *wheels,
    ],
    check=True,
)
sys.path.insert(0, site)

import logging  # noqa: E402

import pipeline  # noqa: E402

print("pipeline", pipeline.__version__, "loaded from", pipeline.__file__)
# The inference's progress lines show below each cell.
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter("%(message)s"))
logging.getLogger("pipeline").handlers[:] = [handler]
logging.getLogger("pipeline").setLevel(logging.INFO)

# %%
# Every library the inference imports, checked before anything is loaded or embedded: a missing
# one (faiss, say) stops here with the wheel to add, not after the test set has been embedded.
from pipeline.kaggle.inference import check_dependencies, predict_from_package  # noqa: E402

requires = check_dependencies(PACKAGE_DIR)
print("libraries:", ", ".join(f"{r['dist']} {r['version']} ({r['source']})" for r in requires))

# %%
import json  # noqa: E402

summary = predict_from_package(PACKAGE_DIR, DATA_DIR, OUT_CSV, progress=False)
print(json.dumps(summary, indent=1))

# %%
import pandas as pd  # noqa: E402

shutil.rmtree(site, ignore_errors=True)  # the installed code (about 100 MB); everything is loaded
pd.read_csv(OUT_CSV).head()
