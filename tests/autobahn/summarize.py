"""Summarises a kosoku/Autobahn fuzzingclient report (DIR/index.json) and gates on it.

Exit status 0 when every case's `behavior` and `behaviorClose` is acceptable (OK, NON-STRICT,
INFORMATIONAL) and every required case group ran; 1 otherwise. UNIMPLEMENTED fails: herald
negotiates permessage-deflate, so the compression cases (12.*, 13.*) must pass too.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ACCEPTABLE = {"OK", "NON-STRICT", "INFORMATIONAL"}
# Case groups that must be present in the report (1-7: framing, pings, reserved bits, opcodes,
# fragmentation, UTF-8, closing; 9: limits/performance with large messages; 10: auto-fragmentation;
# 12, 13: permessage-deflate).
REQUIRED_GROUPS = {"1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"}


def main(report_dir: str) -> int:
    index_path = Path(report_dir) / "index.json"
    if not index_path.is_file():
        print(f"autobahn: no report at {index_path}", file=sys.stderr)
        return 1
    index = json.loads(index_path.read_text())
    cases = {case_id: entry for agent in index.values() for case_id, entry in agent.items()}
    if not cases:
        print("autobahn: the report has no cases", file=sys.stderr)
        return 1

    behavior = Counter(entry["behavior"] for entry in cases.values())
    close = Counter(entry["behaviorClose"] for entry in cases.values())
    groups = Counter(case_id.split(".")[0] for case_id in cases)

    def key(case_id: str) -> tuple[int, ...]:
        return tuple(int(part) for part in case_id.split("."))

    print(f"autobahn: {len(cases)} cases in {index_path}")
    print("  by group:    " + ", ".join(f"{g}.*={groups[g]}" for g in sorted(groups, key=int)))
    print("  behavior:    " + ", ".join(f"{b}={n}" for b, n in sorted(behavior.items())))
    print("  close:       " + ", ".join(f"{b}={n}" for b, n in sorted(close.items())))

    bad = sorted(
        (
            case_id
            for case_id, entry in cases.items()
            if entry["behavior"] not in ACCEPTABLE or entry["behaviorClose"] not in ACCEPTABLE
        ),
        key=key,
    )
    for case_id in bad:
        entry = cases[case_id]
        print(
            f"  FAILED {case_id}: behavior={entry['behavior']} "
            f"behaviorClose={entry['behaviorClose']} remoteCloseCode={entry.get('remoteCloseCode')} "
            f"(details: {Path(report_dir) / entry['reportfile']})"
        )
    for case_id in sorted(cases, key=key):
        entry = cases[case_id]
        if entry["behavior"] in {"NON-STRICT", "INFORMATIONAL"}:
            print(f"  note {case_id}: behavior={entry['behavior']} remoteCloseCode={entry.get('remoteCloseCode')}")

    missing = sorted(REQUIRED_GROUPS - set(groups), key=int)
    if missing:
        print(f"autobahn: required case groups did not run: {', '.join(missing)}", file=sys.stderr)
    print(f"autobahn: {len(cases) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
