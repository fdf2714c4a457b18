"""Clerk's user events and the user profile we keep from them.

Only what loops and templates need is kept: `private_metadata`, phone numbers and external accounts
never reach storage.
"""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.storage.keys import USER_ID_PATTERN
from app.storage.records import UserProfile

# Epoch values below this are seconds, above it milliseconds: 1e11 s is the year 5138, 1e11 ms 1973.
_SECONDS_UPPER_BOUND = 10**11


def to_epoch_ms(value: int | float | None) -> int | None:
    """Clerk sends epoch milliseconds; older payloads and hand-made ones send seconds."""
    if value is None:
        return None
    return int(value * 1000) if value < _SECONDS_UPPER_BOUND else int(value)


class EventType(StrEnum):
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DELETED = "user.deleted"


class _Lenient(BaseModel):
    # Clerk adds fields over time; unknown ones are not an error in a payload we do not own.
    model_config = ConfigDict(extra="ignore")


class ClerkEmailAddress(_Lenient):
    id: str
    email_address: str


class ClerkUser(_Lenient):
    """`data` of `user.created` / `user.updated`."""

    id: str = Field(pattern=USER_ID_PATTERN)
    email_addresses: list[ClerkEmailAddress] = Field(default_factory=list)
    primary_email_address_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    image_url: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    public_metadata: dict[str, Any] | None = None
    unsafe_metadata: dict[str, Any] | None = None

    @field_validator("first_name", "last_name", "username", "image_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    def primary_email(self) -> str | None:
        """The entry whose id is `primary_email_address_id`; None when null or dangling."""
        for address in self.email_addresses:
            if address.id == self.primary_email_address_id:
                return address.email_address
        return None

    def to_profile(self) -> UserProfile:
        return UserProfile(
            id=self.id,
            email=self.primary_email(),
            first_name=self.first_name,
            last_name=self.last_name,
            username=self.username,
            image_url=self.image_url,
            created_at=to_epoch_ms(self.created_at),
            updated_at=to_epoch_ms(self.updated_at),
            public_metadata=self.public_metadata or {},
            unsafe_metadata=self.unsafe_metadata or {},
        )


class ClerkDeletedUser(_Lenient):
    """`data` of `user.deleted`."""

    id: str = Field(pattern=USER_ID_PATTERN)


class ClerkEvent(_Lenient):
    """The envelope of every Clerk webhook; `data` is parsed by type once it is known."""

    type: str = Field(min_length=1)
    data: dict[str, Any]
    timestamp: float | None = None
    instance_id: str | None = None

    @property
    def timestamp_ms(self) -> int | None:
        return to_epoch_ms(self.timestamp)
