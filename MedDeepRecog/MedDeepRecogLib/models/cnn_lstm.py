"""CNN-LSTM over slices: a 2D encoder on each slice, a (bi)LSTM along Z, attention pooling over slices."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

from .registry import register_model
from .simple_cnn import conv_pool_features


class SliceEncoder(nn.Module):
    """2D conv–pool blocks + global average pooling: ``(N, C, Y, X) -> (N, channels[-1])``."""

    def __init__(self, in_channels: int, channels: Sequence[int], conv_dropout: float = 0.0):
        super().__init__()
        self.features = conv_pool_features(2, in_channels, channels, conv_dropout)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


class CNNLSTM(nn.Module):
    """Slice-sequence classifier for ``(B, C, Z, Y, X)`` volumes (Z = slice order).

    Each slice goes through :class:`SliceEncoder`; a (bi)LSTM reads the slice features in Z order; additive
    attention (``tanh`` MLP, softmax over Z) pools the LSTM outputs into one vector; a linear layer gives logits.

    ``forward_with_attention(x)`` returns ``(logits (B, K), attention (B, Z))`` (rows sum to 1); ``forward`` keeps
    the attention in ``self.last_attention`` (detached).

    Args:
        channels: encoder conv–pool block widths.
        hidden: LSTM hidden size (per direction); ``bidirectional``; ``lstm_layers``.
        attention_dim: width of the attention MLP. ``dropout`` before the classifier.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = (16, 32, 64),
                 hidden: int = 64, bidirectional: bool = True, lstm_layers: int = 1, attention_dim: int = 32,
                 dropout: float = 0.3, conv_dropout: float = 0.0):
        super().__init__()
        self.encoder = SliceEncoder(in_channels, tuple(channels), conv_dropout)
        self.lstm = nn.LSTM(self.encoder.out_features, hidden, num_layers=lstm_layers, batch_first=True,
                            bidirectional=bidirectional)
        width = hidden * (2 if bidirectional else 1)
        self.attention = nn.Sequential(OrderedDict([("proj", nn.Linear(width, attention_dim)), ("tanh", nn.Tanh()),
                                                    ("score", nn.Linear(attention_dim, 1))]))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)
        self.last_attention: torch.Tensor | None = None

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, z, y, w = x.shape
        slices = x.permute(0, 2, 1, 3, 4).reshape(b * z, c, y, w)
        feats = self.encoder(slices).reshape(b, z, -1)
        seq, _ = self.lstm(feats)
        weights = torch.softmax(self.attention(seq).squeeze(-1), dim=1)  # (B, Z)
        pooled = (weights.unsqueeze(-1) * seq).sum(1)
        logits = self.classifier(self.dropout(pooled))
        self.last_attention = weights.detach()
        return logits, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]


@register_model("cnn_lstm", lambda kw: f"encoder.features.conv{len(kw.get('channels', range(3)))}", "volume3d",
                "2D encoder per slice + biLSTM over Z + attention pooling; per-slice attention")
def cnn_lstm(in_channels: int = 1, num_classes: int = 2, **kwargs) -> CNNLSTM:
    return CNNLSTM(in_channels, num_classes, **kwargs)
