#!/usr/bin/env python3
"""Writes the checked-in seed corpus (fuzz/corpus/<target>/seed-*): valid frames of each
kind, a hello/join/send session, upgrade requests, and a few near misses. Run from fuzz/."""
import json, os, struct, zlib

def put(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

J = lambda o: json.dumps(o, separators=(",", ":")).encode()
HELLO = J({"type": "hello", "id": 1, "protocol": 1, "user": "alice"})
REQS = {
    "hello": HELLO,
    "hello-token": J({"type": "hello", "id": 1, "protocol": 1, "token": "t0k3n"}),
    "hello-v2": J({"type": "hello", "id": 1, "protocol": 2, "user": "bob"}),
    "join": J({"type": "join", "id": 2, "room": "lobby"}),
    "join-since": J({"type": "join", "id": 2, "room": "lobby", "since": {"epoch": "e1", "seq": 41}}),
    "leave": J({"type": "leave", "id": 3, "room": "lobby"}),
    "send": J({"type": "send", "id": 4, "room": "lobby", "body": {"text": "hi"}}),
    "send-key": J({"type": "send", "id": 5, "room": "lobby", "body": [1, 2.5, None, "x"], "key": "k1"}),
    "send-ephemeral": J({"type": "send", "id": 6, "room": "lobby", "body": "typing", "ephemeral": True}),
    "history": J({"type": "history", "id": 7, "room": "lobby", "before": 58, "limit": 50}),
    "history-after": J({"type": "history", "id": 8, "room": "lobby", "after": 1}),
    "presence": J({"type": "presence", "id": 9, "room": "lobby"}),
    "refresh": J({"type": "refresh", "id": 10, "token": "new"}),
    "ping-id": J({"type": "ping", "id": 11}),
    "ping": J({"type": "ping"}),
    "pong": J({"type": "pong"}),
    "bad-room": J({"type": "join", "id": 12, "room": "no spaces!"}),
    "unknown-type": J({"type": "dance", "id": 13}),
    "id-null": b'{"type":"ping","id":null}',
    "id-huge": b'{"type":"ping","id":9007199254740993}',
    "deep": b'{"type":"send","id":1,"room":"r","body":' + b"[" * 70 + b"]" * 70 + b"}",
    "surrogate": b'{"type":"send","id":1,"room":"r","body":"\\ud800"}',
    "escapes": b'{"type":"send","id":1,"room":"r","body":"\\u00e9\\n\\"","key":"\\u0041"}',
    "not-object": b"[1,2]",
    "dm": J({"type": "join", "id": 2, "room": "dm:alice:bob"}),
}

# chat_frame: one frame each.
for name, frame in REQS.items():
    put("chat_frame", name, frame)

# session: frames separated by 0xFF; 0xF8 binary, 0xF9 too large, 0xFA ping, 0xFB a pause.
S = b"\xff"
P = b"\xff\xfb\xff"
sessions = {
    "join-send": [HELLO, REQS["join"], REQS["send"], REQS["send-key"], REQS["send-key"]],
    "everything": [HELLO, REQS["join"], REQS["send"], REQS["send-ephemeral"], REQS["history"],
                   REQS["history-after"], REQS["presence"], REQS["ping-id"], REQS["pong"], REQS["leave"]],
    "recover": [HELLO, REQS["join-since"], REQS["send"], REQS["leave"], REQS["join-since"]],
    "errors": [HELLO, REQS["send"], REQS["bad-room"], REQS["unknown-type"], b"", b"\xf8", REQS["deep"]],
    "second-hello": [HELLO, REQS["join"], REQS["hello-v2"]],
    "no-hello": [REQS["join"], REQS["send"]],
    "too-large": [HELLO, REQS["join"], b"\xf9", REQS["send"]],
    "refresh": [REQS["hello-token"], REQS["refresh"], REQS["ping"]],
    "alive": [HELLO, b"\xfa", REQS["ping"], b"\xfa"],
    "many-rooms": [HELLO] + [J({"type": "join", "id": i, "room": "r%d" % i}) for i in range(6)]
                  + [J({"type": "send", "id": 99, "room": "r1", "body": "x" * 300})],
    "bad-protocol": [REQS["hello-v2"]],
}
for name, frames in sessions.items():
    put("session", name, S.join(frames))
    put("session", name + "-paused", P.join(frames))

# tcp_frame: [max_frame selector, chunk, chunk] + length-prefixed frames.
def tcp(*frames):
    return b"".join(struct.pack(">I", len(f)) + f for f in frames)
put("tcp_frame", "session", b"\x06\x00\x00" + tcp(HELLO, REQS["join"], REQS["send"]))
put("tcp_frame", "chunked", b"\x06\x03\x07" + tcp(HELLO, b"", REQS["send"]))
put("tcp_frame", "pending", b"\x07\x00\x05" + tcp(HELLO, b"x" * 300))
put("tcp_frame", "too-large", b"\x05\x01\x02" + tcp(HELLO) + struct.pack(">I", 256) + b"x" * 10)
put("tcp_frame", "huge-claim", b"\x07\x00\x00" + struct.pack(">I", 0xFFFFFFFF))
put("tcp_frame", "truncated", b"\x06\x02\x02" + tcp(HELLO)[:-3])
put("tcp_frame", "empty-frames", b"\x00\x01\x01" + tcp(b"", b"", b""))

# ws_frame: [flags, chunk, chunk] + a raw stream (flags bit 0 clear) or frame descriptions.
def ws(opcode, payload, fin=True, mask=b"\x12\x34\x56\x78", masked=True, ext=None):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mb = 0x80 if masked else 0
    if ext == 64 or n > 0xFFFF:
        head = bytes([b0, mb | 127]) + struct.pack(">Q", n)
    elif ext == 16 or n >= 126:
        head = bytes([b0, mb | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mb | n])
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
TEXT, BIN, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
put("ws_frame", "session", b"\x08\x00\x00" + ws(TEXT, HELLO) + ws(TEXT, REQS["join"]) + ws(TEXT, REQS["send"]) + ws(CLOSE, b"\x03\xe8"))
put("ws_frame", "fragments", b"\x08\x05\x00" + ws(TEXT, HELLO[:10], fin=False) + ws(PING, b"hi") + ws(CONT, HELLO[10:20], fin=False) + ws(CONT, HELLO[20:]) + ws(TEXT, REQS["presence"]))
put("ws_frame", "control", b"\x08\x01\x01" + ws(PING, b"") + ws(PONG, b"x") + ws(TEXT, HELLO) + ws(PING, b"p" * 125) + ws(CLOSE, b"\x0b\xb8bye"))
put("ws_frame", "binary", b"\x08\x00\x00" + ws(TEXT, HELLO) + ws(BIN, b"\x00\x01"))
put("ws_frame", "unmasked", b"\x08\x00\x00" + ws(TEXT, HELLO, masked=False))
put("ws_frame", "non-minimal", b"\x08\x00\x00" + ws(TEXT, HELLO, ext=16))
put("ws_frame", "too-large", b"\x08\x00\x00" + ws(TEXT, HELLO) + ws(TEXT, b"x" * 2000))
put("ws_frame", "bad-utf8", b"\x08\x00\x00" + ws(TEXT, HELLO) + ws(TEXT, b"\xff\xfe"))
put("ws_frame", "bad-close", b"\x08\x00\x00" + ws(CLOSE, b"\x03\xed") + ws(CLOSE, b"\x03\xe8\xff"))
put("ws_frame", "rsv", b"\x08\x00\x00" + bytes([0xC1, 0x80]) + b"\x00" * 4)
put("ws_frame", "long-ping", b"\x08\x00\x00" + ws(PING, b"x" * 126))
put("ws_frame", "top-bit", b"\x08\x00\x00" + bytes([0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]) + b"\x00" * 4)
# Descriptions: sel, first header byte, length, mask variation; then the payload.
def desc(sel, b0, payload, m=0):
    return bytes([sel, b0, len(payload), m]) + payload
put("ws_frame", "described", b"\x09\x00\x00" + desc(0, 0x81, HELLO) + desc(0, 0x81, REQS["join"]) + desc(1, 0x81, REQS["send"]) + desc(0, 0x89, b"hi") + desc(0, 0x88, b"\x03\xe8"))
put("ws_frame", "described-unmasked", b"\x09\x02\x03" + desc(0x30, 0x81, HELLO) + desc(0, 0x81, HELLO))
put("ws_frame", "described-fragments", b"\x09\x00\x00" + desc(0, 0x01, HELLO[:20]) + desc(8, 0x80, HELLO[20:]) + desc(0, 0x82, b"b"))

# ws_frame with permessage-deflate negotiated (flags bit 4): compressed messages (RSV1, raw
# deflate with its trailing 00 00 ff ff removed), and ones that do not inflate.
def deflated(data, wbits=15):
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]
RSV1 = 0x40
put("ws_frame", "deflate-session", b"\x18\x00\x00" + ws(TEXT | RSV1, deflated(HELLO)) + ws(TEXT, REQS["join"]) + ws(TEXT | RSV1, deflated(REQS["send"])) + ws(CLOSE, b"\x03\xe8"))
put("ws_frame", "deflate-fragments", b"\x18\x03\x00" + ws(TEXT, HELLO) + ws(TEXT | RSV1, deflated(REQS["join"])[:5], fin=False) + ws(CONT, deflated(REQS["join"])[5:]))
put("ws_frame", "deflate-bomb", b"\x18\x00\x00" + ws(TEXT, HELLO) + ws(TEXT | RSV1, deflated(b" " * 100000)))
put("ws_frame", "deflate-garbage", b"\x18\x00\x00" + ws(TEXT, HELLO) + ws(TEXT | RSV1, b"\xff\xff\xff"))
put("ws_frame", "deflate-rsv1-continuation", b"\x18\x00\x00" + ws(TEXT, HELLO) + ws(TEXT, b"{", fin=False) + ws(CONT | RSV1, b"}"))

