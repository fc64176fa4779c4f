"""Login for the dashboard: hashed secrets, server-side sessions, CSRF tokens.

* The password (for the login form) is stored in the config only as an scrypt
  hash with a random salt ("scrypt$N$r$p$salt$hash"), made by `hash_secret()`
  (`python -m skynet.dashboard hash-secret`): a password a human chose must
  be slow to guess from a leaked config.
* The token (for scripts: `Authorization: Bearer`) is 256 random bits made by
  `new_token()` (`python -m skynet.dashboard new-token`), stored as its SHA-256
  ("sha256$HEX"). Nobody can guess 256 random bits, offline or not, so a slow
  hash buys nothing there, while it cost about 0.1 s of CPU per wrong token a
  client cared to send; checking one is now a hash and `hmac.compare_digest`.
  Tokens stored as scrypt hashes by earlier versions still work (with a
  warning at start); wrong ones are throttled like passwords.
* Sessions are random 256-bit tokens kept server-side (only their SHA-256 is
  stored); the cookie is HttpOnly and SameSite=Strict, so another site can
  neither read it nor make the browser send it. Restarting the dashboard logs
  everybody out, which is acceptable for a read-only tool.
* The login form is a POST: it carries a random CSRF token that must match a
  SameSite=Strict cookie set with the form (double submit), and a cross-origin
  Origin header is refused outright. Failed logins and wrong tokens are
  rate-limited per client address by one LoginThrottle.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
import time

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_LEN = 32
_MAXMEM = 128 * SCRYPT_R * SCRYPT_N * 2


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(plain: str) -> str:
    """Hash a password or token for the config (scrypt, random 16-byte salt)."""
    if not plain:
        raise ValueError("the secret must not be empty")
    salt = os.urandom(16)
    digest = hashlib.scrypt(plain.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_MAXMEM, dklen=SCRYPT_LEN)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify(plain: str, stored: str | None) -> bool:
    """True if `plain` matches the hash `stored` (constant-time compare)."""
    if not plain or not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        if n_ > 2**20 or r_ > 32 or p_ > 16:  # refuse a hash that would eat the machine
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(plain.encode(), salt=_unb64(salt), n=n_, r=r_, p=p_,
                             maxmem=128 * r_ * n_ * 2 + (1 << 20), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Sessions:
    """Random session tokens, kept server-side with an absolute lifetime."""

    def __init__(self, lifetime: float = 12 * 3600, max_sessions: int = 1000) -> None:
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._live: dict[str, float] = {}  # sha256(token) -> expiry (time.time())
        self._key = os.urandom(32)  # for CSRF tokens bound to a session

    def create(self) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            if len(self._live) >= self.max_sessions:
                self._live = {k: v for k, v in self._live.items() if v > now}
                while len(self._live) >= self.max_sessions:
                    self._live.pop(min(self._live, key=self._live.__getitem__))
            self._live[_sha(token)] = now + self.lifetime
        return token

    def valid(self, token: str | None) -> bool:
        if not token or len(token) > 200:
            return False
        key = _sha(token)
        with self._lock:
            exp = self._live.get(key)
            if exp is None:
                return False
            if exp < time.time():
                del self._live[key]
                return False
            return True

    def drop(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._live.pop(_sha(token), None)

    def csrf_for(self, token: str) -> str:
        """The CSRF token of a logged-in session (for its logout form)."""
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()


TOKEN_SCHEME = "sha256$"
_TOKEN_HASH = re.compile(r"sha256\$[0-9a-f]{64}")


def new_token() -> tuple[str, str]:
    """(token, hash): a random Bearer token for scripts, and what the config
    stores (dashboard_token_hash). The token itself is not kept anywhere."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    """"sha256$HEX" of a token. Only for tokens made by new_token(): a hash
    this fast is safe for 256 random bits, not for a word a human picked."""
    return TOKEN_SCHEME + hashlib.sha256(token.encode()).hexdigest()


def is_token_hash(stored: str) -> bool:
    return bool(_TOKEN_HASH.fullmatch(stored))


class TokenCheck:
    """Checks a Bearer token against the configured hash.

    A "sha256$" hash costs one SHA-256 and a constant-time compare per check.
    A legacy scrypt hash (hash_secret() of a token) is still accepted; good
    tokens are then remembered (their SHA-256 only) so that a script polling
    the JSON pays one scrypt, not one per request. Wrong tokens still cost an
    scrypt each there: the caller throttles them."""

    def __init__(self, stored_hash: str | None) -> None:
        self.stored_hash = stored_hash or None
        self._ok: set[str] = set()
        self._lock = threading.Lock()

    @property
    def legacy(self) -> bool:
        """True when the stored hash is scrypt (slow for every wrong token)."""
        return bool(self.stored_hash) and not is_token_hash(self.stored_hash or "")

    def check(self, token: str) -> bool:
        if not self.stored_hash or not token or len(token) > 500:
            return False
        if not self.legacy:
            return hmac.compare_digest(hash_token(token), self.stored_hash)
        key = _sha(token)
        with self._lock:
            if key in self._ok:
                return True
        if verify(token, self.stored_hash):
            with self._lock:
                if len(self._ok) < 100:
                    self._ok.add(key)
            return True
        return False


TokenCache = TokenCheck  # the name earlier versions used


class LoginThrottle:
    """At most `limit` failures per client address per `window` seconds: wrong
    passwords on the login form and wrong Bearer tokens count alike, so that
    neither door is a way around the other's limit."""

    def __init__(self, limit: int = 10, window: float = 300.0) -> None:
        self.limit = limit
        self.window = window
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, who: str) -> bool:
        now = time.time()
        with self._lock:
            recent = [t for t in self._fails.get(who, []) if now - t < self.window]
            if recent:
                self._fails[who] = recent
            else:
                self._fails.pop(who, None)
            return len(recent) >= self.limit

    def failed(self, who: str) -> None:
        with self._lock:
            if len(self._fails) > 10_000:
                self._fails.clear()
            self._fails.setdefault(who, []).append(time.time())

    def succeeded(self, who: str) -> None:
        with self._lock:
            self._fails.pop(who, None)
