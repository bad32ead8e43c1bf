"""The event loop's own encoders (reused msgpack Packers) write what the plain functions do,
and the receivers' loader reads it."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from channels_ha._codec import MessageCodec, decode_element, element_encoder, encode_element
from channels_ha.sandbox import Topology

from .conftest import LayerFactory


@pytest.mark.parametrize("targets", ["one.channel", ["a!1", "a!2"]])
def test_element_encoder_matches_encode_element(targets: str | list[str]) -> None:
    encode = element_encoder()
    for seq in (1, 2):  # the Packer reused
        element = encode(1_700_000_000_000, "sender.1", seq, targets, b"body")
        assert element == encode_element(1_700_000_000_000, "sender.1", seq, targets, b"body")
        assert decode_element(element).seq == seq


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_dumper_matches_dumps_and_survives_a_failed_pack(serializer: str) -> None:
    codec = MessageCodec(serializer, None, 60)
    dumps = codec.dumper()
    message = {"type": "t", "text": "x" * 200}
    assert dumps(message) == codec.dumps(message)
    with pytest.raises(TypeError):
        dumps({"type": "t", "unpackable": object()})
    assert codec.loads(dumps(message)) == message  # nothing of the failed one left behind
    assert codec.loader()(dumps(message)) == message


@pytest.mark.redis_topologies("standalone")
async def test_a_large_send_leaves_no_large_packer_buffer(
    make_layer: LayerFactory, redis_topology: Topology
) -> None:
    """A Packer keeps a buffer the size of the largest message it packed: reused for the
    event loop's life, one 50 MB send left ~96 MB resident (the message, then its envelope).
    Past 1 MiB the sender takes new Packers, so what a send packed goes with it."""
    layer = make_layer(redis_topology, replay_max_bytes=0)  # the replay would keep a copy
    await layer.send("warm.up", {"type": "small"})  # the session and its Packers exist
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        await layer.send("large", {"type": "large", "text": "x" * (8 << 20)})
        await layer.send("warm.up", {"type": "small"})
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 2 << 20, f"{(after - before) / 2**20:.1f} MiB kept"
