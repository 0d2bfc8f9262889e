"""Scripts that print figures (speed, memory, quality on the dev titles); never run by the tests."""

from pathlib import Path

# The real dev titles sit beside the project (never inside it): ../shared/data/shopee_dev.csv.
DEV_CSV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "shopee_dev.csv"
