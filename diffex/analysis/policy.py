"""`diffex check`: evaluate a policy file of rules against one classifier's stored effects, for
CI. Every rule is read from the store (the effect tables and the paired comparison over the same
cached edits); nothing is recomputed. A rule naming an unknown node, class, classifier or key is
a PolicyError (exit 2), never a pass.

Rule forms (TOML, one `[[rule]]` table each; see README "Policy checks"):
- max_abs_effect = X: with `node` (that node) or `under` (that node and every node below it)
  and `class` ("*" = every class): fails when the upper bound of |mean delta P| exceeds X, the
  bound being the 95% CI's farther end (`bound = "mean"`: the mean itself).
- max_growth = X, against = SPEC: |effect| under the checked classifier minus |effect| under
  `against`, paired over the very same edits, may not exceed X.
- no_new_in_top = K, against = SPEC: every node in the checked classifier's top K for `class`
  (subtypes: nodes below a top-level group, as top_subtypes) must be in `against`'s top K.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DiffexError, UsageError
from ..store import Store
from ..taxonomy.tree import normalise_label

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (python 3.10)
    import tomli as tomllib

KINDS = ("max_abs_effect", "max_growth", "no_new_in_top")
KEYS = {"name", "node", "under", "class", "direction", "bound", "against", *KINDS}


class PolicyError(UsageError):
    """A policy that cannot be evaluated as written (the CLI exits 2)."""


@dataclass
class RuleResult:
    index: int  # 1-based position in the file
    name: str
    kind: str
    limit: float
    passed: bool
    checked: int  # (node, class) pairs evaluated
    worst: float | None  # the largest value compared with the limit
    violations: list[dict[str, Any]] = field(default_factory=list)  # node, class, value, ...


@dataclass
class CheckReport:
    db: str
    classifier: str
    policy: str
    rules: list[RuleResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    def to_dict(self) -> dict[str, Any]:
        return {"db": self.db, "classifier": self.classifier, "policy": self.policy, "passed": self.passed,
                "rules": [asdict(r) for r in self.rules]}


def load_policy(path: "str | Path") -> list[dict]:
    """The rules of a policy file, checked for shape (not yet against a store)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"no policy file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {path} is not valid TOML: {exc}") from None
    extra = set(doc) - {"rule"}
    rules = doc.get("rule")
    if extra or not isinstance(rules, list) or not rules:
        raise PolicyError(f"policy {path} must hold [[rule]] tables and nothing else"
                          + (f" (unknown: {', '.join(sorted(extra))})" if extra else ""))
    for i, rule in enumerate(rules, 1):
        where = f"rule {i} of {path}"
        unknown = set(rule) - KEYS
        if unknown:
            raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r}; valid: {', '.join(sorted(KEYS))}")
        kinds = [k for k in KINDS if k in rule]
        if len(kinds) != 1:
            raise PolicyError(f"{where}: give exactly one of {', '.join(KINDS)}")
        kind = kinds[0]
        limit = rule[kind]
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
            raise PolicyError(f"{where}: {kind} must be a non-negative number, got {limit!r}")
        if kind == "no_new_in_top" and (not isinstance(limit, int) or limit < 1):
            raise PolicyError(f"{where}: no_new_in_top must be a whole number of nodes, got {limit!r}")
        if not isinstance(rule.get("class"), str):
            raise PolicyError(f"{where}: give the class, e.g. class = \"old\" (\"*\" for every class)")
        if kind in ("max_abs_effect", "max_growth") and ("node" in rule) == ("under" in rule):
            raise PolicyError(f"{where}: give node = \"...\" or under = \"...\" (one of them)")
        if kind in ("max_growth", "no_new_in_top") and not isinstance(rule.get("against"), str):
            raise PolicyError(f"{where}: {kind} needs against = \"CLASSIFIER\" (the version to compare with)")
        if rule.get("bound", "ci") not in ("ci", "mean"):
            raise PolicyError(f"{where}: bound must be \"ci\" or \"mean\", got {rule['bound']!r}")
        if rule.get("direction", "add") not in ("add", "remove"):
            raise PolicyError(f"{where}: direction must be \"add\" or \"remove\", got {rule['direction']!r}")
    return rules


