"""Every example in README.md and docs/*.md runs, or is checked, as the comment before it says.

Each fenced code block of README.md and docs/*.md (not CHANGELOG.md, docs/architecture.md or the
generated docs/benchmarks.md) comes right after a comment that says how it is tested:

    <!-- doc-test: KIND [OPTIONS] -->

KIND is one of:

- `run`: sh blocks run as one bash script (`set -euo pipefail`: every command must succeed);
  console blocks run command by command (`$ ` lines), each line after a command being its expected
  stdout (a line `...`: any lines; `...` in a line: any text; a number: any number), each command
  exiting 0 unless its line ends in a comment saying `exits N`; python blocks run as a script.
  Every block runs in a scratch directory holding copies of examples/ and templates/, with
  freeport-compose from this interpreter's directory first on PATH, a private state dir, and local
  images for the public ones the examples name (POSTGRES_IMAGE, REDIS_IMAGE, HTTP_IMAGE); when it
  ends, no lease and no stack may be left (whatever is left is brought down, also when it failed).
- `pytest`: a python block that is a test file, run by pytest beside the files named by `with`;
  all its tests must pass.
- `file NAME`: the block is the file NAME, parsed (yaml, ini, toml, python), for a later
  `pytest ... with NAME` of the same document.
- `excerpt PATH`: every line of the block is a line of PATH (in the repository), in the same order.
- `check`: for what cannot run as it is. sh blocks: each command is checked without being run:
  `freeport-compose ARGS` is first read by the CLI's own grammar (`_argv.parse`: no usage error);
  a command of ours is then checked by `freeport-compose ARGS --help` (exit 0, and every option
  given is one the help names, or, for `up` and `down`, one Compose's own `up` or `down` names); a
  Compose command line (a verb passed through, `compose VERB`, `run SERVICE ...`, `port SERVICE
  PRIVATE_PORT`, as the grammar reads them) by `docker compose VERB --help` (exit 0, and every
  option before the verb's first argument is one it names). `make ARGS` by `make -n`,
  `pip install ARGS` by `pip install --dry-run`, `pytest ARGS` by `pytest ARGS --help` (the
  options likewise), `docker ARGS` by `docker ARGS --help`. yaml, json, ini, toml, python and make
  blocks are parsed; a yaml template (with `$<FREEPORT_...>`) is also rendered by
  `freeport-compose render --no-check`.
- `usage`: a synopsis of `freeport-compose` command lines; every option it names is in the named
  command's `--help` (for `up` and `down`, or in Compose's own `up` or `down`'s).
- `signature`: Python call signatures, `Name(...)` or `Name.method(...)` of `freeport_compose`; each
  is the object's own (`inspect.signature`, annotations left out).
- `skip (REASON)`: not tested; the reason is required.

OPTIONS: `engine` (needs a Docker engine: marked `docker`, skipped without one), `in DIR` (run in
that directory of the scratch copy), `with NAME...` (pytest: `file` blocks of the same document, or
repository paths, copied beside the test file), `args "..."` (pytest: its command-line arguments).

A block without a comment fails, so no example goes unchecked.
"""

from __future__ import annotations

import configparser
import dataclasses
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from _docker import FPC, docker_missing, down_projects, engine_answers, fpc, ls_json

ROOT = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).parent)
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                    if p.name not in ("architecture.md", "benchmarks.md"))]
ALL_MARKDOWN = [*DOCS, ROOT / "CHANGELOG.md", ROOT / "docs/architecture.md"]
# The public images user-facing examples name, replaced by the local ones scripts/setup.sh builds.
IMAGES = {
    "POSTGRES_IMAGE": os.environ.get("FREEPORT_TEST_POSTGRES_IMAGE", "freeport-test-postgres:15"),
    "REDIS_IMAGE": os.environ.get("FREEPORT_TEST_REDIS_IMAGE", "freeport-test-redis:7"),
    "HTTP_IMAGE": os.environ.get("FREEPORT_TEST_IMAGE", "freeport-test-busybox:latest"),
    "PULL_POLICY": "never",
}
TIMEOUT = 600.0  # seconds for one block: a few stacks started and brought down
KINDS = ("run", "pytest", "file", "excerpt", "check", "usage", "signature", "skip")
# Our commands, as `freeport-compose --help` lists them (test_our_commands_are_the_grammars); every
# other verb is Compose's. `up` and `down` take Compose's own options of those verbs besides ours.
OUR_COMMANDS = ("get", "release", "leases", "gc", "doctor", "render", "up", "down", "ports", "port", "run", "deploy")
COMPOSES_TOO = ("up", "down")

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")


