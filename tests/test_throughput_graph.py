"""The throughput graph mounted in a real Textual app: header words, columns, axes, repaints."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from textual.app import App, ComposeResult

from core.jobs import Sample
from tui.widgets.throughput import BARS, MAX_SAMPLES, ThroughputGraph, axis_scale

MiB = 1 << 20


class CountingGraph(ThroughputGraph):
    """The graph, counting the repaints it asks for."""

    def __init__(self) -> None:
        super().__init__(id="graph")
        self.refresh_calls = 0

    def refresh(self, *args: Any, **kwargs: Any) -> CountingGraph:
        self.refresh_calls += 1
        return super().refresh(*args, **kwargs)


class GraphApp(App[None]):
    """An app holding nothing but the graph, sized by the test."""

    def __init__(self, graph: ThroughputGraph, width: int, height: int) -> None:
        super().__init__()
        self.graph = graph
        graph.styles.width = width
        graph.styles.height = height

    def compose(self) -> ComposeResult:
        yield self.graph


def lines_of(graph: ThroughputGraph) -> list[str]:
    """Return the graph's rendered lines as plain text."""
    return [graph.render_line(y).text for y in range(graph.size.height)]


def run_graph(
    feed: Callable[[CountingGraph], None], width: int = 80, height: int = 12
) -> list[str]:
    """Mount a graph of this size in an 80×12 app, feed it, and return its rendered lines."""

    async def scenario() -> list[str]:
        graph = CountingGraph()
        app = GraphApp(graph, width, height)
        async with app.run_test(size=(80, 12)) as pilot:
            feed(graph)
            await pilot.pause()
            assert graph.size == (width, height)
            return lines_of(graph)

    return asyncio.run(scenario())


def samples_at(rates_mib: Sequence[float], read_same: bool = True) -> list[Sample]:
    """Return one sample per rate (MiB/s), half a second apart, device read = job rate."""
    return [
        Sample(0.5 * (i + 1), r * MiB, r * MiB if read_same else 0.0, 0.0)
        for i, r in enumerate(rates_mib)
    ]


def column_heights(lines: list[str]) -> dict[int, int]:
    """Return each chart column's filled eighths, keyed by x, read off the block glyphs."""
    chart = lines[1:-1]
    heights: dict[int, int] = {}
    for line in chart:
        for x, char in enumerate(line):
            if char in BARS[1:]:
                heights[x] = heights.get(x, 0) + BARS.index(char)
    return heights


def test_header_states_current_and_peak_rates_in_words() -> None:
    lines = run_graph(lambda g: g.set_samples(samples_at([100, 200, 520.1, 300, 412.3])))
    header = lines[0]
    assert header.startswith("job ▲ 412.3 MiB/s  peak 520.1  dev r 412.3 w 0.0 MiB/s")


def test_falling_rate_gets_a_down_arrow_and_steady_an_equals() -> None:
    falling = run_graph(lambda g: g.set_samples(samples_at([400, 400, 400, 400, 100])))
    steady = run_graph(lambda g: g.set_samples(samples_at([400, 400, 400, 400, 401])))
    assert falling[0].startswith("job ▼ 100.0 MiB/s")
    assert steady[0].startswith("job = 401.0 MiB/s")


def test_tallest_column_sits_where_the_peak_sample_is() -> None:
    rates = [100, 200, 520, 300, 150]
    lines = run_graph(lambda g: g.set_samples(samples_at(rates)))
    heights = column_heights(lines)
    # The newest sample is the rightmost cell; the peak is two samples before it.
    assert max(heights, key=heights.__getitem__) == 80 - 1 - 2
    assert sorted(heights) == list(range(80 - len(rates), 80))
    # The peak is the top of the scale: its column fills all 10 lines (80 eighths).
    assert heights[77] == 10 * 8
    assert heights[78] == round(300 / 520 * 10 * 8)


