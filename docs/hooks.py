"""MkDocs hook: the command and environment-variable references are generated from the code at build time
(featurectl's click commands, errors.EXIT_CODES, variables.VARIABLES), so they cannot drift from it."""

from __future__ import annotations

from typing import Any

MARKERS = {"<!-- generated: commands -->": "commands", "<!-- generated: variables -->": "variables"}


def command_reference() -> str:
    import click

    from feature_platform.cli import SUBJECTS, build_cli
    from feature_platform.errors import EXIT_CODES

    cli = build_cli()
    out = ["## Exit codes", "", "Each failure prints one line naming what failed and the fix.", "",
           "| code | meaning |", "| --- | --- |", *(f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()),
           "", "Every command takes `--json` (where it acts on files or stores, with `--contracts`, `--home`, "
           "`--env`): one JSON document on stdout, also on failure (`{\"error\", \"exit_code\"}`). "
           "`--debug` anywhere prints a traceback on failure.", ""]

    def describe(path: list[str], command: click.Command) -> None:
        ctx = click.Context(command, info_name=" ".join(path))
        out.extend([f"### `{' '.join(path)}`", "", (command.help or "").strip(), "", "```text",
                    command.get_usage(ctx), "```", ""])
        rows = [record for param in command.get_params(ctx) if (record := param.get_help_record(ctx))]
        rows += [(f"`{p.human_readable_name}`", "argument" + (" (optional)" if not p.required else ""))
                 for p in command.get_params(ctx) if isinstance(p, click.Argument)]
        if rows:
            out.extend(["| option | meaning |", "| --- | --- |"])
            out.extend(f"| {name if name.startswith('`') else f'`{name}`'} | {text.replace('|', '/')} |"
                       for name, text in rows)
            out.append("")

    for subject, names in SUBJECTS.items():
        out.extend([f"## {subject}", ""])
        for name in names:
            command = cli.commands[name]
            if isinstance(command, click.Group):
                for child_name, child in command.commands.items():
                    describe(["featurectl", name, child_name], child)
            else:
                describe(["featurectl", name], command)
    return "\n".join(out)


def variable_reference() -> str:
    from feature_platform.variables import VARIABLES

    out = ["| variable | meaning | default | read by |", "| --- | --- | --- | --- |"]
    out += [f"| `{v.name}`{' (secret)' if v.secret else ''} | {v.meaning.replace('|', '/')} | {v.default or '-'} "
            f"| {v.who} |" for v in VARIABLES]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker, what in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, command_reference() if what == "commands" else variable_reference())
    return markdown
