"""The selected job's throughput over time, and its device's read and write rates.

All rates are binary units (MiB/s, axis labels ``600M`` = 600 MiB/s), the same units
``tui.format.human_size`` shows sizes in, so a size on screen divided by a rate on
screen gives a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, islice
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget

from core.jobs import Sample

MAX_SAMPLES = 4096
"""At most this many of the newest samples are drawn: about 34 minutes at two a second.

Bucketing is linear in the samples, so the bound keeps a repaint far below a frame
however long the job runs; older samples are dropped, and the time axis shows the
elapsed time of the oldest sample kept.
"""

BARS = " ▁▂▃▄▅▆▇█"
"""A cell filled to 0…8 eighths: eight levels per line of the chart."""

READ_MARK = "r"
"""Marks the device's read rate in a column (the header spells out ``dev r``)."""
WRITE_MARK = "w"
"""Marks the device's write rate in a column (the header spells out ``w``)."""
BOTH_MARK = "*"
"""Marks a cell where the device's read and write rates fall together."""

MIN_WIDTH = 20
"""Narrower than this, the widget shows the one-line summary instead of a chart."""
MIN_HEIGHT = 4
"""Shorter than this (header, two chart lines, time axis), it shows the summary too."""

_TREND_WINDOW = 4
"""The trend arrow compares the newest rate with the mean of this many before it
(two seconds at two samples a second): one noisy sample should not flip the arrow."""
_TREND_TOLERANCE = 0.05
"""Within 5% of that mean the rate counts as steady."""

_HEADER_UNITS = (("MiB/s", 1 << 20), ("GiB/s", 1 << 30), ("TiB/s", 1 << 40), ("PiB/s", 1 << 50))
_SCALE_UNITS = (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40), ("P", 1 << 50))
_GUTTER = 6
"""Cells left of the chart for the scale: a label of up to five and the axis line."""


def _rate(value: float) -> float:
    """Return ``value`` if it is a finite, non-negative rate, else 0.

    A clock step or a zero interval upstream can produce ``inf``, ``nan`` or a
    negative rate; one such sample must not blank the scale for the whole job.
    """
    return value if 0.0 <= value < math.inf else 0.0


def axis_scale(peak: float) -> tuple[float, str, str]:
    """Return the chart's top in bytes/s and the labels for the top and for half of it.

    The top is the tallest value drawn, so the top label names the tallest column and
    sits on the line where that column ends: no label names a rate the plot does not
    reach. Labels are short (``520M``, ``1.7G``, ``9.5M``); an idle job gets a 1K scale
    instead of a division by zero.
    """
    top = max(peak, 1024.0)
    return top, _short_rate(top), _short_rate(top / 2)


def _short_rate(rate: float) -> str:
    """Return ``rate`` (bytes/s) in at most five characters: ``520M``, ``1.7G``, ``0.5K``."""
    suffix, unit = next(
        (pair for pair in reversed(_SCALE_UNITS) if rate >= pair[1]), _SCALE_UNITS[0]
    )
    value = rate / unit
    if value < 10:
        text = f"{value:.1f}"
        return f"{text.removesuffix('.0')}{suffix}"
    return f"{value:.0f}{suffix}"


