from django.core.management.base import BaseCommand, CommandError

from apikeys import keys
from apikeys.models import APIKey
from apikeys.responses import format_timestamp


class Command(BaseCommand):
    help = (
        "Revoke an API key, named by its display prefix (the first 12 characters, e.g. "
        "fm_live_AbCd) or by the full key."
    )

    def add_arguments(self, parser):
        parser.add_argument("key", help="The key's display prefix, or the full key.")

    def handle(self, *args, key, **options):
        value = key.strip()
        # Messages show only the display prefix, even when the full key was given.
        shown = keys.display_prefix(value)
        candidates = APIKey.objects.filter(revoked_at__isnull=True).select_related("owner")
        if keys.mode_of(value):
            candidates = candidates.filter(key_hash=keys.digest(value))
        elif len(value) == keys.PREFIX_LENGTH:
            candidates = candidates.filter(prefix=value)
        else:
            raise CommandError(
                f"Give the key's {keys.PREFIX_LENGTH}-character display prefix "
                "(e.g. fm_live_AbCd) or the full key."
            )

        matches = list(candidates.order_by("created_at"))
        if not matches:
            raise CommandError(f"No unrevoked API key matches {shown!r}.")
        if len(matches) > 1:
            listing = "\n".join(
                f"  {k.name!r} of {k.owner.get_username()}, created "
                f"{format_timestamp(k.created_at)}"
                for k in matches
            )
            raise CommandError(
                f"{len(matches)} unrevoked API keys share the prefix {shown!r}:\n{listing}\n"
                "Give the full key to say which one to revoke."
            )

        api_key = matches[0]
        api_key.revoke()
        self.stdout.write(
            f"Revoked API key {api_key.name!r} ({api_key.prefix}…) of "
            f"{api_key.owner.get_username()}."
        )
