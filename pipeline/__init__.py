"""Shopee-style product matching: image and title encoders, neighbours, F1-tuned matching."""

__version__ = "0.1.0"