def _nodes(store: Store, rule: dict, where: str) -> list[dict]:
    """The taxonomy nodes a rule names (by label or path; `under`: the subtree)."""
    every = store.taxonomy_node_rows(store.resolve_taxonomy()["taxonomy_id"])  # the newest version
    text = rule.get("node") or rule.get("under")
    want = " > ".join(normalise_label(p) for p in str(text).split(">"))
    hits = [n for n in every if n["path"] == want] or [n for n in every if n["label"] == want]
    if not hits:
        raise PolicyError(f"{where}: unknown node {text!r} (give a label or a path such as 'facial hair > beard')")
    if len(hits) > 1:
        raise PolicyError(f"{where}: node {text!r} is ambiguous ({', '.join(h['path'] for h in hits)}); give its path")
    if "node" in rule:
        return hits
    root = hits[0]["path"]
    return [n for n in every if n["path"] == root or n["path"].startswith(root + " > ")]


def _classes(clf: dict, rule: dict, where: str) -> list[str]:
    if rule["class"] == "*":
        return list(clf["class_names"])
    if rule["class"] not in clf["class_names"]:
        raise PolicyError(f"{where}: unknown class {rule['class']!r}; classes of {clf['spec'] or clf['name']}: "
                          f"{', '.join(clf['class_names'])}")
    return [rule["class"]]


def _resolve(store: Store, which: str, where: str) -> dict:
    try:
        return store.resolve_classifier(which)
    except DiffexError as exc:  # unknown classifier
        raise PolicyError(f"{where}: {exc}") from None


def evaluate(db: "str | Path", classifier: str, policy: "str | Path") -> CheckReport:
    """Evaluate every rule of `policy` for `classifier` (id, prefix, name or spec) in `db`."""
    from .compare import compare_classifiers

    rules = load_policy(policy)
    results = []
    with Store.open(db, read_only=True) as store, store.hold():
        clf = _resolve(store, classifier, "--classifier")
        cid = clf["classifier_id"]
        for i, rule in enumerate(rules, 1):
            where = f"rule {i}"
            kind = next(k for k in KINDS if k in rule)
            direction = rule.get("direction", "add")
            classes = _classes(clf, rule, where)
            name = rule.get("name") or _describe(rule, kind)
            limit = float(rule[kind])
            rows: list[dict] = []
            if kind == "max_abs_effect":
                nodes = {n["node_id"]: n for n in _nodes(store, rule, where)}
                for cls in classes:
                    for e in store.node_effects(cls, cid, direction):
                        if e["node_id"] in nodes and e["mean_delta_prob"] is not None:
                            lo, hi, m = e["ci_low"], e["ci_high"], e["mean_delta_prob"]
                            value = abs(m) if rule.get("bound") == "mean" or lo is None else max(abs(lo), abs(hi))
                            rows.append({"node": e["path"], "class": cls, "value": value, "mean_delta_prob": m,
                                         "ci_low": lo, "ci_high": hi, "n_images": e["n_images"]})
                _measured(rows, rule, where, clf)
            elif kind == "max_growth":
                base = _resolve(store, rule["against"], where)
                for cls in _classes(base, rule, where):
                    if cls not in classes:
                        continue
                    nodes = {n["node_id"]: n for n in _nodes(store, rule, where)}
                    paths = {n["path"] for n in nodes.values()}
                    if base["classifier_id"] == cid:  # the same weights: nothing can have grown
                        changes = [_Same(e) for e in store.node_effects(cls, cid, direction) if e["mean_delta_prob"] is not None]
                    else:
                        changes = compare_classifiers(store, base["classifier_id"], cid, cls, direction=direction).rows
                    for r in changes:
                        if r.path in paths:
                            rows.append({"node": r.path, "class": cls, "value": abs(r.effect_b) - abs(r.effect_a),
                                         "effect_against": r.effect_a, "effect": r.effect_b,
                                         "p_permutation_bh": r.p_permutation_bh, "n_images": r.n_images})
                _measured(rows, rule, where, clf, against=base)
            else:
                base = _resolve(store, rule["against"], where)
                k = int(rule[kind])
                for cls in classes:
                    _classes(base, {"class": cls}, where)
                    now = [r["path"] for r in store.top_subtypes(cls, k, cid, direction)]
                    before = {r["path"] for r in store.top_subtypes(cls, k, base["classifier_id"], direction)}
                    for rank, path in enumerate(now, 1):
                        rows.append({"node": path, "class": cls, "value": float(path not in before), "rank": rank})
                limit = 0.0  # a node counts 1 when it is new; none may be
            violations = [r for r in rows if r["value"] > limit + 1e-12]
            worst = max((r["value"] for r in rows), default=None)
            results.append(RuleResult(i, name, kind, float(rule[kind]), not violations, len(rows), worst, violations))
    return CheckReport(str(db), clf["spec"] or clf["name"], str(policy), results)


