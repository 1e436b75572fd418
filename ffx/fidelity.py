"""How close one model's outputs are to another's: the measures calibrate, sensitivity, compare and
verify all report, written once (numpy only, so the torch-free runtime uses them too), the
arithmetic of logit error powers that sensitivity, the autopilot and the noise budget share, and
the 95% intervals that the accuracy gate and the autopilot judge by."""

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


# --- 95% intervals --------------------------------------------------------------------------

Z_95 = 1.959963984540054


def wilson_interval(successes, n, z=Z_95):
    """Wilson's 95% interval (fractions) of a proportion `successes`/`n`: unlike the normal
    approximation, honest near 0 and 1 (0 failures in 1,000 gives 99.62-100%, not 100-100%)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def paired_difference_ci(only_reference, only_candidate, n, z=Z_95):
    """95% interval (percentage points) for the paired difference in accuracy, reference minus
    candidate, from the discordant counts. Agresti-Min: half an image added to each cell of the
    2x2 table, so that zero or few discordant images still give an honest, non-degenerate width."""
    c, b, total = only_reference + 0.5, only_candidate + 0.5, n + 2.0
    mean = (c - b) / total
    variance = ((c + b) - (c - b) ** 2 / total) / total**2
    half = z * math.sqrt(max(variance, 0.0))
    return [100.0 * (mean - half), 100.0 * (mean + half)]


def images_to_resolve_agreement(target, z=Z_95):
    """The fewest images on which an agreement of `target` % can be shown at all by the Wilson
    95% lower bound (it takes every image agreeing): z^2 t / (1 - t); None for 100%, which no
    finite sample shows."""
    t = target / 100
    if t >= 1:
        return None
    return max(1, math.ceil(z * z * t / (1 - t) - 1e-9))


def images_to_resolve_drop(max_drop, z=Z_95):
    """The fewest images on which a top-1 drop of at most `max_drop` points can be shown by the
    upper end of its paired 95% interval (it takes no discordant image); None for 0."""
    if max_drop <= 0:
        return None
    n = max(1, math.ceil(100 * z / max_drop - 2 - 1e-9))
    while paired_difference_ci(0, 0, n, z)[1] > max_drop:  # the closed form's rounding, made exact
        n += 1
    return n


def disagreements_allowed(target, n, z=Z_95):
    """The most disagreeing images of `n` that still leave the Wilson 95% lower bound of the
    agreement at `target` % or above (-1: none can, the sample is too small)."""
    t = target / 100
    if n < 1 or wilson_interval(n, n, z)[0] < t:
        return -1
    low, high = 0, n  # the lower bound falls as disagreements grow: bisect on it
    while low < high:
        middle = (low + high + 1) // 2
        if wilson_interval(n - middle, n, z)[0] >= t:
            low = middle
        else:
            high = middle - 1
    return low
