"""timm models by name, built for honest counting, and the two timm networks the from-scratch ViT is checked against.

:func:`create` builds any timm model by name, with a clear error (and close names) for a typo, an unknown
pretrained tag, or an image size whose forward pass could not fit in this machine's memory
(:func:`forward_bytes`, measured on the meta device before anything is allocated). :func:`timm_vit` is timm's
own ``VisionTransformer`` shaped like a :class:`~vitsurvey.models.ViTConfig` (the independent reference);
:func:`small_resnet` is the convolutional teacher of notebook 07.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .. import _compat
from ..checks import whole
from ..device import machine_memory_bytes

if TYPE_CHECKING:
    from .vit import ViTConfig

_compat.ensure_torchvision_importable()
import timm  # noqa: E402  (must follow the torchvision fix)

__all__ = ["create", "forward_bytes", "small_resnet", "timm_vit"]


def small_resnet(
    in_chans: int, num_classes: int, channels: tuple[int, ...] = (16, 32, 64, 128), blocks_per_stage: int = 1
) -> nn.Module:
    """A timm ResNet (basic blocks) sized for small images: a 3 x 3 stride-1 stem and no max-pool, as
    ResNets for CIFAR-sized inputs are built, so a 28-pixel image is not reduced to 7 pixels before the
    first block. Four stages (timm's ResNet has four), each after the first halving the resolution;
    ``channels`` sets their widths.

    Notebook 07 trains it as the convolutional teacher: timm's class, only the stem adapted."""
    from timm.models.resnet import BasicBlock, ResNet

    if len(channels) != 4 or min(channels) < 1 or channels[0] % 2:
        raise ValueError(f"channels must be four positive widths, one per stage, the first even; not {channels!r}.")
    # timm's plain stem is 64 wide; its "deep" stem is 2 x stem_width wide, which lets the stem match
    # the first stage. That stem (three convolutions, stride 2) is then replaced by one stride-1 conv.
    net = ResNet(BasicBlock, layers=(blocks_per_stage,) * len(channels), channels=channels, in_chans=in_chans,
                 num_classes=num_classes, stem_type="deep", stem_width=channels[0] // 2)
    net.conv1 = nn.Conv2d(in_chans, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def timm_vit(cfg: ViTConfig, **kw: object) -> nn.Module:
    """timm's own ``VisionTransformer`` with the same shape as ``cfg`` (the independent reference)."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return TimmViT(**cfg.timm_kwargs(), **kw)  # type: ignore[arg-type]


def forward_bytes(model: nn.Module, shape: tuple[int, ...]) -> int:
    """A lower bound on the memory one forward pass of ``model`` (built on the meta device) needs at input
    ``shape``: its weights, plus its two largest module outputs, plus, for attention, the (heads, N, N) score
    matrix that the fused kernel still forms on CPU. Shapes are propagated on the meta device, so nothing
    is allocated: it answers "would this even fit?" before anything is built for real."""
    outputs: list[int] = []
    scores = [0]

    def record(module: nn.Module, inputs: tuple, out: object) -> None:
        if isinstance(out, Tensor):
            outputs.append(out.numel() * out.element_size())
        heads = getattr(module, "num_heads", None)
        if isinstance(heads, int) and inputs and isinstance(inputs[0], Tensor) and inputs[0].dim() == 3:
            b, n, _ = inputs[0].shape
            scores[0] = max(scores[0], b * heads * n * n * inputs[0].element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.empty(shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + sum(sorted(outputs)[-2:]) + scores[0]


def _check_fits(name: str, img_size: int, kwargs: dict) -> None:
    """Refuse an image size whose single-image forward pass clearly exceeds this machine's memory, before
    allocating anything (the model is first built on the meta device)."""
    try:
        with torch.device("meta"):
            try:
                meta = timm.create_model(name, pretrained=False, img_size=img_size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
                meta = timm.create_model(name, pretrained=False, **kwargs)
        channels = getattr(meta, "pretrained_cfg", {}).get("input_size", (3,))[0]
        need = forward_bytes(meta.eval(), (1, channels, img_size, img_size))
    except Exception:  # a model that cannot be traced on the meta device is built and measured for real
        return
    have = machine_memory_bytes()
    if need > have:
        gib = 2**30
        raise ValueError(
            f"{name} at {img_size} px needs at least {need / gib:,.1f} GiB for a single image's forward pass; this "
            f"machine has {have / gib:,.1f} GiB. Choose a smaller image size.")


def _check_pretrained_tag(name: str) -> None:
    """``arch.tag`` names one of timm's released weight sets; an unknown tag is explained with the ones there are."""
    arch, _, tag = name.partition(".")
    known = timm.list_pretrained(f"{arch}.*")
    if name not in known:
        tags = ", ".join(k.partition(".")[2] for k in known) or "none"
        raise ValueError(
            f"{arch!r} has no pretrained tag {tag!r}. The part after the dot picks one of timm's released weight "
            f"sets (and the preprocessing they were trained with); {arch}'s tags are: {tags}. Leave the tag off "
            "for the default.")


def create(name: str, pretrained: bool = False, img_size: int | None = None, **kwargs: object) -> nn.Module:
    """Build the timm model ``name`` in eval mode.

    ``img_size`` is passed to the models whose constructor takes it (transformers, whose position
    embeddings depend on it); models without that argument (CNNs such as ResNet-50) take any input
    size as built, so they are built without it. An ``img_size`` that must be positive, and whose forward pass
    clearly exceeds this machine's memory (:func:`forward_bytes`), is refused before anything is allocated.
    FLOPs: timm's attention runs through ``scaled_dot_product_attention``, which fvcore cannot see;
    :func:`vitsurvey.measure.count_macs` registers a counter for it, so the fused (fast) path stays on
    and is still counted. ``pretrained=True`` downloads weights and so needs a network.
    """
    if not timm.is_model(name.split(".")[0]):  # "arch.pretrained_tag" names are allowed
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}: timm has no such architecture.{hint} "
            "List the names with timm.list_models('*pattern*')."
        )
    if "." in name:
        _check_pretrained_tag(name)
    if img_size is not None:
        whole("img_size", img_size, minimum=1)
        _check_fits(name, img_size, kwargs)
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs).eval()
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, pretrained=pretrained, **kwargs).eval()
