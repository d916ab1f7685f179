"""MAE (He et al. 2021) for ViT encoders: encode the 25% visible patches, reconstruct the pixels of the masked ones."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.data.augment import ViewSettings, part_views
from cxrbench.engine.data import Batch
from cxrbench.engine.loop import Loss, Step
from cxrbench.errors import CxrbenchError
from cxrbench.models.encoders import Encoder
from cxrbench.pretrain.base import Method as MethodBase

_VIT_PARTS = ("patch_embed", "_pos_embed", "norm_pre", "blocks", "norm", "num_prefix_tokens")


def vit_backbone(encoder: Encoder) -> nn.Module:
    """The timm VisionTransformer inside ``encoder``; a one-line error for any other backbone."""
    backbone = encoder.backbone
    if encoder.patch_size is None or not all(hasattr(backbone, part) for part in _VIT_PARTS):
        raise CxrbenchError(
            f"mae needs a ViT encoder (a timm VisionTransformer such as vit_small_patch16_224), not {encoder.arch}; "
            "use the method 'masked' for any encoder"
        )
    return backbone


def sincos_positions(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``[grid * grid, dim]`` (row-major patches): half of
    the channels encode the row, half the column, each as sines and cosines of geometric frequencies."""
    if dim % 4:
        raise CxrbenchError(f"mae: decoder_dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )

    def embed(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed(rows), embed(cols)], dim=1).float()


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Images ``[B, C, H, W]`` as rows of patches ``[B, N, patch * patch * C]`` (row-major, as the ViT's)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class Method(MethodBase):
    """A random ``mask_ratio`` of the patches of each view (random resized crop from ``min_scale`` and
    flip) is dropped; the ViT encodes the visible ones only; a light transformer decoder (``decoder_dim``,
    ``decoder_depth`` blocks, fixed sine-cosine positions, a learned mask token) predicts the pixels of
    every patch; the loss is the MSE on the masked patches, against pixels normalised per patch
    (``norm_pix_loss``). Defaults are the paper's: decoder 512 wide, 8 blocks; AdamW (betas 0.9, 0.95),
    weight decay 0.05 except on biases and norms, lr 1.5e-4 (its base rate; not scaled by batch/256)."""

    defaults: ClassVar[dict[str, Any]] = {**MethodBase.defaults, "lr": 1.5e-4, "weight_decay": 0.05}
    drop_last: ClassVar[bool] = False

    def __init__(
        self,
        encoder: Encoder,
        *,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        min_scale: float = 0.2,
        channels: int = 1,
    ) -> None:
        from timm.models.vision_transformer import Block

        super().__init__(encoder)
        vit = vit_backbone(encoder)
        self.patch = int(encoder.patch_size)
        grid = encoder.input_size // self.patch
        self.patches = grid * grid
        self.keep = int(self.patches * (1 - mask_ratio))
        if not 0 < mask_ratio < 1 or self.keep < 1:
            raise CxrbenchError(
                f"mae: mask_ratio must leave at least one of {self.patches} patches visible, got {mask_ratio}"
            )
        if decoder_depth < 1 or decoder_heads < 1 or decoder_dim % decoder_heads:
            raise CxrbenchError("mae: decoder_depth >= 1 and decoder_dim a multiple of decoder_heads")
        self.norm_pix_loss = norm_pix_loss
        self.prefix = int(vit.num_prefix_tokens)
        self.views = ViewSettings(min_scale=min_scale, max_rotation_deg=0.0, brightness=0.0, contrast=0.0, noise=0.0)
        self.decoder_embed = nn.Linear(encoder.num_features, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos", sincos_positions(decoder_dim, grid).unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * channels)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(_init)
        nn.init.normal_(self.mask_token, std=0.02)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """MAE's AdamW settings: betas (0.9, 0.95); no weight decay on biases and norms (1-D tensors)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim > 1], "betas": (0.9, 0.95)},
            {"params": [p for p in params if p.ndim <= 1], "betas": (0.9, 0.95), "weight_decay": 0.0},
        ]

    def encode_visible(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The ViT's output ``[B, prefix + K, D]`` on the prefix (class, register) tokens and the patches
        ``keep`` ``[B, K]`` only (positions added before the patches are chosen)."""
        vit = self.encoder.backbone
        tokens = vit._pos_embed(vit.patch_embed(self.encoder.preprocess(images)))
        patches = tokens[:, self.prefix :]
        visible = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        tokens = vit.norm_pre(torch.cat([tokens[:, : self.prefix], visible], dim=1))
        return vit.norm(vit.blocks(tokens))

    def decode(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Predicted pixels ``[B, N, patch * patch]`` of every patch from the encoded visible ones; mask
        tokens fill the rest and ``restore`` puts them back in image order."""
        tokens = self.decoder_embed(latent)
        head, visible = tokens[:, : self.prefix], tokens[:, self.prefix :]
        fill = self.mask_token.to(visible.dtype).expand(visible.shape[0], self.patches - visible.shape[1], -1)
        full = torch.cat([visible, fill], dim=1)
        full = full.gather(1, restore.unsqueeze(-1).expand(-1, -1, full.shape[-1])) + self.decoder_pos.to(full.dtype)
        out = self.decoder_norm(self.decoder_blocks(torch.cat([head, full], dim=1)))
        return self.decoder_pred(out[:, self.prefix :])

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """Grey pixels at the encoder's input size, per patch, normalised per patch if asked."""
        size = self.encoder.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        target = patchify(images.float(), self.patch)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def loss(self, batch: Batch, step: Step) -> Loss:
        images, dist, total = batch["images"], step.dist, step.total
        lo, hi = dist.bounds(total)
        views = part_views(images, step.generator, self.views, (lo, hi), total)
        noise = torch.rand(total, self.patches, generator=step.generator)[lo:hi].to(images.device)
        shuffle = noise.argsort(dim=1)  # per image: the first ``keep`` patches stay visible
        restore = shuffle.argsort(dim=1)
        pred = self.decode(self.encode_visible(views, shuffle[:, : self.keep]), restore)
        masked = (restore >= self.keep).float()  # [B, N]: 1 where the patch was hidden
        per_patch = (pred.float() - self.target(views)).pow(2).mean(dim=-1)
        per_image = (per_patch * masked).sum(dim=1) / masked.sum(dim=1)
        part = per_image.sum() / total
        return Loss(part * dist.world_size, dist.all_sum(part.detach()))


def _init(module: nn.Module) -> None:
    """MAE's initialisation of its decoder: Xavier-uniform linear layers, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
