"""Render: pure functions from the model to artifacts. No I/O, no Docker, no clock."""
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"

environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
)
# Values reach Python source as literals, never as raw text, so a title with quotes
# or backslashes cannot change the meaning of a settings file.
environment.filters["py"] = repr
# A macro's output without its last line break, so the line after the call keeps its indent.
environment.filters["rstrip"] = lambda text, chars=None: str(text).rstrip(chars)
