#!/usr/bin/env python3
"""Independent re-implementation of the `sharegpt` plugin rules (plugins/sharegpt/src/lib.rs,
SOURCES.md §6.1), used to derive the counts asserted in host/runtime/tests/sources.rs.

The refusal check mirrors host/core/src/refusal.rs in its default `Intended` mode: the
reference pattern list, case-insensitive, searched over the whole text, with family 7's
`(\\w+\\s)+` relaxed to `(\\w+\\s)*`.

Usage: python3 tests/scripts/sharegpt_expected.py [FILE ...]
Default files: examples/data/sharegpt/sharegpt_first100.json and, when present,
../shared/data/sft/sharegpt/sharegpt_v3_first2000.json (paths relative to the workspace root).
"""
import collections
import json
import os
import re
import sys
import uuid

PATTERNS = [
    r"(against|violate) my programming",
    r"openai",
    r"language model",
    r"large language",
    r"as an? (ai|generative language|gpt|bot)",
    r"important to note",
    r"i do(n't| not) (possess|have|exhibit) (personal|consciousness|subjective)",
    r"personal (feelings|thoughts|emotions|desires|experiences|goals|objective|belief)",
    r"(can('t| ?not)|w(on't|will not)|unable.?) (\w+\s)+(with (that|your)|your \w+|provide)",
    r"my limitations",
    r"the limitations of my",
    r"my abilities",
    r"violates my",
    r"i (can('t| ?not)|w(on't|will not)|am (not |un)able.?).{0,30}(you are|you're|your )",
    r"please note that",
    r"unethical|illegal|dangerous",
    r"a text-based",
    r"(engag(e|ing)|participat(e|ing)|be involved (in|with)|promot(e|ing)|discuss(ing)?|provid(e|ing))( in)?(\s*\w+ that)?(\s+potentially)? (derogatory|inappropriate|offensive|discriminate|discriminatory|sexist|unacceptable|immoral|unethical|unacceptable|hateful|harmful)",
    r"i am commited to",
    r"adhere to safety guidelines",
    r"maintain user safety",
    r"about something else instead",
]
REFUSAL = re.compile(
    "|".join("(?:%s)" % p.replace(r") (\w+\s)+(with", r") (\w+\s)*(with") for p in PATTERNS),
    re.IGNORECASE,
)


def convert(rec):
    """Rules 1-6 of the plugin: returns (turns, None) or (None, reason)."""
    turns = [(t["from"], t["value"]) for t in rec["conversations"]]
    if not turns:
        return None, "empty conversation"
    if turns[0][0] == "system" and turns[0][1].strip() == "":
        turns = turns[1:]
    start = 1 if turns and turns[0][0] == "system" else 0
    if len(turns) <= start or turns[start][0] != "human":
        return None, "first turn is not human"
    for k, (frm, _) in enumerate(turns[start:]):
        if frm != ("human" if k % 2 == 0 else "gpt"):
            return None, "roles do not alternate"
    if any(v.strip() == "" for _, v in turns):
        return None, "empty value"
    if turns[-1][0] == "human":
        turns = turns[:-1]
    if len(turns) - start < 2:
        return None, "no human/gpt pair"
    return turns, None


def run(path):
    records = json.load(open(path, encoding="utf-8"))
    outcomes = collections.Counter()
    kept = []
    for i, rec in enumerate(records):
        turns, why = convert(rec)
        if why is None and any(f == "gpt" and REFUSAL.search(v) for f, v in turns):
            why = "refusal"
        outcomes[why or "kept"] += 1
        if why is None:
            kept.append((i, "\n".join(v for f, v in turns if f == "human")))
    keys = {uuid.uuid5(uuid.NAMESPACE_OID, k) for _, k in kept}
    print(f"{path}: {len(records)} records")
    for k, n in sorted(outcomes.items()):
        print(f"  {k}: {n}")
    print(f"  distinct keys among kept: {len(keys)}")
    print(f"  kept rows: {[i for i, _ in kept]}" if len(records) <= 100 else f"  first kept rows: {[i for i, _ in kept[:20]]}")


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    paths = sys.argv[1:] or [
        os.path.join(root, "examples/data/sharegpt/sharegpt_first100.json"),
        os.path.join(root, "../shared/data/sft/sharegpt/sharegpt_v3_first2000.json"),
    ]
    for p in paths:
        if os.path.exists(p):
            run(os.path.normpath(p))
        else:
            print(f"skipping: {p} not found")


if __name__ == "__main__":
    main()