@dataclasses.dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    directive: str | None  # the doc-test comment's body, None without one
    files: dict[str, str]  # the `file NAME` blocks of the same document above this one

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        return (self.directive or "").split(" ", 1)[0]

    def options(self) -> dict[str, object]:
        """The directive's options: engine, in, with, args, and the kind's own argument."""
        body = self.directive or ""
        if self.kind == "skip":
            return {"reason": body[4:].strip().strip("()").strip()}
        words = shlex.split(body)[1:]
        found: dict[str, object] = {"engine": False, "with": []}
        if self.kind in ("file", "excerpt"):
            assert words, f"{self.where}: `{self.kind}` needs a name"
            found["name"], words = words[0], words[1:]
        i = 0
        while i < len(words):
            word = words[i]
            if word == "engine":
                found["engine"] = True
            elif word in ("in", "args") and i + 1 < len(words):
                found[word] = words[i + 1]
                i += 1
            elif word == "with":
                while i + 1 < len(words) and words[i + 1] not in ("engine", "in", "args"):
                    found["with"].append(words[i + 1])  # type: ignore[attr-defined]
                    i += 1
            else:
                raise AssertionError(f"{self.where}: unknown doc-test option {word!r} in {body!r}")
            i += 1
        return found


def parse(doc: Path) -> tuple[list[Block], list[int]]:
    """The fenced blocks of a markdown file, and the lines of doc-test comments followed by no block."""
    lines = doc.read_text().splitlines()
    blocks: list[Block] = []
    files: dict[str, str] = {}
    dangling: list[int] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            if DIRECTIVE.match(lines[i]) and (i + 1 >= len(lines) or not FENCE.match(lines[i + 1])):
                dangling.append(i + 1)
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        start, i = i, i + 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1  # the closing fence
        directive = DIRECTIVE.match(lines[start - 1]) if start > 0 else None
        block = Block(doc, start + 1, opening["lang"].lower(), "\n".join(body) + "\n",
                      directive["body"] if directive else None, dict(files))
        if block.kind == "file":
            files[(shlex.split(block.directive or "")[1:] or [""])[0]] = block.code
        blocks.append(block)
    return blocks, dangling


BLOCKS = [block for doc in DOCS for block in parse(doc)[0]]


def _param(block: Block) -> object:
    engine = block.kind in ("run", "pytest") and "engine" in shlex.split(block.directive or "")
    return pytest.param(block, id=f"{block.where}-{block.kind or 'none'}",
                        marks=[pytest.mark.docker] if engine else [])


# --------------------------------------------------------------------------------------------
# The blocks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_block(block: Block, tmp_path: Path) -> None:
    if block.directive is None:
        pytest.fail(f"{block.where}: a ```{block.lang} block with no `<!-- doc-test: ... -->` comment right "
                    f"before it (see tests/test_docs.py for the kinds)")
    if block.kind not in KINDS:
        pytest.fail(f"{block.where}: unknown doc-test kind {block.kind!r} (one of {', '.join(KINDS)})")
    options = block.options()
    if block.kind == "skip":
        assert options["reason"], f"{block.where}: `skip` needs a reason: <!-- doc-test: skip (why) -->"
        pytest.skip(f"{block.where}: {options['reason']}")
    if block.kind == "file":
        _parses(block, str(options["name"]))
    elif block.kind == "excerpt":
        _is_excerpt(block, ROOT / str(options["name"]))
    elif block.kind == "check":
        _check(block, tmp_path)
    elif block.kind == "usage":
        _usage(block)
    elif block.kind == "signature":
        _signatures(block)
    else:
        if options["engine"] and (why := docker_missing()):
            pytest.skip(why)
        if not os.access(FPC, os.X_OK):
            pytest.skip(f"{FPC} is not installed: run `bash scripts/setup.sh`")
        _run_leaving_nothing(block, options, tmp_path)


