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
# This notebook drives the `pipeline` library: every step below is one library call that writes
# its files into the run folder, so any step can be rerun alone (or from the command line with
# `python -m pipeline STAGE --run RUN`). Every log line also goes to `RUN_DIR/run.log`.
#
# **Settings** (next cell):
# - `DATA_DIR`: None writes and uses a small synthetic dataset; on Kaggle set
#   `"../input/shopee-product-matching"`.
# - `CONFIG`: None picks the `kaggle` preset (EfficientNet-B3 and the multilingual
#   xlm-roberta-base, sized for one 16 GB GPU and a 9-hour session) when the notebook runs on
#   Kaggle with a GPU, and the `demo` preset (sized for a CPU) anywhere else. Name a preset or a
#   YAML file to choose yourself; `OVERRIDES` changes single keys.
# - `CODE_DIR`: where the install cell finds the project's wheels when `pipeline` is not
#   installed (on Kaggle: the dataset `python -m pipeline kaggle-code` wrote, see the README's
#   Kaggle section); the last cell packages the run with them for the offline inference.
# - `RUN_DIR`: the run folder. Rerunning the training cell in the same folder resumes: finished
#   models are kept, and a model killed mid-training continues from its last epoch.
# - `PACKAGE_DIR`: where the last cell writes the package for the inference notebook.

# %% tags=["parameters"]
DATA_DIR = None  # None: synthetic data in data/synthetic; on Kaggle: "../input/shopee-product-matching"
RUN_DIR = None  # None: runs/notebook in the working folder (/kaggle/working on Kaggle, else the project)
SYNTH_GROUPS = 160  # size of the synthetic dataset when DATA_DIR is None
CONFIG = None  # None: "kaggle" on Kaggle with a GPU, else "demo"; or a preset name / YAML file
OVERRIDES: list[str] = []  # key=value pairs, e.g. ["text.train.epochs=5", "image.image_size=448"]
CODE_DIR = "../input/shopee-pipeline-code"  # the project's wheel and those Kaggle lacks (kaggle-code)
PACKAGE_DIR = None  # None: package/ in the working folder

# %%
# Install the project from uploaded wheels when it is not importable yet; nothing is downloaded.
import glob
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("pipeline") is None:
    wheels = sorted(glob.glob(f"{CODE_DIR}/**/*.whl", recursive=True))
    if not wheels:
        raise FileNotFoundError(
            f"`pipeline` is not installed and {CODE_DIR} holds no wheels: add the dataset "
            "with the project's wheels as an input (see the README's Kaggle section)"
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            *wheels,
        ],
        check=True,
    )
import pipeline  # noqa: E402

print("pipeline", pipeline.__version__, "from", pipeline.__file__)

# %%
# Figures: the library returns matplotlib Figures, and display(fig) draws them inline.
# %matplotlib inline
import logging  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import transformers  # noqa: E402
from IPython.display import Image, Markdown, display  # noqa: E402

from pipeline import stages  # noqa: E402
from pipeline.data import Dataset  # noqa: E402
from pipeline.device import pick_device  # noqa: E402
from pipeline.kaggle.presets import notebook_config  # noqa: E402
from pipeline.paths import RunPaths, working_dir  # noqa: E402
from pipeline.reporting import plots  # noqa: E402
from pipeline.reporting.report import training_logs, write_report  # noqa: E402

# The stages' progress lines (one per epoch while training) show below each cell.
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter("%(message)s"))
logging.getLogger("pipeline").handlers[:] = [handler]
logging.getLogger("pipeline").setLevel(logging.INFO)
transformers.utils.logging.disable_progress_bar()  # its weight-loading bars would drown the epoch lines

if DATA_DIR is None:
    from pipeline.data.synth import make_synthetic  # development tooling

    DATA_DIR = working_dir() / "data" / "synthetic"
    make_synthetic(DATA_DIR, n_groups=SYNTH_GROUPS, seed=0, progress=False)
DATA_DIR = Path(DATA_DIR)
RUN_DIR = Path(RUN_DIR) if RUN_DIR is not None else working_dir() / "runs" / "notebook"
cfg, preset, notes = notebook_config(CONFIG, OVERRIDES)
print("device:", pick_device(), "| data:", DATA_DIR.resolve(), "| run:", RUN_DIR.resolve())
print(
    "modalities:",
    cfg.modalities,
    "| image:",
    cfg.image.backbone,
    cfg.image.image_size,
    "px | title model:",
    cfg.text.model or "bundled all-MiniLM-L6-v2",
)

# %% [markdown]
# ## 1. Explore
# Group sizes decide what a rule can gain: most groups hold 2 postings, so one wrong match halves a
# posting's F1.

