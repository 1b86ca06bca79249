"""Local SQLite experiment tracking: the store (no transformers import), the trainer callback, the HTML report.

`from hftrain.tracking import TrackerStore` is cheap; the callback lives in `hftrain.tracking.callback` and is only
imported by trainers; `hftrain.tracking.integration` registers `report_to: [hftrain]` (README.md, "Experiment tracker").
"""

from .store import SCHEMA_VERSION, STATUSES, TrackerStore, default_db_path

__all__ = ["SCHEMA_VERSION", "STATUSES", "TrackerStore", "default_db_path"]
