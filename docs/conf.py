"""Sphinx configuration of the skformer documentation site (``make docs``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")

import skformer  # noqa: E402

project = "skformer"
author = "the skformer developers"
copyright = "2026, the skformer developers"
release = skformer.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.md5", "auto_examples/*.json",
                    "auto_examples/*.codeobj.json", "sg_execution_times.rst",
                    "**/sg_execution_times.rst"]

# Markdown guides: headings get anchors so that links like page.md#section resolve
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# API reference from the numpydoc docstrings
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_typehints = "none"
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": str(HERE / "auto_examples"),
    # every example runs during the build, except the two long ones (quickstart and the sbi
    # tutorial, about two minutes each), which are shown with their code
    "filename_pattern": r"/(?!quickstart|seed_tutorial)[a-z_]+\.py$",
    "ignore_pattern": r"/_",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "remove_config_comments": True,
    "download_all_examples": False,
    "matplotlib_animations": False,
    "show_memory": False,
    "image_scrapers": ("matplotlib",),
}

html_theme = "pydata_sphinx_theme"
html_title = f"skformer {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []
html_show_sourcelink = False
suppress_warnings: list[str] = []


def _skip_metadata_requests(app, what, name, obj, skip, options):
    """scikit-learn generates ``set_fit_request`` / ``set_partial_fit_request`` for the
    ``positions`` argument (metadata routing); their docstrings point into scikit-learn's own
    glossary, which this site does not have. They are documented in scikit-learn's."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_requests)
