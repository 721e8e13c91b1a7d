"""The last K blocks of a CLIP image tower as plain torch functions: what a partial-finetuning run carries.

:class:`TowerSuffix` rebuilds, from a state dict and a small config, the part of an open_clip image tower
that sits above a cut (:mod:`cmm_cache.backbones.cut` makes both when the cache is extracted):

* ViT (``VisionTransformer``): the last K ``ResidualAttentionBlock``s (pre-LayerNorm attention and MLP, each a
  residual branch, optional LayerScale), then ``ln_post`` on the pooled token (``tok``: the class token;
  ``avg``: the mean of the others) and ``@ proj``. Input: the tokens entering block L − K, ``[n, L_tok, width]``.
* ResNet (``ModifiedResNet``): the last K − 1 ``Bottleneck``s (BatchNorm in eval mode: running statistics
  frozen) and the attention pool (spatial-mean token prepended, positional embedding, multi-head attention
  whose query is that token, ``c_proj``). Input: the feature map entering them, ``[n, C, H, W]``; K = 1 is
  the attention pool alone, the cut of Lin et al.'s partial finetuning.

The computation is open_clip's (``open_clip/transformer.py`` and ``open_clip/modified_resnet.py``, 3.3.0),
written out with ``torch.nn.functional``; a test holds it to the modules of the whole model. Inference code:
imports nothing but torch and :mod:`cmm_cache.heads.base`, and exports with ``torch.export``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# BatchNorm running statistics are state, not trained.
_FROZEN_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _safe(key: str) -> str:
    return key.replace(".", "__")


def is_trainable(key: str) -> bool:
    return not key.endswith(_FROZEN_SUFFIXES)


class TowerSuffix(torch.nn.Module):
    """Block inputs -> raw image features [n, d] (not normalized), from `config` and `state` (see the module doc)."""

    def __init__(self, config: dict, state: dict[str, torch.Tensor]):
        super().__init__()
        self.config = dict(config)
        self.arch = str(config["arch"])
        if self.arch not in ("vit", "resnet"):
            raise ValueError(f"unknown tower kind {self.arch!r}")
        self.keys = sorted(k for k in state if not k.endswith("num_batches_tracked"))
        self.params = torch.nn.ParameterDict()
        for k in self.keys:
            v = torch.as_tensor(state[k]).detach().to(torch.float32).clone()
            if is_trainable(k):
                self.params[_safe(k)] = torch.nn.Parameter(v)
            else:
                self.register_buffer("buf__" + _safe(k), v)

    def check(self, input_shape) -> int:
        """Run one zero input of `input_shape` through: ValueError (saying what is wrong) when a tensor is missing
        or of the wrong shape, or the output is not finite. Returns the output width."""
        try:
            with torch.no_grad():
                out = self.forward(torch.zeros(1, *[int(v) for v in input_shape], device=self._device()))
        except (KeyError, AttributeError, RuntimeError, IndexError) as e:
            raise ValueError(f"the tower blocks' tensors do not fit their config ({type(e).__name__}: {e})") from e
        if out.ndim != 2 or not bool(torch.isfinite(out).all()):
            raise ValueError(f"the tower blocks give an output of shape {list(out.shape)} with non-finite values")
        return int(out.shape[1])

    def _device(self) -> torch.device:
        return next(iter(self.params.values())).device if len(self.params) else torch.device("cpu")

    def p(self, key: str) -> torch.Tensor:
        if is_trainable(key):
            return self.params[_safe(key)]
        return getattr(self, "buf__" + _safe(key))

    def has(self, key: str) -> bool:
        return key in self.keys

    def state(self) -> dict[str, torch.Tensor]:
        """Every tensor under its open_clip-relative key (what :meth:`__init__` takes back)."""
        return {k: self.p(k).detach() for k in self.keys}

    def trainable(self) -> list[torch.nn.Parameter]:
        return [self.params[_safe(k)] for k in self.keys if is_trainable(k)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        return self._vit(x) if self.arch == "vit" else self._resnet(x)

    # ------------------------------------------------------------------ ViT

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        act = self.config.get("act", "gelu")
        if act == "quick_gelu":
            return x * torch.sigmoid(1.702 * x)
        if act == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        return F.gelu(x)

    def _ln(self, x: torch.Tensor, key: str) -> torch.Tensor:
        eps = float(self.config.get("ln_eps", 1e-5))
        return F.layer_norm(x, (x.shape[-1],), self.p(f"{key}.weight"), self.p(f"{key}.bias"), eps)

    def _attention(self, q_in: torch.Tensor, kv_in: torch.Tensor, pre: str) -> torch.Tensor:
        """nn.MultiheadAttention (batch first, packed in-projection, no mask) of queries q_in on keys kv_in."""
        heads = int(self.config["heads"])
        w, b = self.p(f"{pre}.in_proj_weight"), self.p(f"{pre}.in_proj_bias")
        W = q_in.shape[-1]
        q = F.linear(q_in, w[:W], b[:W])
        k = F.linear(kv_in, w[W : 2 * W], b[W : 2 * W])
        v = F.linear(kv_in, w[2 * W :], b[2 * W :])
        n, lq, lk, hd = q.shape[0], q.shape[1], k.shape[1], W // heads
        q = q.view(n, lq, heads, hd).transpose(1, 2)
        k = k.view(n, lk, heads, hd).transpose(1, 2)
        v = v.view(n, lk, heads, hd).transpose(1, 2)
        att = torch.softmax((q * (1.0 / math.sqrt(hd))) @ k.transpose(-2, -1), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(n, lq, W)
        return F.linear(out, self.p(f"{pre}.out_proj.weight"), self.p(f"{pre}.out_proj.bias"))

    def _block(self, x: torch.Tensor, i: int, first_token_only: bool) -> torch.Tensor:
        pre = f"blocks.{i}"
        y = self._ln(x, f"{pre}.ln_1")
        q_in, x_res = (y[:, :1], x[:, :1]) if first_token_only else (y, x)
        a = self._attention(q_in, y, f"{pre}.attn")
        if self.has(f"{pre}.ls_1.gamma"):
            a = a * self.p(f"{pre}.ls_1.gamma")
        x = x_res + a
        y = self._ln(x, f"{pre}.ln_2")
        h = self._act(F.linear(y, self.p(f"{pre}.mlp.c_fc.weight"), self.p(f"{pre}.mlp.c_fc.bias")))
        m = F.linear(h, self.p(f"{pre}.mlp.c_proj.weight"), self.p(f"{pre}.mlp.c_proj.bias"))
        if self.has(f"{pre}.ls_2.gamma"):
            m = m * self.p(f"{pre}.ls_2.gamma")
        return x + m

    def _vit(self, x: torch.Tensor) -> torch.Tensor:
        K = int(self.config["blocks"])
        tok = self.config.get("pool_type", "tok") == "tok"
        for i in range(K):
            # With class-token pooling only token 0 of the last block's output is read: its attention query and
            # MLP need that token alone (keys and values still come from every token) — the same numbers.
            x = self._block(x, i, first_token_only=tok and i == K - 1)
        if self.config.get("final_ln_after_pool", False):
            pooled = self._ln(x[:, 0] if tok else x[:, 1:].mean(1), "ln_post")
        else:
            pooled = self._ln(x[:, 0], "ln_post") if tok else self._ln(x, "ln_post")[:, 1:].mean(1)
        return pooled @ self.p("proj") if self.has("proj") else pooled

    # ------------------------------------------------------------------ ResNet

    def _bn(self, x: torch.Tensor, key: str) -> torch.Tensor:
        eps = float(self.config.get("bn_eps", 1e-5))
        return F.batch_norm(
            x, self.p(f"{key}.running_mean"), self.p(f"{key}.running_var"), self.p(f"{key}.weight"),
            self.p(f"{key}.bias"), training=False, eps=eps,
        )  # fmt: skip

    def _bottleneck(self, x: torch.Tensor, i: int, stride: int) -> torch.Tensor:
        pre = f"blocks.{i}"
        out = F.relu(self._bn(F.conv2d(x, self.p(f"{pre}.conv1.weight")), f"{pre}.bn1"))
        out = F.relu(self._bn(F.conv2d(out, self.p(f"{pre}.conv2.weight"), padding=1), f"{pre}.bn2"))
        if stride > 1:
            out = F.avg_pool2d(out, stride)
        out = self._bn(F.conv2d(out, self.p(f"{pre}.conv3.weight")), f"{pre}.bn3")
        identity = x
        if self.has(f"{pre}.downsample.0.weight"):
            identity = F.avg_pool2d(x, stride) if stride > 1 else x
            identity = self._bn(F.conv2d(identity, self.p(f"{pre}.downsample.0.weight")), f"{pre}.downsample.1")
        return F.relu(out + identity)

    def _resnet(self, x: torch.Tensor) -> torch.Tensor:
        for i, stride in enumerate(self.config.get("strides", [])):
            x = self._bottleneck(x, i, int(stride))
        n, c = x.shape[0], x.shape[1]
        t = x.reshape(n, c, -1).permute(0, 2, 1)  # [n, HW, C]
        t = torch.cat([t.mean(dim=1, keepdim=True), t], dim=1) + self.p("attnpool.positional_embedding")[None]
        heads, hd = int(self.config["heads"]), c // int(self.config["heads"])
        # open_clip computes the queries of every token and keeps token 0's output: only its query is needed.
        q = F.linear(t[:, :1], self.p("attnpool.q_proj.weight"), self.p("attnpool.q_proj.bias"))
        k = F.linear(t, self.p("attnpool.k_proj.weight"), self.p("attnpool.k_proj.bias"))
        v = F.linear(t, self.p("attnpool.v_proj.weight"), self.p("attnpool.v_proj.bias"))
        L = t.shape[1]
        q = q.view(n, 1, heads, hd).transpose(1, 2)
        k = k.view(n, L, heads, hd).transpose(1, 2)
        v = v.view(n, L, heads, hd).transpose(1, 2)
        att = torch.softmax((q * (1.0 / math.sqrt(hd))) @ k.transpose(-2, -1), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(n, c)
        return F.linear(out, self.p("attnpool.c_proj.weight"), self.p("attnpool.c_proj.bias"))
