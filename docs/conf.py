"""Sphinx configuration: MyST pages, an autodoc API reference, tables and plots from results files.

Build (offline, warnings are errors):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Every build first runs ``docs/make_figures.py``, which writes the results tables and
plots into ``docs/_build/generated/`` from the committed results files (see that
script); the pages include them. Nothing in ``_build`` is committed.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_build" / "generated"

# Document the working tree, not whatever copy happens to be installed.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_effcnn  # noqa: E402
import make_figures  # noqa: E402

project = "keras-effcnn"
author = "keras-effcnn contributors"
copyright = "keras-effcnn contributors"
release = keras_effcnn.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "robustness/*"]

myst_enable_extensions = ["colon_fence", "deflist"]
# Pages link to each other's sections as `layers.md#blurpool2d`.
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = f"keras-effcnn {release}"
html_theme_options = {"description": "Small, fast, robust CNNs for Keras 3", "fixed_sidebar": True}

# The package's modules in the order of docs/architecture.md's floors, bottom up. A module
# that does not exist yet is left out of the API page; one that exists but fails to
# import fails the build.
API_MODULES = (
    "keras_effcnn.presets",
    "keras_effcnn.layers",
    "keras_effcnn.schedules",
    "keras_effcnn.sam",
    "keras_effcnn.distillation",
    "keras_effcnn.augment",
    "keras_effcnn.losses",
    "keras_effcnn.metrics",
    "keras_effcnn.data",
    "keras_effcnn.models",
    "keras_effcnn.callbacks.cyclical",
    "keras_effcnn.callbacks.lr_finder",
    "keras_effcnn.callbacks.swa",
    "keras_effcnn.callbacks.precise_bn",
    "keras_effcnn.callbacks.checkpoint",
    "keras_effcnn.callbacks.timeline",
    "keras_effcnn.recipes",
    "keras_effcnn.distribute",
    "keras_effcnn.recipe_model",
    "keras_effcnn.export",
    "keras_effcnn.export.micro",
    "keras_effcnn.robustness",
    "keras_effcnn.test_time",
    "keras_effcnn.tuning",
    "keras_effcnn.tuning_launcher",
    "keras_effcnn.determinism",
    "keras_effcnn.plots",
    "keras_effcnn.provenance",
)

# Guides written beside the generated pages; listed in the index when present.
GUIDES = ("layers", "techniques", "data", "tuning", "android", "microcontrollers", "reliability", "robustness",
          "architecture", "testing", "backends")


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def write_api(path: Path) -> None:
    """One section per existing module, each an ``automodule`` with its members."""
    lines = []
    for module in API_MODULES:
        if not _exists(module):
            continue
        lines += [f"## `{module}`", "", "```{eval-rst}", f".. automodule:: {module}", "   :members:", "```", ""]
    path.write_text("\n".join(lines))


def write_cli(path: Path) -> None:
    """``keras-effcnn --help`` and ``keras-effcnn COMMAND --help``, as the parser prints them."""
    from keras_effcnn import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    sections = [("keras-effcnn", parser)] + [(f"keras-effcnn {name}", p) for name, p in sub.choices.items()]
    lines = []
    for title, p in sections:
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            p.print_help()
        lines += [f"### `{title}`", "", "```text", buffer.getvalue().rstrip(), "```", ""]
    path.write_text("\n".join(lines))


def write_guides_toctree(path: Path) -> None:
    present = [g for g in GUIDES if (DOCS / f"{g}.md").exists() or (DOCS / f"{g}.rst").exists()]
    path.write_text("```{toctree}\n:maxdepth: 2\n:caption: Guides\n\n" + "\n".join(present) + "\n```\n")


_FENCE = re.compile(r"^(\s*)```+\s*([\w+-]*)\s*$")
# Napoleon escapes the stars of `*args:` and `**kwargs:` but not of a combined `*args, **kwargs:` entry.
_STAR_PAIR = re.compile(r"^(\s*)\*args, \*\*kwargs:")


def markdown_fences_to_rst(app, what, name, obj, options, lines: list[str]) -> None:
    """Turn Markdown code fences in docstrings into ``code-block`` directives.

    The package's docstrings are Google style but show examples in Markdown fences
    (they read well in ``help()`` and on GitHub); reStructuredText would take the
    backticks for unterminated inline literals.
    """
    out: list[str] = []
    indent = None
    for line in lines:
        match = _FENCE.match(line)
        if indent is None and match:
            indent = match.group(1)
            out += [f"{indent}.. code-block:: {match.group(2) or 'text'}", ""]
        elif indent is not None and match and match.group(2) == "":
            indent = None
            out.append("")
        elif indent is not None:
            out.append(f"{indent}   {line[len(indent):]}" if line.strip() else "")
        else:
            out.append(_STAR_PAIR.sub(r"\1\\*args, \\*\\*kwargs:", line))
    lines[:] = out


def setup(app):
    GENERATED.mkdir(parents=True, exist_ok=True)
    make_figures.main(["--out", str(GENERATED)])
    write_api(GENERATED / "api_modules.md")
    write_cli(GENERATED / "cli.md")
    write_guides_toctree(GENERATED / "guides_toctree.md")
    # Before napoleon (priority 500) so that it sees directives, not fences.
    app.connect("autodoc-process-docstring", markdown_fences_to_rst, priority=400)
    return {"parallel_read_safe": True}
