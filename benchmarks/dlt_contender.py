"""dlt 1.31, the usual peer: its `rest_api` source paging the same API into the same Postgres.

A `days` resource yields one creation window per account-local day; the `group_call_tasks`
rest_api resource is its child: `POST /voice/group/call/query` with `current`/`size` in the JSON
body (`PageNumberPaginator(page_body_path="current")`, stopping at `data.pages`), every request
signed by a custom auth class, records at `data.records`. An `add_map` splits the three fee
strings into exact amount + currency (and reads `agentFee` as a Decimal); `merge` on `taskId`.
Its fastest Postgres settings: `loader_file_format="csv"` (COPY), intermediate-file compression
off, telemetry off, the pipeline's working directory in a temporary folder.

`python -m benchmarks.dlt_contender --base-url URL --database-url URL --first-day D --last-day D
 --pipelines-dir DIR`
"""

from __future__ import annotations

import os

# dlt reads its configuration from the environment when it is imported and used.
os.environ.setdefault("DATA_WRITER__DISABLE_COMPRESSION", "true")
os.environ.setdefault("NORMALIZE__DATA_WRITER__DISABLE_COMPRESSION", "true")
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dlt
from dlt.common.configuration.specs import configspec
from dlt.common.typing import TSecretStrValue
from dlt.sources.helpers.rest_client.auth import AuthConfigBase
from dlt.sources.helpers.rest_client.paginators import PageNumberPaginator
from dlt.sources.rest_api import rest_api_source
from requests import PreparedRequest

from benchmarks.contender_cli import contender_parser
from pipelines.laaffic.client import QUERY_PATH, sign

DATASET = "laaffic"
TABLE = "group_call_tasks"
FEE = re.compile(r"(-?\d+(?:\.\d+)?)\(([A-Z]{3})\)")
FEES = (
    ("groupCallPayFee", "group_call_pay_fee"),
    ("smsPayFee", "sms_pay_fee"),
    ("taskSumPayFee", "task_sum_pay_fee"),
)


@configspec
class LaafficSignedAuth(AuthConfigBase):
    """Signs every request afresh: `Sign = md5(key + secret + timestamp)`."""

    api_key: str = None
    api_secret: TSecretStrValue = None

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        timestamp = str(int(time.time()))
        request.headers["Api-Key"] = self.api_key
        request.headers["Timestamp"] = timestamp
        request.headers["Sign"] = sign(self.api_key, self.api_secret, timestamp)
        return request


def split_fees(item: dict[str, Any]) -> dict[str, Any]:
    """ "0.034827(USD)" -> amount Decimal("0.034827"), currency "USD" (for the three fees)."""
    for field, column in FEES:
        match = FEE.fullmatch(item.pop(field, None) or "")
        item[f"{column}_amount"] = Decimal(match[1]) if match else None
        item[f"{column}_currency"] = match[2] if match else None
    agent_fee = item.get("agentFee")
    item["agentFee"] = Decimal(agent_fee) if agent_fee else None
    return item


def source(base_url: str, api_key: str, api_secret: str, first_day: date, last_day: date) -> Any:
    @dlt.resource(name="days", selected=False)
    def days() -> Iterator[list[dict[str, str]]]:
        # rest_api iterates over each parent data item, so the days go out as one list.
        count = (last_day - first_day).days + 1
        yield [{"day": (first_day + timedelta(days=n)).isoformat()} for n in range(count)]

    rest = rest_api_source(
        {
            "client": {
                "base_url": base_url,
                "headers": {"Content-Type": "application/json;charset=UTF-8"},
                "auth": LaafficSignedAuth(api_key=api_key, api_secret=api_secret),
            },
            "resources": [
                days,
                {
                    "name": TABLE,
                    "primary_key": "taskId",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": QUERY_PATH.lstrip("/"),
                        "method": "POST",
                        "json": {
                            "current": 1,
                            "size": 100,
                            "params": {
                                "strTime": "{resources.days.day} 00:00:00",
                                "endTime": "{resources.days.day} 23:59:59",
                                "taskType": 3,
                                "statusList": [],
                            },
                        },
                        "paginator": PageNumberPaginator(
                            base_page=1, page_body_path="current", total_path="data.pages"
                        ),
                        "data_selector": "data.records",
                    },
                },
            ],
        },
        name="laaffic",
    )
    rest.resources[TABLE].add_map(split_fees)
    return rest.with_resources(TABLE)


def dlt_credentials_url(url: str) -> str:
    """The URL in a form dlt's credentials accept (libpq reads it the same way)."""
    parts = urlsplit(url)
    if not parts.password:
        # dlt insists on a password even for trust/peer authentication (which ignores it).
        os.environ.setdefault("DESTINATION__POSTGRES__CREDENTIALS__PASSWORD", "unused")
    if not parts.hostname:
        # A Unix-socket URL (`…@/db?host=/socket/dir`): dlt insists on a host too; libpq lets
        # the `host` query parameter override it.
        user = parts.netloc.rpartition("@")[0]
        parts = parts._replace(netloc=f"{user}@localhost" if user else "localhost")
    return urlunsplit(parts)


def run(
    base_url: str,
    api_key: str,
    api_secret: str,
    database_url: str,
    first_day: date,
    last_day: date,
    pipelines_dir: str,
) -> dict[str, Any]:
    database_url = dlt_credentials_url(database_url)
    pipeline = dlt.pipeline(
        pipeline_name="laaffic_bench",
        destination=dlt.destinations.postgres(credentials=database_url),
        dataset_name=DATASET,
        pipelines_dir=pipelines_dir,
        progress=None,
    )
    info = pipeline.run(
        source(base_url.rstrip("/") + "/", api_key, api_secret, first_day, last_day),
        loader_file_format="csv",
    )
    info.raise_on_failed_jobs()
    steps = {
        step.step: round((step.finished_at - step.started_at).total_seconds(), 3)
        for step in pipeline.last_trace.steps
        if step.finished_at is not None
    }
    return {"load_packages": len(info.load_packages), "table": f"{DATASET}.{TABLE}", **steps}


def main(argv: list[str] | None = None) -> int:
    parser = contender_parser(__doc__)
    parser.add_argument("--pipelines-dir", required=True)
    args = parser.parse_args(argv)
    result = run(
        args.base_url,
        args.api_key,
        args.api_secret,
        args.database_url,
        args.first_day,
        args.last_day,
        args.pipelines_dir,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
