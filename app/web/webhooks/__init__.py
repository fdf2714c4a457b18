"""`POST /webhooks/clerk` (Clerk's user events: `clerk`) and `POST /webhooks/resend` (Resend's
delivery events: `resend`), both Svix-signed (`svix`: the signature and timestamp check, the
delivery id, the envelope parsed in one pass)."""
