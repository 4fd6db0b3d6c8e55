"""Console accounts: roles, scrypt password hashes, sessions and login lockout, in Redis.

* Roles: ``viewer`` reads everything but message texts; ``operator`` also acts (stops
  links, cancels batches, retries dead letters) and may read a message's text (audited).
* Passwords: hashlib.scrypt with a random 16-byte salt, n=2**14, r=8, p=1 (RFC 7914's
  interactive-login parameters: about 16 MB and tens of milliseconds per check), stored
  with their parameters so they can be raised later.  Managed with `gateway users`.
* Sessions: a random 256-bit cookie value; Redis keeps only its SHA-256 (a dump of
  Redis gives no usable cookie), with the user, role and a CSRF token, for
  ``SESSION_SECONDS``.  The console sends the CSRF token in ``X-CSRF-Token`` with every
  action; the cookie is HttpOnly and SameSite=Strict.
* Lockout: ``MAX_FAILED_LOGINS`` failures within ``LOCKOUT_SECONDS`` lock the account
  for the rest of that window (counted in Redis, so fleet-wide).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gateway.store.keys import Keys

__all__ = ["ROLES", "AccountError", "LoginRefused", "Session", "add_user", "check_login",
           "end_session", "find_session", "list_users", "remove_user", "set_password"]

ROLES = ("viewer", "operator")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# A duty shift (8 h): a console left open overnight asks for the password again.
SESSION_SECONDS = 8 * 3600
# Five tries per quarter hour: enough for typos, too few to guess a password.
MAX_FAILED_LOGINS = 5
LOCKOUT_SECONDS = 15 * 60
MIN_PASSWORD_CHARS = 10
_USER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class AccountError(Exception):
    """A bad account request (unknown user, weak password, bad role)."""


class LoginRefused(Exception):
    """Wrong user or password, or the account is locked; `locked` says which."""

    def __init__(self, message: str, *, locked: bool = False) -> None:
        super().__init__(message)
        self.locked = locked


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    csrf_token: str
    cookie: str = ""  # only right after login: the value for Set-Cookie


def hash_password(password: str, salt: bytes | None = None) -> dict[str, Any]:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return {"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(), "hash": digest.hex()}


def verify_password(password: str, record: dict[str, Any]) -> bool:
    digest = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(record["salt"]), n=int(record["n"]),
                            r=int(record["r"]), p=int(record["p"]), dklen=32)
    return hmac.compare_digest(digest.hex(), record["hash"])


def _check_new(user: str, password: str, role: str) -> None:
    if not _USER_NAME.match(user):
        raise AccountError("user names are 1-64 letters, digits, dot, dash or underscore")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"passwords have at least {MIN_PASSWORD_CHARS} characters")


async def add_user(redis: Any, keys: Keys, user: str, password: str, role: str) -> None:
    _check_new(user, password, role)
    record = {"role": role, "created_at": round(time.time(), 3), **hash_password(password)}
    if not await redis.hsetnx(keys.users, user, json.dumps(record)):
        raise AccountError(f"user {user!r} exists (use `gateway users passwd`)")


async def set_password(redis: Any, keys: Keys, user: str, password: str, role: str | None = None) -> None:
    raw = await redis.hget(keys.users, user)
    if raw is None:
        raise AccountError(f"no user {user!r}")
    record = json.loads(raw)
    _check_new(user, password, role or record["role"])
    record.update(hash_password(password))
    if role:
        record["role"] = role
    await redis.hset(keys.users, user, json.dumps(record))
    await redis.delete(keys.login_failures(user))


async def remove_user(redis: Any, keys: Keys, user: str) -> None:
    if not await redis.hdel(keys.users, user):
        raise AccountError(f"no user {user!r}")


async def list_users(redis: Any, keys: Keys) -> list[dict[str, Any]]:
    rows = []
    for user, raw in sorted((await redis.hgetall(keys.users)).items()):
        record = json.loads(raw)
        rows.append({"user": user, "role": record["role"], "created_at": record.get("created_at")})
    return rows


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("ascii", "replace")).hexdigest()


async def check_login(redis: Any, keys: Keys, user: str, password: str) -> Session:
    """A new session for a right password; LoginRefused otherwise (counted for lockout)."""
    failures_key = keys.login_failures(user[:64])
    failures = int(await redis.get(failures_key) or 0)
    if failures >= MAX_FAILED_LOGINS:
        ttl = await redis.ttl(failures_key)
        raise LoginRefused(f"account locked after {failures} failed logins; try again in "
                           f"{max(1, (ttl if ttl and ttl > 0 else LOCKOUT_SECONDS) // 60)} min", locked=True)
    raw = await redis.hget(keys.users, user) if _USER_NAME.match(user) else None
    record = json.loads(raw) if raw else None
    # An unknown user costs a hash too, so timing does not tell which names exist.
    ok = verify_password(password, record) if record else (verify_password(password, _DUMMY) and False)
    if not ok:
        if await redis.incr(failures_key) == 1:
            # The window starts at the first failure (EXPIRE NX needs Redis 7; 6.2 is supported).
            await redis.expire(failures_key, LOCKOUT_SECONDS)
        raise LoginRefused("wrong user name or password")
    assert record is not None
    await redis.delete(failures_key)
    cookie = secrets.token_urlsafe(32)
    session = Session(user=user, role=record["role"], csrf_token=secrets.token_urlsafe(24), cookie=cookie)
    await redis.set(keys.login_session(_digest(cookie)),
                    json.dumps({"user": user, "role": session.role, "csrf": session.csrf_token}),
                    ex=SESSION_SECONDS)
    return session


async def find_session(redis: Any, keys: Keys, cookie: str) -> Session | None:
    if not cookie or len(cookie) > 128:
        return None
    raw = await redis.get(keys.login_session(_digest(cookie)))
    if raw is None:
        return None
    data = json.loads(raw)
    # The role is read again: a role changed or an account removed takes effect at once.
    user_raw = await redis.hget(keys.users, data["user"])
    if user_raw is None:
        return None
    return Session(user=data["user"], role=json.loads(user_raw)["role"], csrf_token=data["csrf"])


async def end_session(redis: Any, keys: Keys, cookie: str) -> None:
    await redis.delete(keys.login_session(_digest(cookie)))


_DUMMY = hash_password("dummy-password-for-timing", salt=b"\x00" * 16)
