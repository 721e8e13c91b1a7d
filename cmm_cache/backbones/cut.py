"""Cutting an open_clip image tower below its last K blocks: the frozen prefix and the part above it.

    cut = cut_tower(backbone.model.visual, blocks=1)
    h = cut.prefix(images)          # what the cache stores (``extract --finetune-blocks K``): the blocks' input
    f = cut.suffix(h)               # == visual(images): the same modules, the same order, the same numbers
    cut.suffix_state()              # the tensors of the part above the cut, keyed as heads.tower.TowerSuffix reads

Where the cut falls (Lin et al., linzhiqiu/cross_modal_adaptation ``engine/clip/partial_model.py`` @ 39335d9,
``get_split_vit`` and ``get_split_resnet``):

* **VisionTransformer** (open_clip ``transformer.py`` 3.3.0): the prefix is ``conv1`` → class token →
  ``+ positional_embedding`` → ``patch_dropout`` → ``ln_pre`` → ``resblocks[:L − K]``; the input of the last K
  blocks is ``[n, tokens, width]`` (ViT-B/16: 197 × 768). Above the cut: ``resblocks[L − K:]``, ``ln_post``,
  the pooling (class token) and ``proj`` — their ``image_layer_idx = K``.
* **ModifiedResNet** (open_clip ``modified_resnet.py``): K = 1 is theirs, ``image_layer_idx = 1``: the prefix
  is the whole stem and ``layer1..layer4``, the input is layer4's output ``[2048, 7, 7]`` (RN50), and above
  the cut is the attention pool (its positional embedding, q/k/v and ``c_proj``, the projection). K = 1 + j
  also takes the last j ``Bottleneck``s (counted across the layers) above the cut; their BatchNorms keep
  their running statistics (the official code never ran this: its idx 2 would train them in train mode).

Fingerprints (sha256 over every tensor of a part, by name in sorted order, as float32 bytes with dtype and
shape): ``prefix_sha256`` says which weights the cached block inputs came from (``predict`` refuses a
backbone whose prefix differs), ``suffix_sha256`` which weights the fine-tuning starts from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from cmm_cache.errors import CmmError


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict: names in sorted order, each tensor as float32 (dtype, shape, bytes)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _expand_token(token: torch.Tensor, batch: int) -> torch.Tensor:
    return token.view(1, 1, -1).expand(batch, -1, -1)


class _VitPrefix(torch.nn.Module):
    """open_clip ``VisionTransformer._embeds`` then its first ``n`` residual blocks (batch first)."""

    def __init__(self, visual, n: int):
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.patch_dropout = visual.patch_dropout
        self.ln_pre = visual.ln_pre
        self.blocks = torch.nn.ModuleList(list(visual.transformer.resblocks)[:n])
        self.batch_first = bool(getattr(visual.transformer, "batch_first", True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([_expand_token(self.class_embedding, x.shape[0]).to(x.dtype), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(self.patch_dropout(x))
        if not self.batch_first:
            x = x.transpose(0, 1)
        for blk in self.blocks:
            x = blk(x)
        return x if self.batch_first else x.transpose(0, 1)


class _VitSuffix(torch.nn.Module):
    """The last blocks of a ``VisionTransformer``, its ``_pool`` (no attentional pool) and ``proj``."""

    def __init__(self, visual, n: int):
        super().__init__()
        self.blocks = torch.nn.ModuleList(list(visual.transformer.resblocks)[n:])
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.pool_type = visual.pool_type
        self.final_ln_after_pool = bool(visual.final_ln_after_pool)
        self.batch_first = bool(getattr(visual.transformer, "batch_first", True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        for blk in self.blocks:
            x = blk(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        pool = (lambda t: t[:, 1:].mean(dim=1)) if self.pool_type == "avg" else (lambda t: t[:, 0])
        pooled = self.ln_post(pool(x)) if self.final_ln_after_pool else pool(self.ln_post(x))
        return pooled @ self.proj if self.proj is not None else pooled


def _bottlenecks(visual) -> list:
    return [b for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4) for b in layer]


class _ResNetPrefix(torch.nn.Module):
    def __init__(self, visual, n: int):
        super().__init__()
        self.stem_modules = torch.nn.ModuleList(
            [visual.conv1, visual.bn1, visual.act1, visual.conv2, visual.bn2, visual.act2, visual.conv3, visual.bn3,
             visual.act3, visual.avgpool]
        )  # fmt: skip
        self.blocks = torch.nn.ModuleList(_bottlenecks(visual)[:n])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.stem_modules:
            x = m(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class _ResNetSuffix(torch.nn.Module):
    def __init__(self, visual, n: int):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_bottlenecks(visual)[n:])
        self.attnpool = visual.attnpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.attnpool(x)


@dataclass
class TowerCut:
    """An image tower cut below its last `blocks` blocks (see the module docstring)."""

    arch: str  # "vit" | "resnet"
    blocks: int
    prefix: torch.nn.Module  # images -> block inputs (frozen)
    suffix: torch.nn.Module  # block inputs -> raw features (open_clip's own modules)
    input_shape: tuple
    config: dict  # what heads.tower.TowerSuffix needs besides the tensors
    prefix_sha256: str
    suffix_sha256: str

    def suffix_state(self) -> dict[str, torch.Tensor]:
        """The tensors above the cut as :class:`cmm_cache.heads.tower.TowerSuffix` keys them (float32, CPU)."""
        out = {}
        for i, blk in enumerate(self.suffix.blocks):
            for k, v in blk.state_dict().items():
                out[f"blocks.{i}.{k}"] = v
        if self.arch == "vit":
            for k, v in self.suffix.ln_post.state_dict().items():
                out[f"ln_post.{k}"] = v
            if self.suffix.proj is not None:
                out["proj"] = self.suffix.proj
        else:
            for k, v in self.suffix.attnpool.state_dict().items():
                out[f"attnpool.{k}"] = v
        return {k: v.detach().to("cpu", torch.float32).clone() for k, v in out.items() if "num_batches" not in k}

    def describe(self) -> dict:
        """What a cache records about its block inputs (``blocks`` attrs, provenance) and a run carries."""
        return {
            "arch": self.arch,
            "blocks": int(self.blocks),
            "input_shape": [int(v) for v in self.input_shape],
            "dtype": "float16",
            "prefix_sha256": self.prefix_sha256,
            "suffix_sha256": self.suffix_sha256,
            "config": dict(self.config),
            "where": (
                f"input of the last {self.blocks} residual block(s) (tokens after ln_pre and the blocks below)"
                if self.arch == "vit"
                else (
                    "input of the attention pool (layer4's output)"
                    if self.blocks == 1
                    else f"input of the last {self.blocks - 1} Bottleneck(s) (then the attention pool)"
                )
            ),
        }


def _refuse(visual, why: str) -> CmmError:
    return CmmError(
        f"Cannot cut this image tower ({type(visual).__name__}) for --finetune-blocks: {why}.",
        "Block inputs are supported for open_clip's VisionTransformer (CLIP ViTs) and ModifiedResNet (CLIP RNs).",
    )


def _vit_config(visual, K: int) -> dict:
    blocks = list(visual.transformer.resblocks)
    blk = blocks[-1]
    act = type(blk.mlp.gelu).__name__
    if act == "QuickGELU":
        act_name = "quick_gelu"
    elif act == "GELU":
        act_name = "gelu_tanh" if getattr(blk.mlp.gelu, "approximate", "none") == "tanh" else "gelu"
    else:
        raise _refuse(visual, f"activation {act}")
    for b in blocks[-K:]:
        if type(b).__name__ != "ResidualAttentionBlock" or hasattr(b, "ln_1_kv"):
            raise _refuse(visual, f"block type {type(b).__name__}")
        if not b.attn._qkv_same_embed_dim or b.attn.in_proj_bias is None:
            raise _refuse(visual, "attention without a packed, biased in-projection")
    if getattr(visual, "attn_pool", None) is not None:
        raise _refuse(visual, "attentional pooling")
    if visual.pool_type not in ("tok", "avg"):
        raise _refuse(visual, f"pool type {visual.pool_type}")
    return {
        "arch": "vit",
        "blocks": K,
        "width": int(visual.transformer.width),
        "heads": int(blk.attn.num_heads),
        "act": act_name,
        "ln_eps": float(blk.ln_1.eps),
        "pool_type": str(visual.pool_type),
        "final_ln_after_pool": bool(visual.final_ln_after_pool),
    }


def cut_tower(visual, blocks: int) -> TowerCut:
    """Cut `visual` (an open_clip image tower in eval mode) below its last `blocks` blocks."""
    K = int(blocks)
    if K < 1:
        raise CmmError(f"--finetune-blocks must be at least 1, got {K}.")
    kind = type(visual).__name__
    if kind == "VisionTransformer":
        L = len(visual.transformer.resblocks)
        if K > L:
            raise CmmError(f"This ViT has {L} residual blocks; --finetune-blocks {K} is more.", f"Pass 1..{L}.")
        config = _vit_config(visual, K)
        prefix, suffix, arch = _VitPrefix(visual, L - K), _VitSuffix(visual, L - K), "vit"
    elif kind == "ModifiedResNet":
        bots = _bottlenecks(visual)
        if K > len(bots) + 1:
            raise CmmError(
                f"This ResNet has {len(bots)} Bottleneck blocks and an attention pool; --finetune-blocks {K} is more.",
                f"Pass 1 (the attention pool, as Lin et al.) to {len(bots) + 1}.",
            )
        n = len(bots) - (K - 1)
        prefix, suffix, arch = _ResNetPrefix(visual, n), _ResNetSuffix(visual, n), "resnet"
        config = {
            "arch": "resnet",
            "blocks": K,
            "heads": int(visual.attnpool.num_heads),
            "strides": [int(b.stride) for b in bots[n:]],
            "bn_eps": float(visual.bn1.eps),
        }
    else:
        raise _refuse(visual, "not a VisionTransformer or ModifiedResNet")
    prefix.eval()
    suffix.eval()
    size = getattr(visual, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    p = next(visual.parameters())
    with torch.no_grad():
        shape = tuple(prefix(torch.zeros(1, 3, *size, device=p.device, dtype=p.dtype)).shape[1:])
    cut = TowerCut(arch, K, prefix, suffix, shape, config, state_sha256(prefix.state_dict()), "")
    cut.suffix_sha256 = state_sha256(cut.suffix_state())
    cut.config["input_shape"] = [int(v) for v in shape]
    return cut
