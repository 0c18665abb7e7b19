"""Token reduction: fewer tokens in later blocks, so every later matrix product shrinks.

A block's cost is linear in the token count N for its projections and MLP, and quadratic for attention
(notebook 01), so keeping a fraction k of the tokens after block l saves roughly (1 - k) of the linear
cost of every later block. Three methods, all on :class:`~vitsurvey.models.VisionTransformer`:

* :class:`EViT` -- attentive dropping: inside a block, between attention and MLP, keep the image tokens the
  class token attends to most and fuse the rest into one token (their attention-weighted sum), after Liang et al.
  (ICLR 2022) and as their code computes it.
* :class:`ToMe` -- token merging by bipartite soft matching inside each block (between attention and
  MLP), with proportional attention, after Bolya et al. (ICLR 2023).
* :func:`patch_slimming` -- Patch Slimming (S5) as its description reads: nested keep sets found top-down
  from the last block, patch significance from the attention of later blocks, an output-error tolerance,
  and a brief fine-tune of each block. The keep sets are found on a data sample and then fixed.

The class token is at index 0 and is never dropped or merged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import is_whole, whole
from ..models import TokenStep, VisionTransformer, require_plain
from ..models.layers import merge_heads, split_qkv

__all__ = [
    "EViT", "SlimmingResult", "ToMe", "WithTokenStep", "bipartite_merge", "evit_schedule", "patch_significance",
    "patch_slimming", "schedule_step", "step_sources", "tome_schedule",
]


def _check_keep(keep: float) -> None:
    if not 0 < keep <= 1:
        raise ValueError(f"keep rate must be in (0, 1]: the fraction of image tokens kept; got {keep}.")


class WithTokenStep(nn.Module):
    """``vit`` with a token step between blocks, as one module (for timing, counting and training)."""

    def __init__(self, vit: VisionTransformer, step: TokenStep) -> None:
        super().__init__()
        require_plain(vit, "A token step")
        outside = [b for b in getattr(step, "blocks", ()) if b >= vit.cfg.depth]
        if outside:
            raise ValueError(f"The token step acts after blocks {outside}, but the model has blocks 0 to "
                             f"{vit.cfg.depth - 1}: choose blocks inside it.")
        self.vit, self.step = vit, step

    def forward(self, x: Tensor) -> Tensor:
        return self.vit(x, token_step=self.step)


def schedule_step(counts: Sequence[int]) -> TokenStep:
    """A token step that keeps the first ``counts[i + 1]`` tokens after block ``i``: the cost of a token
    schedule without its selection rule (for timing a schedule found on one model on another)."""
    counts = list(counts)
    if any(b > a for a, b in zip(counts, counts[1:])) or min(counts) < 1:
        raise ValueError(f"A token schedule must be positive and non-increasing, got {counts}.")

    def step(i: int, x: Tensor, attn: Tensor) -> Tensor:
        return x[:, : counts[i + 1]] if i + 1 < len(counts) else x

    return step


@torch.no_grad()
def step_sources(vit: VisionTransformer, x: Tensor, step: TokenStep) -> list[Tensor]:
    """Which input tokens each token stands for after every block, under a token step that keeps tokens
    by gathering them (Patch Slimming, :func:`schedule_step`) and may add one fused token.

    Returns one (B, tokens, input tokens) bool tensor per block. A kept token is an exact copy of a
    token that entered the step, so it is found by equality; a token that matches none is the fused
    one, and stands for every token the step did not keep.
    """
    B, N = x.shape[0], vit.cfg.num_tokens
    member = [torch.eye(N, dtype=torch.bool).expand(B, -1, -1)]

    def traced(i: int, tokens: Tensor, attn: Tensor) -> Tensor:
        out = step(i, tokens, attn)
        before = member[-1]  # (B, in, N)
        same = (out[:, :, None, :] == tokens[:, None, :, :]).all(-1)  # (B, out, in)
        copied = before.gather(1, same.float().argmax(-1)[..., None].expand(-1, -1, N))
        dropped = (before & ~same.any(1)[..., None]).any(1)  # (B, N): in tokens that nothing copies
        member.append(torch.where(same.any(-1)[..., None], copied, dropped[:, None, :]))
        return out

    vit.forward_features(x, token_step=traced)
    return member[1:]


# --------------------------------------------------------------------------- EViT


def _kept_count(keep: float, image_tokens: int) -> int:
    """EViT's count of image tokens kept: ceil(keep * image tokens), at least one."""
    return max(1, math.ceil(keep * image_tokens))