def test_axis_labels_lie_within_the_plot_the_top_one_at_the_tallest_column() -> None:
    """The top label is the tallest column's value, on the line where that column ends."""
    lines = run_graph(lambda g: g.set_samples(samples_at([100, 520])))
    chart = lines[1:-1]
    assert chart[0].startswith(" 520M┤")
    assert chart[0][79] == "█"  # the 520 MiB/s column reaches the top line, and fills it
    assert chart[-1].startswith("    0┤")
    # 10 chart lines: half the scale is the top edge of the fifth line from the bottom.
    assert chart[-5].startswith(" 260M┤")


def test_no_axis_label_says_more_than_the_plot_shows() -> None:
    """Whatever the rates, every label is at most the tallest drawn value (here 1.7 GiB/s)."""
    lines = run_graph(lambda g: g.set_samples(samples_at([0, 437.4, 1736.7])), height=6)
    chart = lines[1:-1]
    labels = [line[:5].strip() for line in chart if "┤" in line[:6]]
    assert labels == ["1.7G", "868M", "0"]
    assert chart[0][79] == "█"


def test_headline_is_the_rate_the_caller_gives_not_the_last_sample() -> None:
    """A job's rate over seconds (as the job table shows it) heads the graph, not one sample."""
    chunky = samples_at([8, 0, 8, 0, 8, 0])  # 4 MiB chunks, sampled twice a second
    live = run_graph(lambda g: g.set_samples(chunky, rate=4 * MiB))
    assert live[0].split()[:3] == ["job", "=", "4.0"], live[0]  # steady at 4, as it runs
    assert "peak 8.0" in live[0]


def test_finished_job_headline_is_its_average_without_device_rates() -> None:
    """Once the job ended its headline is its average; the device's rates say nothing then."""
    ended = run_graph(lambda g: g.set_samples(samples_at([8, 0, 8, 0]), rate=3.5 * MiB, ended=True))
    assert ended[0].startswith("job avg 3.5 MiB/s  peak 8.0"), ended[0]
    assert "dev" not in ended[0] and " r " not in ended[0]


def test_more_samples_than_columns_shows_the_whole_job_averaged() -> None:
    rates = [100.0] * 1000
    rates[700] = 5000.0  # one spike: its column's mean stands out, the header keeps the peak
    lines = run_graph(lambda g: g.set_samples(samples_at(rates)))
    time_axis = lines[-1]
    plot_start = time_axis.index("└") + 1
    columns = 80 - plot_start
    assert time_axis[plot_start:].startswith("0s")
    assert time_axis.rstrip().endswith("8m20s")  # the 1000th sample, at 500 s
    spike_column = next(
        c for c in range(columns) if c * 1000 // columns <= 700 < (c + 1) * 1000 // columns
    )
    heights = column_heights(lines)
    assert len(heights) == columns
    assert max(heights, key=heights.__getitem__) == plot_start + spike_column
    assert "peak 5000.0" in lines[0]


def test_device_rates_are_marked_only_where_they_differ_from_the_job() -> None:
    samples = [Sample(0.5 * (i + 1), 400 * MiB, 400 * MiB, 0.0) for i in range(10)]
    samples[-1] = Sample(5.0, 400 * MiB, 400 * MiB, 200 * MiB)
    lines = run_graph(lambda g: g.set_samples(samples))
    chart = lines[1:-1]
    assert "r" not in "".join(line[6:] for line in chart)  # the device reads what the job does
    write_marks = [(y, x) for y, line in enumerate(chart) for x, c in enumerate(line) if c == "w"]
    assert [x for _, x in write_marks] == [79]  # only the newest column, where writes began
    assert "w 200.0 MiB/s" in lines[0]


def test_no_samples_one_sample_and_all_zero_rates_render() -> None:
    empty = run_graph(lambda g: g.set_samples([]))
    assert empty[0].strip() == "no samples yet"
    assert all(not line.strip() for line in empty[1:])

    one = run_graph(lambda g: g.set_samples(samples_at([42.0])))
    assert one[0].startswith("job = 42.0 MiB/s  peak 42.0")
    assert list(column_heights(one)) == [79]
    assert one[-1].rstrip().endswith("└" + "─" * 72 + "0s")

    zeros = run_graph(lambda g: g.set_samples(samples_at([0.0] * 50)))
    assert zeros[0].startswith("job = 0.0 MiB/s  peak 0.0  dev r 0.0 w 0.0 MiB/s")
    assert column_heights(zeros) == {}


