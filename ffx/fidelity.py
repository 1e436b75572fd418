"""How close one model's outputs are to another's: the measures calibrate, sensitivity, compare and
verify all report, written once (numpy only, so the torch-free runtime uses them too), and the
arithmetic of logit error powers that sensitivity, the autopilot and the noise budget share."""

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


def error_power(snr):
    """A graph's logit error power relative to the reference logits' power: the inverse of its SNR (dB)."""
    return 10 ** (-snr / 10)


def snr_of(power):
    """The SNR (dB) of a relative error power: infinite when nothing is left."""
    return math.inf if power <= 0 else -10 * math.log10(power)


def summed_errors(snrs):
    """(each part's share of the summed error power, the SNR that sum predicts, or None when it is 0)
    for parts measured alone at `snrs` dB: rounding errors of different tensors or layers are
    nearly independent, so their powers add."""
    powers = [error_power(snr) for snr in snrs]
    total = sum(powers)
    return [power / total if total > 0 else 0.0 for power in powers], (snr_of(total) if total > 0 else None)
