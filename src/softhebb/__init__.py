"""SoftHebb: Hebbian deep learning without feedback (Journé et al., ICLR 2023).

The public API, from the rule up: Hebbian layers to drop into any model, the preset networks, the label-free
Hebbian phase, the frozen features, the linear probe and the supervised Hebbian classifier.
"""

from .features import StreamedFeatures, extract_features
from .hebb_classifier import train_hebbian_classifier
from .hebbian import NonFiniteError, hebbian_phase
from .layers import HebbianConv2d, HebbianLayer, HebbianLinear, hebbian_layers, hebbian_step
from .modules import ChannelSoftmax, Dropout, Power, Triangle
from .network import SoftHebbNet, build_model, get_preset, list_presets
from .probe import evaluate, train_probe

__version__ = "0.1.0"

__all__ = ["HebbianConv2d", "HebbianLinear", "HebbianLayer", "Triangle", "Power", "ChannelSoftmax", "Dropout",
           "hebbian_layers", "hebbian_step", "SoftHebbNet", "build_model", "get_preset", "list_presets",
           "hebbian_phase", "NonFiniteError", "extract_features", "StreamedFeatures", "train_probe", "evaluate",
           "train_hebbian_classifier"]
