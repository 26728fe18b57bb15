"""Redis's glob patterns (KEYS, SCAN MATCH, PSUBSCRIBE, CONFIG GET) as compiled regular
expressions over bytes."""

from __future__ import annotations

import re
from collections.abc import Callable


def glob_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """Redis's glob (stringmatchlen): * ? [abc] [^a] [a-z] and \\ escapes, over bytes."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i:i + 1]))
        elif c == b"[":
            j = pattern.find(b"]", i + 2 if pattern[i + 1:i + 2] == b"^" else i + 1)
            if j < 0:  # an unclosed [ matches itself
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                negate = body[:1] == b"^"
                if negate:
                    body = body[1:]
                parts = []
                k = 0
                while k < len(body):
                    if body[k:k + 1] == b"\\" and k + 1 < len(body):
                        k += 1
                    if k + 2 < len(body) and body[k + 1:k + 2] == b"-":
                        lo, hi = sorted((body[k], body[k + 2]))
                        parts.append(re.escape(bytes([lo])) + b"-" + re.escape(bytes([hi])))
                        k += 3
                    else:
                        parts.append(re.escape(body[k:k + 1]))
                        k += 1
                out.append(b"[" + (b"^" if negate else b"") + b"".join(parts) + b"]"
                           if parts else (b"." if negate else b"(?!)"))
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    regex = re.compile(b"".join(out), re.DOTALL)
    return lambda key: regex.fullmatch(key) is not None