# %%
data = Dataset(DATA_DIR)
train = data.read("train")
display(plots.plot_data_overview(train))

# %%
if data.images_dir("train").is_dir():
    display(plots.plot_group_samples(train, data.images_dir("train"), n_groups=4, per_group=4))
else:
    print(f"no {data.images_dir('train')}: no sample images to show")

# %% [markdown]
# ## 2. Train the encoders
# GroupKFold folds over `label_group`; each learned modality trains one model per fold (on the
# other folds) and, as `train.final` says, one on every row for the test set (or none: with
# `folds`, the test set is embedded by every fold model, averaged). One line per epoch shows
# below. Rerun this cell to resume: `resume=True` keeps finished models and continues a killed
# one from its last epoch. The folder keeps the config it was prepared with; to train another
# config, set a new `RUN_DIR`. (A new Kaggle session starts with an empty working folder: to
# resume there, add the previous version's output as an input and copy its run folder to `RUN_DIR`.)
#
# On a Kaggle "GPU T4 x2" notebook, both GPUs train when a cell runs, after `stages.prepare(...)`,
# `!torchrun --nproc_per_node 2 -m pipeline train-image --run-dir {RUN_DIR}` (and `train-text`);
# the cell below then finds those models finished and skips them.

# %%
if RunPaths(RUN_DIR).manifest.exists():
    print(f"resuming in {RUN_DIR} (prepared earlier; its config.yaml is the one used)")
else:
    stages.prepare(DATA_DIR, RUN_DIR, cfg)
for modality in cfg.learned:
    stages.train(RUN_DIR, modality, resume=True, progress=False)
if cfg.learned:
    stages.embed(RUN_DIR, progress=False)

# %%
logs = training_logs(RUN_DIR)
if logs:
    display(plots.plot_training_logs(logs))
else:
    print("no learned modality: nothing was trained")

# %% [markdown]
# ## 3. Tune thresholds on out-of-fold F1
# The headline figure is the cross-validated F1: every setting tuned on the other folds, scored on
# the held-out one. `report.md` in the run folder says what each signal and step adds.

# %%
tune_report = stages.tune_stage(RUN_DIR, progress=False)
if "final_cv" in tune_report:
    print(f"cross-validated F1 {tune_report['final_cv']['f1']:.4f}")
pd.DataFrame(tune_report["steps"]).T[["f1", "precision", "recall"]].round(4)

# %%
display(Image(filename=str(RunPaths(RUN_DIR).plot("threshold_f1"))))

# %%
display(Image(filename=str(RunPaths(RUN_DIR).plot("f1_by_group_size"))))

# %% [markdown]
# ## 4. The hardest mistakes
# False positives that passed a threshold by most, and true matches that missed one by least,
# ranked by the margin of the score that decided them; each pair shows every signal's similarity
# and both label groups. The tune stage wrote these figures (the CLI writes them too).

# %%
for name in ("false_positives", "false_negatives"):
    path = RunPaths(RUN_DIR).plot(name)
    if path.exists():
        display(Image(filename=str(path)))
    else:
        print(f"no {name.replace('_', ' ')}")

# %% [markdown]
# ## 5. Submission and report

# %%
submission = stages.predict(RUN_DIR, progress=False)
report = write_report(RUN_DIR)
print(
    f"cross-validated F1 {report['f1_cross_validated'] or float('nan'):.4f} "
    f"(tuned on the same rows: {report['oof_f1']:.4f}); submission at {submission}"
)
display(Markdown(RunPaths(RUN_DIR).report_md.read_text()))

# %% [markdown]
# ## 6. Package for the offline inference
# One folder with the code, the wheels Kaggle's image lacks, the trained encoders, the thresholds
# and the config: *Save Version*, then make a dataset of this notebook's output and give the
# inference notebook its `package/` folder. `package` refuses, before writing anything, when a
# library the inference imports would be missing there.

# %%
from pipeline.kaggle.package import package_run  # noqa: E402

PACKAGE_DIR = Path(PACKAGE_DIR) if PACKAGE_DIR is not None else working_dir() / "package"
if not Path(CODE_DIR).is_dir():
    print(
        f"no {CODE_DIR}: not packaged. Run `python -m pipeline package --run {RUN_DIR} --out DIR --wheels CODE_DIR` "
        "with the folder `python -m pipeline kaggle-code` wrote"
    )
else:
    if (PACKAGE_DIR / "manifest.json").exists():
        shutil.rmtree(PACKAGE_DIR)  # a package this cell wrote before, from an earlier tuning
    print("package written to", package_run(RUN_DIR, PACKAGE_DIR, wheels=CODE_DIR))
