"""The training loop's settings, apart from the torch code that reads them (:mod:`.session`,
:mod:`.loop`) so that reading a run's config never imports torch."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.device import AMP_MODES
from pipeline.settings import require

FINAL_MODELS = ("full", "fold0", "folds", "none")


@dataclass
class TrainConfig:
    """Settings of the one training loop shared by both encoders."""

    epochs: int = 10
    batch_size: int = 32  # the global batch: under torchrun each of N processes takes batch_size / N rows
    lr: float = 3e-5  # backbone
    head_lr: float = 3e-3  # the head starts from random and needs a larger step
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1  # share of steps with linear LR warm-up before the cosine decay
    grad_clip: float = 1.0
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    num_workers: int = 2
    # The model that embeds test.csv: full (one more model, trained on every row), fold0 (the first
    # fold's model, which saves a training; thresholds were tuned on fold models anyway), folds
    # (every fold model, their embeddings averaged and renormalised; no full training) or none.
    final: str = "full"
    # Keep last.pt (the full training state) once a model has finished; it is deleted by default,
    # since model.pt and log.json are all a finished run needs.
    keep_last: bool = False
    # Each row's cross-entropy weighs n^-p, n its class's training rows, normalised to a mean of 1
    # over the rows (2nd place in the competition used p = 0.4); 0 weighs every row alike.
    sample_weight_power: float = 0.0
    # Fine-tuning a pretrained backbone (all off by default; read by pipeline.training.session and
    # .loop): the backbone's learning rate is lr * backbone_lr_mult (the pooling and neck keep lr);
    backbone_lr_mult: float = 1.0
    # the first linear_probe_epochs train the neck and head on a frozen backbone (LP-FT), and the
    # backbone's own warm-up and cosine decay run over the epochs after them (= epochs: never trained);
    linear_probe_epochs: int = 0
    # the backbone's BatchNorm layers keep their (pretrained) running statistics;
    freeze_bn: bool = False
    # with a held-out eval (fold models), stop after this many epochs without a better val_f1 and
    # keep the best epoch's weights; 0 trains every epoch.
    early_stopping_patience: int = 0

    def __post_init__(self) -> None:
        require(self.final in FINAL_MODELS, "final", ", ".join(FINAL_MODELS[:-1]) + " or none", self.final)
        require(self.epochs >= 1, "epochs", ">= 1 (no epoch trains nothing)", self.epochs)
        # The BatchNorm neck needs two rows a batch in training mode.
        require(self.batch_size >= 2, "batch_size", ">= 2", self.batch_size)
        for key in ("lr", "head_lr"):
            require(getattr(self, key) > 0, key, "> 0", getattr(self, key))
        require(self.grad_clip >= 0, "grad_clip", ">= 0 (0 = no clipping)", self.grad_clip)
        require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        require(0 <= self.warmup_frac < 1, "warmup_frac", "in [0, 1)", self.warmup_frac)
        require(self.amp in AMP_MODES, "amp", ", ".join(AMP_MODES[:-1]) + " or off", self.amp)
        require(self.num_workers >= 0, "num_workers", ">= 0", self.num_workers)
        require(self.sample_weight_power >= 0, "sample_weight_power", ">= 0 (0 = off)", self.sample_weight_power)
        require(self.backbone_lr_mult >= 0, "backbone_lr_mult", ">= 0", self.backbone_lr_mult)
        require(
            0 <= self.linear_probe_epochs <= self.epochs,
            "linear_probe_epochs",
            "in [0, epochs]",
            self.linear_probe_epochs,
        )
        require(
            self.early_stopping_patience >= 0,
            "early_stopping_patience",
            ">= 0 (0 = off)",
            self.early_stopping_patience,
        )
