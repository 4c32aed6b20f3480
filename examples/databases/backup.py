#!/usr/bin/env python3
"""qtask `exec` executor for BackupDatabases: backs up one database.

qtask runs this program once per task attempt (never through a shell). The task arrives
as one JSON document on stdin; QTASK_REQUEST_ID, QTASK_ATTEMPT, QTASK_RESOURCE_ID and
friends are in the environment. The last JSON object printed on stdout becomes the
task's result. Exit 0 = success, 75 = try again later (qtask retries with backoff),
anything else = failed for good (the end of stderr is the task's error message).

This example "backs up" the database's description into a JSON file under the
`destination` directory the caller gave. Replace the body of `backup()` with your real
work (pg_dump, an API call, an Ansible run...).
"""

import json
import os
import sys
import time

EX_TEMPFAIL = 75


def backup(task):
    params = task["params"]
    database = task["resourceId"]
    label = params["label"]
    destination = params["destination"]
    if label == "fail":
        print(f"backup of {database} refused: label 'fail' asks for a failure", file=sys.stderr)
        sys.exit(1)
    if label == "flaky" and task["attempt"] == 1:
        # A transient problem: qtask will run this again after its backoff.
        print(f"{database} is locked by another session; try again", file=sys.stderr)
        sys.exit(EX_TEMPFAIL)
    os.makedirs(destination, exist_ok=True)
    path = os.path.join(destination, f"{database}-{label}-{task['requestId']}.json")
    dump = {
        "database": database,
        "attributes": task["resource"],
        "label": label,
        "takenAt": int(time.time()),
    }
    with open(path, "w") as f:
        json.dump(dump, f)
    print(f"wrote {path}")  # progress output is fine; only the last JSON line counts
    return {"backupFile": path, "bytes": os.path.getsize(path), "attempt": task["attempt"]}


def main():
    task = json.load(sys.stdin)
    result = backup(task)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
