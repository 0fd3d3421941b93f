#!/usr/bin/env python3
"""Seed inputs for fuzz_targets/stack_frames.rs (its record format is
documented there): TCP handshakes with data and FIN to echo and discard,
UDP echo, pings, ARP, raw frames, link events. Writes into the folder
given (default: ../corpus/stack_frames)."""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "corpus", "stack_frames")
os.makedirs(out, exist_ok=True)


def ctrl(kind, link=0, step=0, nopoll=False):
    return bytes([link | kind << 1 | step << 4 | (0x40 if nopoll else 0)])


def tcp(flags, select=0, seq=0, ack=0, window=0xFFFF, options=b"", data=b"", v6=False, **kw):
    assert len(options) % 4 == 0
    return (ctrl(2 if v6 else 1, **kw) + bytes([select, flags, seq & 0xFF, ack & 0xFF])
            + struct.pack(">H", window) + bytes([len(options) // 4]) + options
            + struct.pack(">H", len(data)) + data)


def udp(data, select=0, v6=False, **kw):
    return ctrl(4 if v6 else 3, **kw) + bytes([select]) + struct.pack(">H", len(data)) + data


def ipv4(protocol, payload, peer=0, **kw):
    return ctrl(5, **kw) + bytes([protocol, 0, peer]) + struct.pack(">H", len(payload)) + payload


def ipv6(next_header, payload, peer=0, **kw):
    return ctrl(6, **kw) + bytes([next_header, peer]) + struct.pack(">H", len(payload)) + payload


def raw(frame, **kw):
    return ctrl(0, **kw) + struct.pack(">H", len(frame)) + frame


def event(op, **kw):
    return ctrl(7, **kw) + bytes([op])


MSS = b"\x02\x04\x05\xb4"
SACK_WS = b"\x04\x02\x01\x03\x03\x07\x01\x01"  # SACK-permitted, NOP, WS 7, NOPs


def session(select=0, v6=False, link=0, data=b"hello, echo\n", options=MSS):
    return (tcp(0x02, select, options=options, v6=v6, link=link)
            + tcp(0x10, select, v6=v6, link=link)
            + tcp(0x18, select, data=data, v6=v6, link=link)
            + tcp(0x10, select, v6=v6, link=link, step=1)
            + tcp(0x11, select, v6=v6, link=link)
            + tcp(0x10, select, v6=v6, link=link, step=2))


stack_mac = bytes([2, 0, 0, 0, 0, 1])
peer_mac = bytes([2, 0, 0, 0, 0, 0x10])
seeds = {
    "tcp-echo-v4": b"\x00" + session(),
    "tcp-echo-v6": b"\x00" + session(v6=True),
    "tcp-discard-v4": b"\x00" + session(select=1 << 3, data=b"x" * 1000),
    "tcp-closed-port": b"\x00" + tcp(0x02, select=2 << 3, options=MSS),
    "tcp-echo-switch": b"\x00" + tcp(0x02, options=MSS + SACK_WS) + tcp(0x10)
        + event(1) + tcp(0x18, data=b"during", link=1) + event(2)
        + tcp(0x18, data=b"after", link=1) + tcp(0x10, step=3) + tcp(0x14),
    "tcp-small-buffers": b"\x01" + tcp(0x02, options=MSS) + tcp(0x10)
        + b"".join(tcp(0x18, data=bytes(range(256)) * 4, nopoll=True) for _ in range(4))
        + tcp(0x10, step=1) + tcp(0x10, window=0, step=2),
    "udp-echo": b"\x00" + udp(b"ping") + udp(b"pong", select=1, v6=True, link=1),
    "udp-flood": b"\x01" + b"".join(udp(b"u" * 700, nopoll=True) for _ in range(8)),
    "icmp-echo": b"\x00" + ipv4(1, b"\x08\x00\x00\x00\x12\x34\x00\x01abcdef")
        + ipv6(58, b"\x80\x00\x00\x00\x12\x34\x00\x01abcdef", link=1),
    "cold-neighbours": b"\x02" + tcp(0x02, options=MSS) + tcp(0x10) + event(5)
        + tcp(0x18, data=b"x") + event(6) + event(7),
    "raw-frames": b"\x00" + raw(stack_mac + peer_mac + b"\x08\x00" + b"\x45" + bytes(19))
        + raw(b"\xff" * 12 + b"\x86\xdd" + b"\x60" + bytes(39)) + raw(bytes(13))
        + raw(stack_mac + peer_mac + b"\x08\x06" + bytes(27), link=1),
    "links-down": b"\x00" + event(0) + event(3) + udp(b"x", link=1) + udp(b"y") + event(4),
}
for name, data in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
