"""``TumorSegmentationLogic.importModel``: installing and importing models through the worker (issue 19).

The Logic hands the path to the background worker (``{"cmd": "import"}``), so hashing and
converting weights never run in Slicer's UI process; the result lands in the user model
folder, where the panel lists it.
"""

from __future__ import annotations

import pytest

slicer = pytest.importorskip("slicer")

from TumorSegmentationLib import TumorSegmentationLogic  # noqa: E402

from tumorseg_core.errors import ModelAlreadyInstalledError, TumorSegError  # noqa: E402
from tumorseg_core.modelpkg.package import installed_models  # noqa: E402


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("TUMORSEG_MODELS", str(folder))  # the worker started below inherits it
    return folder


def test_import_installs_a_package_then_refuses_the_name_unless_overwrite(models_dir, threshold_package, tmp_path):
    logic = TumorSegmentationLogic(idleTimeout=60)
    try:
        progress = []
        name = logic.importModel(threshold_package((1.0, 1.0, 1.0)), progressCallback=lambda f, m: progress.append(m))
        assert name == "test-threshold" and (models_dir / name / "manifest.json").is_file()
        assert progress and progress[-1] == f"installed {name}"
        assert [i.key for i in installed_models(models_dir, verify=False) if i.source == "user"] == [name]
        assert logic.modelManifest(name).name == name
        with pytest.raises(ModelAlreadyInstalledError) as info:
            logic.importModel(threshold_package((1.0, 1.0, 1.0)))
        assert info.value.name == name and "already installed" in str(info.value)
        assert logic.importModel(threshold_package((2.0, 2.0, 2.0)), overwrite=True) == name
        assert logic.modelManifest(name).spacing_xyz == (2.0, 2.0, 2.0)  # the cached manifest was dropped

        checkpoint = tmp_path / "weights.pt"
        checkpoint.write_bytes(b"not a checkpoint")
        with pytest.raises(TumorSegError) as info:
            logic.importModel(checkpoint)
        assert "\n" not in str(info.value) and logic.runner.is_alive
        with pytest.raises(TumorSegError, match="does not exist"):
            logic.importModel(tmp_path / "missing.zip")
    finally:
        logic.shutdown()
