"""Run one command and write its wall time, CPU seconds and peak RSS as JSON to a file.

`python -m benchmarks.measure RESULT.json -- COMMAND...`

A separate small process on purpose: on Linux a child's `ru_maxrss` starts from the RSS of the
process that forked it (the high-water mark survives exec), so measuring straight from the
harness, which holds the expected data, would put a floor under every contender's peak RSS. This
process imports nothing heavy; the command is posix_spawn-ed from it and reaped with wait4, whose
rusage covers the command and every descendant it waited for (CPU summed; ru_maxrss is the
highest peak of any one of them, not the sum of processes that ran at once).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    result_path, command = argv[0], argv[2:]
    started_at = time.time()  # (epoch: to place the command's own timestamped events)
    started = time.perf_counter()
    pid = os.posix_spawn(command[0], command, dict(os.environ))
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    with open(result_path, "w") as out:
        json.dump(
            {
                "wall": wall,
                "cpu": usage.ru_utime + usage.ru_stime,
                "user": usage.ru_utime,
                "sys": usage.ru_stime,
                "maxrss_kb": usage.ru_maxrss,
                "returncode": code,
                "started_at": started_at,
            },
            out,
        )
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
