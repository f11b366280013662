"""Users, roles and passwords of the dashboard.

Passwords are stored as scrypt hashes (``rqsup dashboard hash-password``):
``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``, checked in constant time.
Roles, each including the one before: ``viewer`` reads, ``operator`` acts on
jobs and queues, ``admin`` also obliterates.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("a password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(digest) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    role: str = "viewer"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"user {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if not self.password_hash.startswith("scrypt$"):
            raise ValueError(f"user {self.name!r}: password_hash must be a scrypt hash "
                             "(rqsup dashboard hash-password)")

    def may(self, role: str) -> bool:
        """Has this user at least ``role``?"""
        return ROLES.index(self.role) >= ROLES.index(role)
