"""Plain-text tables for terminals."""


def table(rows, headers):
    """A plain-text table; ``rows`` are lists of cells."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if n and _numeric(c) else c.ljust(w) for c, w in zip(row, widths)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(text):
    try:
        float(text.rstrip("%").replace(",", ""))
        return True
    except ValueError:
        return False
