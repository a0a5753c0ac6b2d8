"""Small statistics for benchmark samples: latency histograms and medians of repetitions."""

import math
import statistics


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


class Histogram:
    """Latency counts in log-linear buckets of nanoseconds, as the C load generator keeps them.

    Values below ``2 * SUB`` ns are exact; above, each power of two is cut
    into ``SUB`` (32) equal buckets, so a bucket's middle is within 1.6% of
    any value in it.  Histograms of several load processes add up exactly,
    which a list of percentiles would not.
    """

    SUB_BITS = 5
    SUB = 1 << SUB_BITS
    LAST = 2 * SUB + (40 - SUB_BITS - 1) * SUB - 1  # 2**40 ns and above share it

    def __init__(self):
        self.counts = {}
        self.total = 0
        self.max_ns = None

    @classmethod
    def bucket_of(cls, ns):
        """Return the bucket index of a value in nanoseconds."""
        ns = max(0, int(ns))
        if ns < 2 * cls.SUB:
            return ns
        msb = ns.bit_length() - 1
        index = 2 * cls.SUB + (msb - cls.SUB_BITS - 1) * cls.SUB + ((ns >> (msb - cls.SUB_BITS))
                                                                     - cls.SUB)
        return min(index, cls.LAST)

    @classmethod
    def bucket_value(cls, index):
        """Return the middle of bucket ``index`` in nanoseconds."""
        if index < 2 * cls.SUB:
            return index
        octave, sub = divmod(index - 2 * cls.SUB, cls.SUB)
        shift = octave + 1
        return ((cls.SUB + sub) << shift) + (1 << shift) // 2

    def add_seconds(self, values):
        """Count latencies given in seconds."""
        for value in values:
            ns = int(value * 1e9)
            index = self.bucket_of(ns)
            self.counts[index] = self.counts.get(index, 0) + 1
            self.total += 1
            if self.max_ns is None or ns > self.max_ns:
                self.max_ns = ns

    def add_sparse(self, pairs, max_ns):
        """Add ``[[index, count], ...]`` (a generator's output) with largest value ``max_ns``."""
        for index, count in pairs:
            self.counts[index] = self.counts.get(index, 0) + count
            self.total += count
        if pairs and (self.max_ns is None or max_ns > self.max_ns):
            self.max_ns = max_ns

    def sparse(self):
        """Return the counts as ``[[index, count], ...]`` in index order."""
        return [[index, self.counts[index]] for index in sorted(self.counts)]

    def percentile(self, q):
        """Return the nearest-rank ``q``-th percentile in seconds, or None when empty."""
        if not self.total:
            return None
        rank, seen = max(1, math.ceil(q / 100.0 * self.total)), 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(self.bucket_value(index), self.max_ns) / 1e9
        return self.max_ns / 1e9

    @property
    def max_s(self):
        """The largest value in seconds, or None when empty."""
        return None if self.max_ns is None else self.max_ns / 1e9
