"""Structured channel pruning of a model package's network, with a short fine-tune.

:func:`prune_network` keeps the fraction ``keep`` of the output channels of every
convolution of a ``unet3d`` (TumorSeg's 3D U-Net, :mod:`tumorseg_core.models.unet3d`)
and returns a genuinely smaller network: the registry's ``unet3d`` rebuilt with
``features`` scaled by ``keep`` (each level ``max(1, round(keep * f))``), into which the
kept filters are copied together with the matching input channels of the next layer and
the norm layers' per-channel parameters (affine weight and bias; running statistics for
batch norm; the conv bias when ``norm`` is ``"none"``). Skip connections stay consistent:
a decoder's first convolution reads the kept channels of the encoder's second
convolution, then those of the transposed convolution below it. Each convolution chooses
its own filters; the kept ones stay in their original order, so ``keep=1.0`` gives the
original network exactly.

Which filters: the criterion ``"l1"`` keeps those of largest L1 norm (what
``torch.nn.utils.prune.ln_structured`` with ``n=1`` ranks by). On the shipped default it
loses every lesion: each convolution is followed by InstanceNorm, which divides a
filter's scale out again, and it drops the 2 of 16 head inputs that vote Tumor. The
default ``"taylor"`` ranks channels by :func:`taylor_importance` (|activation × gradient|
of how well the logits separate lesion from background, on a few patches with lesions)
and always keeps the head's lesion-voting channels (:func:`tumour_voting_channels`).

:func:`prune_package` does this to a verified package, fine-tunes the smaller network
(by default distilling from the parent, :mod:`tumorseg_core.training.distill`; with
``distill_weight=0`` the ordinary training loop :func:`tumorseg_core.training.trainer.train`
on the labels) and writes an ordinary package (atomically; the manifest holds the smaller
``kwargs``, ``metrics.pruning`` and the README name the keep ratio, the criterion and the
parent model).

Tensor layouts: ``Conv3d.weight`` is ``(out, in, kz, ky, kx)``; ``ConvTranspose3d.weight``
is ``(in, out, kz, ky, kx)``; networks map ``(B, C_in, z, y, x)`` to ``(B, C_out, z, y, x)``.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from tumorseg_core.errors import InputError
from tumorseg_core.training.distill import (
    DEFAULT_DISTILL_WEIGHT,
    DEFAULT_TEMPERATURE,
    check_distill,
    distill_fine_tune,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

logger = logging.getLogger(__name__)

PRUNABLE_ARCHITECTURES = ("unet3d",)
DEFAULT_FINE_TUNE_ITERATIONS = 100
DEFAULT_FINE_TUNE_DATA = "synthetic:16"
DEFAULT_VALIDATION_DATA = "synthetic:4"
CRITERIA = ("taylor", "l1")
DEFAULT_CRITERION = "taylor"
DEFAULT_IMPORTANCE_WINDOWS = 8

State = Dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class PrunedNetwork:
    """The result of :func:`prune_network`.

    Attributes:
        architecture: the registry name (``"unet3d"``).
        kwargs: the smaller network's kwargs (``features`` scaled, the rest as the parent's).
        state_dict: its weights, loadable strictly into ``build_network(architecture, kwargs)``.
        kept: per convolution (state-dict prefix, e.g. ``"encoders.0.block.0"``), the
            indices of the parent's output channels that were kept, ascending.
        parent_features: the parent's channels per level.
    """

    architecture: str
    kwargs: Dict[str, Any]
    state_dict: State
    kept: Dict[str, List[int]]
    parent_features: Tuple[int, ...]


def check_keep(keep: float) -> float:
    """``keep`` as a float in (0, 1]; InputError otherwise."""
    try:
        value = float(keep)
    except (TypeError, ValueError):
        raise InputError(f"--keep must be a number in (0, 1], e.g. 0.5; got {keep!r}") from None
    if not 0.0 < value <= 1.0:
        raise InputError(f"--keep must be in (0, 1] (the fraction of channels kept), got {keep!r}; e.g. --keep 0.5")
    return value


def pruned_width(channels: int, keep: float) -> int:
    """Channels left of ``channels`` when keeping the fraction ``keep`` (at least 1)."""
    return max(1, int(round(channels * keep)))


def filter_l1(weight: "torch.Tensor", dim: int = 0) -> "torch.Tensor":
    """L1 norm of each filter: ``weight.abs()`` summed over every axis but ``dim`` -> ``(weight.shape[dim],)``."""
    axes = [a for a in range(weight.dim()) if a != dim]
    return weight.detach().abs().sum(dim=axes)


def top_l1_channels(weight: "torch.Tensor", n_keep: int, dim: int = 0) -> "torch.Tensor":
    """Indices (ascending, int64) of the ``n_keep`` filters of largest L1 norm along ``dim``.

    Ties go to the lower index, so the choice is deterministic.
    """
    import torch

    norms = filter_l1(weight, dim).double()
    order = sorted(range(norms.numel()), key=lambda i: (-float(norms[i]), i))
    return torch.tensor(sorted(order[:n_keep]), dtype=torch.long)


class _StateBuilder:
    """Copies selected slices of the parent's state dict into the pruned one."""

    def __init__(self, parent: State, importance: Optional[Dict[str, "torch.Tensor"]] = None,
                 protected: Optional[Dict[str, List[int]]] = None) -> None:
        self.parent = parent
        self.importance = importance
        self.protected = protected or {}
        self.out: State = {}

    def take(self, key: str, index: Optional[List[Tuple[int, "torch.Tensor"]]] = None) -> None:
        """Copy ``parent[key]``, narrowed by ``index_select`` on each ``(dim, indices)`` given."""
        tensor = self.parent[key]
        for dim, idx in index or []:
            tensor = tensor.index_select(dim, idx)
        self.out[key] = tensor.detach().clone().contiguous()

    def per_channel(self, prefix: str, out_idx: "torch.Tensor") -> None:
        """Every per-channel entry under ``prefix`` (norm affine/running stats, a bias); scalars as they are."""
        for key in [k for k in self.parent if k.startswith(prefix + ".")]:
            if self.parent[key].dim() == 0:
                self.take(key)
            else:
                self.take(key, [(0, out_idx)])


