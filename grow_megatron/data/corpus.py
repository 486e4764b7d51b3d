"""The embedded default corpus: English prose and Python code from the Python standard library.

The corpus ships with the package as `assets/default_corpus.jsonl.xz` (one JSON object per
line: {"text": ..., "source": ...}), generated once by `make_default_corpus()` from the
interpreter that ran it (CPython 3.11.7 for the shipped file) so that it does not vary between
Python versions or machines. Its contents, all under the PSF license (see assets/ATTRIBUTION.md):

* the docstrings of the standard library's modules, classes and functions (English),
* the topics of the Python language reference shipped in `pydoc_data.topics` (English),
* the Python license text,
* the source code of a deterministic subset of standard-library modules (Python code),

documents shuffled with a fixed seed (so megatron's document-range train/valid split is a
fair sample). Regenerate with `grow-megatron data make-default-corpus` (which also retrains
the shipped tokenizer, see tokenizer.train_default_tokenizer).
"""

from __future__ import annotations

import ast
import io
import json
import lzma
import os
import pydoc_data.topics as topics
import random
import sysconfig
from collections.abc import Iterator

from grow_megatron.data.assets import CORPUS_FILE, TOKENIZER_FILE, assets_dir, default_corpus_path
from grow_megatron.data.tokenizer import train_bpe_tokenizer

# Directories of the standard library left out: tests, vendored or generated code.
_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "__pycache__",
    "site-packages",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "turtledemo",
    "venv",
    "distutils",
}
_CODE_BUDGET = 1_800_000  # characters of Python source in the corpus
_CODE_MAX_FILE = 60_000  # skip larger modules in the code part (keeps the mix varied)


def iter_default_corpus(path: str | None = None) -> Iterator[dict]:
    """Yield the documents ({"text", "source"}) of the shipped corpus, in file order."""
    with lzma.open(path or default_corpus_path(), "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _stdlib_files(std: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(std):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("test", "config-")))
        out += [os.path.join(root, f) for f in sorted(files) if f.endswith(".py")]
    return sorted(out)


def _docstring_document(rel: str, tree: ast.Module) -> str:
    """One module's docstrings as prose: the module's, then each class's and function's."""
    parts = []
    mod = ast.get_docstring(tree)
    name = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
    if mod:
        parts.append(f"Module {name}\n\n{mod}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and not node.name.startswith("_"):
                kind = "class" if isinstance(node, ast.ClassDef) else "def"
                parts.append(f"{kind} {node.name}\n\n{doc}")
    return "\n\n".join(parts)


def generate_default_corpus(seed: int = 1234) -> list[dict]:
    """Collect the corpus documents from the running interpreter's standard library."""
    std = sysconfig.get_paths()["stdlib"]
    docs: list[dict] = []
    code_files = []
    for path in _stdlib_files(std):
        rel = os.path.relpath(path, std)
        with open(path, encoding="utf-8", errors="replace") as f:
            src = f.read()
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        text = _docstring_document(rel, tree)
        if len(text) >= 200:
            docs.append({"text": text, "source": f"docstrings:{rel}"})
        if len(src) <= _CODE_MAX_FILE and len(src) >= 500:
            code_files.append((rel, src))

    for key in sorted(topics.topics):
        docs.append({"text": topics.topics[key].strip(), "source": f"pydoc_topics:{key}"})
    lic = os.path.join(std, "LICENSE.txt")
    if os.path.exists(lic):
        with open(lic, encoding="utf-8") as f:
            docs.append({"text": f.read().strip(), "source": "license:Python"})
    # Code: a deterministic spread over the library (every module in a seeded order) until the budget.
    rng = random.Random(seed)
    rng.shuffle(code_files)
    used = 0
    for rel, src in code_files:
        if used + len(src) > _CODE_BUDGET:
            continue
        docs.append({"text": src, "source": f"code:{rel}"})
        used += len(src)
    rng.shuffle(docs)
    return docs


def write_corpus(docs: list[dict], path: str) -> None:
    """Write documents as xz-compressed JSON lines, atomically (tmp file + rename)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    buf = io.StringIO()
    for d in docs:
        buf.write(json.dumps(d, ensure_ascii=False) + "\n")
    with lzma.open(tmp, "wt", encoding="utf-8", preset=9 | lzma.PRESET_EXTREME) as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def make_default_corpus(out_dir: str | None = None, vocab_size: int = 4096) -> tuple[str, str]:
    """Regenerate the shipped corpus and its tokenizer into `out_dir` (default: the assets dir)."""
    out_dir = out_dir or assets_dir()
    os.makedirs(out_dir, exist_ok=True)
    docs = generate_default_corpus()
    corpus = os.path.join(out_dir, CORPUS_FILE)
    write_corpus(docs, corpus)
    tok = os.path.join(out_dir, TOKENIZER_FILE)
    train_bpe_tokenizer((d["text"] for d in docs), vocab_size=vocab_size, out_path=tok)
    return corpus, tok
