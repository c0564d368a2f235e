"""Every shipped training config in configs/ is valid: known keys, checked values, known options."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumorseg_core.training import synthetic_data
from tumorseg_core.training.augment import augment_config
from tumorseg_core.training.config import check_config, load_config, merge_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.json"))


def test_configs_folder_is_not_empty() -> None:
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path: Path) -> None:
    raw = load_config(path)
    # A config without "data" is run with --data (e.g. the coarse network's distillation set).
    config = merge_config(raw, {} if raw.get("data") else {"data": "synthetic:2"})  # rejects unknown keys
    check_config(config)
    augment_config(config.get("augment"))
    synthetic_data._options(config.get("synthetic"))
    synthetic_data._options(config.get("val_synthetic"))
