from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from . import keys
from .conf import get_config
from .scopes import unknown_scopes


def default_rate_limit_per_minute():
    return get_config()["DEFAULT_RATE_LIMIT_PER_MINUTE"]


def default_rate_limit_per_day():
    return get_config()["DEFAULT_RATE_LIMIT_PER_DAY"]


def validate_scopes(value):
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ValidationError("Scopes must be a list of scope names.")
    missing = unknown_scopes(value)
    if missing:
        raise ValidationError(f"Unknown scope: {', '.join(missing)}.")


class APIKeyQuerySet(models.QuerySet):
    def active(self, now=None):
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now)
        )

    def expired(self, now=None):
        return self.filter(revoked_at__isnull=True, expires_at__lte=now or timezone.now())

    def revoked(self):
        return self.filter(revoked_at__isnull=False)


class APIKeyManager(models.Manager.from_queryset(APIKeyQuerySet)):
    def assign_key(self, key):
        """Give the unsaved ``key`` a new secret for its mode; return the raw key, never stored."""
        raw = keys.generate(key.mode)
        key.prefix = keys.display_prefix(raw)
        key.key_hash = keys.digest(raw)
        return raw

    def create_key(self, *, owner, name, mode="live", scopes=(), **fields):
        """Create a key and return ``(api_key, raw_key)``; the raw key is never stored."""
        key = self.model(owner=owner, name=name, mode=mode, scopes=list(scopes), **fields)
        raw = self.assign_key(key)
        key.full_clean()
        key.save()
        return key, raw


class APIKey(models.Model):
    class Mode(models.TextChoices):
        LIVE = "live", "Live"
        TEST = "test", "Test"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    mode = models.CharField(max_length=4, choices=Mode.choices, default=Mode.LIVE)
    scopes = models.JSONField(default=list, validators=[validate_scopes])
    prefix = models.CharField(max_length=keys.PREFIX_LENGTH, db_index=True, editable=False)
    key_hash = models.CharField(max_length=128, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True, editable=False)
    rate_limit_per_minute = models.PositiveIntegerField(default=default_rate_limit_per_minute)
    rate_limit_per_day = models.PositiveIntegerField(default=default_rate_limit_per_day)

    objects = APIKeyManager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.prefix}… ({self.name})"

    @property
    def status(self):
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return self.Status.EXPIRED
        return self.Status.ACTIVE

    def revoke(self):
        """Revoke the key for good; revoking twice keeps the first time."""
        if self.revoked_at is not None:
            return
        now = timezone.now()
        if APIKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now):
            self.revoked_at = now
        else:  # already revoked through another instance: report that first time
            self.refresh_from_db(fields=["revoked_at"])

    def rotate(self):
        """Revoke this key and return ``(new_key, raw_key)`` with the same settings.

        A past expiry is not copied: the replacement of an expired key does not expire.
        All or nothing: when the new key cannot be created, this one stays usable.
        """
        expires_at = self.expires_at
        if expires_at is not None and expires_at <= timezone.now():
            expires_at = None
        with transaction.atomic():
            rotated = APIKey.objects.create_key(
                owner=self.owner,
                name=self.name,
                mode=self.mode,
                scopes=self.scopes,
                expires_at=expires_at,
                rate_limit_per_minute=self.rate_limit_per_minute,
                rate_limit_per_day=self.rate_limit_per_day,
            )
            self.revoke()
        return rotated

    def record_use(self, ip, now=None):
        """Write last_used_at/ip unless they were written within the configured interval.

        One conditional UPDATE, so concurrent requests on one key write at most once.
        """
        now = now or timezone.now()
        cutoff = now - timedelta(seconds=get_config()["LAST_USED_INTERVAL"])
        if self.last_used_at is not None and self.last_used_at > cutoff:
            return
        APIKey.objects.filter(pk=self.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lte=cutoff)
        ).update(last_used_at=now, last_used_ip=ip)
        self.last_used_at, self.last_used_ip = now, ip
