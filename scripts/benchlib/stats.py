"""Small statistics for benchmark samples: percentiles and medians of repetitions."""

import math
import statistics


def percentile(sorted_values, q):
    """Return the nearest-rank ``q``-th percentile (0 < q <= 100) of sorted values.

    Returns None for an empty sequence; the caller must sort the values first.
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def median_or_none(values):
    """Return the median of the values that are not None, or None if there are none."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def median_runs(runs):
    """Combine repeated runs (dicts of metric -> number, None or list) by median.

    Numbers are combined key by key; lists (per-second series) element by
    element. The median of each metric is taken on its own, so one summary row
    may mix repetitions; that is the usual reading of "median over reps".
    """
    if not runs:
        return {}
    merged = {}
    for key, first in runs[0].items():
        column = [run.get(key) for run in runs]
        if isinstance(first, list):
            merged[key] = _median_series(column)
        else:
            merged[key] = median_or_none(column)
    return merged


def _median_series(series):
    length = max(len(values) for values in series if values is not None)
    return [median_or_none([values[i] if values is not None and i < len(values) else None
                            for values in series])
            for i in range(length)]


def ratio(numerator, denominator):
    """Return numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
