"""A text corpus available offline on every machine: the docstrings of Python's standard library.

Pure-Python stdlib modules ship their docstrings with every CPython install, so pretraining runs with no download.
The module list is fixed and the split is a hash of each text, so the same Python version gives the same corpus.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import warnings

from datasets import Dataset

__all__ = ["STDLIB_MODULES", "stdlib_docstrings", "stdlib_docstring_splits"]

# Modules with many well-written docstrings, importable everywhere (no GUI, no platform-only modules).
STDLIB_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar cmd codecs collections configparser contextlib copy csv "
    "dataclasses datetime decimal difflib email enum fnmatch fractions ftplib functools getopt gettext glob gzip "
    "hashlib heapq hmac html http.client http.server imaplib inspect io ipaddress itertools json logging lzma "
    "mailbox mimetypes numbers operator optparse pathlib pickle pickletools pkgutil platform plistlib poplib pprint "
    "queue quopri random re reprlib sched secrets selectors shelve shlex shutil smtplib socket socketserver "
    "statistics string struct subprocess tarfile tempfile textwrap threading timeit tokenize trace traceback "
    "turtle types typing unittest urllib.parse urllib.request uuid warnings wave weakref xml.dom.minidom "
    "xml.etree.ElementTree zipfile zipimport"
).split()


def _docstrings(module) -> list[str]:
    texts = [inspect.getdoc(module) or ""]
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or getattr(member, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(member) or inspect.isfunction(member):
            texts.append(inspect.getdoc(member) or "")
            if inspect.isclass(member):
                for attr, method in sorted(vars(member).items()):
                    if not attr.startswith("_") and inspect.isfunction(method):
                        texts.append(inspect.getdoc(method) or "")
    return texts


def stdlib_docstrings(min_chars: int = 40) -> list[str]:
    """Unique docstrings (at least `min_chars` long) of `STDLIB_MODULES`, in a fixed order."""
    seen, texts = set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few modules warn about deprecation on import
        for name in STDLIB_MODULES:
            try:
                module = importlib.import_module(name)
            except Exception:  # e.g. turtle without tkinter: skip, the corpus stays large
                continue
            for text in _docstrings(module):
                text = text.strip()
                if len(text) >= min_chars and text not in seen:
                    seen.add(text)
                    texts.append(text)
    return texts


def stdlib_docstring_splits(eval_share: float = 0.05) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets with a `text` column; a docstring goes to eval when its hash falls in `eval_share`."""
    train, evaluation = [], []
    for text in stdlib_docstrings():
        bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
        (evaluation if bucket < eval_share else train).append({"text": text})
    return Dataset.from_list(train), Dataset.from_list(evaluation)
