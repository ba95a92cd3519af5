"""The README's commands still parse, and its links still land.

Every line of a fenced ``bash`` block in the README (and in ``docs/`` and the benchmarks page)
is checked without running it: ``python -m hiergeo.<cmd>`` and ``torchrun ... -m
hiergeo.<cmd>`` by that command's parser (``hiergeo.cli.<cmd>.build_parser()``), and for
``hiergeo.train`` its ``--config`` and ``key.sub=value`` overrides by ``load_config``;
``python -m gazetteer`` by gazetteer's parser; ``make X`` against the Makefile's targets;
``pip install -e '.[extra]'`` against pyproject's extras; ``python path.py`` by the file
existing and spelling each ``--option`` given. A line of a kind the checker does not know
fails, so a new kind of command gets a rule rather than a free pass.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "results" / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 300

_BASH = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


class CommandError(AssertionError):
    """A documented command that would not parse; the message says why."""


def bash_commands(text: str) -> list[str]:
    """The commands of ``text``'s fenced ``bash`` blocks: ``\\`` continuations joined,
    comments and blank lines dropped."""
    out = []
    for block in _BASH.findall(text):
        joined = re.sub(r"\\\n", " ", block)
        for line in joined.splitlines():
            if shlex.split(line, comments=True):
                out.append(line.strip())
    return out


def build_parser(cmd: str):
    """The parser of ``python -m hiergeo.<cmd>``."""
    return importlib.import_module(f"hiergeo.cli.{cmd}").build_parser()


def _no_abbreviations(parser) -> None:
    """Documented flags are spelled out: ``--meth`` works today by prefix, and stops working
    the day another flag starts with it."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def _parse(parser, args: list[str], what: str):
    _no_abbreviations(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(args)
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            return None
        lines = err.getvalue().strip().splitlines() or ["refused"]
        raise CommandError(f"{what}: {lines[-1]}") from None


def _check_train(ns, what: str) -> None:
    from hiergeo.config import ConfigError, load_config

    try:
        if ns.resume:
            bad = [o for o in ns.overrides if not o.startswith("hardware.")]
            if ns.config or bad:
                raise CommandError(f"{what}: --resume takes only hardware.* overrides")
            load_config(None, ns.overrides)
        else:
            load_config(ns.config, ns.overrides)
    except ConfigError as exc:
        raise CommandError(f"{what}: {exc}") from None


def _check_module(module: str, args: list[str], what: str) -> None:
    if module == "gazetteer":
        from gazetteer.cli import _parser

        _parse(_parser(), args, what)
        return
    package, _, cmd = module.partition(".")
    from hiergeo.cli import COMMANDS

    if package != "hiergeo" or cmd not in COMMANDS:
        raise CommandError(f"{what}: no command {module!r} (hiergeo's: {', '.join(COMMANDS)})")
    if cmd == "features" and args[:1] == ["import"]:  # its subcommand has its own parser
        cmd, args = "importing", args[1:]
    ns = _parse(build_parser(cmd), args, what)
    if cmd == "train" and ns is not None:
        _check_train(ns, what)


def _check_script(path: str, args: list[str], what: str) -> None:
    """A script of the repository, each of whose ``--options`` its source spells."""
    script = ROOT / path
    if not script.is_file():
        raise CommandError(f"{what}: no script {path} in the repository")
    source = script.read_text(encoding="utf-8")
    for opt in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        if f'"{opt}"' not in source and f"'{opt}'" not in source:
            raise CommandError(f"{what}: {path} has no option {opt}")


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)}


def _extras() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(meta["project"].get("optional-dependencies", {}))