def top_scored_channels(scores: "torch.Tensor", n_keep: int, protected: Sequence[int] = ()) -> "torch.Tensor":
    """Indices (ascending, int64) of the ``n_keep`` channels of highest ``scores`` ``(channels,)``.

    ``protected`` channels come first (the highest-scored of them when there are more than
    ``n_keep``); ties go to the lower index.
    """
    import torch

    values = scores.detach().double().flatten()
    first = set(int(i) for i in protected)
    order = sorted(range(values.numel()), key=lambda i: (i not in first, -float(values[i]), i))
    return torch.tensor(sorted(order[:n_keep]), dtype=torch.long)


def _choose(builder: _StateBuilder, prefix: str, n_keep: int, dim: int) -> "torch.Tensor":
    """The kept output channels of layer ``prefix``: by ``builder.importance`` when it has the
    layer, else by the filters' L1 norm along ``dim``; ``builder.protected`` channels first."""
    if builder.importance is not None and prefix in builder.importance:
        return top_scored_channels(builder.importance[prefix], n_keep, builder.protected.get(prefix, ()))
    if builder.protected.get(prefix):
        norms = filter_l1(builder.parent[f"{prefix}.weight"], dim)
        return top_scored_channels(norms, n_keep, builder.protected[prefix])
    return top_l1_channels(builder.parent[f"{prefix}.weight"], n_keep, dim=dim)


def _prune_conv(builder: _StateBuilder, prefix: str, norm_prefix: Optional[str], in_idx: "torch.Tensor",
                n_out: int, kept: Dict[str, List[int]]) -> "torch.Tensor":
    """A Conv3d (+ its norm): keep ``n_out`` filters (see :func:`_choose`) and the input channels ``in_idx``."""
    out_idx = _choose(builder, prefix, n_out, dim=0)
    builder.take(f"{prefix}.weight", [(0, out_idx), (1, in_idx)])
    if f"{prefix}.bias" in builder.parent:
        builder.take(f"{prefix}.bias", [(0, out_idx)])
    if norm_prefix is not None:
        builder.per_channel(norm_prefix, out_idx)
    kept[prefix] = [int(i) for i in out_idx]
    return out_idx


def _prune_double_conv(builder: _StateBuilder, prefix: str, in_idx: "torch.Tensor", n_out: int,
                       kept: Dict[str, List[int]]) -> "torch.Tensor":
    """A DoubleConv (``block.0`` conv, ``block.1`` norm, ``block.4`` conv, ``block.5`` norm)."""
    mid = _prune_conv(builder, f"{prefix}.block.0", f"{prefix}.block.1", in_idx, n_out, kept)
    return _prune_conv(builder, f"{prefix}.block.4", f"{prefix}.block.5", mid, n_out, kept)