class EViT(nn.Module):
    """A ViT that keeps the attentive tokens and fuses the rest (EViT, Liang et al., ICLR 2022), sharing the weights
    of ``vit``; as EViT's reference code computes it.

    In each block of ``blocks``: attention and its residual; then the class token's attention to each image token,
    averaged over the heads, ranks them; the ``ceil(keep * image tokens)`` it attends to most are kept (most attended
    first), and with ``fuse`` the others become one token, ``sum_i a_i x_i`` over them with their attention ``a_i``
    (a sum, not a mean: the weights are the class token's attention, so the fused token is as large as the share of
    attention it took), appended after the kept ones; then the MLP runs on the reduced set. A fused token is an
    image token for later reductions. ``keep=1`` is the unchanged model.
    """

    def __init__(self, vit: VisionTransformer, keep: float, blocks: Sequence[int], fuse: bool = True) -> None:
        super().__init__()
        require_plain(vit, "EViT")
        _check_keep(keep)
        chosen = sorted(set(blocks))
        if not all(is_whole(b, minimum=0) for b in chosen):
            raise ValueError(f"blocks must be block indices (whole numbers >= 0), not {chosen}.")
        outside = [b for b in chosen if b >= vit.cfg.depth]
        if outside:
            raise ValueError(f"EViT reduces in blocks {outside}, but the model has blocks 0 to {vit.cfg.depth - 1}: "
                             "choose blocks inside it.")
        self.vit, self.keep, self.blocks, self.fuse = vit, keep, tuple(chosen), fuse

    def token_counts(self) -> list[tuple[int, int]]:
        """(tokens entering the attention, tokens entering the MLP) of each block."""
        return evit_schedule(self.vit.cfg.depth, self.keep, self.blocks, self.vit.cfg.num_tokens, self.fuse)

    def _reduce(self, x: Tensor, attn: Tensor, src: Tensor | None) -> tuple[Tensor, Tensor | None]:
        B, N, D = x.shape
        n_keep = _kept_count(self.keep, N - 1)
        if n_keep >= N - 1:
            return x, src
        score = attn[:, :, 0, 1:].mean(dim=1)  # (B, N - 1): the class token's attention, mean over heads
        top = score.topk(n_keep, dim=1).indices  # most attended first
        rest = score.scatter(1, top, -math.inf).argsort(dim=1, descending=True)[:, : N - 1 - n_keep]

        def take(t: Tensor, idx: Tensor) -> Tensor:
            return t[:, 1:].gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))

        parts = [x[:, :1], take(x, top)]
        if self.fuse:
            parts.append((score.gather(1, rest)[..., None] * take(x, rest)).sum(1, keepdim=True))
        if src is not None:  # which input tokens each token stands for
            src_parts = [src[:, :1], take(src, top)] + ([take(src, rest).amax(1, keepdim=True)] if self.fuse else [])
            src = torch.cat(src_parts, dim=1)
        return torch.cat(parts, dim=1), src

    def _run(self, x: Tensor, track: bool) -> tuple[Tensor, Tensor | None]:
        vit = self.vit
        x = vit.embed(x)
        src = torch.eye(x.shape[1], device=x.device).expand(x.shape[0], -1, -1) if track else None
        for i, block in enumerate(vit.blocks):
            if i not in self.blocks or self.keep == 1:
                x = block(x)[0]
                continue
            y, attn = block.attn(block.norm1(x), True)
            x, src = self._reduce(x + y, attn, src)
            x = x + block.mlp(block.norm2(x))
        return vit.norm(x), src

    def forward_features(self, x: Tensor) -> Tensor:
        return self._run(x, track=False)[0]

    @torch.no_grad()
    def sources(self, x: Tensor) -> Tensor:
        """(B, final tokens, input tokens) bool: which input tokens (0 is the class token) each token that leaves the
        last block stands for (a fused token: every token fused into it); dropped tokens without ``fuse`` are in none."""
        src = self._run(x, track=True)[1]
        assert src is not None
        return src > 0

    def forward(self, x: Tensor) -> Tensor:
        return self.vit.forward_head(self.forward_features(x))