def _parses(block: Block, name: str) -> None:
    """The block is valid as the kind of file `name` says (yaml, ini, toml, python, json)."""
    suffix = Path(name).suffix or f".{block.lang}"
    if suffix in (".yml", ".yaml"):
        assert isinstance(yaml.safe_load(block.code), dict), f"{block.where}: not a YAML mapping"
    elif suffix in (".ini", ".cfg"):
        parser = configparser.ConfigParser()
        parser.read_string(block.code)
        assert parser.sections(), f"{block.where}: no section"
    elif suffix == ".toml":
        tomllib = pytest.importorskip("tomllib")
        assert tomllib.loads(block.code), f"{block.where}: empty TOML"
    elif suffix in (".py", ".python"):
        compile(block.code, block.where, "exec")
    elif suffix == ".json":
        json.loads(block.code)
    elif suffix == ".make" or name == "Makefile":
        makefile = Path(tempfile.mkdtemp()) / "Makefile"
        makefile.write_text(block.code)
        result = subprocess.run(["make", "-n", "-f", str(makefile)], capture_output=True, text=True, check=False,
                                cwd=makefile.parent)
        assert result.returncode == 0, f"{block.where}: make -n: {result.stderr}"
    else:
        pytest.fail(f"{block.where}: no parser for {name!r} ({block.lang})")


def _is_excerpt(block: Block, path: Path) -> None:
    """Every line of the block (but `...`) is a line of `path`, in the same order."""
    assert path.is_file(), f"{block.where}: {path} does not exist"
    lines = [ln.rstrip() for ln in path.read_text().splitlines()]
    at = 0
    for line in block.code.splitlines():
        if not line.strip() or line.strip() == "...":
            continue
        try:
            at = lines.index(line.rstrip(), at) + 1
        except ValueError:
            pytest.fail(f"{block.where}: {line!r} is not in {path.relative_to(ROOT)} (after line {at})")
    _parses(block, path.name)


# -- check: what cannot run as it is ---------------------------------------------------------


def _commands(block: Block) -> list[list[str]]:
    """The simple commands of a sh block, as words (comments and VAR=value prefixes dropped)."""
    commands = []
    for line in block.code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>()")
        lexer.whitespace_split = True
        words = list(lexer)
        if not words:
            continue
        bad = [w for w in words if set(w) <= set(";&|<>()") or "$(" in w or "`" in w]
        assert not bad, f"{block.where}: a check block holds simple commands only, not {line!r}"
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)
        commands.append(words)
    return commands


def _check(block: Block, tmp_path: Path) -> None:
    if block.lang in ("yaml", "yml") and "$<FREEPORT_" in block.code:
        _renders(block, tmp_path)
    if block.lang not in ("sh", "shell", "bash", "console"):
        _parses(block, f"block.{block.lang}")
        return
    commands = _commands(block)
    assert commands, f"{block.where}: no command"
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
    for words in commands:
        program, args = words[0], words[1:]
        if program == "freeport-compose":
            result = _check_ours(args, env)
        elif program == "make":
            result = subprocess.run(["make", "-n", "-C", str(ROOT), *args], capture_output=True, text=True,
                                    check=False, env=env)
        elif program == "pip" and args[:1] == ["install"]:
            result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet",
                                     "--disable-pip-version-check", *args[1:]],
                                    capture_output=True, text=True, check=False, cwd=ROOT, env=env, timeout=TIMEOUT)
        elif program == "pytest":
            result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args, "--help"],
                                    capture_output=True, text=True, check=False, cwd=tmp_path, env=env)
            unknown = {w.split("=")[0] for w in args if w.startswith("-")} - _options(result.stdout)
            assert not unknown, f"{block.where}: pytest has no option {unknown} (is its plugin installed?)"
        elif program == "docker":
            result = subprocess.run(["docker", *args, "--help"], capture_output=True, text=True, check=False, env=env)
        else:
            pytest.fail(f"{block.where}: no check known for {program!r}: make the block `run`, or check it another way")
        assert result.returncode == 0, f"{block.where}: {shlex.join(words)}: exit {result.returncode}\n" \
                                       f"{result.stdout}{result.stderr}"


def _renders(block: Block, tmp_path: Path) -> None:
    """A template renders: every placeholder replaced by a leased port (in a state dir of its own)."""
    template, out = tmp_path / "template.yml", tmp_path / "rendered.yml"
    template.write_text(block.code)
    env = {"FREEPORT_STATE_DIR": str(tmp_path / "render-state")}
    result = fpc("render", "--no-check", "-p", "doc-template", "-f", str(template), "-o", str(out), env=env)
    assert result.returncode == 0, f"{block.where}: render: {result.stderr}"
    rendered = out.read_text()
    assert re.search(r"(?<!\$)\$<FREEPORT_", rendered) is None, rendered
    assert rendered.count("\n") == block.code.count("\n"), "a rendered template keeps its lines"


