"""The shared progress lines: silent for short phases, count/rate/ETA at most every `every_s` for long ones."""

from __future__ import annotations

from genjax import progress


def test_lines_come_at_most_every_interval_with_count_rate_and_eta():
    now, lines = [0.0], []
    clock = lambda: now[0]
    items = []
    for item in progress.track(list(range(10)), "evaluating validation", every_s=10.0, clock=clock, emit=lines.append):
        items.append(item)
        now[0] += 4.0  # each batch takes 4 s: a line after batches 3, 6 and 9 (12, 24, 36 s)
    assert items == list(range(10))
    assert lines[0] == "evaluating validation: 3/10 batches  0.2 batches/s  ETA 28 s"
    assert len(lines) == 3


def test_a_short_phase_prints_nothing_and_an_unsized_one_has_no_eta():
    lines = []
    list(progress.track(iter(range(5)), "fast", clock=lambda: 0.0, emit=lines.append))
    assert lines == []
    now = [0.0]

    def clock():
        now[0] += 6.0
        return now[0]

    list(progress.track((i for i in range(3)), "tokenizer", unit="texts", every_s=10.0, clock=clock, emit=lines.append))
    assert lines and "ETA" not in lines[0] and lines[0].startswith("tokenizer: ")
