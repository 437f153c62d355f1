"""The reference pages generated from the code: each function returns one page's Markdown.

* :func:`cli_page` - every ``statefun`` command and option, from the argparse parsers
  of ``runtime.cli``;
* :func:`http_page` - every route of the ingress, its parameters and statuses, from the
  OpenAPI document the runtime serves at ``/openapi.json``;
* :func:`module_spec_page` - every kind of the module spec and its fields, from the
  documentation of ``statefun.module_spec`` (a test checks that it names every field the
  parser reads).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["cli_page", "http_page", "module_spec_page", "openapi_document"]


def _cell(text: str) -> str:
    """``text`` fit for one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def _rst_to_markdown(text: str) -> str:
    """Docstring markup (``code``, :class:`~a.B`) as Markdown."""
    from docsgen.griffe_markup import markdown

    return markdown(text)


# --- the CLI ------------------------------------------------------------------------------


def _option_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if action.option_strings:
        names = ", ".join(action.option_strings)
        if action.nargs != 0:
            names += f" {formatter._format_args(action, action.dest.upper())}"
    else:
        names = formatter._format_args(action, action.dest)
    text = formatter._expand_help(action) if action.help else ""
    return f"| `{names}` | {_cell(text)} |"


def _command(name: str, parser: argparse.ArgumentParser, level: str) -> list[str]:
    lines = [f"{level} `{name}`", ""]
    if parser.description:
        lines += [parser.description, ""]
    usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
    lines += ["```", usage, "```", ""]
    actions = [
        a
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS
    ]
    if actions:
        lines += ["| argument | meaning |", "|---|---|"]
        lines += [_option_row(parser, a) for a in actions]
        lines.append("")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                lines += _command(f"{name} {sub_name}", sub, level + "#")
    return lines


def cli_page() -> str:
    """The ``statefun`` command's reference, from its parsers."""
    from runtime.cli import _parser

    parser = _parser()
    intro = [
        "# CLI reference",
        "",
        "Generated from the parsers of `runtime/cli.py` while the site builds: what "
        "`statefun COMMAND --help` prints, one section per command. Defaults shown are "
        "those of the environment that built this page (some options default to an "
        "environment variable, named in their text).",
        "",
    ]
    return "\n".join(intro + _command("statefun", parser, "##")) + "\n"


# --- the HTTP API -------------------------------------------------------------------------


