"""Raw API keys: generation, shape, display prefix and the stored digest."""

import hashlib
import re
import secrets
import string

from django.utils.crypto import constant_time_compare

ALPHABET = string.ascii_letters + string.digits
RANDOM_LENGTH = 32
PREFIX_LENGTH = 12
FAMILY_PREFIX = "fm_"
MODE_PREFIXES = {"live": "fm_live_", "test": "fm_test_"}
KEY_PATTERN = re.compile(r"fm_(live|test)_[A-Za-z0-9]{32}")
ALGORITHM = "sha256"


def generate(mode):
    """Return a new raw key for ``mode`` ("live" or "test") from the OS CSPRNG."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return MODE_PREFIXES[mode] + body


def mode_of(raw):
    """Return the mode a well-formed raw key is for, or None when it is malformed."""
    match = KEY_PATTERN.fullmatch(raw)
    return match.group(1) if match else None


def display_prefix(raw):
    return raw[:PREFIX_LENGTH]


def digest(raw):
    """Return the stored form of a raw key: ``sha256$<hex>``.

    A fast hash is right here: the key carries ~190 random bits, so there is nothing to
    brute-force, and a salt would stop the single indexed lookup by digest.
    """
    return f"{ALGORITHM}${hashlib.sha256(raw.encode()).hexdigest()}"


def matches(raw, stored):
    """Return whether ``raw`` is the key whose digest is ``stored``, in constant time."""
    return constant_time_compare(digest(raw), stored)