def test_cleared_graph_shows_its_message() -> None:
    def feed(graph: CountingGraph) -> None:
        graph.set_samples(samples_at([100.0]))
        graph.clear("job finished")

    lines = run_graph(feed)
    assert lines[0].strip() == "job finished"
    assert run_graph(lambda g: None)[0].strip() == "no job selected"


def test_huge_and_invalid_rates_keep_the_chart_in_bounds() -> None:
    huge = 3 * (1 << 50)  # 3 PiB/s, as a sparse-skip interval might report
    samples = [Sample(0.5, 100 * MiB, 0, 0), Sample(1.0, huge, 0, 0)]
    samples.append(Sample(1.5, float("inf"), float("nan"), -5.0))
    lines = run_graph(lambda g: g.set_samples(samples))
    # Below 10 000 of a unit the header keeps it: 3 PiB/s reads as 3072.0 TiB/s.
    assert lines[0].startswith("job ▼ 0.0 TiB/s  peak 3072.0  dev r 0.0 w 0.0 TiB/s")
    assert lines[1].startswith("   3P┤")
    assert all(len(line) == 80 for line in lines)
    assert max(column_heights(lines).values()) == 10 * 8


def test_narrow_or_short_widget_shows_a_one_line_summary() -> None:
    rates = [100, 200, 412.3]
    narrow = run_graph(lambda g: g.set_samples(samples_at(rates)), width=15, height=12)
    assert narrow[0] == "▲ 412.3 MiB/s  "
    assert all(not line.strip() for line in narrow[1:])

    short = run_graph(lambda g: g.set_samples(samples_at(rates)), width=80, height=3)
    assert short[0].startswith("job ▲ 412.3 MiB/s  peak 412.3")
    assert all(not line.strip() for line in short[1:])


def test_same_samples_do_not_repaint_and_a_new_one_does() -> None:
    async def scenario() -> tuple[int, int, int]:
        graph = CountingGraph()
        async with GraphApp(graph, 80, 12).run_test(size=(80, 12)) as pilot:
            history = samples_at([100, 200, 300])
            graph.set_samples(history)
            await pilot.pause()
            graph.refresh_calls = 0
            graph.set_samples(list(history))  # an equal copy, as a job's snapshot would be
            same = graph.refresh_calls
            graph.set_samples([*history, Sample(2.0, 310 * MiB, 0.0, 0.0)])
            new = graph.refresh_calls
            graph.clear()
            graph.clear()
            cleared = graph.refresh_calls
            graph.set_samples([])
            graph.set_samples([])  # a job with no sample yet, ticking
            waiting = graph.refresh_calls
            return same, new, cleared, waiting

    assert asyncio.run(scenario()) == (0, 1, 2, 3)


def test_a_bounded_deque_is_drawn_from_its_newest_samples() -> None:
    history: deque[Sample] = deque(maxlen=MAX_SAMPLES + 500)
    history.extend(samples_at([100.0] * (MAX_SAMPLES + 500)))
    lines = run_graph(lambda g: g.set_samples(history))
    time_axis = lines[-1]
    # The oldest of the newest MAX_SAMPLES is sample 501, at 250.5 s.
    assert time_axis[time_axis.index("└") + 1 :].startswith("4m10s")


def test_axis_scale_tops_at_the_peak_with_short_labels() -> None:
    assert axis_scale(0.0) == (1024.0, "1K", "0.5K")
    assert axis_scale(520 * MiB) == (520 * MiB, "520M", "260M")
    assert axis_scale(9.5 * MiB)[1:] == ("9.5M", "4.8M")
    assert axis_scale(1010 * MiB)[1:] == ("1010M", "505M")
    assert axis_scale(1.2 * (1 << 30))[1:] == ("1.2G", "614M")
    for peak in (1.0, 1023.0, 5e5, 3 * (1 << 50)):
        assert all(len(label) <= 5 for label in axis_scale(peak)[1:])
