"""SecretBox: encryption at rest for provider secrets, with key rotation."""

from __future__ import annotations

import pytest

from agentserver.adapters.secrets import (
    InvalidSecretKeyError,
    MissingSecretKeyError,
    SecretBox,
    SecretDecryptionError,
    generate_key,
    require_secret_box,
)


def test_round_trip() -> None:
    box = SecretBox.from_env_value(generate_key())
    token = box.encrypt("smtp-pässword")
    assert token != "smtp-pässword"
    assert "pässword" not in token
    assert box.decrypt(token) == "smtp-pässword"
    # Fernet tokens carry a random IV: the same secret never encrypts the same way twice.
    assert box.encrypt("smtp-pässword") != token


def test_wrong_key_is_a_clear_error() -> None:
    token = SecretBox.from_env_value(generate_key()).encrypt("twilio-token")
    other = SecretBox.from_env_value(generate_key())
    with pytest.raises(SecretDecryptionError, match="cannot decrypt"):
        other.decrypt(token)
    assert other.can_decrypt(token) is False
    with pytest.raises(SecretDecryptionError):
        other.decrypt("not a token at all")


def test_rotation() -> None:
    old_key, new_key = generate_key(), generate_key()
    old_box = SecretBox.from_env_value(old_key)
    stored = old_box.encrypt("elevenlabs-key")

    # Step 1: the new key goes first, the old one stays to decrypt.
    rotating = SecretBox.from_env_value(f"{new_key}, {old_key}")
    assert rotating.key_count == 2
    assert rotating.decrypt(stored) == "elevenlabs-key"
    fresh = rotating.encrypt("another")
    assert SecretBox.from_env_value(new_key).decrypt(fresh) == "another"
    with pytest.raises(SecretDecryptionError):
        old_box.decrypt(fresh)

    # Step 2: re-encrypt the stored secret; step 3: drop the old key.
    rotated = rotating.rotate(stored)
    new_only = SecretBox.from_env_value(new_key)
    assert new_only.decrypt(rotated) == "elevenlabs-key"
    with pytest.raises(SecretDecryptionError):
        new_only.decrypt(stored)
    with pytest.raises(SecretDecryptionError):
        new_only.rotate(stored)


def test_missing_and_invalid_keys() -> None:
    with pytest.raises(MissingSecretKeyError):
        SecretBox.from_env_value("")
    with pytest.raises(MissingSecretKeyError):
        SecretBox.from_env_value(None)
    assert SecretBox.from_optional_env_value(None) is None
    assert SecretBox.from_optional_env_value(" , ") is None
    assert SecretBox.from_optional_env_value(generate_key()) is not None

    good = generate_key()
    with pytest.raises(InvalidSecretKeyError, match="#2") as caught:
        SecretBox.from_env_value(f"{good},not-a-key")
    assert good not in str(caught.value)


def test_startup_rule() -> None:
    box = SecretBox.from_env_value(generate_key())
    require_secret_box(box, encrypted_secrets_exist=True)
    require_secret_box(None, encrypted_secrets_exist=False)
    with pytest.raises(MissingSecretKeyError, match="no secret key"):
        require_secret_box(None, encrypted_secrets_exist=True)
