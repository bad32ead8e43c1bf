"""Python function calls per message, counted with cProfile: ``python bench/calls.py --help``.

Timings on a shared 2-core machine move by a third from run to run; the number of Python
calls a layer makes per message moves far less (by up to ~15%, as background upkeep and how
many replies one loop turn handles depend on timing). Comparing two versions of channels-ha
measured one after the other on the same shape (W1: one producer awaiting each send, one
consumer task; W3: 100 channels of one process in a group, one receiving task each) tells
whether a change made the hot path shorter, even when a timed run cannot. The profiler
inflates times, so only calls are shown.
Runs the working tree's channels_ha (unlike ``run.py``, which snapshots a commit).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run by path: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.layers import LAYERS, new_prefix, open_layer
from bench.targets import started
from bench.workloads._common import Consumer, message, receiving, settle, warm_up

GROUP = "calls-group"
SETTLE_S = 5.0
SHAPES = ("w1", "w3")


async def point_to_point(layer: Any, count: int, profile: cProfile.Profile) -> int:
    """W1's shape; returns the messages received."""
    channel = await layer.new_channel()
    consumer = Consumer(layer, channel)
    async with receiving([consumer]):
        await warm_up(layer, channel, consumer, SETTLE_S)
        before = consumer.distinct
        profile.enable()
        for seq in range(count):
            await layer.send(channel, message(seq))
        lost = await settle([consumer], before + count, SETTLE_S)
        profile.disable()
    if lost:
        raise RuntimeError(f"{lost} messages were lost")
    return count


async def fan_out(layer: Any, count: int, profile: cProfile.Profile, members: int = 100) -> int:
    """W3's shape in one process; returns the deliveries."""
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add(GROUP, channel)
    consumers = [Consumer(layer, channel) for channel in channels]
    async with receiving(consumers):
        await layer.group_send(GROUP, message(-1))
        if await settle(consumers, 1, SETTLE_S):
            raise RuntimeError("the warm-up group_send did not reach every member")
        profile.enable()
        for seq in range(count):
            await layer.group_send(GROUP, message(seq))
        lost = await settle(consumers, 1 + count, SETTLE_S)
        profile.disable()
    if lost:
        raise RuntimeError(f"{lost} deliveries were lost")
    return count * members


Shape = Callable[[Any, int, cProfile.Profile], Awaitable[int]]
SHAPE_RUNS: dict[str, tuple[Shape, str]] = {
    "w1": (point_to_point, "message"),
    "w3": (fan_out, "delivery"),
}


async def count_calls(shape: str, layer_name: str, url: str, count: int) -> tuple[float, str]:
    """Python calls per message (or delivery) of ``layer_name`` on the shape."""
    run, unit = SHAPE_RUNS[shape]
    profile = cProfile.Profile()
    async with open_layer(layer_name, url, new_prefix()) as layer:
        done = await run(layer, count, profile)
    calls = sum(entry.callcount for entry in profile.getstats())
    return calls / done, unit


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="w1,w3")
    parser.add_argument("--layers", default=",".join(LAYERS), help="channels_ha,core,pubsub")
    parser.add_argument("--messages", type=int, default=5_000, help="W1 sends")
    parser.add_argument("--group-sends", type=int, default=500, help="W3 group_sends")
    return parser


async def _main(args: argparse.Namespace) -> None:
    shapes, layers = args.shapes.split(","), args.layers.split(",")
    for name in [*shapes, *layers]:
        if name not in (*SHAPES, *LAYERS):
            raise SystemExit(f"unknown shape or layer {name!r}")
    print("| shape | layer | Python calls per message |")
    print("|---|---|--:|")
    with started("standalone") as target:
        for shape in shapes:
            count = args.messages if shape == "w1" else args.group_sends
            for layer in layers:
                per, unit = await count_calls(shape, layer, target.url, count)
                print(f"| {shape} | {layer} | {per:,.1f} per {unit} |", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(_main(_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
