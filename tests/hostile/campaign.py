"""Short (CI) or long campaign mode, chosen by the environment.

``MSGSRV_CAMPAIGN=long`` turns every bounded count of the suite into its long
value (at least 100,000 examples per decoder, 100,000 mutated frames) and
lifts the per-test timeouts accordingly.  Anything else, or unset, is the
short CI mode.  ``MSGSRV_FIGURES=PATH`` appends each measured figure to PATH
as one JSON line (docs/ROBUSTNESS.rst quotes them).
"""

import json
import os
import time

from hypothesis import HealthCheck, settings

LONG = os.environ.get("MSGSRV_CAMPAIGN", "").lower() == "long"


def pick(short, long):
    """``long`` in a long campaign, ``short`` otherwise."""
    return long if LONG else short


def timeout(seconds):
    """A per-test timeout: ``seconds`` in CI, hours in a long campaign."""
    return pick(seconds, 6 * 3600)


def examples(short=100):
    """Hypothesis settings with ``short`` examples in CI, 100,000 in a long campaign."""
    return settings(max_examples=pick(short, 100_000), deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    print_blob=True)


def record(name, **figures):
    """Note measured figures (printed; appended to $MSGSRV_FIGURES as JSON if set)."""
    line = json.dumps(dict(figures, name=name, mode=pick("short", "long"),
                           time=round(time.time())), sort_keys=True)
    print("FIGURES " + line)
    path = os.environ.get("MSGSRV_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(line + "\n")
