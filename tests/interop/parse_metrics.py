#!/usr/bin/env python3
"""Parse Prometheus text exposition on stdin with the reference Python parser and print it as JSON.

The e2e admin tests pipe mcpmux's ``/metrics`` body through this script, so the format is
judged by the Prometheus project's own client library (``prometheus_client.parser``, pinned in
requirements.txt), not by the test's reading of it. Output, one JSON document on stdout:

    {"families": [{"name", "type", "help", "samples": [{"name", "labels", "value"}]}]}

A body the parser rejects exits 1 with the parser's message on stderr. Runs in the venv made
by setup.sh (``target/interop-venv``).
"""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as error:  # the parser raises ValueError and friends on bad input
        print(f"not valid Prometheus text exposition: {error!r}", file=sys.stderr)
        return 1
    out = []
    for family in families:
        samples = []
        for sample in family.samples:
            if not math.isfinite(sample.value):
                print(f"non-finite value in {sample.name}: {sample.value}", file=sys.stderr)
                return 1
            samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value})
        out.append(
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": samples,
            }
        )
    json.dump({"families": out}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
