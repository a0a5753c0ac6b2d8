"""A one-line progress bar for transfers on a terminal: bytes, percentage, rate, ETA."""

import time

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_INTERVAL = 0.1  # seconds between redraws


def format_bytes(count):
    """``1536`` -> ``'1.5 KiB'``: binary units, one decimal above bytes."""
    value, unit = float(count), _UNITS[0]
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    return "%d B" % count if unit == "B" else "%.1f %s" % (value, unit)


def format_duration(seconds):
    """``75`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``; ``'--:--'`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 360000:
        return "--:--"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return "%d:%02d:%02d" % (hours, minutes, secs) if hours else "%d:%02d" % (minutes, secs)


def render(label, done, total, rate):
    """One bar line (no carriage return): label, bytes, percent, rate (bytes/s), ETA."""
    percent = 100.0 * done / total if total else 100.0
    eta = (total - done) / rate if rate else None
    return "%s  %s / %s  %3.0f%%  %s/s  ETA %s" % (
        label, format_bytes(done), format_bytes(total), percent, format_bytes(int(rate)),
        format_duration(eta))


class ProgressBar:
    """A ``progress(done, total)`` callback drawing on ``stream`` (only if it is a terminal).

    The rate counts bytes moved since the first call, so a resumed transfer's
    earlier part does not inflate it.  Call ``finish()`` to draw the last
    state and end the line.
    """

    def __init__(self, stream, label, enabled=None, clock=time.monotonic):
        self.stream = stream
        self.label = label
        self.enabled = stream.isatty() if enabled is None else enabled
        self._clock = clock
        self._start = None
        self._drawn = 0.0
        self._last = (0, 0)
        self._width = 0

    def __call__(self, done, total):
        now = self._clock()
        if self._start is None:
            self._start = (now, done)
        self._last = (done, total)
        if self.enabled and now - self._drawn >= _INTERVAL:
            self._drawn = now
            self._draw(now)

    def finish(self):
        """Draw the final state and end the line (nothing if disabled or never called)."""
        if self.enabled and self._start is not None:
            self._draw(self._clock())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now):
        started, first = self._start
        done, total = self._last
        elapsed = now - started
        rate = (done - first) / elapsed if elapsed > 0 else 0.0
        line = render(self.label, done, total, rate)
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()
