"""The performance targets (issue 14), checked on the medians of one run.

Each goal compares msgsrv with one anchor measured in the same run, in the
cells it applies to; :func:`goals_table` prints one row per cell with the
anchors' and msgsrv's figures side by side, the ratios the goals are stated
in, and which goals the cell misses.  A goal whose figures are missing (an
anchor skipped) is "n/a", never met.
"""

from benchlib import report, stats
from benchlib.targets import TARGETS

SHORT = {"stdlib-threading": "thr", "stdlib-threading-q1024": "thr1024",
         "asyncio-streams": "aio", "uvloop": "uv", "c-epoll": "C", "stdlib-udp": "udp",
         "stdlib-threading-udp": "thr-udp"}


class RatioGoal:
    """msgsrv's ``metric`` divided by ``anchor``'s must be at most / at least ``limit``."""

    def __init__(self, code, metric, anchor, limit, at_most, applies=None):
        self.code, self.metric, self.anchor = code, metric, anchor
        self.limit, self.at_most = limit, at_most
        self.applies = applies or (lambda cell: True)

    def value(self, mine, anchors):
        """The ratio, or None when a figure is missing."""
        return stats.ratio(mine.get(self.metric), anchors.get(self.anchor, {}).get(self.metric))

    def met(self, cell, mine, anchors):
        """True / False, or None where the goal does not apply or cannot be judged."""
        value = self.value(mine, anchors)
        if not self.applies(cell) or value is None:
            return None
        return value <= self.limit if self.at_most else value >= self.limit

    def describe(self):
        """One line for the notes."""
        return "%s: msgsrv / %s %s %s" % (self.code, TARGETS[self.anchor].label,
                                         "<=" if self.at_most else ">=", self.limit)


class CeilingGoal:
    """msgsrv's ``metric`` at most ``limit`` wherever ``anchor``'s is below ``where_below``."""

    def __init__(self, code, metric, anchor, limit, where_below, unit):
        self.code, self.metric, self.anchor = code, metric, anchor
        self.limit, self.where_below, self.unit = limit, where_below, unit

    def value(self, mine, anchors):
        """msgsrv's own figure."""
        return mine.get(self.metric)

    def met(self, cell, mine, anchors):
        """True / False, or None where the anchor is not below the threshold (or is missing)."""
        theirs, value = anchors.get(self.anchor, {}).get(self.metric), mine.get(self.metric)
        if theirs is None or value is None or theirs >= self.where_below:
            return None
        return value <= self.limit

    def describe(self):
        """One line for the notes."""
        return "%s: msgsrv <= %g %s where %s's is under %g %s" % (
            self.code, self.limit * 1000, self.unit, TARGETS[self.anchor].label,
            self.where_below * 1000, self.unit)


class AbsoluteGoal:
    """msgsrv's ``metric`` must be at most / at least ``limit`` (``text`` says it in the notes)."""

    def __init__(self, code, metric, limit, at_most, text):
        self.code, self.metric, self.limit, self.at_most, self.text = (
            code, metric, limit, at_most, text)

    def value(self, mine, anchors):
        """msgsrv's own figure."""
        return mine.get(self.metric)

    def met(self, cell, mine, anchors):
        """True / False, or None when the figure is missing."""
        value = mine.get(self.metric)
        if value is None:
            return None
        return value <= self.limit if self.at_most else value >= self.limit

    def describe(self):
        """One line for the notes."""
        return "%s: %s" % (self.code, self.text)


def verdicts(goals, cell, mine, anchors):
    """Return (missed codes, codes that could not be judged) for one cell."""
    missed, unknown = [], []
    for goal in goals:
        outcome = goal.met(cell, mine, anchors)
        if outcome is False:
            missed.append(goal.code)
        elif outcome is None and _applies(goal, cell):
            if goal.value(mine, anchors) is None:
                unknown.append(goal.code)
    return missed, unknown


def _short(label):
    return SHORT.get(label, label)


def _applies(goal, cell):
    return getattr(goal, "applies", lambda c: True)(cell)


def goals_table(title, key_columns, cells, results, msgsrv_name, shown, goals, ratio_goals):
    """One row per cell: ``shown`` figures of every server, ``ratio_goals`` ratios, misses.

    ``shown`` is a list of (header, metric, formatter, target names): the
    cell lists the targets' figures joined by " / " (n/a where missing).
    """
    headers = [h for h, _ in key_columns]
    labels = {TARGETS[n].label for _, _, _, names in shown for n in names}
    headers += ["%s: %s" % (h, " / ".join(_short(TARGETS[n].label) for n in names))
                for h, _, _, names in shown]
    headers += [goal.code for goal in ratio_goals] + ["missed"]
    table = report.Table(title, headers, [goal.describe() for goal in goals] + [
        "missed: goals this cell does not meet; (?) a goal that could not be judged "
        "(a figure is missing).",
        "Servers: " + ", ".join("%s = %s" % (SHORT[label], label)
                                for label in sorted(labels) if label in SHORT) + "."])
    for cell in cells:
        mine = results.get(msgsrv_name, {}).get(cell, {})
        anchors = {name: results.get(name, {}).get(cell, {}) for name in results}
        row = [text(cell) for _, text in key_columns]
        for _, metric, fmt, names in shown:
            row.append(" / ".join(fmt(results.get(n, {}).get(cell, {}).get(metric))
                                  for n in names))
        row += [report.fmt_ratio(goal.value(mine, anchors)) for goal in ratio_goals]
        missed, unknown = verdicts(goals, cell, mine, anchors)
        row.append(" ".join(missed + ["(%s?)" % code for code in unknown]) or "none")
        table.add(*row)
    return table
