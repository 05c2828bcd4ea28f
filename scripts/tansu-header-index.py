#!/usr/bin/env python3
"""Add the index tansu 0.6's SQLite storage lacks: header(topition, offset_id).

tansu fetches each record's headers with a query joining `header` on
(topition, offset_id), and its schema (tansu-storage 0.6.0,
src/ddl/040-header.sql) declares no key or index on those columns, so every
record fetched scans the whole header table: reading a topic costs O(n^2).
Our Kafka sink sends one header per event, so a 200k-event topic read back at
~70 messages/s (a 100k-request soak could not be verified in 15 minutes);
with this index, the same 202,632 messages were read in 18 s.

Usage: tansu-header-index.py PATH/TO/tansu.db   (safe while tansu runs:
SQLite locks; waits up to 30 s for the schema to exist.)
"""
import sqlite3
import sys
import time


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    deadline = time.monotonic() + 30
    while True:
        try:
            db = sqlite3.connect(sys.argv[1], timeout=30)
            db.execute(
                "create index if not exists custos_header_by_record"
                " on header (topition, offset_id)"
            )
            db.commit()
            db.close()
            return 0
        except sqlite3.OperationalError as e:
            # tansu creates its schema at start; wait for the table.
            if "no such table" not in str(e) or time.monotonic() > deadline:
                print(f"tansu-header-index: {e}", file=sys.stderr)
                return 1
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
