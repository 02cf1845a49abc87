"""The end-to-end benchmark's report: what it prints must say what was measured."""

from __future__ import annotations

import pytest

from benchmarks.e2e import Summary, parse_args, report


def _summary(contender: str, wall: float) -> Summary:
    return Summary(
        contender=contender,
        runs=1,
        ok=1,
        rows=2000,
        wall=wall,
        rows_per_second=2000 / wall,
        cpu=1.0,
        rss_mb=100.0,
        api_cpu=0.0,
        db_cpu=None,
        extra={"rows_rewritten_xmin": 0, "sync_log_inserted": 0, "sync_log_updated": 0},
    )


def test_a_resync_slower_than_the_first_sync_is_not_called_faster() -> None:
    text = report(
        {
            "pipeline": _summary("pipeline", 4.0),
            "pipeline resync": _summary("pipeline resync", 8.0),
        },
        "header",
    )
    line = next(line for line in text.splitlines() if line.startswith("resync"))
    assert "faster" not in line
    assert "2.00x slower than the first sync" in line


def test_a_faster_resync_is_called_faster() -> None:
    text = report(
        {
            "pipeline": _summary("pipeline", 8.0),
            "pipeline resync": _summary("pipeline resync", 4.0),
        },
        "header",
    )
    assert "2.00x faster than the first sync" in text


def test_a_contender_named_twice_is_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each contender gets its own database named after it: a second one of the same name met
    DuplicateDatabase half way through the run, after the first had been measured."""
    with pytest.raises(SystemExit) as exited:
        parse_args(["--contenders", "pipeline,baseline,pipeline"])
    assert exited.value.code == 2
    assert "--contenders: 'pipeline' named twice" in capsys.readouterr().err