def format_elapsed(seconds: float) -> str:
    """Return an elapsed time as ``45s``, ``2m30s`` or ``1h05m``."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


@dataclass(frozen=True)
class _Column:
    """One drawn column: the mean rates of its samples and the time of its last one."""

    rate: float
    read: float
    write: float
    t: float


_Part = tuple[str, str]
"""A piece of a line: its text and the name of its style (see ``_styles``)."""


class ThroughputGraph(Widget):
    """The selected job's MiB/s as a column chart, with the device's read and write rates.

    The header spells out the numbers (``job ▲ 412.3 MiB/s  peak 520.1  dev r 410.2 w
    0.0 MiB/s``, the job's rate being the one the job table shows; ``job avg 39.0 MiB/s
    peak 52.1`` once it ended); below it the job's rate is a column chart in eighth
    blocks, newest at the right, scaled so that the tallest column reaches the top line
    and the top label names it, and the device's read and write rates are marked ``r``
    and ``w`` (``*`` where both fall in one cell) in the columns where they differ from
    the job's bar. Narrower than 20 cells or shorter than 4 lines, only the header line
    is shown.

    Call ``set_samples`` from the UI thread (a message handler), never from a worker.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "throughput--job",
        "throughput--read",
        "throughput--write",
        "throughput--axis",
    }
    """
    | Class | Description |
    | :- | :- |
    | `throughput--job` | The job's bars and its current rate. |
    | `throughput--read` | The device's read marks and rate. |
    | `throughput--write` | The device's write marks and rate. |
    | `throughput--axis` | Scale, time axis, labels and messages. |
    """

    DEFAULT_CSS = """
    ThroughputGraph {
        height: 10;
    }
    ThroughputGraph > .throughput--job {
        color: $primary;
    }
    ThroughputGraph > .throughput--read {
        color: $success;
    }
    ThroughputGraph > .throughput--write {
        color: $warning;
    }
    ThroughputGraph > .throughput--axis {
        color: $text-muted;
    }
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        disabled: bool = False,
    ) -> None:
        """Create the graph showing ``no job selected`` until samples arrive."""
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._message: str | None = "no job selected"
        self._key: tuple[int, Sample | None, float | None, bool] | None = None
        self._rate: float | None = None
        self._ended = False
        self._times: list[float] = []
        self._rates: list[float] = []
        self._reads: list[float] = []
        self._writes: list[float] = []
        # Prefix sums turn each bucket's mean into one subtraction, so a resize or a
        # new sample costs one pass over the samples here and O(columns) at paint time.
        self._rate_sums: list[float] = [0.0]
        self._read_sums: list[float] = [0.0]
        self._write_sums: list[float] = [0.0]
        self._strips: list[Strip] | None = None
        self._strips_size: tuple[int, int] = (0, 0)

    def set_samples(
        self, samples: Sequence[Sample], rate: float | None = None, *, ended: bool = False
    ) -> None:
        """Show these samples (oldest first), replacing the previous ones.

        Args:
            rate: the job's rate for the headline, as the job table shows it (bytes/s
                over the last seconds while it runs; its average once ``ended``). None:
                the newest sample's rate. One half-second sample of a job that stores
                4 MiB chunks is 0 or 8 MiB/s, never the 4 MiB/s it runs at.
            ended: the job has ended: the headline says ``avg`` and leaves out the
                device's rates (what the device did after the job says nothing of it).

        Repaints only when the count, the newest sample or the headline changed, so the
        caller may pass the job's whole history on every tick. Only the newest
        ``MAX_SAMPLES`` are drawn.
        """
        count = len(samples)
        key = (count, samples[-1] if count else None, rate, ended)
        if key == self._key:  # ``clear`` resets the key, so its message never sticks
            return
        self._key = key
        self._rate = None if rate is None else _rate(rate)
        self._ended = ended
        start = max(0, count - MAX_SAMPLES)
        if isinstance(samples, list | tuple):
            kept: Sequence[Sample] = samples[start:]
        else:
            # A deque (the natural bounded history) cannot be sliced.
            kept = list(islice(samples, start, None))
        self._times = [s.t for s in kept]
        self._rates = [_rate(s.rate) for s in kept]
        self._reads = [_rate(s.dev_read) for s in kept]
        self._writes = [_rate(s.dev_write) for s in kept]
        self._rate_sums = list(accumulate(self._rates, initial=0.0))
        self._read_sums = list(accumulate(self._reads, initial=0.0))
        self._write_sums = list(accumulate(self._writes, initial=0.0))
        self._message = None if kept else "no samples yet"
        self._invalidate()

    def clear(self, message: str = "no job selected") -> None:
        """Drop the samples and show ``message`` in their place."""
        if self._message == message:
            return
        self._message = message
        self._key = None
        self._times, self._rates, self._reads, self._writes = [], [], [], []
        self._rate_sums = self._read_sums = self._write_sums = [0.0]
        self._invalidate()

    def notify_style_update(self) -> None:
        """Drop the painted lines: a theme change alters every colour in them."""
        super().notify_style_update()
        self._strips = None

    def render_line(self, y: int) -> Strip:
        """Return line ``y`` of the graph, painting all lines once per change or resize."""
        width, height = self.size
        if self._strips is None or self._strips_size != (width, height):
            self._strips = self._paint(width, height)
            self._strips_size = (width, height)
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(width, self.rich_style)

    def _invalidate(self) -> None:
        """Drop the painted lines and ask Textual for one repaint."""
        self._strips = None
        self.refresh()

    # --- painting -------------------------------------------------------------------

    def _styles(self) -> dict[str, Style]:
        """Return the Rich style for each part name used by the painters."""
        base = self.rich_style
        job = self.get_component_rich_style("throughput--job")
        read = self.get_component_rich_style("throughput--read")
        write = self.get_component_rich_style("throughput--write")
        axis = self.get_component_rich_style("throughput--axis")
        # A mark inside a bar keeps the bar's colour behind it, so the bar stays whole.
        bar_bg = Style(bgcolor=job.color)
        return {
            "": base,
            "axis": axis,
            "job": job,
            "job-bold": job + Style(bold=True),
            "read": read,
            "write": write,
            "both": base + Style(bold=True),
            "read-in": read + bar_bg,
            "write-in": write + bar_bg,
            "both-in": base + bar_bg + Style(bold=True),
        }

    def _paint(self, width: int, height: int) -> list[Strip]:
        """Return every line of the widget at this size."""
        styles = self._styles()
        blank = Strip.blank(width, styles[""])
        if width <= 0 or height <= 0:
            return []
        if self._message is not None:
            first = _strip([(self._message, "axis")], width, styles)
            return [first] + [blank] * (height - 1)
        header = _strip(self._header(width), width, styles)
        if width < MIN_WIDTH or height < MIN_HEIGHT:
            return [header] + [blank] * (height - 1)
        return [header, *self._chart(width, height - 1, styles)]

    def _header(self, width: int) -> list[_Part]:
        """Return the longest header that fits ``width`` (cropped if none does)."""
        rates = self._rates
        current = rates[-1] if self._rate is None else self._rate
        peak = max(max(rates), current)
        earlier = rates[-1 - _TREND_WINDOW : -1]
        mean = sum(earlier) / len(earlier) if earlier else current
        if self._ended:
            arrow = "avg"  # a word, not a trend: the job's whole run
        elif current > mean * (1 + _TREND_TOLERANCE):
            arrow = "▲"
        elif current < mean * (1 - _TREND_TOLERANCE):
            arrow = "▼"
        else:
            arrow = "="
        unit_name, unit = next(
            ((name, size) for name, size in _HEADER_UNITS if peak < 10_000 * size),
            _HEADER_UNITS[-1],
        )
        now, top = f"{current / unit:.1f}", f"{peak / unit:.1f}"
        read, write = f"{self._reads[-1] / unit:.1f}", f"{self._writes[-1] / unit:.1f}"
        job: list[_Part] = [("job ", "axis"), (f"{arrow} {now}", "job-bold")]
        dev: list[_Part] = [("r ", "read"), (read, "read"), (" w ", "write"), (write, "write")]
        units: _Part = (f" {unit_name}", "axis")
        bare: list[_Part] = [(f"{arrow} {now}", "job-bold"), (" peak ", "axis"), (top, "")]
        candidates: list[list[_Part]]
        if self._ended:
            candidates = [
                [*job, units, ("  peak ", "axis"), (top, "")],
                [*bare, units],
                [*job, units],
                [(f"{arrow} {now}", "job-bold"), units],
            ]
        else:
            candidates = [
                [*job, units, ("  peak ", "axis"), (top, ""), ("  dev ", "axis"), *dev, units],
                [*job, ("  peak ", "axis"), (top, ""), ("  ", ""), *dev, units],
                [*bare, (" ", ""), *dev, units],
                [*job, units],
                [(f"{arrow} {now}", "job-bold"), units],
            ]
        for parts in candidates:
            if sum(len(text) for text, _ in parts) <= width:
                return parts
        return candidates[-1]

    def _columns(self, count: int) -> list[_Column]:
        """Return at most ``count`` columns covering every sample kept, oldest first.

        With more samples than columns, each column is the mean of an equal run of
        samples rather than the last ``count`` samples: the whole job stays in view (a
        slow start or a stall an hour ago is still visible), and a mean rate over a span
        is exactly the bytes moved in it, so the chart's area still means data.
        Spikes shorter than a column are flattened; the header's ``peak`` keeps them.
        """
        total = len(self._rates)
        if total <= count:
            return [
                _Column(rate, read, write, t)
                for rate, read, write, t in zip(
                    self._rates, self._reads, self._writes, self._times, strict=True
                )
            ]
        columns = []
        for index in range(count):
            low, high = index * total // count, (index + 1) * total // count
            size = high - low
            columns.append(
                _Column(
                    (self._rate_sums[high] - self._rate_sums[low]) / size,
                    (self._read_sums[high] - self._read_sums[low]) / size,
                    (self._write_sums[high] - self._write_sums[low]) / size,
                    self._times[high - 1],
                )
            )
        return columns

    def _chart(self, width: int, height: int, styles: dict[str, Style]) -> list[Strip]:
        """Return the chart lines, top first, then the time axis: ``height`` lines."""
        rows = height - 1
        # A fixed gutter fits every label up to "1010M" or "9.5G", so the columns do not
        # shift sideways when the scale changes; only absurd rates (exbibytes) widen it.
        gutter = _GUTTER
        columns = self._columns(width - gutter)
        top, top_label, half_label = axis_scale(max(max(c.rate, c.read, c.write) for c in columns))
        if len(top_label) >= gutter:
            gutter = len(top_label) + 1
            columns = self._columns(width - gutter)
        plot_width = width - gutter
        # Half the scale falls on a line boundary only with an even number of lines.
        show_half = rows >= 4 and rows % 2 == 0
        offset = plot_width - len(columns)  # fewer samples than cells: keep newest at right

        eighths_per_rate = rows * 8 / top
        grid = [[(" ", "")] * plot_width for _ in range(rows)]
        for x, column in enumerate(columns, start=offset):
            bar = _eighths(column.rate, eighths_per_rate, rows)
            for row in range(min(rows, (bar + 7) // 8)):
                grid[row][x] = (BARS[min(8, bar - row * 8)], "job")
            bar_top = (bar - 1) // 8 if bar else -1
            read_row = _mark_row(column.read, eighths_per_rate, rows)
            write_row = _mark_row(column.write, eighths_per_rate, rows)
            marks = {}
            # A mark on the bar's top cell adds nothing: the device moves what the job does.
            if read_row is not None and read_row != bar_top:
                marks[read_row] = (READ_MARK, "read")
            if write_row is not None and write_row != bar_top:
                marks[write_row] = (
                    (BOTH_MARK, "both") if write_row in marks else (WRITE_MARK, "write")
                )
            for row, (char, style) in marks.items():
                grid[row][x] = (char, f"{style}-in" if row < bar_top else style)

        labels = {rows - 1: top_label, 0: "0"}
        if show_half:
            labels[rows // 2 - 1] = half_label
        lines = []
        for row in reversed(range(rows)):
            label = labels.get(row)
            axis = f"{label:>{gutter - 1}}┤" if label else " " * (gutter - 1) + "│"
            lines.append(_strip([(axis, "axis"), *grid[row]], width, styles))
        time_axis = " " * (gutter - 1) + "└" + self._time_axis(columns, offset, plot_width)
        lines.append(_strip([(time_axis, "axis")], width, styles))
        return lines

    def _time_axis(self, columns: list[_Column], offset: int, plot_width: int) -> str:
        """Return the time axis under the columns: start, middle and newest elapsed time."""
        cells = ["─"] * plot_width
        end = format_elapsed(columns[-1].t)
        start = format_elapsed(self._times[0])
        middle_x = (offset + plot_width - 1) // 2
        middle = format_elapsed(columns[middle_x - offset].t)
        end_at = plot_width - len(end)
        placed = [(end_at, end)]
        # A label goes only where two cells separate it from its neighbours.
        if offset + len(start) + 2 <= end_at:
            placed.append((offset, start))
            middle_at = middle_x - len(middle) // 2
            if offset + len(start) + 2 <= middle_at and middle_at + len(middle) + 2 <= end_at:
                placed.append((middle_at, middle))
        for x, text in placed:
            cells[max(0, x) : max(0, x) + len(text)] = text
        return "".join(cells[:plot_width])


def _eighths(rate: float, eighths_per_rate: float, rows: int) -> int:
    """Return how many eighth-cells of a column ``rate`` fills (at least one if not 0)."""
    if rate <= 0:
        return 0
    # A trickle still shows as ▁, so a slow job never looks like a stalled one.
    return min(rows * 8, max(1, round(rate * eighths_per_rate)))


def _mark_row(rate: float, eighths_per_rate: float, rows: int) -> int | None:
    """Return the chart line (0 = bottom) where a device rate is marked, or None.

    Below half a cell there is no mark: background I/O of a few MiB/s would
    otherwise draw a row of marks along the bottom of every bar.
    """
    if rate * eighths_per_rate < 4:
        return None
    filled = _eighths(rate, eighths_per_rate, rows)
    return (filled - 1) // 8 if filled else None


def _strip(parts: Iterable[_Part], width: int, styles: dict[str, Style]) -> Strip:
    """Return one line of exactly ``width`` cells, with runs of one style in one segment."""
    segments: list[Segment] = []
    run: list[str] = []
    run_style: str | None = None
    for text, style in parts:
        if style != run_style and run:
            segments.append(Segment("".join(run), styles[run_style or ""]))
            run = []
        run.append(text)
        run_style = style
    if run:
        segments.append(Segment("".join(run), styles[run_style or ""]))
    return Strip(segments).crop_extend(0, width, styles[""])
