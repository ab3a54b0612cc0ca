"""Encryption at rest for provider secrets (SMTP passwords, Twilio and ElevenLabs keys).

`SecretBox` wraps `cryptography.fernet.MultiFernet` (AES-128-CBC + HMAC-SHA256 with a
timestamp, authenticated): the *first* key encrypts, every key decrypts. Rotating keys
is therefore:

1. prepend a new key to the configured list (``"new,old"``) and restart every replica;
2. re-encrypt stored secrets with `SecretBox.rotate` (decrypts with any key, encrypts
   with the new one);
3. drop the old key.

Startup check: the server must refuse to start when encrypted tenant secrets exist but
no key is configured (otherwise every real channel would fail at send time). The
configuration layer calls `require_secret_box(box, encrypted_secrets_exist=...)`, and
can sample one stored token with `SecretBox.can_decrypt` to catch a wrong key early.

No error message here ever contains key material or plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretsError(Exception):
    """Base of secret-handling failures."""


class MissingSecretKeyError(SecretsError):
    """No encryption key is configured, but one is needed."""


class InvalidSecretKeyError(SecretsError):
    """A configured key is not a valid Fernet key."""


class SecretDecryptionError(SecretsError):
    """A stored secret cannot be decrypted with any configured key (wrong key, or
    the value was corrupted or never encrypted by us)."""


def generate_key() -> str:
    """A fresh random key, in the text form `SecretBox.from_env_value` accepts."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypts and decrypts short secrets with one or more Fernet keys.

    The first key is the primary (used to encrypt); the others only decrypt, which is
    what makes rotation possible without downtime.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise MissingSecretKeyError("no secret encryption key configured")
        fernets: list[Fernet] = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key.strip().encode("ascii")))
            except (ValueError, UnicodeEncodeError) as exc:
                # Name the position, never the key itself.
                raise InvalidSecretKeyError(
                    f"secret key #{index + 1} is not a valid Fernet key "
                    "(32 url-safe base64-encoded bytes; make one with generate_key())"
                ) from exc
        self._fernet = MultiFernet(fernets)
        self._key_count = len(fernets)

    @classmethod
    def from_env_value(cls, value: str | None) -> SecretBox:
        """Build from a comma-separated key list, primary first: ``"key1,key2"``.

        Blank entries are ignored; an empty or missing value raises
        `MissingSecretKeyError`.
        """
        keys = [part.strip() for part in (value or "").split(",") if part.strip()]
        return cls(keys)

    @classmethod
    def from_optional_env_value(cls, value: str | None) -> SecretBox | None:
        """Like `from_env_value`, but `None` when no key is configured at all."""
        if value is None or not value.strip(" ,"):
            return None
        return cls.from_env_value(value)

    @property
    def key_count(self) -> int:
        """How many keys are configured (1 + those kept only to decrypt)."""
        return self._key_count

    def encrypt(self, plaintext: str) -> str:
        """Encrypt with the primary key; the result is URL-safe ASCII text."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """Decrypt with whichever configured key fits.

        Raises `SecretDecryptionError` when none does.
        """
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError) as exc:
            raise SecretDecryptionError(
                "cannot decrypt a stored secret with the configured key(s): "
                "the key is wrong or missing from the list, or the value is corrupt"
            ) from exc

    def rotate(self, token: str) -> str:
        """Re-encrypt `token` under the primary key (for key rotation)."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError) as exc:
            raise SecretDecryptionError(
                "cannot re-encrypt a stored secret: no configured key decrypts it"
            ) from exc

    def can_decrypt(self, token: str) -> bool:
        """Whether some configured key decrypts `token` (a cheap startup probe)."""
        try:
            self.decrypt(token)
        except SecretDecryptionError:
            return False
        return True


def require_secret_box(box: SecretBox | None, *, encrypted_secrets_exist: bool) -> None:
    """The startup rule: stored encrypted secrets need a key to read them.

    Raises `MissingSecretKeyError` when `encrypted_secrets_exist` and `box` is None.
    """
    if encrypted_secrets_exist and box is None:
        raise MissingSecretKeyError(
            "tenant provider secrets are stored encrypted but no secret key is "
            "configured; set the secret key list (the key(s) they were encrypted with)"
        )