def _usage(block: Block) -> None:
    """Every option a synopsis line names is in its command's --help (an indented line goes on the one above)."""
    for line in re.sub(r"\n[ \t]+", " ", block.code).splitlines():
        words = line.split()
        if not words:
            continue
        assert words[0] == "freeport-compose", f"{block.where}: a usage line starts with freeport-compose: {line!r}"
        command = next((w for w in words[1:] if w in OUR_COMMANDS), None)
        result = fpc(*([command] if command else []), "--help")
        assert result.returncode == 0, result.stderr
        helped, named = _options(result.stdout), _options(line)
        if command in COMPOSES_TOO:
            helped |= set(_compose_help(command)[1])
        assert named <= helped, f"{block.where}: `{command or 'freeport-compose'} --help` has no {named - helped}"


def _options(text: str) -> set[str]:
    """The options (`-p`, `--file`) a text names."""
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def _signatures(block: Block) -> None:
    """Each `Name(...)` (an indented line goes on the one above) is what inspect.signature says."""
    import freeport_compose

    for line in re.sub(r"\n[ \t]+", " ", block.code).splitlines():
        if not line.strip():
            continue
        name = line.split("(", 1)[0].strip()
        obj: object = freeport_compose
        for part in name.split("."):
            obj = getattr(obj, part)
        shown = re.sub(r"\s+", " ", line.strip()).replace('"', "'")
        assert shown == name + _plain_signature(obj), f"{block.where}: the signature of {name} is not {line.strip()!r}"


def _plain_signature(obj: object) -> str:
    """`(a, b=1, *, c=None)`: the parameters and their defaults, as the docs show them."""
    parts: list[str] = []
    star = False
    for p in inspect.signature(obj).parameters.values():  # type: ignore[arg-type]
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return f"({', '.join(parts)})"