def _measured(rows: list[dict], rule: dict, where: str, clf: dict, against: dict | None = None) -> None:
    """A rule whose nodes have no measured effect is an error: nothing was checked."""
    if not rows:
        who = clf["spec"] or clf["name"]
        if against is not None:
            who += f" and {against['spec'] or against['name']} over the same edits"
        raise PolicyError(f"{where}: {rule.get('node') or rule.get('under')!r} has no measured effect on "
                          f"{rule['class']!r} under {who} (not indexed, or every edit invalid)")


class _Same:
    """A node's comparison with itself (against = the checked classifier)."""

    def __init__(self, e: dict):
        self.path, self.n_images = e["path"], e["n_images"]
        self.effect_a = self.effect_b = e["mean_delta_prob"]
        self.p_permutation_bh = 1.0


def _describe(rule: dict, kind: str) -> str:
    what = f"node {rule['node']!r}" if "node" in rule else (f"under {rule['under']!r}" if "under" in rule else "top")
    if kind == "max_abs_effect":
        return f"{what} |effect on {rule['class']}| <= {rule[kind]} ({rule.get('bound', 'ci')})"
    if kind == "max_growth":
        return f"{what} |effect on {rule['class']}| grows <= {rule[kind]} against {rule['against']}"
    return f"no new node in the top {rule[kind]} for {rule['class']} against {rule['against']}"


def junit_xml(report: CheckReport) -> str:
    """One <testcase> per rule; a violated rule is a <failure> listing its violations."""
    from xml.sax.saxutils import escape, quoteattr

    failures = sum(not r.passed for r in report.rules)
    cases = []
    for r in report.rules:
        body = ""
        if not r.passed:
            lines = [f"{v['node']} / {v['class']}: {v['value']:.4f} > {r.limit}" if r.kind != "no_new_in_top"
                     else f"{v['node']} / {v['class']}: new at rank {v['rank']}" for v in r.violations]
            body = (f"<failure message={quoteattr(f'{len(r.violations)} violation(s); worst {r.worst:.4f}')}"
                    f" type={quoteattr(r.kind)}>{escape(chr(10).join(lines))}</failure>")
        cases.append(f"  <testcase classname={quoteattr('diffex.check.' + report.classifier)} "
                     f"name={quoteattr(f'rule {r.index}: {r.name}')} time=\"0\">{body}</testcase>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<testsuites tests=\"{len(report.rules)}\" failures=\"{failures}\" errors=\"0\">\n"
            f"<testsuite name={quoteattr('diffex check ' + report.policy)} tests=\"{len(report.rules)}\" "
            f"failures=\"{failures}\" errors=\"0\">\n" + "\n".join(cases) + "\n</testsuite>\n</testsuites>\n")
