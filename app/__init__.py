"""Activation loops for Next.js apps built on Clerk, Upstash Redis and Resend."""

__version__ = "0.1.0"