def _check_ours(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A `freeport-compose ARGS` line, checked without running it (see the module's docstring):
    read by the CLI's own grammar, then by `--help` of the command it is (ours, or Compose's)."""
    import contextlib
    import io

    from freeport_compose._argv import parse

    code: object = 0
    parsed = None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            parsed = parse(args)
    except SystemExit as e:  # --help and --version: 0; a usage error: 2, with its one line
        code = e.code
    assert not code, f"freeport-compose {shlex.join(args)}: usage error: {err.getvalue().strip()}"
    if parsed is None or parsed.compose_args is None:  # ours (or the top level's --help, --version)
        own = args[: args.index("--")] if "--" in args else args
        result = fpc(*own, "--help", env=env)
        shown = "freeport-compose " if own[:1] == ["--version"] else "usage: freeport-compose"
        assert result.stdout.startswith(shown), result.stdout + result.stderr
        # --help wins over an unknown option: each option given must be one the help names
        helped = _options(result.stdout) | _options(fpc("--help", env=env).stdout)
        if parsed is not None and parsed.command in COMPOSES_TOO:
            helped |= set(_compose_help(parsed.command)[1])
        unknown = {word.split("=")[0] for word in own if word.startswith("-")} - helped
        assert not unknown, f"freeport-compose {parsed.command if parsed else ''} has no option {unknown}"
        return result
    # Compose's command line: its verb must be one of Compose's, its options ones that verb names
    verb, words = (parsed.compose_args or [""])[0], (parsed.compose_args or [""])[1:]
    status, options = _compose_help(verb)
    assert status == 0, f"`docker compose {verb} --help` exited {status}: Compose has no command {verb!r}"
    unknown = _unknown_compose_options(words, options)
    assert not unknown, f"`docker compose {verb}` has no option {unknown}"
    return subprocess.CompletedProcess(["docker", "compose", verb, "--help"], 0, "", "")


# An option line of a Compose command's help: `  -t, --timeout int   Specify a shutdown timeout`
# (a type after the name: it takes a value) or `  -d, --detach   Detached mode` (a flag).
_COMPOSE_OPTION = re.compile(r"^\s+(?:(-\w), )?(--[\w-]+)(?: (\w+))?(?:\s{2,}|$)", re.MULTILINE)
_COMPOSE_HELP: dict[str, tuple[int, dict[str, bool]]] = {}


def _compose_help(verb: str) -> tuple[int, dict[str, bool]]:
    """`docker compose VERB --help`'s exit status, and the options it names (each: takes a value)."""
    if verb not in _COMPOSE_HELP:
        result = subprocess.run(["docker", "compose", verb, "--help"], capture_output=True, text=True,
                                check=False, timeout=60, stdin=subprocess.DEVNULL)
        options = {"-h": False, "--help": False}
        for m in _COMPOSE_OPTION.finditer(result.stdout):
            for name in filter(None, (m[1], m[2])):
                options[name] = m[3] is not None
        _COMPOSE_HELP[verb] = (result.returncode, options)
    return _COMPOSE_HELP[verb]


def _unknown_compose_options(words: list[str], options: dict[str, bool]) -> set[str]:
    """The options before the first argument of a Compose verb's words (`run --rm web sh -c x`: only
    `--rm`; what follows the service is its command's) that the verb does not name."""
    unknown: set[str] = set()
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--" or word == "-" or not word.startswith("-"):
            break
        if word.startswith("--"):
            name = word.split("=")[0]
            if name not in options:
                unknown.add(name)
            elif options[name] and "=" not in word:
                i += 1  # its value
        else:  # -d, -dV, -t 0, -t0
            for j, letter in enumerate(word[1:]):
                if f"-{letter}" not in options:
                    unknown.add(f"-{letter}")
                    break
                if options[f"-{letter}"]:
                    i += j == len(word) - 2  # the value is the next word, unless it was joined
                    break
        i += 1
    return unknown


# -- run and pytest: for real --------------------------------------------------------------------


def _scratch(tmp_path: Path) -> Path:
    """A directory holding copies of examples/ and templates/, where a block runs."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("examples", "templates"):
        shutil.copytree(ROOT / name, work / name)
    return work


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    env.update(IMAGES, PATH=BIN + os.pathsep + os.environ["PATH"])
    return env


def _run_leaving_nothing(block: Block, options: dict[str, object], tmp_path: Path) -> None:
    """Run the block, then bring down whatever it left; it must have left no lease and no stack."""
    work = _scratch(tmp_path)
    cwd = work / str(options.get("in", "."))
    assert cwd.is_dir(), f"{block.where}: no directory {options.get('in')} in the scratch copy"
    try:
        if block.kind == "pytest":
            _run_pytest(block, options, tmp_path)
        elif block.lang in ("python", "py"):
            example = tmp_path / "example.py"
            example.write_text(block.code)
            _ok(block, subprocess.run([sys.executable, str(example)], capture_output=True, text=True, cwd=cwd,
                                      env=_env(), timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False))
        elif block.lang == "console":
            _run_console(block, cwd)
        elif block.lang in ("sh", "bash", "shell"):
            script = "set -euo pipefail\n" + block.code
            _ok(block, subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=cwd, env=_env(),
                                      timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False))
        else:
            pytest.fail(f"{block.where}: cannot run a ```{block.lang} block")
        left = ls_json()
    finally:
        _bring_down_what_is_left(work)
    assert left["stacks"] == [], f"{block.where} left stacks behind: {left['stacks']}"
    assert left["leases"] == [], f"{block.where} left leases behind: {left['leases']}"


def _ok(block: Block, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{block.where} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr


def _bring_down_what_is_left(work: Path) -> None:
    """`down` of every stack the block left, then of whatever its projects left on the engine."""
    try:
        stacks = [s["project"] for s in ls_json()["stacks"]]
    except AssertionError:
        stacks = []
    for project in stacks:
        fpc("down", "-p", project, "-v", cwd=work)
    if stacks and engine_answers():
        down_projects(*stacks)
    for lease in ls_json()["leases"]:
        if lease["owner"]:
            fpc("release", "--owner", lease["owner"])


def _run_pytest(block: Block, options: dict[str, object], tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in options["with"]:  # type: ignore[attr-defined]
        if name in block.files:
            (suite / name).write_text(block.files[name])
        else:
            assert (ROOT / name).is_file(), f"{block.where}: `with {name}`: no file block or repository file"
            shutil.copy(ROOT / name, suite / Path(name).name)
    (suite / "test_doc_example.py").write_text(block.code)
    tests = len(re.findall(r"^def test_\w+\(", block.code, re.MULTILINE))
    assert tests, f"{block.where}: no test function in a pytest block"
    args = shlex.split(str(options.get("args", "")))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args,
                             "test_doc_example.py"], capture_output=True, text=True, cwd=suite, env=_env(),
                            timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, f"{block.where}: pytest exited {result.returncode}:\n{result.stdout}{result.stderr}"
    assert re.search(rf"\b{tests} passed\b", result.stdout), result.stdout


_STATUS = re.compile(r"#.*\bexits? (\d+)\b")


def _run_console(block: Block, cwd: Path) -> None:
    """Each `$ ` command in turn, in one shell; its stdout must match the lines shown after it."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"{block.where}: output before the first `$ ` command"
            steps[-1][1].append(line)
    script = []
    for n, (command, _) in enumerate(steps):
        script += [f"printf '@@doc-test-command {n}@@\\n'", command, "printf '@@doc-test-status %d@@\\n' $?"]
    result = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, cwd=cwd, env=_env(),
                            timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    parts = re.split(r"@@doc-test-(command|status) (\d+)@@\n", result.stdout)
    outputs: dict[int, str] = {}
    statuses: dict[int, int] = {}
    current = -1
    for i in range(1, len(parts), 3):
        what, number, text = parts[i], int(parts[i + 1]), parts[i + 2]
        if what == "command":
            current, outputs[number] = number, text  # the command's stdout: up to its status
        else:
            statuses[current] = number
    for n, (command, expected) in enumerate(steps):
        where = f"{block.where}: `{command}`"
        assert n in statuses, f"{where} did not finish:\n{result.stdout}\n{result.stderr}"
        want = int(m[1]) if (m := _STATUS.search(command)) else 0
        assert statuses[n] == want, f"{where} exited {statuses[n]}, not {want}:\n{result.stderr}"
        assert _matches(expected, outputs[n]), f"{where} printed\n{outputs[n]}\nnot\n" + "\n".join(expected)


def _matches(expected: list[str], output: str) -> bool:
    """Whether output is the expected lines: `...` alone for any lines, `...` in a line for any text,
    any number where a number is shown, any run of blanks where one is."""
    pattern = ""
    for line in expected:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
            continue
        piece = re.escape(_spaces(line))
        piece = piece.replace(re.escape("..."), r"[^\n]*?")
        pattern += re.sub(r"\d+", r"\\d+", piece) + r"\n"
    text = "".join(_spaces(line) + "\n" for line in output.splitlines())
    return re.fullmatch(pattern, text) is not None


def _spaces(line: str) -> str:
    """Columns aligned to other widths still match: runs of blanks count as one."""
    return re.sub(r"[ \t]+", " ", line.strip())


def test_the_convention_leaves_no_block_unchecked(tmp_path: Path) -> None:
    """A block without a comment is found as such, and a comment without a block is reported."""
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- doc-test: run -->\n```sh\ntrue\n```\n\n```python\npass\n```\n\n<!-- doc-test: run -->\n\n"
                   "<!-- doc-test: file pytest.ini -->\n```ini\n[pytest]\n```\n"
                   "<!-- doc-test: pytest with pytest.ini -->\n  ```python\n  def test_x(): pass\n  ```\n")
    blocks, dangling = parse(doc)
    assert [(b.line, b.lang, b.directive) for b in blocks] == [
        (2, "sh", "run"), (6, "python", None), (13, "ini", "file pytest.ini"),
        (17, "python", "pytest with pytest.ini"),
    ]
    assert dangling == [10]
    assert blocks[3].code == "def test_x(): pass\n"  # an indented block, dedented
    assert blocks[3].files == {"pytest.ini": "[pytest]\n"}
    assert blocks[3].options()["with"] == ["pytest.ini"]


