"""``bioverse data``: synthesise, split and check hospital data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from platform_api.cli.output import err, error_line, one_line_errors, out, warn

__all__ = ["data_app"]

data_app = typer.Typer(help="Hospital data: synthesise, split and check.", no_args_is_help=True)


@data_app.command("synth")
@one_line_errors
def data_synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the hospital files into.")],
    hospitals: Annotated[int, typer.Option(help="Number of hospitals.")] = 3,
    patients: Annotated[int, typer.Option(help="Patients in total, split unevenly across hospitals.")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same files.")] = 0,
    file_format: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    respell_site: Annotated[int | None, typer.Option(
        help="This hospital (1-based) spells categories its own way (' M ', smoking code 3.0 where others write 3).")] = None,
    split_column: Annotated[str | None, typer.Option(help="Add a column with each patient's fixed part: train, val or test.")] = None,
    missing_code_site: Annotated[int | None, typer.Option(
        help="This hospital (1-based) writes a missing cholesterol as --missing-code instead of an empty cell.")] = None,
    missing_code: Annotated[float, typer.Option(help="The code --missing-code-site writes for 'not measured'.")] = 0.0,
) -> None:
    """Write realistic, non-IID synthetic hospitals with a known ground-truth risk."""
    from training.tabular.synth import Messiness, synthesize_hospitals

    messy = respell_site is not None or split_column is not None or missing_code_site is not None
    messiness = Messiness(respell_site=respell_site, split_column=split_column, missing_code_site=missing_code_site,
                          missing_code=missing_code) if messy else None
    written = synthesize_hospitals(n_hospitals=hospitals, n_patients=patients, seed=seed, out_dir=out_dir,
                                   file_format=file_format, messiness=messiness)
    for h in written:
        out.print(f"{h.hospital_id}  {h.n_patients:>7} patients  prevalence {h.prevalence:6.1%}  {h.path}")


@data_app.command("synth-images")
@one_line_errors
def data_synth_images(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the imaging hospitals into.")],
    hospitals: Annotated[int, typer.Option(help="Number of hospitals.")] = 3,
    images: Annotated[int, typer.Option(help="Images per hospital.")] = 240,
    size: Annotated[int, typer.Option(help="Image height and width in pixels.")] = 28,
    channels: Annotated[int, typer.Option(help="1 (grayscale) or 3 (RGB).")] = 1,
    classes: Annotated[str, typer.Option(help="Comma-separated class names; the first has no lesion.")] = "normal,nodule,opacity",
    layout: Annotated[str, typer.Option(help="folder (labels.csv + PNG/JPEG files) or npz (MedMNIST).")] = "folder",
    seed: Annotated[int, typer.Option(help="Seed: same seed, same files.")] = 0,
    majority: Annotated[float | None, typer.Option(
        help="The first class's share at every hospital (0.9: 90/10 imbalance); default: drawn per site.")] = None,
    split_column: Annotated[str | None, typer.Option(
        help="Folder layout: add a labels.csv column with each image's fixed part (train, val, test by patient).")] = None,
) -> None:
    """Write synthetic imaging hospitals (learnable lesion classes, per-site scanner shifts)."""
    from training.imaging.synth import synthesize_image_hospitals

    names = tuple(c.strip() for c in classes.split(","))
    written = synthesize_image_hospitals(out_dir, n_hospitals=hospitals, images_per_hospital=images, size=size,
                                         channels=channels, classes=names, layout=layout, seed=seed, majority=majority,
                                         split_column=split_column)
    for path in written:
        out.print(f"{path.stem}  {images:>6} images  {size}x{size}x{channels}  {path}", highlight=False)


@data_app.command("split")
@one_line_errors
def data_split(
    source: Annotated[Path, typer.Argument(help="A .csv or .parquet table, a folder with labels.csv and images, or a .npz.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the hospitals into (new files only).")],
    hospitals: Annotated[int | None, typer.Option(help="How many hospitals (random, stratified).")] = None,
    by: Annotated[str, typer.Option(help="random, stratified (by label) or a column: one hospital per value.")] = "random",
    seed: Annotated[int, typer.Option(help="Seed: same seed, same hospitals.")] = 0,
    label: Annotated[str | None, typer.Option(help="Label column (tables; labels.csv default: label).")] = None,
    patient_id: Annotated[str | None, typer.Option(
        help="Patient id column; a patient never straddles hospitals (default: patient_id if present).")] = None,
    split_column: Annotated[str | None, typer.Option(
        help="Column with each row's part, kept: every hospital gets train/val/test (default: split if present).")] = None,
    image_column: Annotated[str, typer.Option(help="labels.csv column naming the image files.")] = "image",
    prefix: Annotated[str, typer.Option(help="Hospital ids: PREFIX-01, PREFIX-02, ...")] = "hospital",
    spec: Annotated[Path | None, typer.Option(help="Also write a spec skeleton listing the hospitals here.")] = None,
) -> None:
    """Make N simulated hospitals from one dataset, keeping its train/val/test split."""
    from training.errors import DataSplitError
    from training.split_plan import SplitOptions
    from training.split_tool import spec_skeleton, split_dataset

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
        raise DataSplitError(source, f"--prefix: {prefix!r} makes no valid hospital id (letters, digits, . _ -)")
    if spec is not None and spec.exists():
        raise DataSplitError(spec, "--spec: the file exists; choose a new path")
    options = SplitOptions(hospitals=hospitals, by=by, seed=seed, label=label, patient_id=patient_id,
                           split_column=split_column, image_column=image_column, prefix=prefix)
    result = split_dataset(source, out_dir, options)
    for hospital in result.hospitals:
        out.print(hospital.line(), highlight=False)
    if result.linked or result.copied:
        out.print(f"images: {result.linked} hard-linked, {result.copied} copied", highlight=False)
    if spec is not None:
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(spec_skeleton(result, spec, source))
        out.print(f"spec skeleton: {spec}", highlight=False)


@data_app.command("check")
@one_line_errors
def data_check(spec_path: Annotated[Path, typer.Argument(help="Experiment spec (YAML).")]) -> None:
    """Check every hospital file named in a spec against its data contract; every hospital's
    problems are printed (one line each) before the exit code says whether any failed."""
    from experiments.data_check import check_data
    from experiments.spec import load_spec

    check = check_data(load_spec(spec_path))
    for site in check.sites:
        for line in site.lines:
            out.print(line, highlight=False, markup=False)
        for line in site.warnings:
            warn(line)
    for line in check.warnings:
        warn(line)
    problems = [f"{failure.hospital}: {error_line(failure.error)}" for failure in check.failures] + check.problems
    for problem in problems:
        err.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if not check.ok:
        raise typer.Exit(1)
