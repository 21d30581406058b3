"""See what SoftHebb learned: filters, receptive fields, learning dynamics, representations, robustness.

Tensor-level API (torch only; figures need the optional ``analysis`` extra, i.e. matplotlib,
and t-SNE needs scikit-learn):

    receptive_fields(model)                      theoretical RF size / jump / offset of every block
    first_layer_filters(model), tile(images)     Fig. B.5 filter grids
    maximize_activation(model, block, neurons)   Fig. 2 activation maximisation, correct projection
    record_dynamics(model, images, every=10)     hebbian_phase with records every k batches
    compare_schedules(preset, ...)               Fig. B.3.B radius-dependent vs linear-decay rate
    block_outputs, embed_2d, sparsity, top_patches, knn_accuracy   Fig. 5 and sparsity
    robustness(model, images, labels, ...)       Gaussian noise, FGSM/FGM and PGD (L∞, L2)

Run-directory level (write PNG + CSV/JSON; what ``softhebb analyze`` calls): ``analyze_filters``,
``analyze_receptive_fields``, ``analyze_dynamics``, ``analyze_representations``, ``analyze_robustness``.
"""

from .dynamics import Dynamics, compare_schedules, record_dynamics, with_schedule
from .geometry import ReceptiveField, crop, receptive_fields
from .report import (analyze_dynamics, analyze_filters, analyze_receptive_fields, analyze_representations,
                     analyze_robustness)
from .representations import alive_neurons, block_outputs, embed_2d, knn_accuracy, sparsity, top_patches
from .robustness import attack, attack_accuracy, attack_loss, clean_accuracy, noise_accuracy, robustness
from .visualize import filter_std, first_layer_filters, maximize_activation, pick_neurons, tile, unit_response

__all__ = [
    "Dynamics", "compare_schedules", "record_dynamics", "with_schedule",
    "ReceptiveField", "crop", "receptive_fields",
    "analyze_dynamics", "analyze_filters", "analyze_receptive_fields", "analyze_representations", "analyze_robustness",
    "alive_neurons", "block_outputs", "embed_2d", "knn_accuracy", "sparsity", "top_patches",
    "attack", "attack_accuracy", "attack_loss", "clean_accuracy", "noise_accuracy", "robustness",
    "filter_std", "first_layer_filters", "maximize_activation", "pick_neurons", "tile", "unit_response",
]
