"""README.md is a user guide that works: its own-model example runs as written, and it stays short.

The example is the Python block right after the ``<!-- readme-example`` marker; it runs in a fresh
interpreter with this tree's ``compactnn`` and must print a summary whose target is met. The
README holds no dated entries (those are records: ``benchmarks/RESULTS.md``), and every relative
link of the README and of ``docs/*.md`` names a file that exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- readme-example"
MAX_LINES = 200


def _example() -> str:
    """The code of the first ```python block after the marker."""
    text = README.read_text()
    assert text.count(MARKER) == 1, f"README.md needs exactly one {MARKER!r} marker"
    after = text[text.index(MARKER) :]
    m = re.search(r"```python\n(.*?)\n```", after, flags=re.S)
    assert m is not None, "no ```python block after the marker"
    return m.group(1)


def _relative_links(path: Path) -> list[str]:
    """Targets of the markdown links of ``path`` that are not URLs or in-page anchors."""
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", path.read_text())
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_the_own_model_example_runs_as_written_and_meets_its_target(tmp_path: Path) -> None:
    code = _example()
    assert "compactnn.compress(" in code and "DataLoader(" in code and '"macs"' in code
    probe = '\nimport compactnn as _c\nprint("compactnn imported from", _c.__file__)\n'
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", code + probe],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out
    assert f"compactnn imported from {ROOT / 'src' / 'compactnn' / '__init__.py'}" in out, out
    m = re.search(r"target met: kept macs ([\d.]+) % \(target ([\d.]+) %\)", out)
    assert m is not None, out
    kept, target = float(m.group(1)), float(m.group(2))
    assert kept <= target * 1.1, out  # within Target.tolerance (10 %)


def test_the_readme_is_a_short_guide_without_dates() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES})"
    dated = [f"{i}: {ln}" for i, ln in enumerate(lines, 1) if re.search(r"20\d\d-\d\d-\d\d", ln)]
    assert not dated, "dated entries belong in benchmarks/RESULTS.md:\n" + "\n".join(dated)
    first = "\n".join(lines[:40])
    assert "pip install -e ." in first and "compactnn.compress(" in first
    assert "| method |" in first, "the method table belongs in the README's first 40 lines"


def test_every_relative_link_points_to_a_file() -> None:
    docs = [README, ROOT / "benchmarks" / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(docs) > 2, "docs/*.md not found"
    broken = [
        f"{doc.relative_to(ROOT)} -> {target}"
        for doc in docs
        for target in _relative_links(doc)
        if not (doc.parent / target.split("#")[0]).exists()
    ]
    assert not broken, "links to missing files:\n" + "\n".join(broken)
