"""The oracle: what the load generator was told against what ClickHouse holds, per ack mode.

For each mode's table it reads every row straight from ClickHouse and counts:

- acknowledged: ids whose request was answered 200 (bad rows excluded: ClickHouse refuses them, the proxy
  dead-letters them);
- landed: acknowledged ids present in the table;
- lost: acknowledged ids absent, split into `allowed_lost` (the scenario's documented guarantee lets exactly
  these go, e.g. the ids of a spool record the suite damaged) and the rest;
- duplicated: ids present more than once (any id, acknowledged or not: nothing may land twice), and of those
  how many are inside the at-least-once window of a crash (`window`, see check_mode);
- damaged: ids whose payload or date is not the one derived from the id;
- unexpected: ids present that no request ever carried;
- bad_landed / bad_dead_lettered: the refused rows that landed (must be 0) and those found in the dead-letter
  folder;
- refused_landed: ids of requests the proxy refused for a full spool (503, code 243: "nothing written") that
  landed anyway;
- answers: requests per status (and ClickHouse code: "503/243"; 0 is no answer at all);
- unacknowledged_landed: ids not acknowledged that landed anyway (allowed: a request cut off by a crash may or
  may not land).
"""

import os
import re

from common import payload, row_date

DEAD_LETTER_ID = re.compile(rb"\((\d+),")


def dead_letter_ids(directory):
    """Ids in the data files of a dead-letter folder (Values rows `(id, ...)`)."""
    found = {}
    if not directory or not os.path.isdir(directory):
        return found
    for root, _, names in os.walk(directory):
        for name in names:
            if not name.endswith(".data"):
                continue
            with open(os.path.join(root, name), "rb") as handle:
                for match in DEAD_LETTER_ID.findall(handle.read()):
                    found[int(match)] = found.get(int(match), 0) + 1
    return found


def requested(entries, mode):
    """Per mode: acknowledged good ids, every id sent, bad ids, ids refused for a full spool, and the ids of
    requests with a 200 whose X-Batchhouse-Ack was not the table's mode."""
    acknowledged, sent, bad, refused_full, wrong_ack = set(), set(), set(), set(), set()
    for entry in entries:
        if entry["mode"] != mode:
            continue
        ids = range(entry["first"], entry["first"] + entry["count"])
        sent.update(ids)
        bad.update(entry["bad"])
        if entry["status"] == 200:
            good = [i for i in ids if i not in entry["bad"]]
            acknowledged.update(good)
            if entry.get("ack") != mode:
                wrong_ack.update(good)
        elif entry["status"] == 503 and entry.get("code") == 243:
            refused_full.update(ids)
    return acknowledged, sent, bad, refused_full, wrong_ack


def check_mode(mode, entries, rows, payload_length, allowed_lost=(), dead_letters=None, extra_ids=(), window=None):
    """`rows`: {id: [(payload, date, count)]} from ClickHouse. `extra_ids`: ids the scenario inserted besides
    the load (a warm-up row, the fresh rows after the fault; checked by the caller), left out of the counts.
    `window`: {id: n} ids that were in ClickHouse but not marked delivered in the spool when the proxy was
    killed, n the number of such kills: each may replay them once, so up to 1 + n copies are "in the window"."""
    acknowledged, sent, bad, refused_full, wrong_ack = requested(entries, mode)
    allowed_lost = set(allowed_lost)
    dead_letters = dead_letters or {}
    present = {row_id: sum(count for _, _, count in groups) for row_id, groups in rows.items()
               if row_id not in extra_ids}
    landed = acknowledged & set(present)
    lost = acknowledged - set(present)
    damaged = sorted(
        row_id for row_id, groups in rows.items() if row_id not in extra_ids and any(
            group_payload != payload(row_id, payload_length) or group_date != row_date(row_id)
            for group_payload, group_date, _ in groups)
    )
    duplicated = sorted(row_id for row_id, count in present.items() if count > 1)
    window = window or {}
    outside_window = [row_id for row_id in duplicated if present[row_id] > 1 + window.get(row_id, 0)]
    answers = {}
    for entry in entries:
        if entry["mode"] == mode:
            key = str(entry["status"]) + ("/%s" % entry["code"] if entry.get("code") is not None else "")
            answers[key] = answers.get(key, 0) + 1
    result = {
        "mode": mode,
        "answers": dict(sorted(answers.items())),
        "sent": len(sent),
        "acknowledged": len(acknowledged),
        "landed": len(landed),
        "lost": len(lost - allowed_lost),
        "lost_allowed": len(lost & allowed_lost),
        "allowed_lost_landed": len(allowed_lost & acknowledged & set(present)),
        "duplicated": len(duplicated),
        "duplicate_rows": sum(present[i] - 1 for i in duplicated),
        "duplicated_in_window": len(duplicated) - len(outside_window),
        "duplicated_outside_window": len(outside_window),
        "window": len(window),
        "damaged": len(damaged),
        "unexpected": len(set(present) - sent),
        "unacknowledged_landed": len((set(present) & sent) - acknowledged - bad),
        "bad_sent": len(bad),
        "bad_landed": len(bad & set(present)),
        "bad_dead_lettered": len([i for i in bad if i in dead_letters]),
        "good_dead_lettered": len([i for i in acknowledged if i in dead_letters]),
        "refused_full": len(refused_full),
        "refused_landed": len(refused_full & set(present)),
        "wrong_ack_header": len(wrong_ack),
        "examples": {
            "lost": sorted(lost - allowed_lost)[:10],
            "duplicated": duplicated[:10],
            "duplicated_outside_window": outside_window[:10],
            "damaged": damaged[:10],
        },
    }
    return result
