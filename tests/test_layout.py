"""DESIGN.md section 1's import rule, read from the code: `peer` imports nothing of ours,
`tracker` may import `peer`, `mirror` may import both. Function-local imports count too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: what each package may import of ours
ALLOWED = {"peer": set(), "tracker": {"peer"}, "mirror": {"peer", "tracker"}}


def imported_packages(path: Path, package: str) -> set[tuple[str, int]]:
    """(top-level package of ours, line) of every import in one module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in ALLOWED:
                found.add((top, node.lineno))
    return found


def violations(root: Path) -> list[str]:
    out = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for top, line in sorted(imported_packages(path, package)):
                if top != package and top not in allowed:
                    out.append(f"{path.relative_to(root)}:{line}: {package} imports {top}")
    return out


def test_the_packages_import_only_downwards():
    assert violations(ROOT) == []


def test_the_rule_is_caught_when_peer_imports_mirror(tmp_path):
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / "peer" / "ok.py").write_text("from . import hubs\nimport os\n")
    (tmp_path / "peer" / "bad.py").write_text(
        "def f():\n    from mirror.catalog import Catalog\n    return Catalog\n")
    (tmp_path / "tracker" / "bad.py").write_text("import mirror.app\nfrom peer import hubs\n")
    (tmp_path / "mirror" / "ok.py").write_text("from tracker import app\nfrom peer import hubs\n")
    assert violations(tmp_path) == ["peer/bad.py:2: peer imports mirror",
                                    "tracker/bad.py:1: tracker imports mirror"]
