"""The tokens of unsubscribe links: one user's id, signed by `app.signing` (itsdangerous), so a
link cannot be forged, altered or moved to another user without the secret. Issued when an
email is composed, checked by `GET`/`POST /unsubscribe` (`app.web.pages.unsubscribe`)."""

from app.errors import BadToken
from app.settings import Settings
from app.signing import UnsubscribeSigner, unsubscribe_key
from app.storage.keys import valid_user_id


class UnsubscribeTokens:
    """Issues and checks the signed tokens in unsubscribe links."""

    def __init__(self, key: bytes) -> None:
        self._signer = UnsubscribeSigner(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> "UnsubscribeTokens":
        return cls(unsubscribe_key(settings))

    def issue(self, user_id: str) -> str:
        return self._signer.sign(user_id)

    def verify(self, token: str) -> str:
        """The user id the token names, or BadToken."""
        user_id = self._signer.unsign(token)
        if not valid_user_id(user_id):
            raise BadToken("invalid unsubscribe token")
        return user_id
