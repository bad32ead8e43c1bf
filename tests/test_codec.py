"""The event loop's own encoders (reused msgpack Packers) write what the plain functions do,
and the receivers' loader reads it."""

from __future__ import annotations

import pytest

from channels_ha._codec import MessageCodec, decode_element, element_encoder, encode_element


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
