"""Fine-tuning is pinned to the exact init_weights it started from (init_weights_sha256)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("monai")

from test_train import TINY, _make_volumes  # noqa: E402

from tumorseg_core.errors import InputError  # noqa: E402
from tumorseg_core.training.trainer import train  # noqa: E402


def test_init_weights_are_pinned_by_sha256_in_the_package_and_on_resume(tmp_path):
    data_dir = _make_volumes(tmp_path / "data")
    package = train(dict(TINY, data=str(data_dir), workdir=str(tmp_path / "w-init"), epochs=1,
                         iterations_per_epoch=1), tmp_path / "init-source")
    digest = json.loads((Path(package) / "manifest.json").read_text())["files"]["fold0.safetensors"]
    copy = tmp_path / "init"
    shutil.copytree(package, copy)
    config = dict(TINY, data=str(data_dir), workdir=str(tmp_path / "work"), epochs=1, iterations_per_epoch=1,
                  init_weights=str(copy))
    tuned = train(config, tmp_path / "tuned")
    recorded = json.loads((Path(tuned) / "training_config.json").read_text())
    assert recorded["init_weights_sha256"] == digest  # the package names the exact weights it started from
    # The recorded config retrains only from those weights.
    other = train(dict(TINY, data=str(data_dir), workdir=str(tmp_path / "w-other"), epochs=1,
                       iterations_per_epoch=1, seed=5), tmp_path / "other")
    shutil.rmtree(copy)
    shutil.copytree(other, copy)
    with pytest.raises(InputError, match="now has other weights"):
        train(dict(config, init_weights_sha256=digest, workdir=str(tmp_path / "w2")), tmp_path / "again")
    assert not (tmp_path / "again").exists()
    # A run that started from the old weights does not resume from the new ones.
    with pytest.raises(InputError, match="different training configuration"):
        train(dict(config, epochs=2), tmp_path / "tuned2")
    with pytest.raises(InputError, match="sha256 hex digest"):
        train(dict(config, init_weights_sha256="abc", workdir=str(tmp_path / "w3")), tmp_path / "bad")
    with pytest.raises(InputError, match="without init_weights"):
        train(dict(config, init_weights=None, init_weights_sha256=digest, workdir=str(tmp_path / "w4")),
              tmp_path / "bad")
