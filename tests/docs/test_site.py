"""The documentation site: it builds with warnings as errors, every internal link and
anchor leads somewhere, and the references cover what they claim to."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
from docs_site import ROOT, broken_links, build_site

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    into = tmp_path_factory.mktemp("site")
    done = build_site(into)
    assert done.returncode == 0, done.stderr[-4000:]
    return into


def test_the_site_builds_strictly_and_every_internal_link_resolves(built: Path) -> None:
    assert (built / "index.html").is_file()
    for page in ("reference/sdk", "reference/cli", "reference/http", "reference/module-spec"):
        assert (built / f"{page}.html").is_file(), page
    assert broken_links(built) == []


def test_the_link_checker_finds_a_broken_link_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text(
        '<h1 id="top">A</h1><a href="#top">ok</a><a href="b.html#there">ok</a>'
        '<a href="b.html#nowhere">bad anchor</a><a href="c.html">no page</a>'
        '<a href="https://example.com/">external, not followed</a>'
    )
    (tmp_path / "b.html").write_text('<p id="there">B</p><img src="missing.png">')
    assert sorted(broken_links(tmp_path)) == [
        "a.html: b.html#nowhere",
        "a.html: c.html",
        "b.html: missing.png",
    ]


def test_the_sdk_reference_shows_every_public_name_with_an_example(built: Path) -> None:
    import griffe

    import sdk

    loader = griffe.GriffeLoader(search_paths=[str(ROOT)])
    loader.load("statefun")  # sdk re-exports the types of statefun.values
    package = loader.load("sdk")
    loader.resolve_aliases()
    html = (built / "reference" / "sdk.html").read_text(encoding="utf-8")
    for name in sdk.__all__:
        docstring = package[name].docstring
        assert docstring is not None, f"sdk.{name} has no docstring"
        assert "Example" in docstring.value, f"sdk.{name}'s docstring has no example"
        assert "```python" in docstring.value, f"sdk.{name}'s example is no code block"
        assert f'id="sdk.{name}"' in html, f"sdk.{name} is not on the SDK reference page"
    # The docstrings' reST roles are shown as code (docsgen/griffe_markup.py), not as is.
    for markup in (":meth:", ":class:", "``"):
        assert markup not in html


def test_the_runnable_examples_of_the_sdk_reference_give_what_they_show() -> None:
    """Every ``>>>`` example of a public name of ``sdk`` runs and prints what it shows
    (attribute docstrings too, which ``doctest.testmod`` would not find)."""
    import griffe

    import sdk

    loader = griffe.GriffeLoader(search_paths=[str(ROOT)])
    loader.load("statefun")
    package = loader.load("sdk")
    loader.resolve_aliases()
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    examples = 0
    for name in sdk.__all__:
        docstring = package[name].docstring
        assert docstring is not None
        test = parser.get_doctest(docstring.value, {}, f"sdk.{name}", None, 0)
        examples += len(test.examples)
        runner.run(test)
    assert examples >= 40
    assert runner.summarize(verbose=False).failed == 0


def test_the_module_spec_reference_names_every_field_the_parser_reads(built: Path) -> None:
    from docsgen.reference import module_spec_fields

    fields = module_spec_fields()
    assert {"urlPathTemplate", "deadLetterAfter", "trust_cacerts", "startupPosition"} <= fields
    text = re.sub(r"<[^>]+>", "", (built / "reference" / "module-spec.html").read_text())
    missing = sorted(f for f in fields if not re.search(rf"\b{f}\b", text))
    assert missing == [], f"fields the parser reads but the reference does not name: {missing}"


def test_the_cli_reference_has_every_command_and_option(built: Path) -> None:
    from runtime.cli import _parser

    text = (built / "reference" / "cli.html").read_text(encoding="utf-8")
    commands = next(a for a in _parser()._actions if a.dest == "command")
    assert commands.choices
    for name, parser in commands.choices.items():
        assert f"statefun {name}" in text, name
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, f"statefun {name} {option}"


def test_the_http_reference_has_every_route_of_the_openapi_document(built: Path) -> None:
    from docsgen.reference import openapi_document

    text = (built / "reference" / "http.html").read_text(encoding="utf-8")
    for path, item in openapi_document()["paths"].items():
        for method in item:
            assert f"{method.upper()} {path}" in text, f"{method} {path}"


def test_the_module_spec_reference_example_has_every_kind_and_is_valid() -> None:
    import statefun.module_spec as module
    from docsgen.reference import EXAMPLE_MODULE_SPEC

    spec = module.parse_module_spec(EXAMPLE_MODULE_SPEC, "the reference's example")
    for kind in module._KINDS:
        assert f"kind: {kind}\n" in EXAMPLE_MODULE_SPEC, kind
    assert len(spec.endpoints) == 2
    assert len(spec.ingresses) == 1
