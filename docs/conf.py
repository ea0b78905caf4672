"""Sphinx configuration for the yoto_jax documentation.

Build with ``make docs``, which runs ``sphinx-build -W --keep-going -E -b html docs
docs/_build/html``: every warning fails the build (``-E`` rereads every page, so the
warnings of unchanged pages are reported too). The build is offline (no
intersphinx, no remote theme); MathJax is loaded by the reader's browser when a page is
viewed, not by the build.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import importlib.metadata
import inspect
import pkgutil
import re
import sys
from pathlib import Path

from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer

_DOCS = Path(__file__).resolve().parent
# `make` installs the package in editable mode; this also lets a bare checkout build.
sys.path.insert(0, str(_DOCS.parent))

project = "yoto_jax"
author = "the yoto_jax developers"
copyright = "the yoto_jax developers"
try:
    release = importlib.metadata.version("yoto_jax")
except importlib.metadata.PackageNotFoundError:
    release = ""
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# The dated benchmark reports (tables, JSON, plots) are results linked from the README,
# not pages of the docs.
exclude_patterns = ["_build", "benchmark-*", "Thumbs.db", ".DS_Store"]

# -- Markdown guides (MyST) --------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# -- API reference: autodoc + napoleon (Google-style docstrings) ------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autoclass_content = "both"  # the class docstring, then __init__'s (its "Args:")
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # no Flax/NamedTuple docstrings on our classes' members
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_attr_annotations = False  # the types are in the signature already

# -- HTML --------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"yoto_jax {release}"


# -- Hooks --------------------------------------------------------------------------------
@functools.cache
def _attribute_docs(package_name: str) -> dict[str, list[str]]:
    """Doc-comments and docstrings of module-level constants (``DEFAULT_EPS = 0.1``
    followed by a string) in every module of ``package``, by name. A package re-exports
    them, and autodoc looks for a constant's docstring only in the package's own source."""
    package = importlib.import_module(package_name)
    docs: dict[str, list[str]] = {}
    modules = [package.__name__]
    modules += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for module in modules:
        try:
            found = ModuleAnalyzer.for_module(module).find_attr_docs()
        except PycodeError:
            continue
        for (scope, name), lines in found.items():
            if not scope:
                docs.setdefault(name, list(lines))
    return docs


_FIELD_ALIAS = re.compile(r"^Alias for field number \d+$")


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")


def _field_comments(cls) -> dict[str, str]:
    """``{field: comment}`` from ``field: type  # comment`` lines of a NamedTuple's source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments = {}
    for match in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.MULTILINE):
        comments[match.group(1)] = match.group(2).strip()
    return comments


def _skip_member(app, what, name, obj, skip, options):
    # A NamedTuple's fields are documented by its docstring's "Attributes:" section (or
    # by the one _document_fields adds), not as "Alias for field number N".
    if _FIELD_ALIAS.match(inspect.getdoc(obj) or ""):
        return True
    return None


def _document_fields(app, what, name, obj, options, lines):
    if what == "class" and lines and lines[0].startswith("Create new instance of "):
        # a NamedTuple's generated __new__ docstring (autoclass_content = "both")
        lines.clear()
        return
    constant = name.rsplit(".", 1)[-1]
    if what == "data" and constant in _attribute_docs("yoto_jax"):
        lines[:] = _attribute_docs("yoto_jax")[constant]
    elif (
        what == "class"
        and _is_namedtuple(obj)
        and not any(line.strip() == "Attributes:" for line in lines)
    ):
        # Fields documented by trailing comments in the source: give them an
        # "Attributes:" section (before napoleon turns it into attribute entries).
        comments = _field_comments(obj)
        lines += ["", "Attributes:"]
        for field in obj._fields:
            lines.append(f"  {field}: {comments.get(field, '')}".rstrip())
        lines.append("")


_LINK = re.compile(r"(?<!!)(\[[^\]]*\]\()([^)\s]+)\)")


def _is_page(target: str) -> bool:
    """Whether ``target`` (relative to the repository root) is a page of these docs."""
    if not target.startswith("docs/"):
        return False
    relative = target.removeprefix("docs/")
    return (
        Path(relative).suffix in source_suffix
        and (_DOCS / relative).is_file()
        and not any(fnmatch.fnmatch(relative, pattern + "*") for pattern in exclude_patterns)
    )


def _readme_links(app, relative_path, parent_docname, content):
    """The README, included by readme.md, links files by their path in the repository:
    pages of these docs stay cross-references (``:relative-docs: docs/``); links to any
    other file of the repository (the dated benchmark reports, say) become downloads."""
    if Path(relative_path).name != "README.md":
        return

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        path = target.split("#", 1)[0]
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", path) or _is_page(path):
            return match.group(0)
        return f"{match.group(1)}path:../{path})"

    content[0] = _LINK.sub(rewrite, content[0])


def setup(app):
    app.connect("include-read", _readme_links)
    app.connect("autodoc-skip-member", _skip_member)
    # before napoleon (priority 500), which turns Google sections into reST
    app.connect("autodoc-process-docstring", _document_fields, priority=400)
