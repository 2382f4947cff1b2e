"""The shipped Grafana dashboard imports into any Grafana (its data source is a variable),
every query parses and names only series some Postroom process exports, with labels those
series have, and every metric docs/operations.md documents is on some panel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.metrics import TARGET_LABELS, exported_series

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "postroom.json"
OPERATIONS = ROOT / "docs" / "operations.md"
DATA_SOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROMTOOL = shutil.which("promtool")

# PromQL's lexical pieces, enough to tell series names from functions, keywords and labels.
TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<identifier>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<operator>=~|!~|!=|==|>=|<=|[-+*/%^<>=,:@(){}\[\]])
    """,
    re.VERBOSE,
)
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
# Aggregations may put their `by (...)` between their name and their parenthesis.
AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
# What Grafana puts in place of its own variables when it runs a query.
GRAFANA_DURATIONS = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "3h"}


@dataclass
class Selector:
    name: str | None
    matchers: list[tuple[str, str, str]]  # label, operator, value


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    at = 0
    while at < len(expr):
        match = TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"cannot read {expr[at : at + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append((kind, match.group()))
        at = match.end()
    return found


def parse(expr: str) -> Query:
    """The series selectors and the grouping labels of a PromQL expression."""
    query = Query()
    items = tokens(expr)
    i = 0

    def following(j: int) -> str:
        return items[j][1] if j < len(items) else ""

    def skip_to(closing: str, j: int) -> int:
        while j < len(items) and items[j][1] != closing:
            j += 1
        return j

    def matchers(j: int) -> tuple[list[tuple[str, str, str]], int]:
        found = []
        j += 1  # past "{"
        while following(j) != "}":
            label, operator, value = items[j][1], items[j + 1][1], items[j + 2][1]
            found.append((label, operator, json.loads(value) if value[0] == '"' else value[1:-1]))
            j += 4 if following(j + 3) == "," else 3
        return found, j + 1

    while i < len(items):
        kind, text = items[i]
        if kind == "identifier" and text.lower() in LABEL_LISTS:
            i += 1
            if following(i) == "(":
                end = skip_to(")", i)
                query.grouping |= {text for kind, text in items[i:end] if kind == "identifier"}
                i = end
        elif kind == "identifier" and text.lower() in KEYWORDS | AGGREGATIONS:
            i += 1
        elif kind == "identifier" and following(i + 1) == "(":
            i += 1  # a function
        elif kind == "identifier":
            found: list[tuple[str, str, str]] = []
            i += 1
            if following(i) == "{":
                found, i = matchers(i)
            query.selectors.append(Selector(text, found))
        elif text == "{":
            found, i = matchers(i)
            query.selectors.append(Selector(None, found))
        elif text == "[":
            i = skip_to("]", i)  # a range or a subquery's durations
        else:
            i += 1
    return query


