"""Which series names and labels a Prometheus scrape of the server yields, and which ones a
PromQL expression uses: the link between server/metrics.py and the dashboards, alert rules
and autoscaler queries under deploy/ and helm/.

Series names follow the classic text format Prometheus scrapes: a counter family is only
``<name>_total`` (and ``_created``), a histogram only ``_bucket``, ``_sum``, ``_count`` (and
``_created``), a gauge its bare name. A query on a histogram's bare name or a counter's name
without ``_total`` matches nothing in Prometheus, so it counts as unknown here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import promql_parser

from granite_speech_server.metrics import Metrics

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}
HISTOGRAM_LABELS = {"le"}

# Labels Prometheus attaches to every scraped series (static config: job, instance;
# Prometheus Operator ServiceMonitor: also namespace, service, pod, container, endpoint).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "service", "pod", "container",
                           "endpoint", "node"})

# Grafana's template variables, given values that keep the expression valid PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
    "${__rate_interval}": "5m", "${__interval}": "1m",
}


@dataclass
class Catalogue:
    """Series names a scrape yields, each with the label names its samples may carry."""

    series: dict[str, set[str]] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)
    """Family name (as in the # TYPE line) -> type."""

    @classmethod
    def from_exposition(cls, text: str) -> Catalogue:
        catalogue = cls()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(maxsplit=3)
                catalogue.families[name] = kind
                if kind == "counter":
                    base = name.removesuffix("_total")
                    names = [base + suffix for suffix in SUFFIXES["counter"]]
                else:
                    names = [name + suffix for suffix in SUFFIXES.get(kind, ("",))]
                for series in names:
                    catalogue.series.setdefault(series, set())
            elif line and not line.startswith("#"):
                name, labels = _sample_name_and_labels(line)
                catalogue.series.setdefault(name, set()).update(labels)
        # Buckets carry `le`; families without samples still have their labels listed by
        # whoever built the catalogue (see labels_from_registry).
        for series in catalogue.series:
            if series.endswith("_bucket"):
                catalogue.series[series] |= HISTOGRAM_LABELS
        return catalogue

    def add_labels(self, family: str, labels: set[str]) -> None:
        """Give every series of ``family`` (the exposition family name) these labels."""
        kind = self.families[family]
        base = family.removesuffix("_total") if kind == "counter" else family
        for series in self.series:
            if series == family or (series.startswith(base) and series[len(base):] in
                                    SUFFIXES.get(kind, ("",))):
                self.series[series] |= labels


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')


def _sample_name_and_labels(line: str) -> tuple[str, set[str]]:
    match = _SAMPLE.match(line)
    if match is None:
        raise ValueError(f"not an exposition sample line: {line!r}")
    return match.group(1), set(_LABEL.findall(match.group(3) or ""))


@dataclass(frozen=True)
class Use:
    """One selector in a PromQL expression: the series name and the label names it matches on."""

    name: str
    labels: frozenset[str]


def parse(expr: str) -> promql_parser.Expr:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    expr = re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)  # dashboard variables ($instance)
    return promql_parser.parse(expr)


def uses(expr: str) -> tuple[list[Use], set[str]]:
    """The selectors of ``expr`` and every label named in by/without/on/ignoring/group_x."""
    selectors: list[Use] = []
    grouping: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {matcher.name for matcher in node.matchers.matchers}
            for alternative in node.matchers.or_matchers or []:
                labels |= {matcher.name for matcher in alternative}
            labels.discard("__name__")
            name = node.name
            if name is None:  # {__name__="..."}
                name = next(m.value for m in node.matchers.matchers if m.name == "__name__")
            selectors.append(Use(name, frozenset(labels)))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                grouping.update(node.modifier.matching.labels)
            grouping.update(node.modifier.group_labels or [])

    promql_parser.walk(parse(expr), pre_visit=visit)
    return selectors, grouping


def problems(expr: str, catalogue: Catalogue, *, prefix: str = "granite_speech_",
             external: frozenset[str] = frozenset()) -> list[str]:
    """What in ``expr`` the catalogue doesn't have: series names with the server's prefix
    (or any name not in ``external``), and label names no matching series carries."""
    found = []
    selectors, grouping = uses(expr)
    known_labels = set(TARGET_LABELS)
    for use in selectors:
        if use.name in external:
            continue
        if use.name not in catalogue.series:
            hint = "" if use.name.startswith(prefix) else " (not a server metric)"
            found.append(f"unknown series {use.name}{hint}")
            continue
        labels = catalogue.series[use.name] | TARGET_LABELS
        known_labels |= labels
        for label in sorted(use.labels - labels):
            found.append(f"{use.name} has no label {label!r}")
    for label in sorted(grouping - known_labels):
        found.append(f"grouping by unknown label {label!r}")
    return found


def registry_catalogue() -> Catalogue:
    """The series a scrape of a fresh server yields, from granite_speech_server/metrics.py itself, with a
    child created for every labelled metric so that each family shows its label names."""
    metrics = Metrics(engine_load=lambda: (1, 2), inflight_requests=lambda: 0,
                      inflight_audio_seconds=lambda: 0)
    # prometheus_client lists no label names for a labelled metric before its first
    # child exists; `_labelnames` is the one place that knows them beforehand.
    for collector in list(metrics.registry._collector_to_names):
        names = getattr(collector, "_labelnames", ())
        if names:
            collector.labels(*["x"] * len(names))
    body, _ = metrics.render()
    return Catalogue.from_exposition(body.decode())
