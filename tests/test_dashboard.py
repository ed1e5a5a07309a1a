"""The Grafana dashboard (config/grafana/archiver.json) asks only for what the exporter serves.

Every PromQL expression in the dashboard — each panel target and each templating query —
is tokenized, and every metric it names must be a sample name the real exporter serves
over HTTP, every label it filters, groups or labels its legend by must be a label of those
series. A misspelled metric, function or label fails here instead of as an empty panel.
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from archiver.kinds import Kind
from archiver.metrics import Metrics, serving

DASHBOARD = Path(__file__).resolve().parent.parent / "config" / "grafana" / "archiver.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

PROMQL_FUNCTIONS = frozenset(
    re.findall(
        r"\w+",
        """
        abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil
        changes clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week
        day_of_year days_in_month deg delta deriv double_exponential_smoothing exp floor
        histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev
        histogram_stdvar histogram_sum holt_winters hour idelta increase irate label_join
        label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time
        minute month pi predict_linear present_over_time quantile_over_time rad rate resets
        round scalar sgn sin sinh sort sort_by_label sort_by_label_desc sort_desc sqrt
        stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year
        """,
    )
)
AGGREGATORS = frozenset(
    re.findall(
        r"\w+",
        """
        avg bottomk count count_values group limit_ratio limitk max min quantile stddev
        stdvar sum topk
        """,
    )
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = GROUPING | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])                       # [5m], [$__rate_interval], [1h:5m]
    | (?P<variable>\$\{\w+(?::\w+)?\}|\$\w+)      # Grafana's $var and ${var}
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}])
    """,
    re.VERBOSE,
)


@dataclass
class Query:
    """What one expression asks of the exporter."""

    expr: str
    metrics: set[str] = field(default_factory=set)
    # (metric, label) pairs from `metric{label=...}` and label_values(metric, label)
    selected: set[tuple[str, str]] = field(default_factory=set)
    grouped: set[str] = field(default_factory=set)  # by (...), on (...), ...
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # label, op, value
    unknown: list[str] = field(default_factory=list)  # identifiers that are nothing known


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of every token but white space; fails on a character PromQL has not."""
    found = []
    position = 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        assert match is not None, f"cannot tokenize {expr!r} at {expr[position:]!r}"
        assert match.lastgroup is not None
        if match.lastgroup != "space":
            found.append((match.lastgroup, match.group()))
        position = match.end()
    return found


def label_list(toks: list[tuple[str, str]], start: int) -> tuple[list[str], int]:
    """The labels of `( a, b )` opening at toks[start]; and the index after it."""
    assert toks[start] == ("op", "("), toks[start:]
    labels, i = [], start + 1
    while toks[i] != ("op", ")"):
        kind, text = toks[i]
        assert kind == "ident" or text == ",", f"not a label list: {toks[start:]}"
        if kind == "ident":
            labels.append(text)
        i += 1
    return labels, i + 1


def parse(expr: str) -> Query:
    """The metrics, labels and stray identifiers of one PromQL expression.

    An identifier followed by `(` (an aggregator also by `by`/`without`) must be a PromQL
    function; after a grouping keyword come labels; inside `{...}` come matchers; any
    other identifier standing alone is a metric name.
    """
    query = Query(expr)
    toks = tokens(expr)
    i = 0
    previous_metric: str | None = None
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "ident" and text in GROUPING:
            if following == ("op", "("):
                labels, i = label_list(toks, i + 1)
                query.grouped.update(labels)
            else:
                i += 1
            continue
        if kind == "ident" and text in KEYWORDS:
            i += 1
            continue
        if kind == "ident" and text in AGGREGATORS and following[1] in ("by", "without"):
            i += 1  # `sum by (kind) (...)`: the clause comes first, then the argument
            continue
        if kind == "ident" and following == ("op", "("):
            if text not in PROMQL_FUNCTIONS | AGGREGATORS:
                query.unknown.append(f"{text}(")
            i += 1
            continue
        if kind == "ident":
            query.metrics.add(text)
            previous_metric = text
            i += 1
            continue
        if (kind, text) == ("op", "{"):
            i += 1
            while toks[i] != ("op", "}"):
                if toks[i][1] == ",":
                    i += 1
                    continue
                (label_kind, label), (_, op), (value_kind, value) = toks[i : i + 3]
                assert label_kind == "ident", f"not a matcher in {expr!r}: {toks[i:]}"
                assert value_kind in ("string", "variable"), f"not a value in {expr!r}"
                query.matchers.append((label, op, value))
                if previous_metric is not None:
                    query.selected.add((previous_metric, label))
                i += 3
            i += 1
            previous_metric = None
            continue
        previous_metric = None
        i += 1
    return query


def parse_variable(text: str) -> Query:
    """A query variable's `label_values(selector, label)` (Grafana's, not PromQL): the
    selector's metrics, each of which must carry `label`."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", text)
    assert match is not None, f"not label_values(selector, label): {text!r}"
    query = parse(match[1])
    query.expr = text
    query.selected.update((metric, match[2]) for metric in query.metrics)
    return query


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) of every target of every panel, rows' collapsed panels included."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [(panel, target) for panel in panels for target in panel.get("targets", [])]


