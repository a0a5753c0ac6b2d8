"""Plain-text tables that are also valid reStructuredText "simple tables".

A simple table treats a blank first cell as a continuation line, so empty
cells are rendered as "-"; "n/a" marks a value that could not be measured.
"""

import re

MISSING = "n/a"
_NUMERIC = re.compile(r"^(-?[0-9.]+(/[0-9.]+)?|n/a|-)$")


class Table:
    """A titled table of string cells, rendered with ``====`` rule lines.

    ``columns`` is a list of header strings. Columns whose cells are all
    numbers (or "n/a", "-", "a/b" pairs) are right-aligned, others left-aligned.
    ``add`` raises ValueError when a row has the wrong number of cells.
    """

    def __init__(self, title, columns, notes=()):
        self.title = title
        self.columns = list(columns)
        self.notes = list(notes)
        self.rows = []

    def add(self, *cells):
        """Append one row; each cell is turned into a string ("" and None become "-")."""
        if len(cells) != len(self.columns):
            raise ValueError("row has %d cells, table %r has %d columns"
                             % (len(cells), self.title, len(self.columns)))
        self.rows.append([_cell_text(cell) for cell in cells])

    def render(self):
        """Return the title, the table and its notes as one string ending in a newline."""
        widths = [max(len(row[i]) for row in [self.columns] + self.rows)
                  for i in range(len(self.columns))]
        right = [all(_NUMERIC.match(row[i]) for row in self.rows)
                 for i in range(len(self.columns))]
        rule = "  ".join("=" * width for width in widths)
        lines = [self.title, "-" * len(self.title), "", rule,
                 _line(self.columns, widths, [False] * len(widths)), rule]
        lines.extend(_line(row, widths, right) for row in self.rows)
        lines.append(rule)
        if self.notes:
            lines.append("")
            lines.extend(self.notes)
        return "\n".join(lines) + "\n"


def _cell_text(cell):
    if cell is None or cell == "":
        return "-"
    return str(cell)


def _line(cells, widths, right):
    parts = [cell.rjust(width) if align_right else cell.ljust(width)
             for cell, width, align_right in zip(cells, widths, right)]
    return "  ".join(parts).rstrip()


def fmt_int(value):
    """Format a count or rate as a whole number, or "n/a"."""
    return MISSING if value is None else "%d" % round(value)


def fmt_ms(seconds):
    """Format a duration given in seconds as milliseconds, or "n/a"."""
    if seconds is None:
        return MISSING
    ms = seconds * 1000.0
    return "%.3f" % ms if ms < 10 else "%.1f" % ms


def fmt_ratio(value):
    """Format a ratio with two decimals, or "n/a"."""
    return MISSING if value is None else "%.2f" % value


def fmt_pct(value):
    """Format a percentage (already scaled to 0..100 per core) as a whole number, or "n/a"."""
    return MISSING if value is None else "%.0f" % value


def fmt_size(nbytes):
    """Format a payload size: 64 B, 1 KiB, 64 KiB."""
    if nbytes >= 1024 and nbytes % 1024 == 0:
        return "%d KiB" % (nbytes // 1024)
    return "%d B" % nbytes


def fmt_us(value):
    """Format microseconds with one decimal, or "n/a"."""
    return MISSING if value is None else "%.1f" % value