def check_command(line: str) -> None:
    """Raise :class:`CommandError` unless ``line`` would parse."""
    what = repr(line)
    tokens = shlex.split(line, comments=True)
    while tokens and _ENV.match(tokens[0]):  # VAR=value python ...
        tokens.pop(0)
    if not tokens:
        raise CommandError(f"{what}: no command")
    prog, args = tokens[0], tokens[1:]
    if prog == "make":
        missing = [t for t in args if "=" not in t and t not in make_targets()]
        if missing or not args:
            raise CommandError(f"{what}: no Makefile target {missing or '(none given)'}")
    elif prog == "pip":
        if args[:1] != ["install"]:
            raise CommandError(f"{what}: only pip install is checked")
        for spec in (a for a in args[1:] if not a.startswith("-")):
            base, _, extra = spec.partition("[")
            if base != ".":
                raise CommandError(f"{what}: installs {spec!r}, not this package")
            unknown = {e.strip() for e in extra.rstrip("]").split(",") if e.strip()} - _extras()
            if unknown:
                raise CommandError(f"{what}: no extra {sorted(unknown)} in pyproject.toml")
    elif prog in ("python", "python3", "torchrun"):
        if "-m" in args:
            i = args.index("-m")
            if i + 1 >= len(args):
                raise CommandError(f"{what}: -m without a module")
            if prog != "torchrun" and i != 0:
                raise CommandError(f"{what}: python options before -m are not checked")
            _check_module(args[i + 1], args[i + 2:], what)
        elif prog != "torchrun" and args and args[0].endswith(".py"):
            _check_script(args[0], args[1:], what)
        else:
            raise CommandError(f"{what}: neither -m MODULE nor a script")
    else:
        raise CommandError(f"{what}: the checker knows no rule for {prog!r}; add one")


def _documented():
    for doc in DOCS:
        for line in bash_commands(doc.read_text(encoding="utf-8")):
            yield pytest.param(line, id=f"{doc.relative_to(ROOT)}: {line[:60]}")


def test_readme_is_a_guide_not_a_notebook():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n < MAX_README_LINES, f"README.md has {n} lines; move reference to docs/ " \
        "and figures to results/benchmarks/README.md"
    assert len(bash_commands(README.read_text(encoding="utf-8"))) >= 20  # the extraction works


@pytest.mark.parametrize("line", list(_documented()))
def test_documented_command_parses(line):
    check_command(line)


@pytest.mark.parametrize("line", [
    "python -m hiergeo.predict --model M --no-such-flag x.jpg",
    "torchrun --nproc_per_node 2 -m hiergeo.evaluate --run-dir R --no-such-flag",
    "python -m hiergeo.features --out STORE",                 # --data is required
    "python -m hiergeo.evaluate --run R --method nearest",    # not a choice
    "python -m hiergeo.evaluate --run R --meth flat",         # a prefix, not the flag
    "python -m gazetteer label IN.csv --out x.csv --lat latitude",
    "python -m hiergeo.train --config default no.such_key=1",
    "python -m hiergeo.train --config default model.dim=two",
    "python -m hiergeo.train --config no_such_preset",
    "python -m hiergeo.train --resume results/demo optim.lr=1",
    "python -m hiergeo.nosuchcommand --help",
    "python -m gazetteer label --out x.csv",                  # the input is required
    "make no-such-target",
    "pip install -e '.[no-such-extra]'",
    "python scripts/no_such_script.py",
    "python benchmarks/bench_names.py --no-such-option",
    "curl https://example.org",
])
def test_checker_refuses_what_would_not_run(line):
    with pytest.raises(CommandError):
        check_command(line)


# -- links ---------------------------------------------------------------------------------
def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for m in re.finditer(r"^#+ (.+)$", md.read_text(encoding="utf-8"), re.M):
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def _links():
    """(where, target file, anchor) for every local markdown link in the docs, and every
    ``results/benchmarks/README.md#anchor`` in the config's comments and the presets."""
    for doc in [*DOCS, ROOT / "results" / "README.md", ROOT / "notebooks" / "README.md"]:
        for m in re.finditer(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            target, _, anchor = m.group(1).partition("#")
            if re.match(r"[a-z]+:", target):
                continue
            path = (doc.parent / target).resolve() if target else doc
            yield pytest.param(path, anchor, id=f"{doc.relative_to(ROOT)} -> {m.group(1)}")
    for src in [ROOT / "hiergeo" / "config.py", *sorted((ROOT / "hiergeo" / "presets").glob("*"))]:
        for m in re.finditer(r"results/benchmarks/README\.md#([\w-]+)", src.read_text("utf-8")):
            yield pytest.param(ROOT / "results" / "benchmarks" / "README.md", m.group(1),
                               id=f"{src.relative_to(ROOT)} -> #{m.group(1)}")


@pytest.mark.parametrize(("path", "anchor"), list(_links()))
def test_link_lands(path, anchor):
    assert path.exists(), f"{path} does not exist"
    if anchor:
        assert anchor in _anchors(path), f"{path.name} has no heading #{anchor}"
