import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_code_passes_ruff():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extra"
    result = subprocess.run([ruff, "check", "peer", "mirror", "tracker", "tests", "ops"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


#: the longest a function of peer/, mirror/ or tracker/ may be, in lines (the issue's "about
#: 60"; its branches are ruff's C901 and PLR0912, above)
MAX_FUNCTION_LINES = 60


def test_no_function_of_the_packages_is_longer_than_about_60_lines():
    long = []
    for package in ("peer", "mirror", "tracker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: "
                                    f"{lines} lines")
    assert long == [], "cut these into named steps:\n" + "\n".join(long)
