"""What the service says about itself: log output and masking (`logs`), Prometheus metrics
(`metrics`), and the startup paragraph on what is configured (`startup`). Every stage reports
through it, so it sits low, just above the engine.

May import: `app.engine` (the types it counts), `app.settings`, `app.errors`.
"""