def templating_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, query) of every query variable."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        found.append((variable["name"], query["query"] if isinstance(query, dict) else query))
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def served() -> dict[str, set[str]]:
    """Every sample name the real exporter serves over HTTP, with its label names.

    A Metrics with a little of every kind of activity, so that every series exists
    (Graph requests, the newest window, the last success and the retention margin
    appear only once something happened).
    """
    metrics = Metrics()
    metrics.rows.labels(kind="pstn").inc(1500)
    metrics.pages.labels(kind="pstn").inc(2)
    metrics.requests.labels(kind="pstn", status="200").inc(2)
    metrics.requests.labels(kind="pstn", status="429").inc()
    metrics.throttled.labels(kind="pstn").inc()
    metrics.retries.labels(kind="pstn").inc()
    metrics.windows.labels(kind="pstn", state="done").set(1)
    now = datetime.now(UTC)
    metrics.newest_window_end.labels(kind="pstn").set(now.timestamp() - 3600)
    metrics.last_success.labels(kind="pstn").set(now.timestamp())
    metrics.set_oldest_pending(Kind.PSTN, now - timedelta(days=2))
    metrics.set_oldest_pending(Kind.DIRECT_ROUTING, None)

    async def scrape() -> str:
        with anyio.fail_after(30):
            async with serving(metrics, "127.0.0.1", 0, lambda: True) as port:
                url = f"http://127.0.0.1:{port}/metrics"
                with await anyio.to_thread.run_sync(urllib.request.urlopen, url) as answer:
                    body: bytes = answer.read()
                    return body.decode()

    text = anyio.run(scrape, backend="asyncio")  # the metrics server is aiohttp: asyncio
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # sample names keep _total; family names drop it
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def all_queries(dashboard: dict[str, Any]) -> list[tuple[str, Query]]:
    """(where, parsed query) of every expression in the dashboard."""
    found = [
        (f"panel {panel['title']!r} target {target['refId']}", parse(target["expr"]))
        for panel, target in panel_queries(dashboard)
    ]
    found += [
        (f"variable ${name}", parse_variable(query))
        for name, query in templating_queries(dashboard)
    ]
    return found


def test_the_scrape_serves_every_family(served: dict[str, set[str]]) -> None:
    """The activity recorded above is enough for every series in metrics.py to show."""
    assert {
        "archiver_rows_total",
        "archiver_pages_total",
        "archiver_graph_requests_total",
        "archiver_throttled_total",
        "archiver_retries_total",
        "archiver_windows",
        "archiver_newest_window_end_timestamp_seconds",
        "archiver_newest_window_age_seconds",
        "archiver_last_success_timestamp_seconds",
        "archiver_retention_margin_days",
    } <= set(served)


def test_the_tokenizer_finds_metrics_labels_and_strays() -> None:
    """The parser this test relies on, on expressions whose answer is known."""
    query = parse(
        'sum by (status) (rate(archiver_graph_requests_total{kind=~"$kind"}[$__rate_interval]))'
        " / on (kind) group_left archiver_rows_totl offset 1h"
    )
    assert {"archiver_graph_requests_total", "archiver_rows_totl"} == query.metrics
    assert {("archiver_graph_requests_total", "kind")} == query.selected
    assert {"status", "kind"} == query.grouped
    assert [] == query.unknown
    assert ["rat("] == parse("rat(archiver_rows_total[5m])").unknown
    variable = parse_variable('label_values(archiver_rows_total{tenant=~"$tenant"}, kind)')
    assert {"archiver_rows_total"} == variable.metrics
    assert {("archiver_rows_total", "kind"), ("archiver_rows_total", "tenant")} == (
        variable.selected
    )


