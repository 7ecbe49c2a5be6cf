#!/usr/bin/env python3
"""Checks the Prometheus rules and the Grafana dashboard against the metrics regcache exports.

    python3 tests/observability/check.py        (from any directory)

Needs promtool (Debian package `prometheus`) and PyYAML (`python3-yaml`). Checks:

- promtool accepts config/prometheus/regcache-rules.yml, and its unit tests
  (regcache-rules.test.yml beside it) pass;
- every alert has `for:`, a severity label, a summary and a description;
- every metric named in a rule or a dashboard query is declared in src/metrics.rs (a
  `pub const ... = "regcache_..."`, or for now in PENDING below), with only the labels
  it has there; a histogram only as _bucket, _sum or _count;
- the dashboard parses, its queries parse, and each panel has the ${datasource}
  datasource, a query that selects instance=~"$instance", and an id of its own.

Without promtool the checks that need it are skipped, said so, and the exit status is 2;
any failure exits 1. The last line counts the checks.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config/prometheus/regcache-rules.yml"
RULE_TESTS = ROOT / "config/prometheus/regcache-rules.test.yml"
DASHBOARD = ROOT / "config/grafana/regcache.json"
METRICS_RS = ROOT / "src/metrics.rs"

# Histograms being added to regcache that src/metrics.rs does not declare yet, with their
# labels, e.g. "regcache_request_duration_seconds": ["kind", "result"]. Delete an entry
# once its name is a `pub const` there (the latency histograms this list first held have
# landed), so that a rename there cannot hide behind an old name here.
PENDING = {}

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
SEVERITIES = {"critical", "warning", "info"}

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
}
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "group_left", "group_right",
}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Skip(Exception):
    """A check that could not run here."""


# ---------------------------------------------------------------- src/metrics.rs


def blank_strings(text):
    """The text with the inside of every string literal replaced by spaces (same offsets)."""
    def blank(m):
        return '"' + " " * (len(m.group()) - 2) + '"'

    return re.sub(r'"(?:[^"\\]|\\.)*"', blank, text, flags=re.S)


def exported_metrics():
    """({metric name: set of labels}, {histogram names}) from the `pub const` names in
    src/metrics.rs: a metric's labels are the label array (`&["a", "b"]`) after its name,
    and it is a histogram when its name is the first argument of a call whose name says
    so (`histogram_vec(NAME, ...)`, `HistogramOpts::new(NAME, ...)`)."""
    source = re.sub(r"//[^\n]*", lambda m: " " * len(m.group()), METRICS_RS.read_text())
    consts = dict(re.findall(r'pub const (\w+): &str = "(regcache_\w+)";', source))
    code = blank_strings(source)
    uses = []  # (offset, const) of every use but the declaration
    for ident in consts:
        for m in re.finditer(r"\b%s\b" % ident, code):
            if not code[max(0, m.start() - 10):m.start()].endswith("pub const "):
                uses.append((m.start(), ident))
    uses.sort()
    labels = {name: set() for name in consts.values()}
    for m in re.finditer(r'&\[\s*"\w+"(?:\s*,\s*"\w+")*\s*,?\s*\]', source):
        before = [ident for offset, ident in uses if offset < m.start()]
        if before:
            labels[consts[before[-1]]] = set(re.findall(r'"(\w+)"', m.group()))
    histograms = {
        consts[m.group(2)]
        for m in re.finditer(r"([A-Za-z_][\w:]*)\s*\(\s*(\w+)\b", code)
        if "histogram" in m.group(1).lower() and m.group(2) in consts
    }
    for name, names in PENDING.items():
        labels.setdefault(name, set(names))
        histograms.add(name)
    return labels, histograms


# ---------------------------------------------------------------- PromQL


def mask_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def promql_names(expr):
    """(selectors, grouping labels, problems) of one PromQL expression: selectors are
    (metric, {label names}); grouping labels those of by/without/on/ignoring/group_*."""
    problems = []
    text = mask_strings(expr)
    grouping = set()
    for m in GROUPING.finditer(text):
        grouping |= {label.strip() for label in m.group(2).split(",") if label.strip()}
    text = GROUPING.sub(" ", text)
    matchers = {}
    ident = r"[A-Za-z_:][\w:]*"

    def take_matchers(m):
        matchers[m.start(1)] = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2)))
        return m.group(1) + " " * (len(m.group()) - len(m.group(1)))

    text = re.sub(r"(%s)\s*\{([^}]*)\}" % ident, take_matchers, text)
    if "{" in text:
        problems.append("a selector without a metric name: %s" % " ".join(expr.split()))
    # Ranges, subqueries, numbers and durations, blanked in place so that the offsets
    # of the selectors stay those `matchers` knows them by.
    text = re.sub(r"\[[^\]]*\]|(?<![\w:$])\d[\w.]*", lambda m: " " * len(m.group()), text)
    selectors = []
    for m in re.finditer(ident, text):
        word = m.group()
        if text[max(0, m.start() - 1):m.start()] == "$":
            continue  # a Grafana variable outside a selector
        if re.match(r"\s*\(", text[m.end():]):
            if word not in FUNCTIONS:
                problems.append("unknown function %s()" % word)
        elif word in KEYWORDS or word in AGGREGATIONS or word in FUNCTIONS:
            continue
        else:
            selectors.append((word, matchers.get(m.start(), set())))
    return selectors, grouping, problems


def check_exprs(exprs, recorded):
    """Problems with the metrics and labels of (where, expr) pairs."""
    exported, histograms = exported_metrics()
    problems = []
    for where, expr in exprs:
        selectors, grouping, found = promql_names(expr)
        problems += ["%s: %s" % (where, p) for p in found]
        seen = set(TARGET_LABELS)
        # Grouping labels are judged only when every metric's labels are known.
        judge_grouping = True
        for name, labels in selectors:
            if name in recorded:
                judge_grouping = False
                continue
            if name in histograms:
                problems.append("%s: %s is a histogram: its series are %s_bucket, _sum, _count"
                                % (where, name, name))
                judge_grouping = False
                continue
            known = exported.get(name)
            # A histogram is exposed as <name>_bucket, _sum and _count.
            for suffix in HISTOGRAM_SUFFIXES:
                base = name[: -len(suffix)]
                if name.endswith(suffix) and base in histograms:
                    known = exported[base] | ({"le"} if suffix == "_bucket" else set())
            if known is None:
                problems.append("%s: metric %s is not declared in src/metrics.rs" % (where, name))
                judge_grouping = False
                continue
            allowed = known | TARGET_LABELS
            seen |= allowed
            for label in sorted(labels - allowed):
                problems.append("%s: %s has no label %r (it has: %s)"
                                % (where, name, label, ", ".join(sorted(known)) or "none"))
        if judge_grouping:
            for label in sorted(grouping - seen):
                problems.append("%s: groups by %r, a label none of its metrics has"
                                % (where, label))
    return problems


# ---------------------------------------------------------------- the files


def load_yaml(path):
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def rules():
    return [rule for group in load_yaml(RULES).get("groups", []) for rule in group.get("rules", [])]


def recorded_names():
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(panel):
    return [t for t in panel.get("targets", []) if str(t.get("expr", "")).strip()]


def promtool(*args):
    tool = shutil.which("promtool")
    if not tool:
        raise Skip("promtool not found: apt-get install prometheus (only its promtool is used)")
    run = subprocess.run([tool, *args], capture_output=True, text=True)
    if run.returncode != 0:
        return [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    return []


# ---------------------------------------------------------------- checks


def check_promtool_rules():
    return promtool("check", "rules", str(RULES))


def check_rule_shape():
    problems, names = [], set()
    for rule in rules():
        name = rule.get("alert") or rule.get("record") or "(unnamed)"
        if not str(rule.get("expr", "")).strip():
            problems.append("%s: no expr" % name)
        if name in names:
            problems.append("%s: defined twice" % name)
        names.add(name)
        if "alert" not in rule:
            continue
        if "for" not in rule:
            problems.append("%s: no `for:`" % name)
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append("%s: severity label is not one of %s"
                            % (name, ", ".join(sorted(SEVERITIES))))
        for key in ("summary", "description"):
            if not str(rule.get("annotations", {}).get(key, "")).strip():
                problems.append("%s: no %s annotation" % (name, key))
    return problems


def check_rule_metrics():
    exprs = [(rule.get("alert") or rule.get("record"), str(rule.get("expr", "")))
             for rule in rules()]
    return check_exprs(exprs, recorded_names())


def check_dashboard_shape():
    try:
        board = dashboard()
    except (OSError, ValueError) as e:
        return ["%s does not parse: %s" % (DASHBOARD.relative_to(ROOT), e)]
    problems = []
    variables = {v.get("name"): v for v in board.get("templating", {}).get("list", [])}
    source = variables.get("datasource", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append("no `datasource` variable of Prometheus data sources")
    if "instance" not in variables:
        problems.append("no `instance` variable")
    if not isinstance(board.get("schemaVersion"), int):
        problems.append("no schemaVersion")
    if re.search(r"https?://", DASHBOARD.read_text()):
        problems.append("links outside the dashboard (http:// or https://)")
    ids = {}
    for panel in all_panels(board.get("panels", [])):
        title = "panel %r" % panel.get("title")
        if panel.get("id") in ids:
            problems.append("%s: id %s already used by panel %r"
                            % (title, panel.get("id"), ids[panel.get("id")]))
        ids[panel.get("id")] = panel.get("title")
        if "gridPos" not in panel:
            problems.append("%s: no gridPos" % title)
        if panel.get("type") == "row":
            continue
        if not panel.get("datasource"):
            problems.append("%s: no datasource" % title)
        elif panel["datasource"].get("uid") != "${datasource}":
            problems.append("%s: datasource is not ${datasource}" % title)
        if not queries(panel):
            problems.append("%s: no target with an expr" % title)
        for target in queries(panel):
            if "$instance" not in target["expr"]:
                problems.append("%s: query %s does not select instance=~\"$instance\""
                                % (title, target.get("refId")))
    return problems


def dashboard_exprs():
    exprs = []
    board = dashboard()
    for panel in all_panels(board.get("panels", [])):
        for target in queries(panel):
            where = "panel %r %s" % (panel.get("title"), target.get("refId"))
            exprs.append((where, target["expr"]))
    return exprs, board


def check_dashboard_metrics():
    try:
        exprs, board = dashboard_exprs()
    except (OSError, ValueError) as e:
        return ["dashboard does not parse: %s" % e]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        m = re.match(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*$", query)
        if m:
            exprs.append(("variable %s" % variable.get("name"),
                          "count by (%s) (%s)" % (m.group(2), m.group(1))))
    return check_exprs(exprs, recorded_names())


def check_dashboard_queries_parse():
    """promtool parses each query, with Grafana's variables replaced by values."""
    try:
        exprs, _ = dashboard_exprs()
    except (OSError, ValueError) as e:
        return ["dashboard does not parse: %s" % e]
    group = []
    for n, (where, expr) in enumerate(exprs):
        expr = re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
        group.append({"record": "dashboard_query_%d" % n, "expr": expr})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard-queries.yml"
        path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": group}]}))
        out = promtool("check", "rules", str(path))
    # Name the panel rather than the temporary rule.
    def name(m):
        return exprs[int(m.group(1))][0]

    return [re.sub(r"dashboard_query_(\d+)", name, line) for line in out]


