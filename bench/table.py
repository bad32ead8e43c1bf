"""The markdown table: one line per (topology, workload, layer), ratios against channels_redis.

Ratios say how many times better a layer did than channels_redis core and pubsub in the same
run: throughput divided by theirs, or their p50 latency divided by this one's. Rows bounded by
one awaited round trip per message also show their share of the raw round-trip ceiling, the
``RTT ceiling`` rows of the same topology. Rows measured in one process show the CPU spent
per message by that process and by Redis, which share the machine's cores. A ratio is left
out where either row had errors: a rate made of the few sends that got through (core in W2)
compares with nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .results import REFERENCE_LAYERS, Summary

CEILING_ROW = "RTT ceiling: PING, 1 client"
CEILING_LAYER = "redis-benchmark"

HEADER = (
    "| topology | workload | layer | result (median) | vs core | vs pubsub | of RTT ceiling "
    "| CPU µs / msg: process · Redis | errors (all runs) | Redis connections (peak) | runs |"
)
RULE = "|---|---|---|--:|--:|--:|--:|--:|---|---|---|"


def render(summaries: list[Summary]) -> str:
    """The whole table, header included."""
    index = {(s.topology, s.row, s.layer): s for s in summaries}
    lines = [HEADER, RULE]
    for summary in summaries:
        references = [index.get((summary.topology, summary.row, ref)) for ref in REFERENCE_LAYERS]
        ceiling = index.get((summary.topology, CEILING_ROW, CEILING_LAYER))
        lines.append(_line(summary, references, ceiling))
    return "\n".join(lines)


def _line(summary: Summary, references: list[Summary | None], ceiling: Summary | None) -> str:
    cells = [
        summary.topology,
        summary.row,
        summary.layer,
        _result(summary),
        *(_ratio(summary, reference) for reference in references),
        _share(summary, ceiling),
        _cpu(summary),
        _errors(summary.errors),
        _connections(summary.connections, summary.sentinel_connections),
        _runs(summary),
    ]
    return "| " + " | ".join(cells) + " |"


def _result(summary: Summary) -> str:
    note = f" ({summary.note})" if summary.note else ""
    if summary.gap_s is not None:
        return f"longest gap {summary.gap_s:.2f} s{note}"
    if summary.p50_ms is not None:
        return f"p50 {summary.p50_ms:.2f} ms, p99 {_ms(summary.p99_ms)}{note}"
    if summary.rate is not None:
        return f"{summary.rate:,.0f} {summary.unit}{note}"
    return ", ".join(summary.failures) or "no result"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _ratio(summary: Summary, reference: Summary | None) -> str:
    """Left out where either row has a note (say, a producer behind its schedule) or errors
    (failed, lost or duplicated messages): its result then measures something else."""
    if reference is None or reference is summary:
        return ""
    if summary.note or reference.note or summary.errors or reference.errors:
        return ""
    if summary.latency and reference.latency:
        return _times(reference.p50_ms or 0.0, summary.p50_ms or 0.0)
    if summary.rate is None or reference.rate is None:
        return ""
    return _times(summary.rate, reference.rate)


def _times(better: float, worse: float) -> str:
    return f"{better / worse:.1f}x" if worse > 0 and better > 0 else ""


def _share(summary: Summary, ceiling: Summary | None) -> str:
    if not summary.rtt_bound or ceiling is None or not ceiling.rate or summary.rate is None:
        return ""
    return f"{summary.rate / ceiling.rate:.0%}"


def _cpu(summary: Summary) -> str:
    """Left out where messages failed or were lost: CPU per delivered message would then
    count the failures' work against the messages that made it."""
    if summary.cpu_us is None or summary.errors:
        return ""
    redis_us = "-" if summary.redis_cpu_us is None else f"{summary.redis_cpu_us:,.1f}"
    return f"{summary.cpu_us:,.1f} · {redis_us}"


def _errors(errors: Counter[str]) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{kind} {count:,}" for kind, count in errors.most_common())


def _connections(peaks: dict[str, int], sentinel_peaks: dict[str, int]) -> str:
    """``process 3``, or ``sender 1 · 4 receivers 3 each`` for numbered roles (receiver-2);
    on Sentinel ``process 2 + 3 sentinels``: the masters' count, then the sentinels'."""
    grouped: dict[str, list[tuple[int, int | None]]] = {}
    for role, count in peaks.items():
        counts = (count, sentinel_peaks.get(role))
        grouped.setdefault(role.split("-")[0], []).append(counts)
    return " · ".join(_role(role, counts) for role, counts in grouped.items())


def _role(role: str, counts: list[tuple[int, int | None]]) -> str:
    data = _spread(count for count, _ in counts)
    sentinels = [count for _, count in counts if count is not None]
    if sentinels:
        spread = _spread(sentinels)
        text = f"{data} + {spread} sentinel{'' if spread == '1' else 's'}"
    else:
        text = data
    if len(counts) == 1:
        return f"{role} {text}"
    return f"{len(counts)} {role}s {text} each"


def _spread(counts: Iterable[int]) -> str:
    values = sorted(counts)
    return f"{values[0]}" if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def _runs(summary: Summary) -> str:
    finished = summary.runs - sum(summary.failures.values())
    text = f"{finished}/{summary.runs}"
    if summary.failures:
        kinds = Counter(status.split(":")[0] for status in summary.failures.elements())
        text += " (" + ", ".join(f"{kind} x{n}" for kind, n in kinds.items()) + ")"
    return text
