"""Sensors: evaluate the partition-aware freshness check on a timer."""

from __future__ import annotations

import warnings

from dagster import DefaultSensorStatus, SupersessionWarning, build_sensor_for_freshness_checks

from pipelines.defs.checks import FRESHNESS_CHECKS

with warnings.catch_warnings():  # superseded along with the partition-aware checks it runs
    warnings.simplefilter("ignore", SupersessionWarning)
    FRESHNESS_SENSOR = build_sensor_for_freshness_checks(
        freshness_checks=FRESHNESS_CHECKS,
        minimum_interval_seconds=600,
        default_status=DefaultSensorStatus.RUNNING,
    )
