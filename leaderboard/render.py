"""Turning tables and records into HTML through jinja2 templates.

Autoescaping is on for every template and no template marks record data safe: a method called
`<script>…` is shown as those characters. The only markup inserted as is are the SVG plots, which are
made by leaderboard.plots from numbers and fixed labels, never from record strings.
"""

from __future__ import annotations

import json
import math

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from leaderboard.naming import PACKAGE_DIR

TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"


def format_number(value, digits: int = 4) -> str:
    """Fixed decimals, or an em dash for a missing value, so columns line up and blanks are explicit."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def format_percent(value, digits: int = 1) -> str:
    return "—" if value is None else format_number(value * 100.0, digits)


def format_count(value) -> str:
    return "—" if value is None else f"{value:,}"


def format_duration(seconds) -> str:
    """Minutes below two hours (the capped classes think in minutes), hours above; an em dash when unknown."""
    if seconds is None or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    minutes = seconds / 60.0
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60.0:.1f} h"


def format_p_value(value) -> str:
    if value is None:
        return "—"
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def sort_key(value) -> str:
    """The value a table cell sorts by (data-sort): plain digits for numbers, empty for missing."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def pretty_json(value) -> str:
    """Plain text for a JSON value (escaped by the template like any other record string)."""
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False)


def compact_json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


def make_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # templates do not change during a build; re-checking them per page cost 0.5 s
    )
    env.filters.update(num=format_number, pct=format_percent, count=format_count, sortkey=sort_key,
                       duration=format_duration, pvalue=format_p_value,
                       pretty_json=pretty_json, compact_json=compact_json)
    from leaderboard.entries import run_flags
    from leaderboard.rows import EFFICIENCY_NOTES, ISOLATION_GAPS

    env.globals["isolation_gap_titles"] = ISOLATION_GAPS
    env.globals["run_flags"] = run_flags
    env.globals["efficiency_notes"] = EFFICIENCY_NOTES
    return env


def trusted_svg(svg: str | None) -> Markup | None:
    """Mark a plot made by leaderboard.plots as markup; it holds numbers and fixed labels only."""
    return Markup(svg) if svg is not None else None
