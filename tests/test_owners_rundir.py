"""One owner per concept (issue #26): what a run directory holds is named in config/rundir.py only.

The same scan as tests/test_owners.py (string constants in code, f-string pieces included;
docstrings and comments are documentation, not code): a file name only a run directory has
(`metrics.jsonl`, `config.yaml`, ...) may not appear in any string, and the generic names
(`checkpoints`, `tb`, ...) may not be a whole string constant or a path component of one.
"""

import re
from pathlib import Path

from test_owners import PACKAGE, _code_strings

OWNER = PACKAGE / "config" / "rundir.py"
DISTINCT = ("metrics.jsonl", "events.jsonl", "config.yaml", "train.lock", "loss.png", "wandb_id", "archive-")
"""Names nothing but a run directory uses: spelled nowhere else, not even in a message."""
GENERIC = ("checkpoints", "tb")
"""Names that are also ordinary words: only a whole constant or a path component (`/tb`,
`checkpoints/`) counts."""
_GENERIC = "|".join(GENERIC)
_PATH_PART = re.compile(rf"(^|/)({_GENERIC})$|\b({_GENERIC})/")


def _offences(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    import ast

    out = []
    for line, text in _code_strings(ast.parse(path.read_text(), str(path))):
        bad = [n for n in DISTINCT if n in text] + [m.group(2) or m.group(3) for m in [_PATH_PART.search(text)] if m]
        if bad:
            out.append(f"{path.relative_to(root)}:{line}: {text!r} spells {bad[0]!r}")
    return out


def test_run_directory_names_are_spelled_in_config_rundir_only():
    assert OWNER.is_file()
    offences = [o for path in sorted(PACKAGE.rglob("*.py")) if path != OWNER for o in _offences(path)]
    assert not offences, "use grow_megatron.config.rundir.RunDir instead:\n" + "\n".join(offences)


def test_a_planted_spelling_fails_and_docstrings_do_not_count(tmp_path):
    assert _offences(OWNER)  # the owner spells them, so the scan can find them
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""Writes RUN_DIR/metrics.jsonl and checkpoints/."""\n'
        "# a comment: config.yaml\n"
        "import os\n"
        'def f(run_dir):\n    return os.path.join(run_dir, "checkpoints")\n'
        'def g(run_dir):\n    return f"{run_dir}/events.jsonl"\n'
        'MSG = "no checkpoints were written"\n'
        'H = "checkpoints/step_0"\n'
        'E = f"{run_dir} has no checkpoint under checkpoints/"\n'
        'T = "stdout"\n'
    )
    assert sorted(int(o.split(":")[1]) for o in _offences(probe, tmp_path)) == [5, 7, 9, 10]
