"""A living catalogue: each day's new postings matched against those already grouped, with the models
and tuned rule of a trained run, kept in SQLite and FAISS, served over HTTP, and reviewed by people
(docs/catalogue.md)."""

from pipeline.catalogue.adding import add_postings
from pipeline.catalogue.catalogue import Catalogue, create_catalogue, open_catalogue
from pipeline.catalogue.check import check
from pipeline.catalogue.indexes import IndexConfig
from pipeline.catalogue.reading import explain, export_groups, match_postings
from pipeline.catalogue.reviews import remove, review
from pipeline.catalogue.rule import Rule, rule_of_run
from pipeline.catalogue.schema import CatalogueError
from pipeline.catalogue.setup import init_from_run, init_with_vectors

__all__ = [
    "Catalogue",
    "CatalogueError",
    "IndexConfig",
    "Rule",
    "add_postings",
    "check",
    "create_catalogue",
    "explain",
    "export_groups",
    "init_from_run",
    "init_with_vectors",
    "match_postings",
    "open_catalogue",
    "remove",
    "review",
    "rule_of_run",
]