def prune_unet3d(kwargs: Dict[str, Any], state_dict: State, keep: float,
                 importance: Optional[Dict[str, "torch.Tensor"]] = None,
                 protected: Optional[Dict[str, List[int]]] = None) -> PrunedNetwork:
    """Prune a ``unet3d`` given by its kwargs and weights (see the module docstring).

    ``importance``: per layer (state-dict prefix of a convolution or up-convolution), one score
    per output channel (e.g. :func:`taylor_importance`); layers without one are ranked by L1.
    ``protected``: per layer, channels kept before any other (e.g. :func:`tumour_voting_channels`).
    """
    import torch

    from tumorseg_core.models.registry import build_network

    keep = check_keep(keep)
    parent = build_network("unet3d", kwargs)  # the full kwargs with their defaults
    parent.load_state_dict(state_dict, strict=True)
    full = parent.state_dict()
    features = [int(m.block[0].out_channels) for m in parent.encoders]
    widths = [pruned_width(f, keep) for f in features]
    in_channels = int(parent.encoders[0].block[0].in_channels)
    builder = _StateBuilder(full, importance, protected)
    kept: Dict[str, List[int]] = {}

    x_idx = torch.arange(in_channels)
    skips: List[torch.Tensor] = []
    for level, width in enumerate(widths):
        x_idx = _prune_double_conv(builder, f"encoders.{level}", x_idx, width, kept)
        skips.append(x_idx)
    skips.pop()  # the bottom level feeds the first up-convolution, not a skip
    for j, level in enumerate(range(len(widths) - 2, -1, -1)):
        up = f"ups.{j}"
        up_idx = _choose(builder, up, widths[level], dim=1)
        builder.take(f"{up}.weight", [(0, x_idx), (1, up_idx)])
        builder.take(f"{up}.bias", [(0, up_idx)])
        kept[up] = [int(i) for i in up_idx]
        skip_idx = skips.pop()
        # torch.cat([skip, up(x)]): the up-convolution's channels follow the skip's.
        cat_idx = torch.cat([skip_idx, up_idx + features[level]])
        x_idx = _prune_double_conv(builder, f"decoders.{j}", cat_idx, widths[level], kept)
    builder.take("head.weight", [(1, x_idx)])
    builder.take("head.bias")

    new_kwargs = copy.deepcopy(dict(kwargs))
    new_kwargs["features"] = widths
    missing = sorted(set(full) - set(builder.out))
    if missing:  # a layer this function does not know: never return a half-copied network
        raise InputError(f"cannot prune this unet3d: no rule for {missing[0]}; prune only TumorSeg's unet3d")
    return PrunedNetwork("unet3d", new_kwargs, builder.out, kept, tuple(features))


def prune_network(architecture: str, kwargs: Dict[str, Any], state_dict: State, keep: float,
                  importance: Optional[Dict[str, "torch.Tensor"]] = None,
                  protected: Optional[Dict[str, List[int]]] = None) -> PrunedNetwork:
    """Prune a network of the registry; only ``unet3d`` is supported (InputError otherwise).

    ``importance`` and ``protected``: see :func:`prune_unet3d` (None: L1 on every layer)."""
    if architecture not in PRUNABLE_ARCHITECTURES:
        raise InputError(f"structured pruning supports {', '.join(PRUNABLE_ARCHITECTURES)}, not {architecture!r}; "
                         "choose a unet3d model package")
    return prune_unet3d(kwargs, state_dict, keep, importance, protected)


def count_parameters(architecture: str, kwargs: Dict[str, Any]) -> int:
    """Number of parameters (weights and biases, no buffers) of ``build_network(architecture, kwargs)``."""
    from tumorseg_core.models.registry import build_network

    return int(sum(p.numel() for p in build_network(architecture, kwargs).parameters()))


def activation_modules(network: "torch.nn.Module") -> Dict[str, "torch.nn.Module"]:
    """Per prunable layer of a ``unet3d`` (state-dict prefix), the module whose output is that
    layer's channels as the next layer reads them: a DoubleConv convolution's ReLU
    (``block.2`` for ``block.0``, ``block.6`` for ``block.4``), an up-convolution itself."""
    modules: Dict[str, "torch.nn.Module"] = {}
    for group in ("encoders", "decoders"):
        for i, double in enumerate(getattr(network, group)):
            modules[f"{group}.{i}.block.0"] = double.block[2]
            modules[f"{group}.{i}.block.4"] = double.block[6]
    for j, up in enumerate(network.ups):
        modules[f"ups.{j}"] = up
    return modules


