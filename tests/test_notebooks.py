"""Every chapter of the book runs on the smoke profile, through the command its "Rerun this chapter"
box prints, and keeps the rules.

The smoke profile runs the paper profile's code path (timm ResNet-50, CLIP and DINOv2
architectures) with random weights and tiny data, so these runs need no download.
"""
import ast
import json
import re
import shlex
from pathlib import Path

import pytest

from pure_utils.book import build as book
from pure_utils.book import cli, decorate

ROOT = Path(__file__).resolve().parents[1]

CHAPTERS = book.chapters()
GLUE_REF = re.compile(r"\{glue:text\}`([^`]+)`")


def _cells(path, kind):
    nb = json.loads(path.read_text())
    return [("".join(c["source"]) if isinstance(c["source"], list) else c["source"], c)
            for c in nb["cells"] if c["cell_type"] == kind]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_source_notebook_rules(chapter):
    code = _cells(chapter.source, "code")
    assert code, "a chapter has code"
    first_src, first = code[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), "first code cell is tagged parameters"
    for line in first_src.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"parameter without a comment: {line!r}"
    declared = book.declared_parameters(chapter.source)
    assert "profile" in declared
    # the profile's keys are injected, not declared: a declared one would shadow the profile
    assert not (set(declared) - {"profile"}) & book.schema_keys(), "a notebook knob shadows a profile key"
    for src, cell in code:
        assert not cell.get("outputs"), "outputs are stripped"
        assert not re.search(r"^\s*(def|class) ", src, re.M), "algorithms belong in pure_utils, not notebooks"


# --- what a chapter's code may do: call the library, display and glue ---------------------------
#: Most non-blank lines (comment lines count) in a code cell. The ``parameters`` cell is exempt:
#: papermill reads one such cell, it holds one commented knob per line and cannot be split.
MAX_CELL_LINES = 15
#: Packages of statistics a chapter never imports: the library computes every statistic.
STAT_MODULES = {"scipy", "statsmodels", "sklearn", "pingouin", "re"}
#: Names a chapter never uses (called, or read as an attribute, also inside f-strings; a variable
#: of that name, e.g. ``corr = family.predictor_correlations(...)``, is fine): tests,
#: intervals, correlations and averages (``np.mean``, ``.mean()``, ``.value_counts()``), the
#: metric primitives behind the library's comparisons, and ``.replace`` (a sentence is written
#: whole by ``pure_utils.study.verdicts``, never edited). A *display* of a mean stays allowed:
#: reading the ``"mean"`` column of a library table (``r["mean"]``) is no call, and the median
#: of a library table's column shown as it is (``poly.polysemanticity.median()``) is a
#: description, not a comparison.
STAT_NAMES = {"wilcoxon", "bootstrap", "bootstrap_ci", "spearmanr", "pearsonr", "kendalltau",
              "ttest_rel", "ttest_ind", "ttest_1samp", "mannwhitneyu", "paired_difference",
              "summarize", "corrcoef", "corr", "cov", "cosine_similarity", "quantile",
              "nanquantile", "percentile", "nanpercentile", "mean", "nanmean", "average", "std",
              "var", "sem", "value_counts", "ground_truth_scores", "adjusted_rand_score",
              "silhouette_score", "replace"}
#: Modules whose functions a chapter does not call directly (``pu.metrics.purity``, ...).
STAT_NAMESPACES = {"metrics", "stats"}
#: Keywords a chapter never passes: the run options and k-means' restarts come with the setting
#: (``setting.heatmaps(...)``, ``setting.virtual_neurons(...)``) or the profile's groups
#: (``**P.clustering``), never key by key.
SETTING_KEYWORDS = {"batch_size", "device", "cache", "num_workers", "n_init"}


