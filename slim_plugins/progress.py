"""One-line progress with ETA, for anything that runs longer than a few seconds."""
import sys
import time


def format_seconds(seconds):
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """``Progress(total, "sensitivity")``; ``step(note)`` after each unit of work.

    The ETA uses the mean time per unit so far. ``total`` stays what it was at the start: work
    that turns out unnecessary is counted as skipped (``skip``) and named in every line, so a
    reader never sees ``4/21`` followed by ``5/13``.
    """

    def __init__(self, total, label, stream=None, enabled=True, prefix="[slim-plugins]", skipped_by="the loss cap"):
        self.total = max(0, int(total))
        self.label = label
        self.done = 0
        self.skipped = 0
        self.skipped_by = skipped_by
        self.start = time.perf_counter()
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.prefix = prefix

    def eta(self):
        if not self.done:
            return None
        per = (time.perf_counter() - self.start) / self.done
        return per * max(0, self.total - self.done - self.skipped)

    def step(self, note="", n=1):
        self.done += n
        self.total = max(self.total, self.done + self.skipped)
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        eta = self.eta()
        pct = 100.0 * (self.done + self.skipped) / self.total if self.total else 100.0
        skipped = f", {self.skipped} skipped by {self.skipped_by}" if self.skipped else ""
        eta_text = format_seconds(eta) if eta is not None else "?"
        self.stream.write(
            f"{self.prefix} {self.label} {self.done}/{self.total} ({pct:.0f}%{skipped}) "
            f"elapsed {format_seconds(elapsed)} ETA {eta_text}  {note}\n")
        self.stream.flush()

    def skip(self, n=1):
        """Work that turned out unnecessary (e.g. ratios past the loss cap): counted, the total kept."""
        self.skipped = min(self.skipped + max(0, n), max(0, self.total - self.done))
