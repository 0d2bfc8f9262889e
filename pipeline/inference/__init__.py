"""Trained encoders at inference: batched embedding (:mod:`.embedding`) and flip test-time
augmentation (:mod:`.tta`). Training's per-epoch held-out F1, the embed stage, ``predict`` and the
Kaggle inference all embed through here."""
