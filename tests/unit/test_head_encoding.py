"""Heads we write, upstream (encode_head) and to clients (response_head): every byte
that could break HTTP framing or smuggle a header is refused, and nothing else is."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.answer_bytes import response_head
from gateway.proxy import UpstreamError
from gateway.upstream_client import encode_head

# HTAB is allowed in a field value (RFC 9110 §5.5); CR and LF only where we put them.
CONTROLS = [byte for byte in range(0x20) if byte != 0x09] + [0x7F]
ALLOWED = [byte for byte in range(0x100) if byte not in CONTROLS]


@pytest.mark.parametrize("byte", CONTROLS)
def test_every_control_character_in_a_request_header_value_is_refused(byte: int) -> None:
    with pytest.raises(ValueError):
        encode_head("GET", "/", [("Remote-Name", f"a{chr(byte)}b")])


@pytest.mark.parametrize("byte", CONTROLS)
def test_every_control_character_in_a_request_header_name_is_refused(byte: int) -> None:
    with pytest.raises(ValueError):
        encode_head("GET", "/", [(f"X{chr(byte)}Y", "v")])


def test_every_other_byte_passes_as_it_is() -> None:
    # 0x80 to 0xFF arrive as surrogate escapes (a client's bytes that are not UTF-8) and
    # go out as the same bytes.
    value = "".join(chr(b) if b < 0x80 else chr(0xDC00 + b) for b in ALLOWED)
    head = encode_head("GET", "/", [("X-All", value)])
    assert head == b"GET / HTTP/1.1\r\nX-All: " + bytes(ALLOWED) + b"\r\n\r\n"


def test_non_ascii_text_is_not_mistaken_for_control_bytes() -> None:
    # U+0085 (NEL) and U+2028 are control-like in Unicode, but their UTF-8 bytes are
    # all above 0x7F: no line of ours ends there, and no reader splits on them.
    head = encode_head("GET", "/", [("Remote-Name", "Zoë\u0085\u2028")])
    assert head.endswith("Remote-Name: Zoë\u0085\u2028\r\n\r\n".encode())


@pytest.mark.parametrize("byte", CONTROLS)
def test_every_control_character_in_an_answer_header_is_a_502(byte: int) -> None:
    headers = CIMultiDict({"X-Note": f"a{chr(byte)}b"})
    with pytest.raises(UpstreamError) as caught:
        response_head(200, None, headers, 0)
    assert caught.value.status == 502


def test_an_answer_head_with_a_tab_in_a_value_is_written() -> None:
    head = response_head(200, None, CIMultiDict({"X-Note": "a\tb", "Date": "d"}), 2)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nX-Note: a\tb\r\nDate: d\r\n")
    assert b"Content-Length: 2\r\n" in head
