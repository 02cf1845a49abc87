"""The Dagster layer: resources, the asset, its checks, the schedule and the sensors."""
