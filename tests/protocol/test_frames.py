"""protocol/frames.py: the pure codec. Round trips, split and coalesced input, size limits checked
from the header alone, truncation at end of stream, and garbage."""
from __future__ import annotations

import msgpack
import pytest

from protocol.frames import (
    DEFAULT_MAX_FRAME,
    HEADER,
    PROTOCOL_VERSION,
    VERSION_KEY,
    FrameDecoder,
    ProtocolError,
    decode_payload,
    encode_frame,
    frame_length,
)
from tests.protocol.samples import BINARY, SAMPLES, builder_names


def raw_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def test_every_builder_has_a_sample():
    missing = builder_names() - set(SAMPLES)
    assert not missing, f"add a sample for these builders to tests/protocol/samples.py: {missing}"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name):
    message = SAMPLES[name]
    frame = encode_frame(message)
    assert HEADER.unpack(frame[:4])[0] == len(frame) - 4
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [message]
    assert not decoder.pending
    decoder.close()
    assert decode_payload(frame[4:]) == message


def test_bytes_stay_bytes_and_text_stays_text():
    (decoded,) = FrameDecoder().feed(encode_frame(SAMPLES["predict"]))
    first = decoded["requests"][0]["parameters"][0]
    assert type(first["value"]) is bytes and first["value"] == BINARY
    assert type(first["name"]) is str and type(decoded["requests"][0]["id"]) is str
    assert decoded["requests"][0]["headers"] == SAMPLES["predict"]["requests"][0]["headers"]
    assert type(FrameDecoder().feed(encode_frame({"kind": "x", "b": b""}))[0]["b"]) is bytes


def test_version_is_stamped_and_removed():
    frame = encode_frame({"kind": "ping", "seq": 1})
    assert msgpack.unpackb(frame[4:]) == {"kind": "ping", "seq": 1, VERSION_KEY: PROTOCOL_VERSION}
    assert VERSION_KEY not in FrameDecoder().feed(frame)[0]


def test_split_reads_one_byte_at_a_time():
    stream = b"".join(encode_frame(msg) for msg in SAMPLES.values())
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i:i + 1])
    assert out == list(SAMPLES.values())
    assert not decoder.pending
    decoder.close()


def test_coalesced_reads_many_frames_in_one_feed():
    messages = list(SAMPLES.values()) * 20
    stream = b"".join(encode_frame(msg) for msg in messages)
    decoder = FrameDecoder()
    # all of them at once, then the same stream cut at an awkward place
    assert decoder.feed(stream) == messages
    cut = len(stream) // 3 + 1
    assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == messages


def test_large_frame_round_trip():
    big = {"kind": "x", "body": BINARY * 5000}  # ~3.8 MB
    decoder = FrameDecoder()
    frame = encode_frame(big)
    out = []
    for start in range(0, len(frame), 65536):
        out += decoder.feed(frame[start:start + 65536])
    assert out == [big]


def test_oversize_frame_refused_from_the_header_alone():
    decoder = FrameDecoder(max_size=100)
    with pytest.raises(ProtocolError, match="101 bytes exceeds the limit of 100"):
        decoder.feed(HEADER.pack(101))  # no payload byte was ever fed
    with pytest.raises(ProtocolError):
        frame_length(HEADER.pack(DEFAULT_MAX_FRAME + 1), DEFAULT_MAX_FRAME)
    assert frame_length(HEADER.pack(DEFAULT_MAX_FRAME), DEFAULT_MAX_FRAME) == DEFAULT_MAX_FRAME
    frame = encode_frame({"kind": "x", "pad": "y" * 100})
    at_limit = FrameDecoder(max_size=len(frame) - 4)  # exactly at the limit is fine
    assert at_limit.feed(frame) == [{"kind": "x", "pad": "y" * 100}]


def test_oversize_frame_refused_on_encode():
    with pytest.raises(ProtocolError):
        encode_frame({"kind": "x", "body": b"x" * 200}, max_size=100)


@pytest.mark.parametrize("tail", ["two header bytes", "header only", "partial payload"])
def test_truncated_frame_is_an_error_at_end_of_stream(tail):
    frame = encode_frame(SAMPLES["load"])
    cut = {"two header bytes": 2, "header only": 4, "partial payload": len(frame) - 1}[tail]
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(SAMPLES["ping"]) + frame[:cut]) == [SAMPLES["ping"]]
    assert decoder.pending
    with pytest.raises(ProtocolError, match="truncated"):
        decoder.close()


def test_clean_eof_is_not_an_error():
    decoder = FrameDecoder()
    assert decoder.close() is None  # EOF before any frame
    assert decoder.feed(encode_frame(SAMPLES["pong"])) == [SAMPLES["pong"]]
    assert not decoder.pending
    assert decoder.close() is None  # EOF right after a whole frame


@pytest.mark.parametrize("payload, words", [
    (b"\xc1", "undecodable"),                                      # a byte msgpack never uses
    (msgpack.packb({"kind": "x", "v": 1}) + b"\x00", "undecodable"),  # trailing data
    (msgpack.packb({"kind": "x", "v": 1})[:-1], "undecodable"),       # payload cut short
    (msgpack.packb([1, 2, 3]), "is a list, expected a map"),
    (msgpack.packb("text"), "is a str, expected a map"),
    (msgpack.packb({"kind": "x"}), "protocol version None"),
    (msgpack.packb({"kind": "x", "v": 2}), "protocol version 2"),
    (msgpack.packb({"kind": "x", "v": "1"}), "protocol version '1'"),
    (b"", "undecodable"),
])
def test_garbage_is_a_protocol_error(payload, words):
    with pytest.raises(ProtocolError, match=words):
        FrameDecoder().feed(raw_frame(payload))
    with pytest.raises(ProtocolError):
        decode_payload(payload)


def test_a_batch_of_largest_requests_fits_the_predict_frame_limit():
    from protocol import messages
    from protocol.frames import DEFAULT_MAX_FRAME, encode_frame, predict_frame_limit
    assert predict_frame_limit(1, 1024) == DEFAULT_MAX_FRAME   # never below the default
    body = b"x" * (3 * 1024 * 1024)
    head = [["x-filler", "h" * 60_000]]   # close to the 64 KiB request head the listener takes
    requests = [messages.request(f"r{i}", head, [messages.parameter("body", "text/plain", body)])
                for i in range(4)]
    frame = encode_frame(messages.predict(1, requests))
    assert DEFAULT_MAX_FRAME < len(frame) <= predict_frame_limit(4, len(body))
