"""CLI command ``medalign ingest``: a DICOM export -> a cohort (heavy imports inside)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, synth: typer.Typer) -> None:  # noqa: ARG001 - no synth command here
    @app.command("ingest")
    def ingest_cmd(
        dicom_root: Path = typer.Argument(..., help="Folder of a DICOM export (any layout, any file names)."),
        out: Path = typer.Option(..., "--out", help="Cohort folder: manifest.csv, series.csv, studies/, id_map.json."),
        reports: Optional[Path] = typer.Option(None, "--reports", help="CSV: report + accession_number or study_uid."),
        workers: int = typer.Option(1, "--workers", min=1, help="Processes for header reading and conversion."),
    ) -> None:
        """Group a DICOM export by study/series, identify each series' sequence, convert the chosen
        ones to NIfTI and write a pseudonymised manifest (mapping in OUT/id_map.json, deletable)."""
        from medalign.data.ingest import ingest

        summary = ingest(dicom_root, out, reports=reports, workers=workers, log=typer.echo)
        if summary["manifest"] is None:
            raise SystemExit(1)