def evit_schedule(depth: int, keep: float, blocks: Sequence[int], n_tokens: int,
                  fuse: bool = True) -> list[tuple[int, int]]:
    """(tokens entering the attention, tokens entering the MLP) of each block under :class:`EViT` (for the MAC
    formula): a reducing block's attention sees all its tokens, its MLP only the kept ones and the fused one."""
    _check_keep(keep)
    counts, n = [], n_tokens
    for i in range(depth):
        before = n
        if i in set(blocks) and keep < 1:
            n_keep = _kept_count(keep, n - 1)
            if n_keep < n - 1:
                n = 1 + n_keep + int(fuse)
        counts.append((before, n))
    return counts


# --------------------------------------------------------------------------- ToMe


def bipartite_merge(x: Tensor, metric: Tensor, size: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Merge ``r`` tokens by bipartite soft matching (ToMe), keeping the class token (index 0).

    Tokens alternate into sets A (even positions) and B (odd); each A token picks its most similar B
    token (cosine similarity of ``metric``); the ``r`` most similar pairs are merged into their B token
    as a size-weighted mean. Returns the new tokens and their sizes (how many patches each stands for).
    """
    if r <= 0:
        return x, size
    B, N, D = x.shape
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)
    scores[:, 0, :] = -math.inf  # the class token (first of A) is never merged
    best, best_b = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)[..., None]
    merged_a, kept_a = order[:, :r], order[:, r:]
    target = best_b[..., None].gather(1, merged_a)

    xs, sizes = x * size, size
    xa, xb = xs[:, ::2], xs[:, 1::2]
    sa, sb = sizes[:, ::2], sizes[:, 1::2]
    xb = xb.scatter_reduce(1, target.expand(-1, -1, D), xa.gather(1, merged_a.expand(-1, -1, D)), "sum")
    sb = sb.scatter_reduce(1, target, sa.gather(1, merged_a), "sum")
    kept_a = kept_a.sort(dim=1).values  # keep A's order, so the class token stays first
    xa, sa = xa.gather(1, kept_a.expand(-1, -1, D)), sa.gather(1, kept_a)
    xs, sizes = torch.cat([xa, xb], dim=1), torch.cat([sa, sb], dim=1)
    return xs / sizes, sizes


def tome_schedule(total: int, depth: int) -> list[int]:
    """Spread ``total`` merges over ``depth`` blocks as evenly as possible, earlier blocks first."""
    whole("total merges", total, minimum=0)
    whole("depth", depth, minimum=1)
    base, extra = divmod(total, depth)
    return [base + (1 if b < extra else 0) for b in range(depth)]


class ToMe(nn.Module):
    """A ViT that merges tokens in every block (ToMe), sharing the weights of ``vit``.

    ``r`` is the number of tokens merged per block, or a list with one count per block. Inside each
    block: attention with proportional attention (log of each token's size added to the attention
    logits, so a merged token counts as the patches it stands for), then bipartite merging on the keys
    (mean over heads), then the MLP. ``r=0`` is the unchanged model.
    """

    def __init__(self, vit: VisionTransformer, r: int | Sequence[int]) -> None:
        super().__init__()
        require_plain(vit, "ToMe")
        depth = vit.cfg.depth
        schedule = [r] * depth if isinstance(r, (int, float)) else list(r)
        if len(schedule) != depth:
            raise ValueError(f"r has {len(schedule)} entries for {depth} blocks; give one per block.")
        if not all(is_whole(r_, minimum=0) for r_ in schedule):
            raise ValueError(f"r (tokens merged per block) must be whole numbers >= 0, got {schedule}.")
        n = vit.cfg.num_tokens
        for i, ri in enumerate(schedule):
            if ri > (n - 1) // 2:
                raise ValueError(
                    f"r={ri} merges more tokens than block {i} can pair: it has {n} tokens, so at most "
                    f"{(n - 1) // 2} merges; use a smaller r."
                )
            n -= ri
        self.vit, self.schedule = vit, schedule

    def token_counts(self) -> list[int]:
        """Tokens entering each block (each block's MLP sees its count minus that block's merges)."""
        counts, n = [], self.vit.cfg.num_tokens
        for ri in self.schedule:
            counts.append(n)
            n -= ri
        return counts

    def _attention(self, block: nn.Module, x: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
        attn_mod = block.attn
        q, k, v = split_qkv(attn_mod.qkv(block.norm1(x)), attn_mod.num_heads, attn_mod.head_dim)
        bias = size.log()[:, None, None, :, 0]  # proportional attention: (B, 1, 1, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return attn_mod.proj(merge_heads(out)), k.mean(dim=1)

    def _run(self, x: Tensor, track: bool) -> tuple[Tensor, Tensor | None]:
        """The blocks with merging; with ``track``, also which input tokens each output token stands for."""
        vit = self.vit
        x = vit.embed(x)
        size = torch.ones(x.shape[0], x.shape[1], 1, device=x.device, dtype=x.dtype)
        # each row: the input tokens it stands for, divided by its size, so that merging by the
        # size-weighted mean keeps every member positive and every non-member zero
        src = torch.eye(x.shape[1], device=x.device).expand(x.shape[0], -1, -1) if track else None
        for block, r in zip(vit.blocks, self.schedule):
            y, keys = self._attention(block, x, size)
            x = x + y
            if src is not None:
                src, _ = bipartite_merge(src, keys, size, r)
            x, size = bipartite_merge(x, keys, size, r)
            x = x + block.mlp(block.norm2(x))
        return vit.norm(x), src

    def forward_features(self, x: Tensor) -> Tensor:
        if not any(self.schedule):  # nothing to merge: exactly the unreduced model
            return self.vit.forward_features(x)
        return self._run(x, track=False)[0]

    @torch.no_grad()
    def sources(self, x: Tensor) -> Tensor:
        """(B, final tokens, input tokens) bool: which input tokens (0 is the class token) each token
        that leaves the last block stands for; each input token is in exactly one group."""
        src = self._run(x, track=True)[1]
        assert src is not None
        return src > 0

    def forward(self, x: Tensor) -> Tensor:
        return self.vit.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- Patch Slimming


def _positions(current: Tensor, subset: Tensor) -> Tensor:
    """Where each index of ``subset`` sits in ``current`` (both sorted original token indices)."""
    return torch.searchsorted(current, subset)


@dataclass
class SlimmingResult:
    """Nested keep sets, one per block: the original token indices (0 is the class token) entering it."""

    keep: list[Tensor]
    errors: list[float]
    """Relative output error on the sample after each block's set was chosen (last block first)."""

    def token_counts(self) -> list[int]:
        return [len(k) for k in self.keep]

    def token_step(self) -> TokenStep:
        """The token step that applies the keep sets: after block i, gather the tokens of block i + 1."""
        positions = [_positions(cur, nxt) for cur, nxt in zip(self.keep[:-1], self.keep[1:])]

        def step(i: int, x: Tensor, attn: Tensor) -> Tensor:
            if i >= len(positions) or len(positions[i]) == x.shape[1]:
                return x
            return x[:, positions[i].to(x.device)]

        return step


def _run(vit: VisionTransformer, keep: list[Tensor], images: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Logits with the keep sets applied, each block's output tokens, and each block's attention.

    The model's own forward does the work; a token step records each block's output and attention,
    then gathers the next block's tokens. ``keep[0]`` is every token (block 0 sees all of them).
    """
    outs: list[Tensor] = []
    maps: list[Tensor] = []
    gather = SlimmingResult(keep, []).token_step()

    def record(i: int, x: Tensor, attn: Tensor) -> Tensor:
        outs.append(x)
        maps.append(attn)
        return gather(i, x, attn)

    tokens = vit.forward_features(images, token_step=record)
    return vit.forward_head(tokens), outs, maps


def _relevance(maps: list[Tensor], keep: list[Tensor], block: int) -> Tensor:
    """How much the final class token draws on each output token of ``block`` that survives into the
    next block (over ``keep[block + 1]``), by attention rollout (each attention map averaged over
    batch and heads and mixed half and half with the identity for the residual path) through the
    later blocks."""
    sets = [*keep, torch.tensor([0])]  # after the last block only the class token matters
    w = torch.ones(1)
    for c in range(len(maps) - 1, block, -1):
        w_out = torch.zeros(len(sets[c]))
        w_out[_positions(sets[c], sets[c + 1])] = w
        a = maps[c].mean(dim=(0, 1)).cpu()
        w = w_out @ (0.5 * a + 0.5 * torch.eye(len(a)))
    return w  # over sets[block + 1]


def patch_significance(vit: VisionTransformer, keep: list[Tensor], block: int, images: Tensor) -> Tensor:
    """Significance of every token that could enter ``block`` (those entering ``block - 1``), our reading
    of S5: s_i = sum over heads of (sum_j w_j A_h[j, i] * |v_h,i|)^2, with A_h the block's attention over
    all available tokens, v_h,i token i's value vector in head h, and w_j the rollout relevance of the
    block's surviving outputs for the final class token."""
    with torch.no_grad():
        _, outs, maps = _run(vit, keep, images)
        available = keep[block - 1]
        x = outs[block - 1]  # output of the previous block: every available token
        blk = vit.blocks[block]
        _, attn = blk(x, need_weights=True)
        _, _, v = split_qkv(blk.attn.qkv(blk.norm1(x)), blk.attn.num_heads, blk.attn.head_dim)
        v_norm = v.norm(dim=-1).mean(0).cpu()  # (heads, available tokens)
        w = torch.zeros(len(available))
        survivors = keep[block + 1] if block + 1 < len(keep) else torch.tensor([0])
        w[_positions(available, survivors)] = _relevance(maps, keep, block)
        flow = torch.einsum("j,hji->hi", w, attn.mean(0).cpu())  # (heads, available tokens)
        return (flow * v_norm).pow(2).sum(0)


@torch.no_grad()
def _relative_error(vit: VisionTransformer, keep: list[Tensor], images: Tensor, target: Tensor) -> float:
    out, _, _ = _run(vit, keep, images)
    return float((out - target).norm() / target.norm())


def patch_slimming(
    vit: VisionTransformer,
    sample: Tensor,
    tolerance: float,
    r0: int = 4,
    finetune_steps: int = 0,
    lr: float = 1e-4,
) -> tuple[VisionTransformer, SlimmingResult]:
    """Find nested keep sets top-down on ``sample`` images (S5); return a copy of ``vit`` (fine-tuned
    block by block when ``finetune_steps`` > 0) and the sets.

    After the last block only the class token is needed. For block b from the last down to 1, the set
    of tokens entering it starts as the next block's set and grows by the ``r0`` most significant
    available tokens (:func:`patch_significance`) until the logits on ``sample`` are within
    ``tolerance`` (relative L2 error) of the unpruned model's. Block b is then trained for
    ``finetune_steps`` Adam steps to bring the output back towards the original. Block 0 sees every
    token: there is no earlier attention to judge patches by. The original ``vit`` is not changed.
    """
    require_plain(vit, "Patch Slimming")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a positive, finite relative output error, not {tolerance}.")
    if sample.dim() != 4 or len(sample) == 0:
        raise ValueError(f"sample must be a non-empty batch of images (batch, channels, height, width), got shape "
                         f"{tuple(sample.shape)}.")
    whole("r0 (tokens added per step)", r0, minimum=1)
    model = copy.deepcopy(vit).eval()
    L, everything = vit.cfg.depth, torch.arange(vit.cfg.num_tokens)
    with torch.no_grad():
        target = vit.eval()(sample)
    keep = [everything.clone() for _ in range(L)]
    errors: list[float] = []
    for b in range(L - 1, 0, -1):
        keep[b] = keep[b + 1].clone() if b + 1 < L else torch.tensor([0])
        while (err := _relative_error(model, keep, sample, target)) > tolerance and len(keep[b]) < len(keep[b - 1]):
            scores = patch_significance(model, keep, b, sample)
            available = keep[b - 1]
            scores[_positions(available, keep[b])] = -math.inf
            add = available[scores.argsort(descending=True)[:r0]]
            add = add[scores[_positions(available, add)] > -math.inf]
            keep[b] = torch.cat([keep[b], add]).unique(sorted=True)
        if finetune_steps:
            _finetune_block(model, keep, b, sample, target, finetune_steps, lr)
            err = _relative_error(model, keep, sample, target)
        errors.append(err)
    return model, SlimmingResult(keep, errors)


def _finetune_block(
    vit: VisionTransformer, keep: list[Tensor], block: int, sample: Tensor, target: Tensor, steps: int, lr: float
) -> None:
    params = list(vit.blocks[block].parameters())
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        out, _, _ = _run(vit, keep, sample)
        loss = F.mse_loss(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in vit.parameters():
        p.grad = None
