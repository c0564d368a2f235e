"""A click-network folder for the Slicer-side tests, written by the real exporter.

``write_click_network(dest, seed)``: the architecture's own initial weights (seeded), so every
voxel's probability depends on the inputs. ``logit=x``: the head's weights zeroed and its bias
``x``, so P(lesion) is ``sigmoid(x)`` on the whole cube (a segment whose shape is known without
the network). Either way the folder is what ``training.clicknet.export`` writes (manifest with the
sha256 of the weights), so the worker verifies it like the shipped one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def write_click_network(dest: Path, seed: int = 0, logit: Optional[float] = None) -> Path:
    import torch
    from safetensors.torch import save_file

    from tumorseg_core.clicknet.network import build_network
    from tumorseg_core.training.checkpoint import STATE_FILE
    from tumorseg_core.training.clicknet.export import export

    torch.manual_seed(seed)
    state = build_network().state_dict()
    if logit is not None:
        state["head.weight"].zero_()
        state["head.bias"].fill_(float(logit))
    run = Path(dest).parent / f"{Path(dest).name}-run"
    run.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(run / "best.safetensors"))
    (run / STATE_FILE).write_text(json.dumps({"best_step": 0, "best_dice": 0.0, "step": 0, "history": []}))
    return export(run, Path(dest))


def tamper(folder: Path) -> None:
    """Change one byte of the folder's weights (its sha256 no longer matches the manifest)."""
    weights = Path(folder) / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
