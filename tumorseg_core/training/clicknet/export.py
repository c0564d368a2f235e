"""Write a trained click network (a :mod:`.train` work directory) as the folder :class:`.predict.ClickNet` reads.

The folder holds ``weights.safetensors`` (the best validation step's weights) and ``manifest.json``:
the input layout it was trained for, the training record and the sha256 of the weights::

    python -m tumorseg_core.training.clicknet.export RUN_DIR tumorseg_core/data/clicknet
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

from tumorseg_core.clicknet.grid import SIZE, VOXEL_MM
from tumorseg_core.clicknet.inputs import CHANNELS
from tumorseg_core.clicknet.network import FEATURES
from tumorseg_core.clicknet.predict import WEIGHTS
from tumorseg_core.modelpkg.package import sha256_file
from tumorseg_core.training.checkpoint import STATE_FILE


def export(workdir: Path, dest: Path, description: str = "") -> Path:
    workdir, dest = Path(workdir), Path(dest)
    state = json.loads((workdir / STATE_FILE).read_text(encoding="utf-8"))
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.name not in (WEIGHTS, "manifest.json", "README.md"):
            raise FileExistsError(f"{dest} holds {old.name!r}; export into an empty folder or a click-network folder")
    tmp = dest / (WEIGHTS + ".tmp")
    shutil.copyfile(workdir / "best.safetensors", tmp)
    tmp.replace(dest / WEIGHTS)
    files = {WEIGHTS: sha256_file(dest / WEIGHTS)}
    if (dest / "README.md").is_file():
        files["README.md"] = sha256_file(dest / "README.md")
    manifest = {
        "name": "clicknet",
        "description": description or "Click network: the clicked lesion from a cube around the click "
                                      "(trained on simulated lesions in real anatomy and phantoms; not a clinical tool)",
        "channels": CHANNELS,
        "grid": {"size": SIZE, "voxel_mm": VOXEL_MM},
        "features": list(FEATURES),
        "training": {"best_step": state["best_step"], "best_val_dice": round(float(state["best_dice"]), 4),
                     "steps": state["step"], "history": state["history"]},
        "files": files,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return dest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    print(export(args.workdir, args.dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
