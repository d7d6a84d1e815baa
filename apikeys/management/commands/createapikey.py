from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apikeys.models import APIKey
from apikeys.responses import format_timestamp
from apikeys.scopes import all_bundles, expand


class Command(BaseCommand):
    help = (
        "Create an API key and print it once. The raw key is alone on the last line of "
        "output, so a script can take it with `| tail -n 1`."
    )

    def add_arguments(self, parser):
        user_model = get_user_model()
        parser.add_argument(
            "--owner",
            required=True,
            help=f"The {user_model.USERNAME_FIELD} of the user who owns the key.",
        )
        parser.add_argument("--name", required=True, help="A name to tell the key apart.")
        grant = parser.add_mutually_exclusive_group(required=True)
        grant.add_argument(
            "--scopes", help="Comma-separated scopes, e.g. workflows:read,executions:read."
        )
        grant.add_argument(
            "--bundle",
            action="append",
            help="One bundle of scopes: read-only, workflow-executor, full-access, or one "
            "the site registers.",
        )
        parser.add_argument(
            "--mode",
            choices=APIKey.Mode.values,
            default=APIKey.Mode.LIVE,
            help="live (the default) or test.",
        )
        parser.add_argument(
            "--expires-in-days", type=int, help="Days until the key expires; never by default."
        )

    def handle(self, *args, owner, name, scopes, bundle, mode, expires_in_days, **options):
        if bundle and len(bundle) > 1:
            raise CommandError(
                "Give --bundle once; to combine bundles, list their scopes in --scopes. "
                f"Known bundles: {', '.join(all_bundles())}."
            )
        if expires_in_days is not None and expires_in_days <= 0:
            raise CommandError("--expires-in-days must be a positive number of days.")
        names = [s.strip() for s in scopes.split(",") if s.strip()] if scopes is not None else []
        if scopes is not None and not names:
            raise CommandError("--scopes names no scope.")
        try:
            granted = expand(names, bundle or ())
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        user = self.find_owner(owner)
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None

        try:
            key, raw = APIKey.objects.create_key(
                owner=user, name=name, mode=mode, scopes=granted, expires_at=expires_at
            )
        except ValidationError as exc:
            raise CommandError(
                " ".join(
                    f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items()
                )
            ) from None

        if not user.is_active:
            self.stderr.write(
                f"Warning: {user.get_username()} is inactive; the key will not authenticate "
                "until the user is active again."
            )
        self.stdout.write(
            f"Created API key {key.name!r} ({key.prefix}…) for {user.get_username()}."
        )
        self.stdout.write(f"  mode:    {key.mode}")
        self.stdout.write(f"  scopes:  {', '.join(key.scopes)}")
        self.stdout.write(f"  expires: {format_timestamp(key.expires_at) or 'never'}")
        self.stdout.write("Store the key now; it cannot be shown again:")
        self.stdout.write(raw)

    @staticmethod
    def find_owner(username):
        user_model = get_user_model()
        try:
            return user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"No user with {user_model.USERNAME_FIELD} {username!r}.") from None
