"""The upstream: LAAFFIC's AI-Agent group-call task API (client, models, errors, simulator)."""