def tumour_margin_objective(logits: "torch.Tensor", labels: "torch.Tensor") -> Optional["torch.Tensor"]:
    """How well the logits separate lesion from background: a scalar, or None without both.

    ``logits`` ``(B, C, z, y, x)`` (channel 0 background), ``labels`` ``(B, 1, z, y, x)``
    or ``(B, z, y, x)`` (> 0: lesion). The margin ``m = logsumexp(foreground logits) -
    background logit`` per voxel; the objective is mean ``m`` over lesion voxels minus mean
    ``m`` over background voxels (each class weighs the same however small the lesion).
    """
    truth = labels.reshape(logits.shape[0], *logits.shape[2:]) > 0
    if not bool(truth.any()) or bool(truth.all()):
        return None
    margin = logits[:, 1:].logsumexp(dim=1) - logits[:, 0]
    return margin[truth].mean() - margin[~truth].mean()


def taylor_importance(network: "torch.nn.Module", batches: Iterable[Tuple["torch.Tensor", "torch.Tensor"]],
                      max_windows: int = 8) -> Dict[str, "torch.Tensor"]:
    """First-order Taylor importance of every prunable channel of a ``unet3d``.

    For each window ``(image (B, C_in, z, y, x), labels (B, 1, z, y, x))`` that holds lesion
    and background voxels (others are skipped), the channel's activation ``a`` (see
    :func:`activation_modules`) and the gradient ``g`` of :func:`tumour_margin_objective`
    give ``|sum over z, y, x of a * g|`` per window and channel: the first-order change of the
    objective when that channel is zeroed, i.e. pruned (Molchanov et al. 2017). Summed over
    at most ``max_windows`` windows. The network runs in eval mode; its weights are not changed.

    Returns:
        Per layer prefix, a float64 tensor ``(out_channels,)``. InputError if no window held
        both lesion and background.
    """
    import torch

    modules = activation_modules(network)
    names = list(modules)
    captured: Dict[str, "torch.Tensor"] = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
             for name, module in modules.items()]
    scores: Dict[str, "torch.Tensor"] = {}
    used = 0
    was_training = network.training
    network.eval()
    try:
        for image, labels in batches:
            if used >= max_windows:
                break
            captured.clear()
            with torch.enable_grad():
                logits = network(image)
                objective = tumour_margin_objective(logits, labels)
                if objective is None:
                    continue
                acts = [captured[n] for n in names]
                grads = torch.autograd.grad(objective, acts)
            for name, act, grad in zip(names, acts, grads):
                contribution = (act.detach() * grad).sum(dim=(2, 3, 4)).abs().sum(dim=0).double()
                scores[name] = scores[name] + contribution if name in scores else contribution
            used += int(image.shape[0])
    finally:
        for hook in hooks:
            hook.remove()
        network.train(was_training)
    if not scores:
        raise InputError("no importance window held both lesion and background voxels; give --data with lesions "
                         "or use --criterion l1")
    logger.info("Taylor importance from %d windows", used)
    return scores


def tumour_voting_channels(network: "torch.nn.Module") -> Dict[str, List[int]]:
    """The head's input channels that vote for a lesion, keyed by the layer that makes them.

    A channel votes for a lesion when, for some foreground class ``k``, its 1×1×1 head weight
    to ``k`` exceeds its weight to background (``head.weight`` is ``(C_out, C_in, 1, 1, 1)``).
    The layer is the last decoder's second convolution (the whole network's one input of the head).
    """
    weight = network.head.weight.detach().flatten(1)  # (C_out, C_in)
    votes = (weight[1:] - weight[:1]).max(dim=0).values
    last = f"decoders.{len(network.decoders) - 1}.block.4"
    return {last: [int(i) for i in (votes > 0).nonzero().flatten()]}


def window_batches(patches: Any, count: int) -> Iterable[Tuple["torch.Tensor", "torch.Tensor"]]:
    """The first ``count`` items of a :class:`~tumorseg_core.training.patches.PatchDataset`, one a batch:
    ``(image (1, C, z, y, x), label (1, 1, z, y, x))``."""
    for index in range(min(count * 4, len(patches))):  # some windows hold no lesion
        item = patches[index]
        yield item["image"][None], item["label"][None]


