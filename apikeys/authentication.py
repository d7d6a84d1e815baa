"""Django REST framework authentication by API key."""

from rest_framework.authentication import BaseAuthentication

from .auth import HEADER, KEYWORD, key_from_request


class APIKeyAuthentication(BaseAuthentication):
    """Authenticate by ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``:
    ``request.user`` is the key's owner and ``request.auth`` the ``APIKey``.

    Returns None for a request that sends no key, so session or token authentication can
    stand beside it; raises for a key that is sent and not usable.
    """

    header = HEADER
    keyword = KEYWORD

    def authenticate(self, request):
        key = key_from_request(request._request, self.header, self.keyword)
        return None if key is None else (key.owner, key)

    def authenticate_header(self, request):
        return f'{self.keyword} realm="api"'
