"""The lean upstream client against generated upstream behaviour: whatever a run of
answers looks like (well framed, framed by the close, interim answers first, broken or
lying about their length), every request gets its own answer or an error, never
another request's bytes, and never hangs past the read timeout."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.upstream_client import Origin, UpstreamClient, UpstreamUnreachable, encode_head

READ_TIMEOUT = 0.2


@dataclass(frozen=True)
class Answer:
    status: int
    framing: str  # length | chunked | close | short | two-lengths | garbage | extra | partial
    interim: bool  # a 100/103 before the answer
    body: bytes

    def wire(self, head_request: bool) -> bytes:
        lines = [b"HTTP/1.1 %d X" % self.status]
        body = self.body
        if self.framing == "garbage":
            return b"NOT HTTP AT ALL\r\n\r\n" + body
        if self.framing in ("length", "short", "extra", "partial"):
            size = len(body) + (7 if self.framing == "short" else 0)
            lines.append(b"Content-Length: %d" % size)
        elif self.framing == "two-lengths":
            lines += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
        elif self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            body = b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100])
                for i in range(0, len(body), 100)
            )
            body += b"0\r\n\r\n"
        elif self.framing == "close":
            lines.append(b"Connection: close")
        if head_request or self.status in (204, 304):
            body = b""
        interim = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" if self.interim else b""
        # "extra": a second, unasked answer right behind this one (response splitting).
        # "partial": the start of one, whose rest would be the next client's answer.
        extra = {
            "extra": b"HTTP/1.1 302 Found\r\nLocation: /evil\r\nContent-Length: 0\r\n\r\n",
            "partial": b"HTTP/1.1 302 Found\r\nLocation: /evil\r\nSet-Cookie: x=",
        }.get(self.framing, b"")
        return interim + b"\r\n".join(lines) + b"\r\n\r\n" + body + extra

    def valid(self) -> bool:
        return self.framing in ("length", "chunked", "close", "extra", "partial")

    def closes(self) -> bool:
        """Whether the upstream ends the connection after this answer. A 204/304 has no
        body, so a wrong Content-Length cannot desync it: the upstream carries on."""
        if self.framing == "short" and self.status in (204, 304):
            return False
        return self.framing not in ("length", "chunked", "extra", "partial")


answers = st.builds(
    Answer,
    status=st.sampled_from([200, 201, 204, 304, 404, 500]),
    framing=st.sampled_from(
        [
            "length",
            "length",
            "chunked",
            "close",
            "short",
            "two-lengths",
            "garbage",
            "extra",
            "partial",
        ]
    ),
    interim=st.booleans(),
    body=st.binary(min_size=0, max_size=700),
)


async def _run(script: list[tuple[str, Answer]]) -> None:
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seq = int(head.split(b"X-Seq: ", 1)[1].split(b"\r\n", 1)[0])
                method, answer = script[seq]
                writer.write(answer.wire(method == "HEAD"))
                await writer.drain()
                if answer.closes():
                    if answer.framing == "short":
                        await asyncio.sleep(READ_TIMEOUT * 2)  # a lie about the length
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient()
    origin = Origin("127.0.0.1", port)
    try:
        for seq, (method, answer) in enumerate(script):
            head = encode_head(method, "/", CIMultiDict({"Host": "u", "X-Seq": str(seq)}).items())
            try:
                async with asyncio.timeout(READ_TIMEOUT * 10):
                    response = await client.request(
                        origin,
                        method,
                        head,
                        None,
                        chunked=False,
                        connect_timeout=1.0,
                        read_timeout=READ_TIMEOUT,
                    )
                    async with response:
                        body = await response.read()
            except (UpstreamUnreachable, TimeoutError):
                # Only an answer that was not well framed may fail, and then only as an
                # error: never a hang, never someone else's bytes.
                assert not answer.valid() or answer.status in (204, 304) or method == "HEAD", (
                    seq,
                    answer,
                )
                continue
            assert answer.valid() or answer.framing == "short", (seq, answer)
            assert response.status == answer.status
            # Only this answer's own headers: nothing of an answer that came after it.
            names = {name.lower() for name, _ in response.raw_headers}
            assert b"location" not in names, (seq, answer)
            assert b"set-cookie" not in names, (seq, answer)
            no_body = method == "HEAD" or answer.status in (204, 304)
            if answer.framing == "short":
                # Cut short by the read timeout: the bytes it did get are its own.
                assert body == answer.body[: len(body)], (seq, answer)
            else:
                assert body == (b"" if no_body else answer.body), (seq, answer)
    finally:
        await client.close()
        server.close()
        for handler in list(handlers):
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(st.tuples(st.sampled_from(["GET", "GET", "POST", "HEAD"]), answers), max_size=8))
def test_every_request_gets_its_own_answer_or_an_error(script: list[tuple[str, Answer]]) -> None:
    asyncio.run(_run(script))
