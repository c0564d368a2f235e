"""A short fine-tune of a smaller network that distils from its parent (knowledge distillation).

The loss of each step is the training config's segmentation loss on the labels (e.g. Dice +
CE) plus ``weight`` × :func:`distillation_loss` to the parent's logits on the same patch:
the parent's soft output tells the student, voxel by voxel, what it should say, which a
few hundred CPU steps on labels alone do not (they learn "background everywhere" first).

Tensor layouts: logits and images are ``(B, C, z, y, x)``; labels ``(B, 1, z, y, x)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from tumorseg_core.errors import CancelledError, InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from tumorseg_core.training.setup import RunData

logger = logging.getLogger(__name__)

DEFAULT_DISTILL_WEIGHT = 1.0
DEFAULT_TEMPERATURE = 2.0


def check_distill(weight: float, temperature: float) -> None:
    """InputError unless ``weight >= 0`` and ``temperature > 0``."""
    if not float(weight) >= 0.0:
        raise InputError(f"--distill-weight must be 0 or more (0: labels only), got {weight}")
    if not float(temperature) > 0.0:
        raise InputError(f"--distill-temperature must be positive, e.g. 2, got {temperature}")


def distillation_loss(student_logits: "torch.Tensor", teacher_logits: "torch.Tensor",
                      temperature: float = DEFAULT_TEMPERATURE) -> "torch.Tensor":
    """KL(softmax(teacher / T) || softmax(student / T)) × T², the mean over every voxel: a scalar.

    Both logits are ``(B, C, z, y, x)``; the teacher's carry no gradient. 0 exactly when the
    two give the same probabilities; the T² keeps the gradient's scale independent of T
    (Hinton et al. 2015).
    """
    import torch.nn.functional as F

    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    t = float(temperature)
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)  # (B, z, y, x)
    return kl.mean() * (t * t)


def distill_fine_tune(
    student: "torch.nn.Module",
    teacher: "torch.nn.Module",
    run: "RunData",
    *,
    weight: float = DEFAULT_DISTILL_WEIGHT,
    temperature: float = DEFAULT_TEMPERATURE,
    device: str = "cpu",
    progress: Optional[Callable[[float, str], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Train ``student`` in place for ``run.config["iterations_per_epoch"]`` steps on ``run.patches``.

    Optimizer, schedule, loss, batch size and gradient clipping come from ``run.config``
    (as ``tumorseg train`` builds them); ``teacher`` (the parent) runs in eval mode without
    gradients. Afterwards the student is validated on ``run.val_cases`` (if any).

    Returns:
        ``{"losses": [per step], "label_losses": [...], "distill_losses": [...],
        "validation": validate()'s dict or None}``.

    Raises:
        CancelledError: when ``cancel()`` says stop (nothing is written by this function).
    """
    import torch
    from torch.utils.data import DataLoader

    from tumorseg_core.training.losses import build_loss
    from tumorseg_core.training.trainer import build_optimizer, build_scheduler

    check_distill(weight, temperature)
    config = run.config
    dev = torch.device(device)
    student.to(dev).train()
    teacher.to(dev).eval()
    loss_fn = build_loss(config["loss"], "softmax", config["class_weights"], **config["loss_options"])
    optimizer = build_optimizer(config, student.parameters())
    scheduler = build_scheduler(config, optimizer)
    n_iter = int(config["iterations_per_epoch"])
    run.patches.set_epoch(0)
    loader = DataLoader(run.patches, batch_size=int(config["batch_size"]), shuffle=False, num_workers=0,
                        drop_last=True)
    losses: List[float] = []
    label_losses: List[float] = []
    distill_losses: List[float] = []
    for step, batch in enumerate(loader):
        if step >= n_iter:
            break
        if cancel is not None and cancel():
            raise CancelledError("pruning fine-tune cancelled; nothing was written")
        image = batch["image"].to(dev)
        label = batch["label"].to(dev).round().long()
        with torch.no_grad():
            target = teacher(image)
        logits = student(image)
        hard = loss_fn(logits, label)
        soft = distillation_loss(logits, target, temperature) if weight > 0 else logits.new_zeros(())
        loss = hard + float(weight) * soft
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(student.parameters(), float(config["grad_clip"]))
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        label_losses.append(float(hard.detach()))
        distill_losses.append(float(soft.detach()))
        if progress is not None:
            progress((step + 1) / n_iter, f"fine-tune {step + 1}/{n_iter} loss {losses[-1]:.4f} "
                                          f"(labels {label_losses[-1]:.4f}, parent {distill_losses[-1]:.4f})")
        if (step + 1) % 10 == 0 or step + 1 == n_iter:
            logger.info("fine-tune step %d/%d: loss %.4f (labels %.4f, distillation %.4f)", step + 1, n_iter,
                        sum(losses[-10:]) / len(losses[-10:]), sum(label_losses[-10:]) / len(label_losses[-10:]),
                        sum(distill_losses[-10:]) / len(distill_losses[-10:]))
    validation = None
    if run.val_cases:
        from tumorseg_core.training.validation import validate

        validation = validate(student, run.val_cases, run.patch_zyx,
                              [lab["value"] for lab in config["output"]["labels"]], dev,
                              overlap=config["val_overlap"], sw_batch=config["val_sw_batch"], cancel=cancel)
    student.eval()
    return {"losses": losses, "label_losses": label_losses, "distill_losses": distill_losses,
            "validation": validation}
