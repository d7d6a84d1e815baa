"""A kind of grant of the tests' own, to show that a new kind plugs into the stream."""

from executions.grants import BaseGrant


class UserHeaderGrant(BaseGrant):
    """``X-Test-User: <user id>`` reads that user's executions in both modes, while the
    id is in ``valid_users``; ``checks`` records how many grants each re-check was given."""

    valid_users = set()
    checks = []

    @classmethod
    def from_request(cls, request, execution_id):
        user_id = request.headers.get("X-Test-User")
        if user_id is None:
            return None
        return cls(
            owner_id=int(user_id),
            mode=None,
            scopes=["executions:read"],
            display=f"test user {user_id}",
        )

    @classmethod
    def current_scopes(cls, grants):
        cls.checks.append(len(grants))
        return {
            grant: frozenset(grant.scopes) for grant in grants if grant.owner_id in cls.valid_users
        }
