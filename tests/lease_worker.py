"""Holds the checker lease in a loop and prints each change of leadership (for test_lease.py).

python tests/lease_worker.py DATABASE_URL NAME TTL_SECONDS
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from bot.db import make_engine
from bot.models import utcnow
from bot.runtime import lease

if __name__ == "__main__":
    url, name, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    engine = make_engine(url)
    leader = None
    while True:
        held = lease.hold(
            engine=engine, name="checker", holder=name, ttl=timedelta(seconds=ttl), now=utcnow()
        )
        if held != leader:
            leader = held
            print(f"{time.time():.3f} {name} {'leader' if held else 'standby'}", flush=True)
        time.sleep(ttl / 6)
