"""Helpers shared by the vector generators: deterministic inputs from labels."""
import hashlib


def det(label: str, n: int = 32) -> bytes:
    """n bytes derived from a label (SHA-256 in counter mode), so that every run gives the same vectors."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return out[:n]


def clamp(k: bytes) -> bytes:
    """A Curve25519 private key as X25519 clamps it."""
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)