async def _openapi() -> dict[str, Any]:
    from runtime.app import Runtime
    from runtime.config import RuntimeConfig
    from statefun.module_spec import parse_module_spec

    with tempfile.TemporaryDirectory(prefix="statefun-docs-") as data_dir:
        config = RuntimeConfig(module=parse_module_spec(""), data_dir=Path(data_dir))
        runtime = await Runtime.open(config)
        try:
            return runtime.ingress_app.openapi()
        finally:
            runtime.begin_shutdown()
            await runtime.stop()


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of a runtime's ingress (opened on an empty embedded log in a
    temporary folder, never started)."""
    return asyncio.run(_openapi())


def _schema_type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_schema_type(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    kind = str(schema.get("type", "any"))
    if "enum" in schema:
        kind += " (" + ", ".join(str(v) for v in schema["enum"]) + ")"
    return kind


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    title = op.get("summary") or op.get("operationId", "")
    lines = [f"### `{method.upper()} {path}`", ""]
    if title:
        lines += [f"**{title}**", ""]
    if op.get("description"):
        lines += [_rst_to_markdown(op["description"]).strip(), ""]
    parameters = op.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | required | type | meaning |", "|---|---|---|---|---|"]
        for p in parameters:
            lines.append(
                f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | "
                f"{_cell(_schema_type(p.get('schema', {})))} | "
                f"{_cell(_rst_to_markdown(p.get('description', '')))} |"
            )
        lines.append("")
    body = op.get("requestBody")
    if body:
        types = ", ".join(f"`{t}`" for t in body.get("content", {}))
        lines += [f"Request body: {types or 'any'}.", ""]
    lines += ["| status | meaning |", "|---|---|"]
    for status, response in sorted(op.get("responses", {}).items()):
        lines.append(f"| {status} | {_cell(_rst_to_markdown(response.get('description', '')))} |")
    lines.append("")
    return lines


def http_page(document: dict[str, Any] | None = None) -> str:
    """The ingress's HTTP API reference, from its OpenAPI document."""
    document = openapi_document() if document is None else document
    lines = [
        "# HTTP API reference",
        "",
        "Generated from the ingress's OpenAPI document (what a runtime serves at "
        "`/openapi.json`, to admins when tokens are on) while the site builds. Every error "
        'is a JSON body `{"error": CODE, "detail": TEXT}`. With tokens '
        "([security](../security.md)), every route but `/health` and `/ready` may also "
        "answer 401 and 403. In the paths, `{type_}` is the function type's name and "
        "`{id_}` the function id: `/v1/call/hello/user/Alice` calls `hello/user` with id "
        "`Alice`.",
        "",
        "| route | what |",
        "|---|---|",
    ]
    operations = [
        (method, path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "responses" in op
    ]
    for method, path, op in operations:
        anchor = re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")
        lines.append(f"| [`{method.upper()} {path}`](#{anchor}) | {_cell(op.get('summary', ''))} |")
    lines += ["", "## Routes", ""]
    for method, path, op in operations:
        anchor = re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")
        section = _operation(method, path, op)
        section[0] += f" {{#{anchor}}}"
        lines += section
    return "\n".join(lines) + "\n"


# --- the module spec ----------------------------------------------------------------------

MODULE_SPEC_FIELDS = re.compile(
    r"""(?:\.(?:take|nested|sequence|has|missing)\(|_duration\(\w+,\s*|_tls_file\(\w+,\s*)"(\w+)\""""
)
"""Where ``statefun/module_spec.py`` reads a field by name."""


def module_spec_fields() -> set[str]:
    """Every field name the module spec parser reads (the strings it asks for)."""
    import statefun.module_spec as module

    source = Path(module.__file__).read_text(encoding="utf-8")
    names = set(MODULE_SPEC_FIELDS.findall(source))
    # Fields read through a list of names rather than one literal.
    names.update(module._ASYNC_TRANSPORT_TLS, [module._SKIP_VERIFY])
    return names


EXAMPLE_MODULE_SPEC = """\
# The application's own kinds: an endpoint, an egress kept in the log, a failure policy.
kind: io.statefun.endpoints.v2/http
spec:
  functions: shop/*                        # ns/name, or ns/* for a whole namespace
  urlPathTemplate: http://functions:8000/statefun
  maxNumBatchRequests: 1000                # messages per address in one request
  protocol: auto                           # native, statefun or auto
  transport:
    type: io.statefun.transports.v1/async  # the default; its TLS fields: see above
    payload_max_bytes: 10MB                # the largest answer taken
    timeouts:
      call: 1 min                          # the whole attempt
      connect: 10s
---
kind: statefun.v1/egress
spec:
  id: shop/receipts
  deliverySemantic: {type: exactly-once}   # the default; or at-least-once
---
kind: statefun.v1/failure-policy
spec:
  functions: shop/payments
  policy: dead-letter                      # dead-letter (the default), retry or fail
  deadLetterAfter: 30s
---
# Kafka in and out (address: the runtime's --kafka cluster when left out).
kind: io.statefun.kafka.v1/ingress
spec:
  id: shop/orders
  consumerGroupId: shop-orders
  startupPosition: {type: earliest}        # group-offsets, earliest, latest, specific-offsets, date
  autoOffsetResetPosition: latest
  topics:
    - topic: orders
      valueType: io.statefun.types/string
      targets: [shop/orders]
---
kind: io.statefun.kafka.v1/egress
spec:
  id: shop/kafka-out
  deliverySemantic: {type: exactly-once, transactionTimeout: 15 min}
---
# StateFun's older endpoint kind, and the playground's kinds, read as StateFun reads them.
kind: io.statefun.endpoints.v1/http
spec:
  functions: legacy/*
  urlPathTemplate: http://legacy:8000/statefun
  timeouts: {call: 1 min}
---
kind: io.statefun.playground.v1/ingress
spec: {port: 8090}
---
kind: io.statefun.playground.v1/egress
spec: {port: 8091, topics: [greetings]}
"""
"""A module spec with every kind, shown on the reference page (a test parses it)."""


def module_spec_page() -> str:
    """The module spec's kinds and fields, from ``statefun.module_spec``'s documentation."""
    import statefun.module_spec as module

    doc = _rst_to_markdown(module.__doc__ or "")
    title, _, body = doc.partition("\n")
    lines = [
        "# Module spec reference",
        "",
        "The module spec (`module.yaml`, given to `statefun run --module`) names the "
        "function endpoints, ingresses, egresses and failure policies. This page is "
        "generated from the documentation of `statefun/module_spec.py`, the parser; a "
        "misspelled field is an error that names the nearest known field.",
        "",
        f"{title.strip()}",
        body,
        "",
        "## Every kind in one file",
        "",
        "```yaml",
        EXAMPLE_MODULE_SPEC.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
