"""`make bench`: throughput, latency, Redis cost and memory of the service, beside limits."""