# inflate: [limit selector] + a compressed message.
put("inflate", "hello", b"\x05" + deflated(HELLO))
put("inflate", "window-9", b"\x05" + deflated(REQS["send"] * 20, wbits=9))
put("inflate", "bomb", b"\x03" + deflated(b"\x00" * 200000))
put("inflate", "empty", b"\x02" + deflated(b""))
put("inflate", "stored", b"\x04" + zlib.compressobj(0, zlib.DEFLATED, -15).compress(b"plain") + zlib.compressobj(0, zlib.DEFLATED, -15).flush(zlib.Z_SYNC_FLUSH)[:-4])
put("inflate", "garbage", b"\x04\xff\xfe\xfd")

# http_upgrade: the connection's first bytes.
def req(lines, method=b"GET", path=b"/ws", version=b"HTTP/1.1", tail=b""):
    return method + b" " + path + b" " + version + b"\r\n" + b"".join(l + b"\r\n" for l in lines) + b"\r\n" + tail
UP = [b"Host: localhost", b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13",
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
put("http_upgrade", "upgrade", req(UP))
put("http_upgrade", "upgrade-chat-v1", req(UP + [b"Sec-WebSocket-Protocol: other, chat.v1", b"Origin: http://localhost"]))
put("http_upgrade", "upgrade-session", req(UP, tail=ws(TEXT, HELLO) + ws(TEXT, REQS["join"]) + ws(TEXT, REQS["send"]) + ws(CLOSE, b"\x03\xe8")))
put("http_upgrade", "upgrade-ping", req(UP, tail=ws(PING, b"x") + ws(TEXT, b"[")))
put("http_upgrade", "http10", req(UP, version=b"HTTP/1.0"))
put("http_upgrade", "post", req(UP + [b"Content-Length: 2"], method=b"POST", tail=b"{}"))
put("http_upgrade", "bad-key", req(UP[:-1] + [b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR=="]))
put("http_upgrade", "no-key", req(UP[:-1]))
put("http_upgrade", "version-8", req(UP[:3] + [b"Sec-WebSocket-Version: 8"] + UP[4:]))
put("http_upgrade", "keep-alive", req([b"Host: x", b"Connection: keep-alive, Upgrade"] + UP[2:]))
put("http_upgrade", "not-found", req([b"Host: x"], path=b"/") + req(UP))
put("http_upgrade", "chunked", req([b"Host: x", b"Transfer-Encoding: chunked"], method=b"POST", tail=b"2\r\nab\r\n0\r\n\r\n"))
put("http_upgrade", "folded", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n  , h2c\r\n\r\n")

# jwt: [mode] + a token (bit 0 clear), or + header 0xFF payload, signed by the target (bit 0
# set); bit 1 requires iss and aud.
def b64(data):
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=")
JWT_HEADER = J({"typ": "JWT", "alg": "HS256"})
CLAIMS = {"sub": "alice", "exp": 4102444800, "rooms": ["lobby", "team-*"]}
put("jwt", "token", b"\x00" + b64(JWT_HEADER) + b"." + b64(J(CLAIMS)) + b"." + b64(b"\x00" * 32))
put("jwt", "alg-none", b"\x00" + b64(J({"alg": "none"})) + b"." + b64(J(CLAIMS)) + b".")
put("jwt", "signed", b"\x01" + JWT_HEADER + b"\xff" + J(CLAIMS))
put("jwt", "signed-strict", b"\x03" + JWT_HEADER + b"\xff" + J(dict(CLAIMS, iss="https://id.example.com", aud=["billing", "chat"])))
put("jwt", "signed-nbf-kid", b"\x01" + J({"alg": "HS256", "kid": "k1"}) + b"\xff" + J(dict(CLAIMS, nbf=1700000000, iat=1700000000)))
put("jwt", "signed-crit", b"\x01" + J({"alg": "HS256", "crit": ["b64"], "b64": False}) + b"\xff" + J(CLAIMS))
put("jwt", "signed-expired", b"\x01" + JWT_HEADER + b"\xff" + J(dict(CLAIMS, exp=1300819380)))
put("jwt", "signed-duplicate-sub", b"\x01" + JWT_HEADER + b"\xff" + b'{"sub":"alice","sub":"bob","exp":4102444800}')
# What the first run found: a byte that is not UTF-8 in a header member the verifier ignores.
put("jwt", "crash-kid-not-utf8", b"\x01" + b'{"alg":"HS256","kid":"\xbek1"}' + b"\xff" + J(CLAIMS))
put("jwt", "signed-huge-number", b"\x01" + JWT_HEADER + b"\xff" + b'{"sub":"alice","exp":4102444800,"x":1e400}')