def _rule_violations(src: str) -> list[str]:
    """What in one code cell's source breaks the notebook rules (empty: none)."""
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"imports {m}" for m in modules if m.split(".")[0] in STAT_MODULES]
            found += [f"imports {a.name} from {node.module}" for a in node.names
                      if isinstance(node, ast.ImportFrom) and a.name in STAT_NAMES | STAT_NAMESPACES]
        elif isinstance(node, ast.Attribute):
            if node.attr in STAT_NAMES:
                found.append(f".{node.attr}")
            if node.attr in STAT_NAMESPACES or (isinstance(node.value, ast.Name)
                                                and node.value.id in STAT_NAMESPACES):
                found.append(f"{ast.unparse(node)} (call the study's functions instead)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in STAT_NAMES:
            found.append(f"{node.func.id}()")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "P":
            found.append(f"{ast.unparse(node)} (read the profile's typed field: P.key)")
        elif isinstance(node, ast.keyword) and node.arg in SETTING_KEYWORDS:
            found.append(f"{node.arg}= (the setting passes it)")
    return found


def _long_cells(path) -> list[str]:
    out = []
    for src, cell in _cells(path, "code"):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        n = sum(1 for line in src.splitlines() if line.strip())
        if n > MAX_CELL_LINES:
            out.append(f"{cell.get('id')}: {n} lines")
    return out


def test_rules_catch_statistics_and_sentence_edits_but_not_displays():
    assert _rule_violations('glue("a", f"{np.mean(x):.2f}")') == [".mean"]
    assert _rule_violations("share = float((a == b).mean())") == [".mean"]
    assert _rule_violations('glue("s", s.replace(" neurons", " groups"))') == [".replace"]
    assert _rule_violations("from scipy.stats import wilcoxon") == [
        "imports scipy.stats", "imports wilcoxon from scipy.stats"]
    assert _rule_violations("from pure_utils.metrics import paired_difference") == [
        "imports paired_difference from pure_utils.metrics"]
    assert _rule_violations("x = pu.metrics.purity(a, b)")[0].startswith("pu.metrics")
    assert _rule_violations("c = df.a.value_counts(normalize=True)") == [".value_counts"]
    assert _rule_violations("p = wilcoxon(d).pvalue") == ["wilcoxon()"]
    assert _rule_violations("corr = family.predictor_correlations(units)") == []
    # displays of a library's numbers stay allowed
    assert _rule_violations('glue("m", f"{r[\'mean\']:.2f} ± {r[\'sem\']:.2f}")') == []
    assert _rule_violations('glue("m", poly.polysemanticity.median(), ".2f")') == []
    assert _rule_violations("# the mean of the bootstrap: a comment\nx = 1") == []
    # the profile is read by field, its keys reach the library through the setting
    assert _rule_violations('glue("n", P["n_ref"])') == ['P[\'n_ref\'] (read the profile\'s typed field: P.key)']
    assert _rule_violations("h = pu.feature_heatmaps(m, d, r, P.layer, [1], batch_size=P.batch_size)") == [
        "batch_size= (the setting passes it)"]
    assert _rule_violations("vn = pu.VirtualNeurons(n_clusters=2, random_state=0, n_init=P.n_init)") == [
        "n_init= (the setting passes it)"]
    assert _rule_violations("h = setting.heatmaps([n]); t = f(x, **P.clustering); y = runs[m]") == []


def test_cell_length_counts_non_blank_lines_and_exempts_the_parameters_cell(tmp_path):
    def cell(lines, tags=()):
        return {"cell_type": "code", "id": f"c{len(lines)}{len(tags)}", "metadata": {"tags": list(tags)},
                "source": "\n".join(lines), "outputs": [], "execution_count": None}
    knobs = [f"k{i} = {i}  # knob" for i in range(20)]
    code = [f"x{i} = {i}" for i in range(MAX_CELL_LINES)]
    nb = {"cells": [cell(knobs, ["parameters"]), cell(code + ["", "   "]), cell(code + ["# one more"])]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert _long_cells(path) == [f"c{MAX_CELL_LINES + 1}0: {MAX_CELL_LINES + 1} lines"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_chapters_only_call_display_and_glue(chapter):
    """Statistics, verdicts and sentences live in pure_utils (tested); a chapter's cells stay
    short, compute no statistic and edit no sentence."""
    assert not _long_cells(chapter.source), (
        f"code cells over {MAX_CELL_LINES} non-blank lines: {_long_cells(chapter.source)}; split "
        "the cell or move its logic into pure_utils")
    for src, cell in _cells(chapter.source, "code"):
        bad = _rule_violations(src)
        assert not bad, (f"cell {cell.get('id')} computes statistics, edits a sentence or "
                         f"plumbs the profile: {', '.join(bad)}; call a function of "
                         "pure_utils.study or a method of the setting instead")


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_chapter_runs_on_the_smoke_profile(chapter, tmp_path, smoke_kernel, monkeypatch):
    # the box's `book run` line, as the page prints it for the smoke profile; the test only
    # moves its output into the test's folder and turns the cache on (-p cache true), so that
    # the chapters share mined references as in a book build
    own = {k: v["default"] for k, v in book.declared_parameters(chapter.source).items()
           if k != "profile"}
    argv = shlex.split(decorate.rerun_commands(chapter.name, "smoke", own)[1])
    assert argv[:4] == ["python", "-m", "pure_utils.book", "run"]
    out = tmp_path / f"{chapter.name}.ipynb"
    argv[5] = str(out)
    monkeypatch.chdir(ROOT)  # the box says: from the repository root
    assert cli.main(argv[3:] + ["-p", "cache", "true"]) == 0
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    glued = {o["metadata"]["scrapbook"]["name"] for c in nb["cells"] for o in c.get("outputs", [])
             if "scrapbook" in o.get("metadata", {})}
    referenced = {m.split(":")[0] for src, _ in _cells(chapter.source, "markdown")
                  for m in GLUE_REF.findall(src) if "::" not in m}
    assert referenced <= glued, f"glue keys used in the text but never glued: {referenced - glued}"
    images = [o for c in nb["cells"] for o in c.get("outputs", [])
              if any(k.endswith("image/png") for k in o.get("data", {}))]
    assert images, "every chapter shows at least one figure"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_glue_roles_are_where_myst_resolves_them(chapter):
    for src, _ in _cells(chapter.source, "markdown"):
        # a backtick right before {glue: is inline code; a ```{glue:figure} fence line is fine
        prose = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("```"))
        assert "`{glue:" not in prose, "a glue role inside inline code is never resolved"
        for math in re.findall(r"\$[^$]+\$", src):
            assert "{glue" not in math, f"a glue role inside math is never resolved: {math}"
