"""The optional features, each a folder that plugs into the core at the hooks of `Feature`.

Delete a feature's folder, its tests and its line in FEATURES, and the template still runs and its
tests pass (tests/test_layout.py proves it for groups and sweeps). The core imports a feature only
through this table; a feature's __init__.py defines FEATURE and imports nothing heavy (--list and
--help answer without torch).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

FEATURES = ("serve", "groups", "sweeps")  # packages whose __init__.py defines FEATURE


@dataclass(frozen=True)
class Feature:
    name: str
    train_options: Optional[Callable] = None  # (parser) -> None: adds its options to train.py
    infer_options: Optional[Callable] = None  # (parser) -> None: adds its options to inference.py
    train: Optional[Callable] = None          # (args, config()) -> exit status, or None when the invocation is not its own
    infer: Optional[Callable] = None          # (args, shared()) -> exit status, or None likewise
    resume_refusal: Optional[Callable] = None  # (id) -> why train.py resume=<id> names one of its own, or None
    list_rows: Optional[Callable] = None      # (runs, filters) -> the rows of --list, its members folded into one row each
    page_rows: Optional[Callable] = None      # (runs) -> its rows of index.html; runs naming one (run.json[kind]["id"]) fold under it
    export_formats: tuple = ()                # formats inference.py --export accepts besides onnx and pt2 (its infer hook writes them)


def features() -> list[Feature]:
    """Every installed feature, in FEATURES order."""
    return [importlib.import_module(name).FEATURE for name in FEATURES]


def hooks(name: str) -> list[Callable]:
    """The features' hooks called `name`, where set."""
    return [getattr(f, name) for f in features() if getattr(f, name) is not None]
