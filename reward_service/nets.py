"""Ensemble members: reward predictors r̂(o, a) -> one scalar per transition.

- `RewardMLP` for vector observations (the paper's MuJoCo predictor: two layers of 64, leaky ReLU).
- `RewardCNN` for stacked frames (the paper's Atari predictor: 4 conv layers 7×7/3, 5×5/2, 3×3/1,
  3×3/1 with 16 filters, batch-norm, leaky ReLU, dropout; FC 64 -> 1; the action one-hot joins
  the features before the FC layer).

Both take raw inputs: observations as stored (uint8 pixels are scaled by 1/255 inside the module,
so uint8 travels to the device, 4× less than float32) and actions as int64 indices (discrete) or
float32 [N, act_dim] (box). `build_member(space, config)` picks the architecture from the space.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlhp.types import Space

from .config import RewardConfig

# The paper's Atari conv stack: (kernel, stride) per layer.
CNN_LAYERS: tuple[tuple[int, int], ...] = ((7, 3), (5, 2), (3, 1), (3, 1))


def architecture_for(space: Space) -> str:
    """"cnn" for image spaces (stacked frames), "mlp" otherwise."""
    return "cnn" if space.is_image else "mlp"


class _ActionFeatures(nn.Module):
    """Discrete actions -> one-hot; box actions -> flattened floats; nothing (width 0) when the
    predictor does not see actions (`RewardConfig.use_actions`)."""

    def __init__(self, space: Space, use: bool = True) -> None:
        super().__init__()
        self.discrete = space.action_kind == "discrete"
        self.use = bool(use)
        self.dim = space.action_dim if self.use else 0

    def forward(self, act: torch.Tensor) -> torch.Tensor:
        if not self.use:
            return act.new_zeros((act.shape[0], 0), dtype=torch.float32)
        if self.discrete:
            return F.one_hot(act.reshape(-1).long(), self.dim).float()
        return act.reshape(act.shape[0], -1).float()


def _scale(obs: torch.Tensor) -> torch.Tensor:
    return obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()


def _mlp(width: int, hidden: tuple[int, ...], slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(slope)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class RewardMLP(nn.Module):
    """r̂(o, a) for vector observations: [flatten(o), features(a)] -> MLP -> scalar, or with
    ``action_term="additive"`` MLP(flatten(o)) + MLP(features(a))."""

    architecture = "mlp"

    def __init__(self, space: Space, config: RewardConfig) -> None:
        super().__init__()
        self.action = _ActionFeatures(space, config.use_actions)
        n_obs = int(math.prod(space.obs_shape))
        # Input standardisation (`RewardConfig.normalize_inputs`; identity unless set): buffers,
        # so scoring copies and checkpoints carry them.
        self.register_buffer("obs_mean", torch.zeros(n_obs))
        self.register_buffer("obs_std", torch.ones(n_obs))
        additive = config.action_term == "additive" and self.action.dim > 0
        self.net = _mlp(n_obs + (0 if additive else self.action.dim), config.hidden, config.leaky_slope)
        self.act_net = _mlp(self.action.dim, config.hidden, config.leaky_slope) if additive else None

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        o = (_scale(obs).reshape(obs.shape[0], -1) - self.obs_mean) / self.obs_std
        if self.act_net is not None:
            return (self.net(o) + self.act_net(self.action(act))).squeeze(1)
        return self.net(torch.cat([o, self.action(act)], dim=1)).squeeze(1)

    @torch.no_grad()
    def set_input_norm(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before input standardisation existed: the identity.
        for name, value in (("obs_mean", 0.0), ("obs_std", 1.0)):
            state_dict.setdefault(prefix + name, torch.full(self.obs_mean.shape, value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _Dropout(nn.Module):
    """Dropout drawing its mask from an optional dedicated generator (reproducible, checkpointable,
    and independent of the process-global torch RNG)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty_like(x).bernoulli_(keep, generator=self.generator)
        return x * mask / keep


class RewardCNN(nn.Module):
    """r̂(o, a) for stacked frames (C, H, W) or (H, W, C).

    Images smaller than the paper's stack needs (43 px) get 'same'-style padding in every conv
    layer so that e.g. 1×36×36 test images work; the flatten size is computed from a dummy pass.
    """

    architecture = "cnn"

    def __init__(self, space: Space, config: RewardConfig) -> None:
        super().__init__()
        if len(space.obs_shape) != 3:
            raise ValueError(f"the CNN needs (C, H, W) or (H, W, C) observations, got {space.obs_shape}")
        a, b, c = space.obs_shape
        # Channels first unless the last axis is clearly the (small) channel axis.
        self.channels_last = c < a and c <= 4
        channels, h, w = (c, a, b) if self.channels_last else (a, b, c)
        pad = min(h, w) < _min_unpadded_size()
        blocks: list[nn.Module] = []
        in_ch = channels
        self.dropouts: list[_Dropout] = []
        for kernel, stride in CNN_LAYERS:
            drop = _Dropout(config.dropout)
            self.dropouts.append(drop)
            blocks += [
                nn.Conv2d(in_ch, config.cnn_filters, kernel, stride, padding=kernel // 2 if pad else 0),
                nn.BatchNorm2d(config.cnn_filters),
                nn.LeakyReLU(config.leaky_slope),
                drop,
            ]
            in_ch = config.cnn_filters
        self.conv = nn.Sequential(*blocks)
        with torch.no_grad():
            flat = int(self.conv.eval()(torch.zeros(1, channels, h, w)).numel())
        self.conv.train()
        self.action = _ActionFeatures(space, config.use_actions)
        self.fc = nn.Sequential(
            nn.Linear(flat + self.action.dim, config.cnn_fc),
            nn.LeakyReLU(config.leaky_slope),
            nn.Linear(config.cnn_fc, 1),
        )

    def set_generator(self, generator: torch.Generator | None) -> None:
        for d in self.dropouts:
            d.generator = generator

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = _scale(obs)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        x = self.conv(x).flatten(1)
        return self.fc(torch.cat([x, self.action(act)], dim=1)).squeeze(1)


def _min_unpadded_size() -> int:
    """Smallest image side for which the unpadded conv stack still leaves >= 1 pixel (43)."""
    need = 1
    for kernel, stride in reversed(CNN_LAYERS):
        need = (need - 1) * stride + kernel
    return need


def build_member(space: Space, config: RewardConfig) -> nn.Module:
    """One ensemble member for `space` (weights drawn from the global torch RNG; callers seed it)."""
    if architecture_for(space) == "cnn":
        return RewardCNN(space, config)
    return RewardMLP(space, config)


def l2_penalty(member: nn.Module) -> torch.Tensor:
    """Sum of squared weights (conv and linear kernels; biases and batch-norm are not penalised)."""
    terms = [p.pow(2).sum() for name, p in member.named_parameters()
             if name.endswith("weight") and p.dim() > 1]
    return torch.stack(terms).sum()


__all__ = ["RewardMLP", "RewardCNN", "build_member", "architecture_for", "l2_penalty", "CNN_LAYERS"]