def check_rule_tests():
    if not RULE_TESTS.exists():
        return ["%s is missing" % RULE_TESTS.relative_to(ROOT)]
    return promtool("test", "rules", str(RULE_TESTS))


CHECKS = [
    ("promtool check rules", check_promtool_rules),
    ("alerts have for, severity, summary, description", check_rule_shape),
    ("rule metrics and labels exist", check_rule_metrics),
    ("dashboard parses, panels have datasource, query, own id", check_dashboard_shape),
    ("dashboard metrics and labels exist", check_dashboard_metrics),
    ("dashboard queries parse (promtool)", check_dashboard_queries_parse),
    ("promtool test rules", check_rule_tests),
]


def main():
    try:
        import yaml  # noqa: F401
    except ImportError:
        print("check.py: PyYAML is missing: apt-get install python3-yaml (or pip install pyyaml)")
        return 2
    passed = failed = skipped = 0
    for name, check in CHECKS:
        try:
            problems = check()
        except Skip as e:
            print("SKIP %s: %s" % (name, e))
            skipped += 1
            continue
        if problems:
            failed += 1
            print("FAIL %s" % name)
            for problem in problems:
                print("       %s" % problem)
        else:
            passed += 1
            print("ok   %s" % name)
    summary = "observability: %d passed, %d failed" % (passed, failed)
    if skipped:
        summary += ", %d SKIPPED (not a pass)" % skipped
    print(summary)
    return 1 if failed else 2 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
