"""How close one model's outputs are to another's: the measures calibrate, sensitivity, compare and
verify all report, written once (numpy only, so the torch-free runtime uses them too)."""

import math

import numpy as np


def row_cosines(reference, candidate):
    """Per-row cosine similarity of two [N, ...] arrays, in float64 (flattened per row)."""
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-30)


def snr_db(signal_power, noise_power):
    """10 log10(signal / noise): infinite when there is no noise."""
    return math.inf if noise_power == 0 else 10 * math.log10(signal_power / noise_power)
