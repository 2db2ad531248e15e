"""The small commands: `validate` and `report`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from image_analyzer.errors import ConfigError


def validate_command(output_dir: Path, schema_set_dir: Path | None, csv_file: Path | None) -> int:
    from image_analyzer.schemas import SchemaSet
    from image_analyzer.validate import validate_output_dir

    if not output_dir.is_dir():
        raise ConfigError(f"output dir not found: {output_dir}")
    schema_set = SchemaSet.load(schema_set_dir)
    results = validate_output_dir(output_dir, schema_set)
    rows = [(pid, p.file, p.path, p.message) for pid, problems in sorted(results.items()) for p in problems]
    for pid, file, path, message in rows:
        sys.stdout.write(f"{pid}/{file}: {path}: {message}\n")
    group = schema_set.data_group_cid
    valid = sum(1 for problems in results.values() if not problems)
    sys.stdout.write(f"{valid} of {len(results)} property folders valid, {len(rows)} error(s)\n")
    if csv_file is not None:
        with csv_file.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            # The columns of the Elephant tools' error CSV, with the property folder and JSON path added.
            writer.writerow(["property_id", "data_group_cid", "file_path", "json_path", "error"])
            writer.writerows(
                (pid, group, f"{pid}/{file}", path, message) for pid, file, path, message in rows
            )
    return 1 if rows or not results else 0


def report_command(output_dir: Path, *, json_output: bool, csv_file: Path | None) -> int:
    from rich.console import Console

    from image_analyzer.report import load_run_summaries, render_report, report_json, write_report_csv

    summaries = load_run_summaries(output_dir)
    if not summaries:
        raise ConfigError(f"no run summaries under {output_dir / '_runs'}: run `image-analyzer run` first")
    if csv_file is not None:
        write_report_csv(summaries, csv_file)
    if json_output:
        sys.stdout.write(json.dumps(report_json(summaries), sort_keys=True, indent=2) + "\n")
    else:
        render_report(summaries, Console())
    return 0
