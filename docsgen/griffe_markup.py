"""A griffe extension (mkdocs.yml's mkdocstrings ``extensions``): the docstrings' reST
markup as Markdown, so the SDK reference shows ``:class:`Foo``` and ````code```` as code.

The project's docstrings are read by people in editors and ``help()`` as much as on the
site, so they keep the reST roles; this turns them into Markdown code spans for the site.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|attr|mod|exc|data|obj):`~?([\w.]+)`")


def markdown(text: str) -> str:
    """``text`` with reST roles and double-backquoted literals as Markdown code spans,
    leaving fenced code blocks as they are."""
    parts = re.split(r"(^```.*?^```)", text, flags=re.M | re.S)
    return "".join(
        part
        if part.startswith("```")
        else ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", part).replace("``", "`")
        for part in parts
    )


class ReSTMarkup(griffe.Extension):
    """Rewrites every docstring once it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
