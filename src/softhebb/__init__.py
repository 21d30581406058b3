"""SoftHebb: Hebbian deep learning without feedback (Journé et al., ICLR 2023)."""

from .layers import ChannelSoftmax, Dropout, HebbianConv2d, HebbianLinear, Power, Triangle, hebbian_layers, hebbian_step
from .network import SoftHebbNet, build_model, get_preset, list_presets

__version__ = "0.1.0"

__all__ = ["HebbianConv2d", "HebbianLinear", "Triangle", "Power", "ChannelSoftmax", "Dropout", "hebbian_layers",
           "hebbian_step", "SoftHebbNet", "build_model", "get_preset", "list_presets"]
