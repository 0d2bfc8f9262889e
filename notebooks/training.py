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
# # Shopee product matching: explore, train, tune
#
# This notebook drives the `pipeline` library: every step below is one library call, and each
# writes its files into the run folder, so any step can be rerun alone (or from the command line
# with `python -m pipeline STAGE --run RUN`).
#
# **Data.** By default it writes and uses the built-in synthetic dataset. On Kaggle, set
# `DATA_DIR = "../input/shopee-product-matching"` in the next cell; that is the only setting to
# change.

# %% tags=["parameters"]
DATA_DIR = None  # None: synthetic data in data/synthetic; on Kaggle: "../input/shopee-product-matching"
RUN_DIR = None  # None: runs/notebook in the project (or the working folder on Kaggle)
SYNTH_GROUPS = 160  # size of the synthetic dataset when DATA_DIR is None
CONFIG = "demo"  # a YAML file or a preset name; "demo" is sized for a CPU
OVERRIDES: list[str] = []  # key=value pairs, e.g. ["text.train.epochs=5", "image.backbone=tf_efficientnet_b3"]

# %%
import logging
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display

from pipeline import plots, stages
from pipeline.config import load_config
from pipeline.data import Dataset
from pipeline.paths import PROJECT_ROOT, working_dir
from pipeline.data.synth import make_synthetic

if DATA_DIR is None:
    DATA_DIR = PROJECT_ROOT / "data" / "synthetic"
    make_synthetic(DATA_DIR, n_groups=SYNTH_GROUPS, seed=0, progress=False)
DATA_DIR = Path(DATA_DIR)
RUN_DIR = Path(RUN_DIR) if RUN_DIR is not None else working_dir() / "runs" / "notebook"
cfg = load_config(CONFIG, OVERRIDES)
print("data:", DATA_DIR.resolve(), "| run:", RUN_DIR.resolve(), "| modalities:", cfg.modalities)
# The stages' progress lines under each cell, e.g. one per epoch: "text fold0 epoch 3/6: loss ..., ETA ...".
if not logging.getLogger("pipeline").handlers:
    logging.getLogger("pipeline").addHandler(logging.StreamHandler(sys.stdout))
logging.getLogger("pipeline").setLevel(logging.INFO)

# %% [markdown]
# ## 1. Explore

# %%
data = Dataset(DATA_DIR)
train = data.read("train")
sizes = train.groupby("label_group").size()
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3))
sizes.value_counts().sort_index().plot.bar(ax=ax1)
ax1.set(title=f"group sizes ({len(sizes)} groups, {len(train)} postings)", xlabel="postings in the group", ylabel="groups")
train["title"].str.split().str.len().plot.hist(bins=30, ax=ax2)
ax2.set(title="title length", xlabel="words", ylabel="postings")
plt.tight_layout()
plt.show()

# %%
display(plots.plot_group_samples(train, data.images_dir("train"), n_groups=4, per_group=4))

# %% [markdown]
# ## 2. Train the encoders
# GroupKFold folds over `label_group`; each learned modality trains one model per fold (on the
# other folds) and one on every row (used for the test set). Killed? Rerun the cell with
# `resume=True`.
#
# On a Kaggle "GPU T4 x2" notebook, both GPUs train when a cell runs, after `stages.prepare(...)`,
# `!torchrun --nproc_per_node 2 -m pipeline train-image --run-dir {RUN_DIR}` (and `train-text`);
# the cell below then finds those models finished and skips them.

# %%
stages.prepare(DATA_DIR, RUN_DIR, cfg)
for modality in cfg.learned:
    stages.train(RUN_DIR, modality, progress=False)
if cfg.learned:
    stages.embed(RUN_DIR, progress=False)

# %%
logs = stages.training_logs(RUN_DIR)
if logs:
    display(Image(filename=str(plots.plot_training_logs(logs, RUN_DIR / "plots" / "training.png"))))

# %% [markdown]
# ## 3. Tune thresholds on out-of-fold F1

# %%
tune_report = stages.tune_stage(RUN_DIR, progress=False)
pd.DataFrame(tune_report["steps"]).T[["f1", "precision", "recall"]].round(4)

# %%
display(Image(filename=str(RUN_DIR / "plots" / "threshold_f1.png")))

# %% [markdown]
# ## 4. The hardest mistakes
# False positives the rule was most sure of, and the true matches it missed by the least.

# %%
false_pos, false_neg = stages.hardest_errors(stages.oof_pairs(RUN_DIR), n=5)
for name, pairs in (("false_positives", false_pos), ("false_negatives", false_neg)):
    if len(pairs):
        path = plots.plot_pairs(pairs, data.images_dir("train"), name.replace("_", " "),
                                path=RUN_DIR / "plots" / f"{name}.png")
        display(Image(filename=str(path)))
    else:
        print(f"no {name.replace('_', ' ')}")

# %% [markdown]
# ## 5. Submission

# %%
submission = stages.predict(RUN_DIR, progress=False)
report = stages.write_report(RUN_DIR)
print(f"out-of-fold F1 {report['oof_f1']:.4f}; submission at {submission}")
pd.read_csv(submission).head()