def test_every_metric_is_served(dashboard: dict[str, Any], served: dict[str, set[str]]) -> None:
    """Each identifier standing for a series is a sample name the exporter serves, and no
    identifier is a function PromQL does not have."""
    queries = all_queries(dashboard)
    assert len(queries) >= 12
    for where, query in queries:
        assert query.metrics, f"{where}: no metric in {query.expr!r}"
        assert [] == query.unknown, f"{where}: unknown functions in {query.expr!r}"
        missing = query.metrics - set(served)
        assert not missing, f"{where}: {sorted(missing)} not served; served: {sorted(served)}"


def test_every_label_is_a_label_of_its_series(
    dashboard: dict[str, Any], served: dict[str, set[str]]
) -> None:
    """Labels matched on a series are its labels; labels grouped by or shown in a legend
    are labels of every series in the expression."""
    legends = {
        target["expr"]: set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        for _, target in panel_queries(dashboard)
    }
    for where, query in all_queries(dashboard):
        metrics = query.metrics & set(served)  # test_every_metric_is_served names the rest
        for metric, label in query.selected:
            if metric in metrics:
                assert label in served[metric], f"{where}: {metric} has no {label!r}"
        for label in query.grouped | legends.get(query.expr, set()):
            for metric in metrics:
                assert label in served[metric], f"{where}: {metric} has no {label!r}"


def test_panel_queries_filter_by_the_tenant_and_kind_variables(dashboard: dict[str, Any]) -> None:
    """Every series a panel reads is narrowed by $tenant and $kind (every selector)."""
    for panel, target in panel_queries(dashboard):
        selectors = re.findall(r"\{[^{}]*\}", re.sub(r"\{\{[^}]*\}\}", "", target["expr"]))
        query = parse(target["expr"])
        assert len(selectors) == len(re.findall(r"archiver_\w+", target["expr"])), panel["title"]
        for selector in selectors:
            assert 'tenant=~"$tenant"' in selector, f"{panel['title']}: {selector}"
            assert 'kind=~"$kind"' in selector, f"{panel['title']}: {selector}"
        assert ("tenant", "=~", '"$tenant"') in query.matchers


def test_the_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    """Grafana's shape: uid, schema, the datasource variable, tenant and kind variables;
    every panel titled, placed, on the datasource, with at least one target."""
    assert "archiver" == dashboard["uid"]
    assert 39 == dashboard["schemaVersion"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert "datasource" == variables["DS_PROMETHEUS"]["type"]
    assert "prometheus" == variables["DS_PROMETHEUS"]["query"]
    assert {
        "tenant": "label_values(archiver_rows_total, tenant)",
        "kind": "label_values(archiver_rows_total, kind)",
    } == {name: query for name, query in templating_queries(dashboard)}
    assert variables["tenant"]["includeAll"]
    assert ".*" == variables["tenant"]["allValue"]  # matches series with no tenant label too
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel.get("title"), panel
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert DATASOURCE == panel["datasource"], panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no target"
        for target in panel["targets"]:
            assert DATASOURCE == target["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]


def steps(dashboard: dict[str, Any], title: str) -> dict[str, float | None]:
    """Color → value of the threshold steps of the panel titled `title`."""
    (panel,) = [panel for panel in dashboard["panels"] if panel["title"] == title]
    thresholds = panel["fieldConfig"]["defaults"]["thresholds"]
    assert "absolute" == thresholds["mode"]
    return {step["color"]: step["value"] for step in thresholds["steps"]}


def test_the_alerting_panels_have_thresholds(dashboard: dict[str, Any]) -> None:
    """Newest window age turns red past twice (1-day window + 1 h settle); the retention
    margin red under 30 days and amber under 60 (README, section Dashboard)."""
    assert {"green": None, "orange": 26 * 3600, "red": 50 * 3600} == steps(
        dashboard, "Newest window age"
    )
    assert {"red": None, "orange": 30, "green": 60} == steps(dashboard, "Retention margin")
    assert {"green": None, "red": 1} == steps(dashboard, "Failed windows")