def test_our_commands_are_the_grammars() -> None:
    """OUR_COMMANDS (what `check` and `usage` read as ours) is the grammar's own table of commands."""
    from freeport_compose._argv import COMMANDS

    assert tuple(COMMANDS) == OUR_COMMANDS
    assert set(COMPOSES_TOO) <= set(OUR_COMMANDS)


def test_a_compose_line_is_read_as_compose_reads_it() -> None:
    """The options of a Compose verb are those before its first argument, values skipped."""
    options = {"--rm": False, "-T": False, "-e": True, "--timeout": True, "-t": True, "-d": False, "-V": False}
    assert _unknown_compose_options(["--rm", "-e", "A=1", "web", "sh", "-c", "x"], options) == set()
    assert _unknown_compose_options(["-dV", "--timeout", "3", "-t0", "--bogus", "web"], options) == {"--bogus"}
    assert _unknown_compose_options(["-dx", "web"], options) == {"-x"}


def test_expected_output_matches_only_its_shape() -> None:
    shown = ["FREEPORT_api=20417", "PORT  KIND   OWNER", "4321  named  pid 4711@...  2026-12-01", "..."]
    assert _matches(shown, "FREEPORT_api=31001\nPORT KIND OWNER\n99 named pid 1@vm 2027-01-02\nmore\nlines")
    assert _matches(shown[:1], "FREEPORT_api=31001\n")
    assert not _matches(shown[:1], "FREEPORT_web=31001\n")       # a name is not a wildcard
    assert not _matches(shown[:1], "FREEPORT_api=31001\nextra\n")  # nor are lines not shown
    assert not _matches([], "something\n")                         # no lines shown: nothing printed
    assert _matches([], "")


