"""`mipo synth`: write a synthetic personalization corpus with planted duplicates.

Only click is imported here; the generator (numpy, polars, pyarrow) loads when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from mipo.cli._options import output_option


@click.command("synth")
@click.option("--rows", type=int, required=True, help="Rows to write, planted duplicates included.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Same rows and seed, same file."
)
@output_option(
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file (.parquet, .jsonl or .csv).",
)
@click.option(
    "--exact-dup-rate",
    type=float,
    default=0.02,
    show_default=True,
    help="Share of rows copying an earlier row (whitespace/case may differ).",
)
@click.option(
    "--near-dup-rate",
    type=float,
    default=0.03,
    show_default=True,
    help="Share of rows that are an earlier row with a small edit (5-gram Jaccard >= 0.85).",
)
@click.option("--users", type=int, default=None, help="Distinct users [default: about rows / 6].")
@click.option(
    "--shared-question-rate",
    type=float,
    default=0.3,
    show_default=True,
    help="Share of questions drawn from a pool asked by many users.",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["parquet", "jsonl", "csv"]),
    default=None,
    help="Output format [default: from the file extension].",
)
@click.option(
    "--eval",
    "held_out",
    is_flag=True,
    help="Write held-out evaluation prompts instead: questions shared by --users-per-question "
    "users, never used in a training corpus.",
)
@click.option(
    "--users-per-question",
    type=int,
    default=4,
    show_default=True,
    help="With --eval: users asking each question.",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def synth_cmd(
    rows: int,
    seed: int,
    output: Path,
    exact_dup_rate: float,
    near_dup_rate: float,
    users: int | None,
    shared_question_rate: float,
    file_format: str | None,
    held_out: bool,
    users_per_question: int,
    overwrite: bool,
) -> None:
    """Generate a synthetic personalization corpus (user_id, context, question).

    Deterministic: the same options give a byte-identical file. Ground truth for dedup is in
    `dup_of` (id of the original row) and `dup_kind` ("exact", "near" or null).

    \b
    Example:
      mipo synth --rows 100000 --seed 0 -o corpus.parquet
    """
    import sys

    from mipo import synth

    if held_out:
        frame = synth.synth_eval(
            rows,
            seed,
            users_per_question=users_per_question,
            output=output,
            file_format=file_format,
            overwrite=overwrite,
        )
        n_questions = frame["question_id"].n_unique()
        click.echo(f"wrote {frame.height:,} eval prompts ({n_questions:,} questions) to {output}")
        return

    config = synth.SynthConfig(
        rows=rows,
        seed=seed,
        users=users,
        exact_dup_rate=exact_dup_rate,
        near_dup_rate=near_dup_rate,
        shared_question_rate=shared_question_rate,
    )
    synth.check_output(output, file_format, overwrite=overwrite)  # fail before any work
    with click.progressbar(length=rows, label="synth", file=sys.stderr, show_pos=True) as bar:
        summary = synth.write_synth(
            config, output, file_format=file_format, overwrite=overwrite, on_progress=bar.update
        )
    rate = summary.rows / max(summary.seconds, 1e-9)
    click.echo(
        f"wrote {summary.rows:,} rows to {summary.path} in {summary.seconds:.1f} s "
        f"({rate:,.0f} rows/s): {summary.originals:,} originals, "
        f"{summary.exact_duplicates:,} exact and {summary.near_duplicates:,} near duplicates, "
        f"{summary.users:,} users"
    )


COMMANDS: list[click.Command] = [synth_cmd]
