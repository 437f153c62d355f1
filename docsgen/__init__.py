"""The documentation site's generated pages (the CLI, HTTP API and module spec
references), made from the code while ``mkdocs build`` runs (``docsgen.hooks``), so
they cannot drift from it."""
