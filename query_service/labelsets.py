"""Label sets: the labels of a run, with their provenance and segments, as JSON Lines — kept,
inspected, and read into another run (`rlhp labels export|import`).

    rlhp labels export --run-dir runs/hopper --out hopper-labels.jsonl [--experiments A,B] [--no-segments]
    rlhp labels import hopper-labels.jsonl --run-dir runs/hopper-2 [--experiment hopper-2]

One JSON object per line, in this order:

    {"kind": "header", "format": "rlhp-labels", "version": 1, "exported": <unix s>, "labels": N, "segments": M}
    {"kind": "segment", "experiment", "id", "env_id", "env_step", "fps", "random_policy", "length",
     "data": <base64 npz: observations, actions, true_rewards>, "media": <base64 npz: frames/qpos/qvel> | null}
    {"kind": "label", "query_id", "experiment", "env_id", "left_id", "right_id",
     "answer": "LEFT" | "RIGHT" | "EQUAL" | "INCOMPARABLE", "labeler", "seconds", "created", "model_version", "goal"}

Each segment comes before the first label that shows it, and only once. Reading a set back is
all or nothing (one transaction): every segment is checked as `AddSegments` checks it (shapes must
agree with what the experiment already stores), every label must name two segments that are in the
file or already in the run, and a label whose query id the run holds already is skipped, so an
import can be repeated. Imported labels count as labels of their experiment (its schedule asks for
that many fewer) and are forwarded to its reward model like any other, the next time the run's
query service forwards (e.g. `rlhp train --resume`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import IO, Any, Iterable

from rlhp.types import InvalidRequest, Preference

from . import intake
from .store import DB_NAME, Store, unpack
from .types import SegmentRecord

FORMAT, VERSION = "rlhp-labels", 1
MAX_SEGMENT_STEPS = 100_000


def _b64(blob: bytes | None) -> str | None:
    return base64.b64encode(blob).decode("ascii") if blob else None


def export_labels(store: Store, out: IO[str], experiments: Iterable[str] = (), segments: bool = True,
                  media: bool = False) -> tuple[int, int]:
    """Write the labels of `experiments` (all when empty) to `out`; returns (labels, segments)."""
    with store.read() as c:
        labels = Store.labels_for_export(c, list(experiments))
        seg_rows = {}
        if segments:
            wanted: dict[str, list[str]] = {}
            for r in labels:
                wanted.setdefault(r["experiment"], []).extend([r["left_id"], r["right_id"]])
            for exp, ids in wanted.items():
                for row in Store.segment_rows(c, exp, ids, media):
                    seg_rows[(exp, row["id"])] = row
    out.write(json.dumps({"kind": "header", "format": FORMAT, "version": VERSION, "exported": time.time(),
                          "labels": len(labels), "segments": len(seg_rows)}) + "\n")
    written: set[tuple[str, str]] = set()
    for r in labels:
        for sid in (r["left_id"], r["right_id"]):
            key = (r["experiment"], sid)
            row = seg_rows.get(key)
            if row is None or key in written:
                continue
            written.add(key)
            out.write(json.dumps({
                "kind": "segment", "experiment": row["experiment"], "id": row["id"], "env_id": row["env_id"],
                "env_step": int(row["env_step"]), "fps": float(row["fps"]),
                "random_policy": bool(row["random_policy"]), "length": int(row["length"]),
                "data": _b64(row["data"]), "media": _b64(row["media"]) if media else None}) + "\n")
        out.write(json.dumps({
            "kind": "label", "query_id": r["query_id"], "experiment": r["experiment"], "env_id": r["env_id"] or "",
            "left_id": r["left_id"], "right_id": r["right_id"], "answer": Preference(int(r["answer"])).name,
            "labeler": r["labeler"], "seconds": float(r["seconds"]), "created": float(r["created"]),
            "model_version": int(r["model_version"]), "goal": r["goal"]}) + "\n")
    return len(labels), len(written)


def _field(obj: dict, name: str, kinds: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise InvalidRequest(f"{where}: field {name!r} is missing or not a {names}")
    return value


def _segment(obj: dict, where: str, rename: str) -> SegmentRecord:
    try:
        data = unpack(base64.b64decode(_field(obj, "data", str, where), validate=True))
        m = obj.get("media")
        media = unpack(base64.b64decode(m, validate=True)) if isinstance(m, str) and m else {}
    except InvalidRequest:
        raise
    except Exception as e:  # noqa: BLE001 — bad base64 or npz: say which line
        raise InvalidRequest(f"{where}: data is not a base64 npz blob ({type(e).__name__})") from None
    if not {"observations", "actions", "true_rewards"} <= set(data):
        raise InvalidRequest(f"{where}: data must hold observations, actions and true_rewards")
    rec = SegmentRecord(
        id=_field(obj, "id", str, where), experiment=rename or _field(obj, "experiment", str, where),
        env_id=_field(obj, "env_id", str, where), observations=data["observations"], actions=data["actions"],
        true_rewards=data["true_rewards"], frames=media.get("frames"), qpos=media.get("qpos"),
        qvel=media.get("qvel"), env_step=int(_field(obj, "env_step", int, where)),
        fps=float(_field(obj, "fps", (int, float), where)), random_policy=bool(obj.get("random_policy", False)))
    return intake.validate_record(rec, 0, MAX_SEGMENT_STEPS)


def _label(obj: dict, where: str, rename: str) -> dict:
    out = {"query_id": intake.query_id(_field(obj, "query_id", str, where)),
           "experiment": intake.experiment_name(rename or _field(obj, "experiment", str, where)),
           "left_id": _field(obj, "left_id", str, where), "right_id": _field(obj, "right_id", str, where),
           "labeler": intake.text(_field(obj, "labeler", str, where), "labeler") or "unknown",
           "seconds": intake.answer_seconds(obj.get("seconds", 0.0)),
           "created": float(_field(obj, "created", (int, float), where)),
           "model_version": int(_field(obj, "model_version", int, where)),
           "goal": intake.text(obj.get("goal", ""), "goal")}
    try:
        out["answer"] = int(intake.answer(_field(obj, "answer", str, where)))
    except InvalidRequest as e:
        raise InvalidRequest(f"{where}: {e}") from None
    return out


def import_labels(store: Store, lines: Iterable[str], experiment: str = "", label_budget: int = 0
                  ) -> dict[str, int]:
    """Read a label set into `store` (all or nothing); `experiment` renames every experiment of the
    file to one (a file holding several is refused then). Returns counts: labels, labels_skipped,
    segments, segments_present."""
    rename = intake.experiment_name(experiment) if experiment else ""
    segments: list[SegmentRecord] = []
    labels: list[dict] = []
    header = None
    originals: set[str] = set()
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"line {n}"
        try:
            obj = json.loads(raw)
        except ValueError:
            raise InvalidRequest(f"{where}: not JSON") from None
        if not isinstance(obj, dict):
            raise InvalidRequest(f"{where}: not a JSON object")
        kind = obj.get("kind")
        if kind in ("segment", "label") and isinstance(obj.get("experiment"), str):
            originals.add(obj["experiment"])
        try:
            if header is None:
                if kind != "header" or obj.get("format") != FORMAT:
                    raise InvalidRequest(f"{where}: not an rlhp label set (the first line must be its "
                                         f"header, format {FORMAT!r})")
                if obj.get("version") != VERSION:
                    raise InvalidRequest(f"{where}: label set version {obj.get('version')!r}; this rlhp "
                                         f"reads version {VERSION}")
                header = obj
            elif kind == "segment":
                segments.append(_segment(obj, where, rename))
            elif kind == "label":
                labels.append(_label(obj, where, rename))
            else:
                raise InvalidRequest(f"{where}: unknown kind {kind!r} (header, segment or label)")
        except InvalidRequest as e:
            msg = str(e)
            raise InvalidRequest(msg if msg.startswith("line ") else f"{where}: {msg}") from None
    if header is None:
        raise InvalidRequest("the file is empty (no header line)")
    if rename and len(originals) > 1:
        raise InvalidRequest(f"the file holds {len(originals)} experiments ({', '.join(sorted(originals))}); "
                             "--experiment renames a file of one experiment only")
    now = time.time()
    shapes = intake.batch_shapes(segments) if segments else {}
    rows = [Store.segment_row(r, now) for r in segments]
    counts = dict(labels=0, labels_skipped=0, segments=0, segments_present=0)
    with store.write() as c:
        Store.agree_shapes(c, shapes, label_budget, now)
        for row in rows:
            added = Store.insert_segment(c, row)
            counts["segments"] += added
            counts["segments_present"] += 1 - added
        for lab in labels:
            if Store.query(c, lab["query_id"]) is not None:
                counts["labels_skipped"] += 1
                continue
            pair = (lab["left_id"], lab["right_id"])
            if Store.count_present(c, lab["experiment"], pair) != 2:
                raise InvalidRequest(f"label {lab['query_id']!r}: its segments {pair[0]!r} and {pair[1]!r} are "
                                     f"neither in the file nor in experiment {lab['experiment']!r} of this run")
            Store.insert_imported_label(c, lab)
            counts["labels"] += 1
        Store.withhold_excluded(c)  # labels of a labeler excluded here are not sent
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhp labels", description="Export a run's labels (with provenance and "
                                "segments) as JSON Lines, or import such a file into a run.",
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write the labels of a run as JSON Lines")
    e.add_argument("--run-dir", required=True, help="run directory holding labels.sqlite")
    e.add_argument("--out", default="-", help="file to write (default: standard output)")
    e.add_argument("--experiments", default="", metavar="A,B", help="only these experiments (default: all)")
    e.add_argument("--no-segments", action="store_true",
                   help="labels and provenance only (to inspect; such a file cannot be imported elsewhere)")
    e.add_argument("--media", action="store_true", help="include clip media (Atari frames, MuJoCo qpos/qvel)")
    i = sub.add_parser("import", help="read a label set into a run (all or nothing; repeats are skipped)")
    i.add_argument("file", help="JSON Lines file from `rlhp labels export` (- for standard input)")
    i.add_argument("--run-dir", required=True, help="run directory (labels.sqlite is created if missing)")
    i.add_argument("--experiment", default="", help="import under this experiment name (a file of one experiment)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if args.command == "export" and not (run_dir / DB_NAME).exists():
        print(f"rlhp labels: no label database in {run_dir} (expected {run_dir / DB_NAME})", file=sys.stderr)
        return 1
    try:
        store = Store(run_dir)
    except OSError as e:
        print(f"rlhp labels: cannot open {run_dir / DB_NAME}: {e}", file=sys.stderr)
        return 1
    try:
        if args.command == "export":
            exps = [x.strip() for x in args.experiments.split(",") if x.strip()]
            with contextlib.ExitStack() as stack:
                out = sys.stdout if args.out == "-" else stack.enter_context(open(args.out, "w", encoding="utf-8"))
                n_labels, n_segs = export_labels(store, out, exps, segments=not args.no_segments, media=args.media)
            print(f"exported {n_labels} label(s) and {n_segs} segment(s)"
                  + ("" if args.out == "-" else f" to {args.out}"), file=sys.stderr)
            return 0
        try:
            with contextlib.ExitStack() as stack:
                src = sys.stdin if args.file == "-" else stack.enter_context(open(args.file, encoding="utf-8"))
                counts = import_labels(store, src, args.experiment)
        except (OSError, UnicodeDecodeError) as e:
            print(f"rlhp labels: cannot read {args.file}: {e}", file=sys.stderr)
            return 1
        except InvalidRequest as e:
            print(f"rlhp labels: {args.file}: {e} — nothing was imported", file=sys.stderr)
            return 2
        print(f"imported {counts['labels']} label(s) ({counts['labels_skipped']} already there) and "
              f"{counts['segments']} segment(s) ({counts['segments_present']} already there) into {run_dir}")
        return 0
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
