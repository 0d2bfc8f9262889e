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
# into a temporary folder.

# %% tags=["parameters"]
PACKAGE_DIR = "../input/shopee-pipeline-package"
DATA_DIR = "../input/shopee-product-matching"
OUT_CSV = "submission.csv"

# %%
# Install from the package's own wheels into a temporary folder (not the working folder, whose
# contents Kaggle keeps as the notebook's output); nothing is downloaded.
import glob
import os
import subprocess
import sys
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations would look for a newer version online
site = tempfile.mkdtemp(prefix="pipeline_site_")
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

import pipeline  # noqa: E402

print("pipeline", pipeline.__version__, "loaded from", pipeline.__file__)

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

pd.read_csv(OUT_CSV).head()
