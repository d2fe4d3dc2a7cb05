"""The activity chart's geometry: two bars per bucket (submitted, ended) in an SVG viewBox.

Pure arithmetic, so the picture is tested without a browser; the template only draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from server.logic.monitor import Bucket

WIDTH = 720
HEIGHT = 180
MARGIN_LEFT = 36
MARGIN_BOTTOM = 22
MARGIN_TOP = 8


@dataclass(frozen=True)
class Bar:
    kind: str  # "submitted" or "ended"
    count: int
    start: datetime
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    ticks: list[Tick]
    peak: int
    width: int = WIDTH
    height: int = HEIGHT
    baseline: float = HEIGHT - MARGIN_BOTTOM
    left: float = MARGIN_LEFT

    @property
    def total_submitted(self) -> int:
        return sum(b.count for b in self.bars if b.kind == "submitted")

    @property
    def total_ended(self) -> int:
        return sum(b.count for b in self.bars if b.kind == "ended")


def layout(buckets: list[Bucket], *, label_every: int = 4, hourly: bool = True) -> Chart:
    """Bars scaled to the busiest bucket (at least 1, so an idle period draws flat, not NaN)."""
    peak = max([1, *(b.submitted for b in buckets), *(b.ended for b in buckets)])
    plot_width = WIDTH - MARGIN_LEFT - 4
    plot_height = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    slot = plot_width / max(len(buckets), 1)
    bar_width = max(slot / 2 - 1, 1)
    bars: list[Bar] = []
    ticks: list[Tick] = []
    for i, bucket in enumerate(buckets):
        x = MARGIN_LEFT + i * slot
        for offset, kind, count in ((0, "submitted", bucket.submitted), (1, "ended", bucket.ended)):
            height = plot_height * count / peak
            bars.append(
                Bar(
                    kind=kind,
                    count=count,
                    start=bucket.start,
                    x=round(x + offset * (bar_width + 1), 2),
                    y=round(HEIGHT - MARGIN_BOTTOM - height, 2),
                    width=round(bar_width, 2),
                    height=round(height, 2),
                )
            )
        if i % label_every == 0:
            label = bucket.start.strftime("%H:%M" if hourly else "%d %b")
            ticks.append(Tick(x=round(x, 2), label=label))
    return Chart(bars=bars, ticks=ticks, peak=peak)