def problems(expr: str, exported: dict[str, frozenset[str]], legend: str = "") -> list[str]:
    """What in `expr` (and its legend) names a series or a label no process exports."""
    query = parse(expr)
    if not query.selectors:
        return [f"{expr!r} selects no series"]
    found = []
    labels: set[str] = set(TARGET_LABELS)
    for selector in query.selectors:
        names = {selector.name} if selector.name else set()
        for label, operator, value in selector.matchers:
            if label == "__name__" and operator == "=":
                names.add(value)
            elif label == "__name__" and operator == "=~":
                names |= {name for name in exported if re.fullmatch(value, name)}
        if not names:
            found.append(f"{expr!r} selects no series any process exports")
        for name in sorted(names):
            if name not in exported:
                found.append(f"{expr!r} names {name}, which no process exports")
                continue
            has = exported[name] | TARGET_LABELS | {"__name__"}
            labels |= exported[name]
            found += [
                f"{expr!r} matches {name} on {label}, a label it does not have"
                for label, _, _ in selector.matchers
                if label not in has
            ]
    used = query.grouping | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    found += [
        f"{expr!r} groups or names {label}, which its series lack"
        for label in sorted(used - labels)
    ]
    return found


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(within: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows and the panels a collapsed row holds included."""
    for panel in within:
        yield panel
        yield from panels(panel.get("panels", []))


def targets() -> Iterator[tuple[str, dict[str, Any]]]:
    """(a name for it, target) of every query on a panel: `panel_<id>_<refId>`."""
    for panel in panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            yield f"panel_{panel['id']}_{target['refId']}", target


def variable_queries() -> Iterator[tuple[str, str, str]]:
    """(variable, series expression, label) of each Prometheus query variable, Grafana's
    `label_values(selector, label)` taken apart."""
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            parts = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert parts, f"variable {variable['name']}: unexpected query {query!r}"
            yield variable["name"], parts[1], parts[2]


def data_sources(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield value
            else:
                yield from data_sources(value)
    elif isinstance(node, list):
        for value in node:
            yield from data_sources(value)


def documented_metrics() -> set[str]:
    """The metrics of the Metrics section of docs/operations.md: its table's first column
    (where `_failed_total` after `postroom_notifier_sent_total` is shorthand for
    `postroom_notifier_failed_total`) and the full series names in its prose."""
    text = OPERATIONS.read_text()
    section = text[text.index("\n## Metrics\n") :]
    section = section[: section.index("\n## ", 1)]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first: list[str] = []
            for cell in re.findall(r"`([^`]+)`", line.split("|")[1]):
                name = cell.split("{")[0]
                if name.startswith("_"):
                    parts = first[0].split("_")
                    name = "_".join(parts[: len(parts) - name.count("_")]) + name
                first.append(name)
            names.update(first)
        else:
            names.update(
                cell
                for cell in re.findall(r"`([^`]+)`", line)
                if re.fullmatch(r"(postroom|process|python)_[a-z0-9_]+", cell)
            )
    return names


async def test_every_query_names_only_series_the_processes_export() -> None:
    exported = await exported_series()
    found = []
    checked = 0
    for where, target in targets():
        assert target.get("expr"), f"{where}: no expression"
        found += [
            f"{where}: {p}" for p in problems(target["expr"], exported, target["legendFormat"])
        ]
        checked += 1
    for name, expr, label in variable_queries():
        found += [f"variable {name}: {p}" for p in problems(f"sum by ({label}) ({expr})", exported)]
    assert checked > 0
    assert found == []


def test_every_panel_has_queries() -> None:
    empty = [
        panel["title"]
        for panel in panels(dashboard()["panels"])
        if panel["type"] != "row" and not panel.get("targets")
    ]
    assert empty == []


def test_every_documented_metric_is_on_a_panel() -> None:
    documented = documented_metrics()
    assert "postroom_relay_oldest_pending_age_seconds" in documented
    assert "postroom_notifier_failed_total" in documented
    shown: set[str] = set()
    for _, target in targets():
        for selector in parse(target["expr"]).selectors:
            if selector.name:
                shown.add(selector.name)
                shown.add(re.sub(r"_(bucket|sum|count)$", "", selector.name))
    assert sorted(documented - shown) == []


def test_panel_ids_are_unique_and_panels_fit_the_grid() -> None:
    every = list(panels(dashboard()["panels"]))
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert min(grid["h"], grid["w"]) > 0, panel["title"]


def test_every_panel_queries_the_data_source_the_importer_picks() -> None:
    board = dashboard()
    assert board["id"] is None, "an exported id makes an import overwrite another dashboard"
    assert re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(board["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"] == DATA_SOURCE, panel["title"]
    prometheus = [ds for ds in data_sources(board) if ds.get("type") != "grafana"]
    assert prometheus
    assert [ds for ds in prometheus if ds != DATA_SOURCE] == []


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt install prometheus)")
def test_every_query_parses(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    board = dashboard()
    values = {
        f"${name}": variable.get("allValue") or ".*"
        for name, variable in ((v["name"], v) for v in board["templating"]["list"])
    }
    values |= {f"${{{name[1:]}}}": value for name, value in values.items()}
    values |= GRAFANA_DURATIONS

    def runnable(expr: str) -> str:
        for variable in sorted(values, key=len, reverse=True):
            expr = expr.replace(variable, values[variable])
        return expr

    # promtool parses expressions offline only as rules: one recording rule per query.
    rules = [{"record": where, "expr": runnable(target["expr"])} for where, target in targets()]
    rules += [
        {"record": f"variable_{name}", "expr": runnable(f"count by ({label}) ({expr})")}
        for name, expr, label in variable_queries()
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("expr", "legend", "complaint"),
    [
        ("rate(postroom_relay_publishd_total[5m])", "", "no process exports"),
        ("postroom_relay_published", "", "no process exports"),
        ('sum(postroom_relay_pending_rows{reason="x"})', "", "a label it does not have"),
        ("sum by (shard) (postroom_relay_parked_total)", "", "which its series lack"),
        ("sum(rate(postroom_relay_parked_total[5m]))", "{{shard}}", "which its series lack"),
        ('{__name__=~"postroom_nothing_.+"}', "", "selects no series"),
        ("sum(rate(x[5m])) > bool 1", "", "no process exports"),
    ],
)
def test_the_check_refuses_a_series_or_label_nobody_exports(
    expr: str, legend: str, complaint: str
) -> None:
    exported = {
        "postroom_relay_published_total": frozenset(),
        "postroom_relay_parked_total": frozenset(),
        "postroom_relay_pending_rows": frozenset({"shard"}),
    }
    found = problems(expr, exported, legend)
    assert any(complaint in p for p in found), found
    good = 'sum by (job, shard) (rate(postroom_relay_pending_rows{job=~"$job"}[$__rate_interval]))'
    assert problems(good, exported, "{{job}} {{shard}}") == []
