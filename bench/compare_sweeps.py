"""Two runs of the same sweep grid, point by point: identical transcripts, error counts and sizes, or not.
For a change that must not change behaviour (bench/grids/refactor-check.toml, run before and after it).

    python -m bench.compare_sweeps BEFORE_DIR AFTER_DIR --before-commit X --after-commit Y [--out refactor-check]
"""

from __future__ import annotations

import argparse

from bench.common import write_results
from engine.workflows.sweep.records import PointLog

COMPARED = ("wer", "errors", "words", "hypotheses", "size_bytes")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--before-commit", default="?")
    parser.add_argument("--after-commit", default="?")
    parser.add_argument("--out", default="refactor-check")
    args = parser.parse_args(argv)
    # Keys hash the folders' absolute paths, which differ between checkouts: points are matched by label.
    before = {r["label"]: r for r in PointLog(args.before).records().values()}
    after = {r["label"]: r for r in PointLog(args.after).records().values()}
    rows = []
    for label in before:
        a, b = before[label], after.get(label, {})
        rows.append({"point": label, "wer_before": a.get("wer"), "wer_after": b.get("wer"),
                     "size_before": a.get("size_bytes"), "size_after": b.get("size_bytes"),
                     "identical": bool(b) and all(a.get(k) == b.get(k) for k in COMPARED)})
    lines = [f"# Before ({args.before_commit}) and after ({args.after_commit}): the same grid, point by point", "",
             "Identical: WER, every clip's transcript and error count, and the size in bytes are equal.", "",
             "| point | WER before % | WER after % | size before | size after | identical |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['point']} | {100 * r['wer_before']:.2f} | {100 * (r['wer_after'] or 0):.2f} | {r['size_before']} | "
              f"{r['size_after']} | {'yes' if r['identical'] else 'NO'} |" for r in rows]
    result = {"before_commit": args.before_commit, "after_commit": args.after_commit, "rows": rows}
    write_results(args.out, result, "\n".join(lines))
    return result


if __name__ == "__main__":
    main()