# --------------------------------------------------------------------------------------------
# The documents as a whole
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_doc_test_comment_precedes_a_block(doc: Path) -> None:
    blocks, dangling = parse(doc)
    assert blocks or doc.name != "README.md"
    assert dangling == [], f"{doc.relative_to(ROOT)}: doc-test comments with no block right after: lines {dangling}"


def test_readme_stays_short() -> None:
    """The README is a five-minute read; reference material goes to docs/."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move reference material to docs/"


HISTORY = re.compile(r"this release|since this|before this release|not met|A/B|since issue|until this", re.IGNORECASE)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_hold_no_history(doc: Path) -> None:
    """What changed when belongs in CHANGELOG.md (and measurements in docs/benchmarks.md)."""
    found = [f"{n}: {ln.strip()}" for n, ln in enumerate(doc.read_text().splitlines(), 1) if HISTORY.search(ln)]
    assert found == [], "\n".join(found)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("doc", ALL_MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_somewhere(doc: Path) -> None:
    """Every relative link names a file of the repository (docs/benchmarks.md may still be coming),
    and every #anchor a heading of its file."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if path and not file.exists():
            if file != ROOT / "docs/benchmarks.md":
                broken.append(target)
            continue
        if anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert broken == [], f"{doc.relative_to(ROOT)}: broken links {broken}"


# The reproduce column of docs/guarantees.md: `PT tests/x.py -k "expr"` (PT: .venv/bin/python -m pytest -q).
COLLECT = r"""
import json, sys
import pytest
from _pytest.mark import KeywordMatcher
from _pytest.mark.expression import Expression

rows = json.loads(sys.argv[1])
class Collect:
    items = []
    def pytest_collection_finish(self, session):
        self.items = list(session.items)
collect = Collect()
paths = sorted({p.split("::")[0] for row in rows for p in row["paths"]})
pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *paths], plugins=[collect])
found = []
for row in rows:
    n = 0
    for item in collect.items:
        if not any(item.nodeid == p or item.nodeid.startswith(p + "::") or item.nodeid.split("::")[0] == p
                   for p in row["paths"]):
            continue
        if row["k"] is None or Expression.compile(row["k"]).evaluate(KeywordMatcher.from_item(item)):
            n += 1
    found.append(n)
print("@@" + json.dumps(found))
"""


def test_guarantees_name_tests_that_exist() -> None:
    """Each `PT ...` command of docs/guarantees.md, and each tests/...::name it cites, selects a test."""
    text = (ROOT / "docs/guarantees.md").read_text()
    rows = []
    for command in re.findall(r"`PT ([^`]+)`", text):
        words = shlex.split(command)
        k = words[words.index("-k") + 1] if "-k" in words else None
        paths = [w for w in words if w.startswith("tests/")]
        assert paths, command
        rows.append({"command": command, "paths": paths, "k": k})
    for nodeid in re.findall(r"`(tests/\w+\.py::\w+)`", text):
        rows.append({"command": nodeid, "paths": [nodeid], "k": None})
    assert len(rows) >= 20, "docs/guarantees.md: the reproduce commands were not found"
    result = subprocess.run([sys.executable, "-c", COLLECT, json.dumps(rows)], capture_output=True, text=True,
                            cwd=ROOT, check=False, timeout=TIMEOUT)
    counts = json.loads(result.stdout.rsplit("@@", 1)[1])
    empty = [row["command"] for row, n in zip(rows, counts, strict=True) if n == 0]
    assert empty == [], f"docs/guarantees.md: these select no test: {empty}"