def _check_prunable(package: Any) -> None:
    manifest = package.manifest
    data = manifest.to_dict()
    if manifest.architecture not in PRUNABLE_ARCHITECTURES:
        raise InputError(f"model '{manifest.name}' is a {manifest.architecture}; structured pruning supports "
                         f"{', '.join(PRUNABLE_ARCHITECTURES)} packages only")
    for section in ("cascade", "nnunet", "monai"):
        if data.get(section):
            raise InputError(f"model '{manifest.name}' has a {section} section, which pruning cannot carry over; "
                             "prune a plain unet3d package")


def _read_state(package: Any) -> List[State]:
    """Every network's state dict, read through the package's verified loader."""
    return [{k: v.detach().clone() for k, v in net.state_dict().items()} for net in package.load_networks("cpu")]


def _manifest_for(parent: Dict[str, Any], kwargs: Dict[str, Any], keep: float, pruning: Dict[str, Any],
                  validation: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The pruned package's manifest: the parent's, with the smaller kwargs and the pruning noted."""
    manifest = copy.deepcopy(parent)
    manifest.pop("files", None)
    manifest.pop("validated", None)
    percent = int(round(keep * 100))
    manifest["name"] = f"{parent['name']}-pruned{percent}"[:64]
    manifest["kwargs"] = kwargs
    manifest["description"] = (
        f"{parent['name']} {parent['version']} with {percent}% of its convolution channels kept "
        f"(structured pruning by {_criterion_words(pruning)}, features {kwargs['features']}"
        + (f", fine-tuned {pruning['fine_tune_iterations']} iterations" if pruning["fine_tune_iterations"] else
           ", not fine-tuned")
        + f"). Parent: {parent['description']}"
    )
    metrics: Dict[str, Any] = {"pruning": pruning}
    if validation is not None:
        metrics["validation"] = validation
        from tumorseg_core.training.outputs import is_validated

        manifest["validated"] = is_validated(validation, validation.get("min_dice", 0.5))
    manifest["metrics"] = metrics
    return manifest


def _criterion_words(pruning: Dict[str, Any]) -> str:
    if pruning.get("criterion", "l1") == "l1":
        return "the L1 norm of each filter"
    return (f"first-order Taylor importance on {pruning.get('importance_windows')} windows with lesions, "
            "the head's lesion-voting channels kept")


def _readme(manifest: Dict[str, Any], pruning: Dict[str, Any], training_readme: Optional[str]) -> str:
    lines = [
        f"# {manifest['name']} {manifest['version']}",
        "",
        "A structured-pruned model made with `tumorseg prune`.",
        "",
        f"- Parent model: {pruning['parent']} {pruning['parent_version']} "
        f"(manifest sha256 {pruning['parent_sha256']})",
        f"- Keep ratio: {pruning['keep']:g} of the output channels of every convolution, chosen by "
        f"{_criterion_words(pruning)}",
        f"- Features: {pruning['parent_features']} -> {pruning['features']}",
        f"- Parameters: {pruning['parent_parameters']:,} -> {pruning['parameters']:,}",
        f"- Fine-tune: {pruning['fine_tune_iterations']} iterations"
        + (f" on {pruning['fine_tune_data']}" if pruning["fine_tune_iterations"] else " (none)")
        + (f", distilled from the parent (weight {pruning['distill_weight']:g})"
           if pruning["fine_tune_iterations"] and pruning.get("distill_weight") else ""),
        "",
        "Its inputs, spacing, window, labels and post-processing are the parent's, and so is every "
        "limit of its intended use; pruning changes its outputs: evaluate it (`tumorseg evaluate --model`) "
        "before use.",
        "",
    ]
    if training_readme:
        body = training_readme.split("\n", 1)[-1].strip()  # without its title line
        lines += ["## Fine-tune", "", *body.splitlines(), ""]
    return "\n".join(lines)


def fine_tune_config(parent_package: Any, pruned_dir: Path, kwargs: Dict[str, Any], iterations: int,
                     data: str, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The training config of the fine-tune: the parent's ``training_config.json`` when it has one,
    the parent manifest's inputs, grid, window, labels and post-processing, initial weights the
    pruned network, one epoch of ``iterations`` steps on ``data``, no hard-negative mining;
    ``overrides`` last (a None there sets None). The training ``patch_size`` may be overridden
    (smaller crops train faster on a CPU); the package keeps the parent's window."""
    from tumorseg_core.training.config import DEFAULT_CONFIG, merge_config

    parent = parent_package.manifest.to_dict()
    base: Dict[str, Any] = {}
    stored = parent_package.root / "training_config.json"
    if "training_config.json" in parent.get("files", {}) and stored.is_file():
        loaded = json.loads(stored.read_text(encoding="utf-8"))
        base = {k: v for k, v in loaded.items() if k in DEFAULT_CONFIG}
    net_kwargs = {k: v for k, v in kwargs.items() if k not in ("in_channels", "out_channels")}
    config = merge_config(base, {})
    # Set directly, not through merge_config's overrides, which skip None (e.g. hard_negatives).
    config.update({
        "data": data,
        "name": parent["name"],
        "version": parent["version"],
        "license": parent["license"],
        "description": None,
        "architecture": parent["architecture"],
        "kwargs": net_kwargs,
        "inputs": parent["inputs"],
        "spacing": parent["spacing"],
        "orientation": parent.get("orientation", "LPS"),
        "patch_size": parent["patch_size"],
        "preprocessing": parent.get("preprocessing") or DEFAULT_CONFIG["preprocessing"],
        "output": {"type": "softmax", "labels": parent["output"]["labels"]},
        "postprocessing": parent.get("postprocessing") or [],
        "inference": parent.get("inference") or DEFAULT_CONFIG["inference"],
        "init_weights": str(pruned_dir),
        "init_weights_sha256": None,
        "hard_negatives": None,
        "epochs": 1,
        "iterations_per_epoch": int(iterations),
        "batch_size": base.get("batch_size") or 2,
        "val_data": DEFAULT_VALIDATION_DATA,
        "val_every": 1,
        "val_fraction": 0.2,
        "folds": None,
        "fold": 0,
        "time_limit_minutes": None,
        "workdir": None,
        "cache_dir": None,
        "device": "auto",
        "num_workers": 0,
        "lr": base.get("lr") or 1e-4,  # a fine-tune: small steps from the pruned weights
    })
    unknown = sorted(set(overrides or {}) - set(DEFAULT_CONFIG))
    if unknown:
        raise InputError(f"unknown training config key(s) {', '.join(unknown)}; see DEFAULT_CONFIG")
    config.update(copy.deepcopy(overrides or {}))
    return config


def _check_patch(patch_xyz: List[int], architecture: str, kwargs: Dict[str, Any]) -> None:
    """Fail before any data is made when the fine-tune crops do not fit the network."""
    from tumorseg_core.models.registry import size_divisor

    divisor_xyz = list(size_divisor(architecture, kwargs))[::-1]
    if len(patch_xyz) != 3 or any(int(p) < 1 or int(p) % d for p, d in zip(patch_xyz, divisor_xyz)):
        raise InputError(f"--patch-size {' '.join(str(p) for p in patch_xyz)} must be positive multiples of "
                         f"{' '.join(str(d) for d in divisor_xyz)} (x y z) for this network; change --patch-size")


def prune_package(
    source: str,
    out_dir: Path | str,
    keep: float,
    *,
    fine_tune_iterations: int = DEFAULT_FINE_TUNE_ITERATIONS,
    data: str = DEFAULT_FINE_TUNE_DATA,
    criterion: str = DEFAULT_CRITERION,
    importance_windows: int = DEFAULT_IMPORTANCE_WINDOWS,
    distill_weight: float = DEFAULT_DISTILL_WEIGHT,
    distill_temperature: float = DEFAULT_TEMPERATURE,
    overwrite: bool = False,
    workdir: Path | str | None = None,
    config_overrides: Optional[Dict[str, Any]] = None,
    command: Optional[str] = None,
    progress: Optional[Callable[[float, str], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> Path:
    """Prune the package ``source`` to ``keep`` of its channels, fine-tune, write ``out_dir``.

    Args:
        source: ``"default"``, an installed name, a package folder or ``.zip`` (verified first).
        out_dir: the package folder to write (atomically: nothing there on error).
        keep: fraction of each convolution's output channels kept, in (0, 1].
        fine_tune_iterations: training steps after pruning (0: none; the package then holds
            the pruned weights as they are).
        data: fine-tune (and importance) data (``synthetic:N``, a folder, CSV or dataset.json).
        criterion: ``"taylor"`` (default: :func:`taylor_importance` on ``importance_windows``
            patches of ``data``, and the head's lesion-voting channels always kept) or ``"l1"``
            (the filters' L1 norm; needs no data).
        importance_windows: patches with lesions that the Taylor criterion sums over.
        distill_weight: weight of :func:`~tumorseg_core.training.distill.distillation_loss` to
            the parent's logits in the fine-tune (> 0: :func:`distill_fine_tune`; 0: the plain
            ``tumorseg train`` loop on the labels, which resumes from its checkpoint).
        distill_temperature: its softmax temperature.
        overwrite: replace an existing ``out_dir``.
        workdir: data cache and checkpoints of the fine-tune (default ``<out_dir>.work``).
        config_overrides: training config keys set last (e.g. ``batch_size``, ``cache_dir``).
        command: the command line recorded in the fine-tune's README section.
        progress, cancel: passed to the training loop.

    Returns:
        The written package's path.
    """
    from tumorseg_core.modelpkg.package import open_package, write_package

    keep = check_keep(keep)
    check_criterion(criterion)
    check_distill(distill_weight, distill_temperature)
    iterations = int(fine_tune_iterations)
    if iterations < 0:
        raise InputError(f"--fine-tune-iterations must be 0 or more, got {iterations}")
    if int(importance_windows) < 1:
        raise InputError(f"--importance-windows must be at least 1, got {importance_windows}")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another -o folder or pass --overwrite")
    package = open_package(source)
    _check_prunable(package)
    states = _read_state(package)
    if iterations and len(states) > 1:
        raise InputError(f"model '{package.manifest.name}' has {len(states)} networks (folds); the fine-tune "
                         "trains one: pass --fine-tune-iterations 0 or prune a one-network package")
    if criterion == "taylor" and len(states) > 1:
        raise InputError(f"model '{package.manifest.name}' has {len(states)} networks (folds); --criterion taylor "
                         "ranks one: use --criterion l1 or prune a one-network package")
    parent = package.manifest.to_dict()
    overrides = dict(config_overrides or {})
    if iterations:
        _check_patch(overrides.get("patch_size") or parent["patch_size"], parent["architecture"],
                     prune_network(parent["architecture"], parent["kwargs"], states[0], keep).kwargs)
    work = Path(workdir).expanduser().resolve() if workdir else Path(f"{out}.work")
    run = None
    if criterion == "taylor" or (iterations and distill_weight > 0):
        run = _prepare_run(package, work, iterations, data, importance_windows, overrides, progress)
    importance = protected = None
    if criterion == "taylor":
        teacher = package.load_networks("cpu")[0]
        importance = taylor_importance(teacher, window_batches(run.patches, importance_windows), importance_windows)
        protected = tumour_voting_channels(teacher)
    pruned = [prune_network(parent["architecture"], parent["kwargs"], s, keep, importance, protected) for s in states]
    kwargs = pruned[0].kwargs
    pruning: Dict[str, Any] = {
        "keep": keep,
        "criterion": criterion,
        "parent": parent["name"],
        "parent_version": parent["version"],
        "parent_sha256": package.sha256,
        "parent_features": list(pruned[0].parent_features),
        "features": list(kwargs["features"]),
        "parent_parameters": count_parameters(parent["architecture"], parent["kwargs"]),
        "parameters": count_parameters(parent["architecture"], kwargs),
        "fine_tune_iterations": iterations,
        "fine_tune_data": data if iterations else None,
        "distill_weight": float(distill_weight) if iterations else None,
        "distill_temperature": float(distill_temperature) if iterations and distill_weight > 0 else None,
    }
    if criterion == "taylor":
        pruning["importance_windows"] = int(importance_windows)
        pruning["protected_channels"] = {k: v for k, v in (protected or {}).items()}
    logger.info("pruned %s (%s) to features %s: %d -> %d parameters", parent["name"], criterion, kwargs["features"],
                pruning["parent_parameters"], pruning["parameters"])
    if not iterations:
        manifest = _manifest_for(parent, kwargs, keep, pruning)
        return write_package(out, manifest, [p.state_dict for p in pruned], readme=_readme(manifest, pruning, None),
                             overwrite=overwrite)
    if distill_weight > 0:
        return _distilled_package(package, pruned[0], run, out, pruning, distill_weight, distill_temperature,
                                  overwrite, command, progress, cancel)

    from tumorseg_core.training.trainer import train

    work.mkdir(parents=True, exist_ok=True)
    pruned_dir = work / "pruned"
    before = {**pruning, "fine_tune_iterations": 0, "fine_tune_data": None}
    manifest0 = _manifest_for(parent, kwargs, keep, before)
    write_package(pruned_dir, manifest0, [pruned[0].state_dict], readme=_readme(manifest0, before, None),
                  overwrite=True)
    config = fine_tune_config(package, pruned_dir, kwargs, iterations, data,
                              {"workdir": str(work / "train"), **overrides})
    tuned_dir = work / "fine_tuned"
    train(config, tuned_dir, overwrite=True, command=command, progress=progress, cancel=cancel)
    tuned = open_package(tuned_dir)
    tuned_manifest = tuned.manifest.to_dict()
    manifest = _manifest_for(parent, kwargs, keep, pruning, tuned_manifest.get("metrics", {}).get("validation"))
    training_readme = (tuned.root / "README.md").read_text(encoding="utf-8")
    extra = {"training_config.json": (tuned.root / "training_config.json").read_bytes()}
    path = write_package(out, manifest, _read_state(tuned), readme=_readme(manifest, pruning, training_readme),
                         extra_files=extra, overwrite=overwrite)
    shutil.rmtree(tuned_dir, ignore_errors=True)
    return path


def check_criterion(criterion: str) -> str:
    """``criterion`` if it is one of :data:`CRITERIA`; InputError otherwise."""
    if criterion not in CRITERIA:
        raise InputError(f"--criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    return criterion


def _prepare_run(package: Any, work: Path, iterations: int, data: str, windows: int,
                 overrides: Dict[str, Any], progress: Optional[Callable[[float, str], None]]) -> Any:
    """The fine-tune's data (``training.setup.prepare_data``): cached cases and patches, enough
    patches for ``max(iterations, windows)`` steps; the config's ``init_weights`` is unset (the
    student is made here, not by the trainer)."""
    from tumorseg_core.training.distributed import DistInfo
    from tumorseg_core.training.setup import prepare_data

    parent = package.manifest.to_dict()
    steps = max(int(iterations), int(windows))
    config = fine_tune_config(package, work / "pruned", parent["kwargs"], steps, data,
                              {"workdir": str(work / "train"), **overrides})
    config["init_weights"] = None
    if not iterations:  # importance only: no validation cases to make
        config.update(val_data=None, val_fraction=0.0)
    work.mkdir(parents=True, exist_ok=True)
    run = prepare_data(config, work / "train", DistInfo(), progress)
    run.config["iterations_per_epoch"] = int(iterations)
    return run


def _distilled_package(package: Any, pruned: PrunedNetwork, run: Any, out: Path, pruning: Dict[str, Any],
                       weight: float, temperature: float, overwrite: bool, command: Optional[str],
                       progress: Optional[Callable[[float, str], None]],
                       cancel: Optional[Callable[[], bool]]) -> Path:
    """Fine-tune ``pruned`` with :func:`distill_fine_tune` from the package's network; write ``out``."""
    from tumorseg_core.modelpkg.package import write_package
    from tumorseg_core.models.registry import build_network
    from tumorseg_core.training.outputs import config_bytes

    student = build_network(pruned.architecture, pruned.kwargs)
    student.load_state_dict(pruned.state_dict, strict=True)
    teacher = package.load_networks("cpu")[0]
    result = distill_fine_tune(student, teacher, run, weight=weight, temperature=temperature, progress=progress,
                               cancel=cancel)
    config = run.config
    tail = result["losses"][-10:]
    pruning = {**pruning, "fine_tune_loss_first": result["losses"][0] if result["losses"] else None,
               "fine_tune_loss_last10": sum(tail) / len(tail) if tail else None}
    validation = None
    if result["validation"] is not None:
        v = result["validation"]
        validation = {"dice": v["dice"], "min_dice": config["min_val_dice"],
                      "per_label": {str(k): s for k, s in v["per_label"].items()}, "cases": v["cases"],
                      "data": run.description, "epochs": 1, "best_epoch": 1}
    parent = package.manifest.to_dict()
    manifest = _manifest_for(parent, pruned.kwargs, pruning["keep"], pruning, validation)
    lines = [
        "# fine-tune",
        f"Command: `{command or 'tumorseg prune'}`",
        "",
        f"- {config['iterations_per_epoch']} steps × batch {config['batch_size']} of {config['patch_size']} "
        f"(x y z) crops on {run.description}; lr {config['lr']:g}, {config['optimizer']}, {config['schedule']}",
        f"- loss: {config['loss']} on the labels + {weight:g} × KL to the parent's softmax at T = {temperature:g}",
        f"- loss: first step {pruning['fine_tune_loss_first']}, last 10 steps {pruning['fine_tune_loss_last10']}",
        f"- validation Dice: {validation['dice'] if validation else 'not validated (no validation cases)'}",
    ]
    state = {k: v.detach().clone().contiguous() for k, v in student.state_dict().items()}
    return write_package(out, manifest, [state], readme=_readme(manifest, pruning, "\n".join(lines)),
                         extra_files={"training_config.json": config_bytes(config)}, overwrite=overwrite)
