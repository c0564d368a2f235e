"""Train the click network on cubes (:mod:`.samples`) with simulated users (:mod:`.simulate`).

A small 3D U-Net (:class:`tumorseg_core.models.unet3d.UNet3D`, :data:`.inputs.CHANNELS` inputs,
one logit) learns the clicked lesion from the cube, its clicks and the previous result; loss
binary cross-entropy + soft Dice; AdamW with a cosine learning rate. Every ``--every`` steps the
mean Dice of the first click on the validation cubes is measured and a pickle-free checkpoint
written (:mod:`tumorseg_core.training.checkpoint`), so a stopped run resumes where it was::

    python -m tumorseg_core.training.clicknet.train --cubes CUBES_DIR --val VAL_DIR --workdir RUN --steps 3000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from tumorseg_core.clicknet.network import build_network
from tumorseg_core.training import checkpoint
from tumorseg_core.training.clicknet import samples
from tumorseg_core.training.clicknet.simulate import augment, sample

logger = logging.getLogger(__name__)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3, 4))
    dice = 1.0 - (2.0 * inter + 1.0) / (p.sum(dim=(1, 2, 3, 4)) + target.sum(dim=(1, 2, 3, 4)) + 1.0)
    return bce + dice.mean()


@torch.no_grad()
def validate(net: torch.nn.Module, raw: np.ndarray, target: np.ndarray, guess: np.ndarray, voxel: np.ndarray) -> float:
    """Mean Dice of the first click (no correction) over the validation cubes."""
    net.eval()
    rng = np.random.default_rng(0)
    scores = []
    for i in range(len(raw)):
        x, y = sample(raw[i], target[i], guess[i], float(voxel[i]), rng, correcting=False)
        pred = net(torch.from_numpy(x[None]))[0, 0].numpy() > 0
        t = y[0] > 0.5
        scores.append(2.0 * float((pred & t).sum()) / max(float(pred.sum() + t.sum()), 1.0))
    net.train()
    return float(np.mean(scores))


def train(cubes: Path, val: Path, workdir: Path, steps: int, batch: int = 4, lr: float = 2e-3,
          every: int = 100, seed: int = 0) -> dict:
    raw, target, guess, voxel = samples.load(cubes)
    vraw, vtarget, vguess, vvoxel = samples.load(val)
    logger.info("%d training cubes, %d validation cubes", len(raw), len(vraw))
    torch.manual_seed(seed)
    net = build_network()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s / steps, 1.0))))
    state = {"step": 0, "best_dice": -1.0, "best_step": 0, "history": [], "steps": steps}
    rng = np.random.default_rng(seed)
    if checkpoint.has_checkpoint(workdir):
        weights, training_state, state = checkpoint.load_checkpoint(workdir)
        net.load_state_dict(weights)
        opt.load_state_dict(training_state["optimizer"])
        sched.load_state_dict(training_state["scheduler"])
        checkpoint.set_rng_state(training_state["rng"])
        rng = np.random.default_rng([seed, int(state["step"])])
        logger.info("resumed at step %d (best Dice %.3f)", state["step"], state["best_dice"])
    net.train()
    t0, losses = time.perf_counter(), []
    while state["step"] < steps:
        idx = rng.integers(len(raw), size=batch)
        pairs = [augment(*sample(raw[i], target[i], guess[i], float(voxel[i]), rng), rng) for i in idx]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))
        loss = _loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        state["step"] += 1
        if state["step"] % every == 0 or state["step"] == steps:
            d = validate(net, vraw, vtarget, vguess, vvoxel)
            best = d > state["best_dice"]
            if best:
                state["best_dice"], state["best_step"] = d, state["step"]
            state["history"].append({"step": state["step"], "loss": float(np.mean(losses)), "val_dice": d,
                                     "s_per_step": (time.perf_counter() - t0) / len(losses)})
            logger.info("step %d loss %.4f val Dice %.3f (%.2f s/step)", state["step"], np.mean(losses), d,
                        (time.perf_counter() - t0) / len(losses))
            checkpoint.save_checkpoint(workdir, net, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                                      "rng": checkpoint.rng_state()}, state, best)
            t0, losses = time.perf_counter(), []
    return state


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cubes", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    state = train(args.cubes, args.val, args.workdir, args.steps, args.batch, args.lr, args.every)
    print(json.dumps({k: state[k] for k in ("step", "best_dice", "best_step")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
