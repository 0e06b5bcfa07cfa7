"""The commands of README.md and docs/*.md as a reader copies them: ``python train.py`` /
``python evaluate.py`` / ``python -m anogan...`` from fenced code blocks (``\\`` joins lines, ``#``
starts a comment) and from inline code of the prose, placeholders such as ``<run dir>`` or ``...``
made concrete. Used by tests/test_docs.py (compose them) and tests/test_slurm.py (run the README's
sweep on the one-node cluster)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate"}
PLACEHOLDER = "x"  # what <run dir>, <folder of scans>, ckpt_path=... become


def words(text: str) -> list[str]:
    """Shell words of ``text`` with placeholders made concrete: ``<run dir>`` -> ``x``, ``=...`` -> ``=x``,
    a bare ``...`` (more of the same) dropped; ``&&``, ``;`` and ``|`` stay words of their own. Text
    without a python command (e.g. printed output) gives no words."""
    if not re.search(r"\bpython3?\s", text):
        return []
    text = re.sub(r"<[^<>\n]*>", PLACEHOLDER, text.replace("\\\n", " "))
    text = re.sub(r"=\.\.\.(?=\s|$|\")", "=" + PLACEHOLDER, text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars="&;|")
    lexer.whitespace_split = True
    return [w for w in lexer if w != "..."]


def commands_in(ws: list[str]) -> list[list[str]]:
    """The ``python train.py|evaluate.py ...`` and ``python -m anogan... ...`` commands among shell words
    ``ws`` (after an environment prefix, inside a quoted ``--wrap "srun python ..."`` too), each from its
    script or ``-m`` to the end of its command."""
    found, start = [], None
    for i, w in enumerate(ws + [";"]):
        if start is not None and w in ("&&", ";", "|", "||", "&"):
            found.append(ws[start:i])
            start = None
        if start is None and w in ("python", "python3") and i + 1 < len(ws):
            nxt = ws[i + 1:i + 3]
            if nxt[0] in SCRIPTS or (nxt[0] == "-m" and len(nxt) > 1 and nxt[1].split(".")[0] == "anogan"):
                start = i + 1
        elif start is None and " " in w and "python" in w:
            found += commands_in(words(w))
    return found


def shown(doc: Path) -> str:
    """The text of ``doc`` that a reader sees: HTML comments (notes for the next editor) removed."""
    return re.sub(r"<!--.*?-->", "", doc.read_text(), flags=re.S)


def doc_commands(docs: list[Path] = DOCS) -> list[tuple[str, list[str]]]:
    """(where, words) of every command in ``docs``: fenced code blocks line by line, then the inline
    code spans of the prose (which may wrap over lines)."""
    out = []
    for doc in docs:
        text = shown(doc)
        for block in FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line)
                out += [(f"{doc.name}: {line.strip()}", c) for c in commands_in(words(line))]
        for span in INLINE.findall(FENCE.sub("", text)):
            out += [(f"{doc.name}: `{' '.join(span.split())}`", c) for c in commands_in(words(span))]
    return out


def readme_command(*parts: str) -> list[str]:
    """The one command of README.md that holds every word of ``parts``."""
    [found] = [c for _, c in doc_commands([ROOT / "README.md"]) if all(p in c for p in parts)]
    return found
