"""Every command in the README and the docs runs as written (the long ones with tiny settings).

The commands are read from the code blocks of the documents. Each one must
have an entry in :data:`HOW`, which says how this test runs it: as written,
or with the substitutions a test needs (a temporary instance folder, a free
port, tiny data and tiny training settings, an offline pip). A command
added to the docs without an entry fails :func:`test_every_command_in_the_docs_is_run_here`.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from busi_web.store import JobStore
from tests.helpers import ROOT, finished_run, image_bytes, write_busi_folder

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]
COMMAND = re.compile(r"^(make|\.venv/bin/\S+|busi-web|curl|python|pip)(\s|$)")
# Training settings small enough for a test; appended after the documented ones, so they win.
TINY = ["--epochs", "1", "--param", "input_size=32", "--param", "resize=36", "--param", "batch_size=8",
        "--param", "device=cpu", "--param", "workers=0"]


def doc_commands() -> list[tuple[str, str]]:
    """``(document, command)`` for every command line in a code block (continuation lines joined)."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        blocks = [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S)
                  if lang in ("", "sh", "bash", "console")]
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        blocks += ["\n".join(line[4:] for line in block.splitlines())
                   for block in re.findall(r"(?:^|\n\n)((?:    .*\n?)+)", text)]
        for block in blocks:
            for line in re.sub(r"\\\n\s*", "", block).splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                if COMMAND.match(line):
                    found.append((doc.relative_to(ROOT).as_posix(), line))
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(instance: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSI_WEB_")}
    env.update(BUSI_WEB_INSTANCE_PATH=str(instance), BUSI_WEB_AUTO_FIRST_RUN="false", OMP_NUM_THREADS="1", **extra)
    return env


def _run(command: str | list[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 600,
         input: str | None = None) -> subprocess.CompletedProcess:
    args = shlex.split(command) if isinstance(command, str) else command
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, input=input)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


# -- how each documented command is run ------------------------------------------------------------------------
def make_dry(command: str, ctx: dict) -> None:
    """`make run` / `make test` / `make quick` would serve or recurse into this suite, and a benchmark trains for
    minutes on ../shared/data: make says what it runs."""
    out = _run(["make", "-n", *shlex.split(command)[1:]], ctx["env"])
    target = shlex.split(command)[1]
    expected = {"run": "busi-web serve", "bench-ood": "benchmarks/ood_calibration.py"}.get(target, "pytest")
    assert expected in out.stdout


def as_written(command: str, ctx: dict) -> None:
    _run(command, ctx["env"])


def init(command: str, ctx: dict) -> None:
    out = _run(command, ctx["env"])
    assert "one-time password" in out.stdout and (ctx["instance"] / "config.py").is_file()


def inspect_busi(command: str, ctx: dict) -> None:
    data = write_busi_folder(ctx["tmp"] / "busi", ["benign", "malignant", "normal"])
    out = _run(command.replace("../shared/data/busi/Dataset_BUSI_with_GT", str(data)), ctx["env"])
    assert "benign" in out.stdout and "malignant" in out.stdout


def serve_and_diagnose(command: str, ctx: dict) -> None:
    """Start gunicorn as written (on a free port), then send the README's curl diagnosis to it."""
    port = _free_port()
    env = {**ctx["env"], "PORT": str(port)}
    _run(".venv/bin/busi-web init", env)
    # The README starts two servers: the first replaces the one-time password.
    first = "one-time password not changed" in _run(".venv/bin/busi-web users list", env).stdout
    store = JobStore(ctx["instance"] / "busi.db", ctx["instance"] / "runs")
    finished_run(store, promote=True)
    if first:  # the one-time password is replaced first (as the first login would): until then no token is made
        refused = subprocess.run(shlex.split(".venv/bin/busi-web tokens create admin"), cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and "must choose a new password first" in refused.stderr, refused
        _run(".venv/bin/busi-web users passwd admin --password-stdin", env, input="correct-horse-battery-7\n")
    token = _run(".venv/bin/busi-web tokens create admin", env).stdout.strip()
    proc = subprocess.Popen(shlex.split(command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                # The master accepts connections before its worker has loaded the app (torch): wait for it.
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=60) as r:
                    assert r.status == 200
                    break
            except OSError:  # refused before the master listens (URLError is an OSError), or a slow worker
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.3)
        (ctx["tmp"] / "scan.png").write_bytes(image_bytes(hw=(48, 48)))
        curl = next(c for _doc, c in doc_commands() if c.startswith("curl"))
        out = _run(curl.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("$TOKEN", token), env, cwd=ctx["tmp"])
        assert '"label"' in out.stdout and '"explainer":"gradcampp"' in out.stdout.replace(" ", "")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def curl_with_the_server(command: str, ctx: dict) -> None:
    """Run by :func:`serve_and_diagnose`, against the server the README starts just before it."""


def pip_offline(command: str, ctx: dict) -> None:
    """As written, but offline (no build isolation, no index: tests have no network), then uninstalled."""
    try:
        _run(command + " --no-deps --no-build-isolation --no-index", ctx["env"])
        out = _run(".venv/bin/busi-web plugins", ctx["env"])
        assert "example" in out.stdout and "mobilenet_v3_small" in out.stdout
    finally:
        subprocess.run([sys.executable, "-m", "pip", "-q", "uninstall", "-y", "busi-web-example-plugin"], timeout=300)


def new_plugin_flow(command: str, ctx: dict) -> None:
    """docs/plugins.md's walk through a new plugin, in a temporary folder instead of ``..``: write it, install it
    (offline), check it, run its tests, train with it through the real trainer, then uninstall it."""
    src = ctx["tmp"] / "src"
    src.mkdir()
    steps = [c for d, c in doc_commands() if d == "docs/plugins.md" and ("ward" in c)]
    assert steps[0] == command and len(steps) == 5, steps
    try:
        for step in steps:
            step = step.replace("..", str(src))
            if step.startswith(".venv/bin/pip install"):
                step += " --no-deps --no-build-isolation --no-index"
            if step.startswith(".venv/bin/python"):
                step = step.replace(".venv/bin/python", sys.executable, 1)
            if " train " in step:
                step += " " + " ".join(TINY[2:])
            out = _run(step, ctx["env"])
            if " plugins check " in step:
                assert out.stdout.count("ok     busi_web_ward_plugin:") == 3, out.stdout
            if step.startswith(f"{sys.executable} -m pytest"):
                assert "3 passed" in out.stdout, out.stdout
            if " train " in step:
                assert "finished" in out.stdout, out.stdout
    finally:
        subprocess.run([sys.executable, "-m", "pip", "-q", "uninstall", "-y", "busi-web-ward-plugin"], timeout=300)
    ctx["new_plugin"] = True


def part_of_new_plugin_flow(command: str, ctx: dict) -> None:
    """Run by :func:`new_plugin_flow`, in its order."""
    assert ctx.get("new_plugin"), "the `plugins new` command documented before it did not run"


def plugins_checked(command: str, ctx: dict) -> None:
    out = _run(command, ctx["env"])
    assert ("resnet50_cbam: builds" in out.stdout) == ("--builtins" in command), out.stdout


def db_copy(command: str, ctx: dict) -> None:
    """Into a throwaway PostgreSQL cluster (Debian's, started here), from an instance with a user and a run."""
    from tests.servers import postgres

    store = JobStore(ctx["instance"] / "busi.db", ctx["instance"] / "runs")
    store.add_user("ana", "admin", "amber otter velvet 42")
    store.create_run("tiny_cnn", "phantom", {})
    with postgres() as cluster:
        url = cluster.new_database()
        out = _run(command.replace("postgresql://busi:PASSWORD@db.hospital:5432/busi", url), ctx["env"])
        assert "1 runs" in out.stdout and "1 users" in out.stdout, out.stdout
        assert JobStore(url, ctx["instance"] / "runs").get_user("ana") is not None


def plugins_listed(command: str, ctx: dict) -> None:
    assert "phantom" in _run(command, ctx["env"]).stdout


def train_tiny(command: str, ctx: dict) -> None:
    """A documented recipe with tiny data and settings (and the CPU for the GPU recipe)."""
    # Each recipe gets images of its own: an acceptance set documented before may claim a shared folder's.
    ctx["trained"] = ctx.get("trained", 0) + 1
    data = write_busi_folder(ctx["tmp"] / f"busi-train{ctx['trained']}", ["benign", "malignant", "normal"],
                             per_class=4, seed=100 + ctx["trained"])
    args = shlex.split(command.replace("--data-dir DIR", f"--data-dir {data}").replace("device=cuda", "device=cpu"))
    args = [".venv/bin/busi-web" if a == "busi-web" else a for a in args]
    args += TINY + (["--param", "dataset.size=40", "--param", "dataset.per_class=4"] if "phantom" in args else [])
    out = _run(args, ctx["env"])
    assert "finished" in out.stdout
    ctx["last_run_dir"] = re.search(r"run \d+ finished: (\S+)", out.stdout).group(1)


def quality_tiny(command: str, ctx: dict) -> None:
    """The benchmark on a tiny BUSI-layout folder, starting from the run the docs train just before it."""
    data = write_busi_folder(ctx["tmp"] / "busi-q", ["benign", "malignant", "normal"], per_class=4)
    run_dir = ctx.get("last_run_dir")
    assert run_dir, "the training command documented before it did not run"
    command = command.replace("RUN_DIR", run_dir).replace("[--param seed=N]", "--param seed=1")
    command = command.replace("--out DIR", f"--out {ctx['tmp'] / 'quality'}")
    args = [sys.executable if a == "python" else a for a in shlex.split(command)]
    out = _run(args + ["--data-dir", str(data)] + TINY[:1] + TINY[1:2] + TINY[2:], ctx["env"])
    assert "training finished" in out.stdout


HOW = {
    "make run": make_dry,
    "make test": make_dry,
    "make quick": make_dry,
    'make test PYTEST_ARGS="-k store"': make_dry,
    "make lint": as_written,
    "make bench-ood": make_dry,
    ".venv/bin/busi-web init": init,
    ".venv/bin/gunicorn -c busi_web/gunicorn_conf.py wsgi:app": serve_and_diagnose,
    ".venv/bin/gunicorn -k gthread -w 1 --threads 16 --timeout 120 -b 127.0.0.1:8000 wsgi:app": serve_and_diagnose,
    ".venv/bin/busi-web datasets inspect busi --data-dir ../shared/data/busi/Dataset_BUSI_with_GT": inspect_busi,
    'curl -H "Authorization: Bearer $TOKEN" -F image=@scan.png -F explainer=gradcampp '
    "http://127.0.0.1:8000/api/predict": curl_with_the_server,
    ".venv/bin/pip install ./examples/busi-web-example-plugin": pip_offline,
    ".venv/bin/busi-web plugins": plugins_listed,
    ".venv/bin/busi-web plugins check": plugins_checked,
    ".venv/bin/busi-web db copy postgresql://busi:PASSWORD@db.hospital:5432/busi": db_copy,
    ".venv/bin/python -m pytest examples/busi-web-example-plugin/tests": as_written,
    ".venv/bin/busi-web plugins check --builtins": plugins_checked,
    ".venv/bin/busi-web plugins new busi-web-ward-plugin --into ..": new_plugin_flow,
    ".venv/bin/pip install -e ../busi-web-ward-plugin": part_of_new_plugin_flow,
    ".venv/bin/busi-web plugins check busi_web_ward_plugin": part_of_new_plugin_flow,
    ".venv/bin/python -m pytest ../busi-web-ward-plugin/tests": part_of_new_plugin_flow,
    ".venv/bin/busi-web train --backbone ward_cnn --dataset ward_stripes --epochs 2": part_of_new_plugin_flow,
}


def _runner(command: str):
    if command.startswith("busi-web train "):
        return train_tiny
    if command.startswith("python benchmarks/quality.py"):
        return quality_tiny
    return HOW.get(command)


def test_every_command_in_the_docs_is_run_here():
    unknown = sorted({c for _doc, c in doc_commands() if _runner(c) is None})
    assert not unknown, f"add these documented commands to HOW in {Path(__file__).name}: {unknown}"
    assert len(doc_commands()) >= 15


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d.relative_to(ROOT).as_posix() for d in DOCS])
def test_the_commands_of_a_document_run(doc, tmp_path):
    ctx = {"tmp": tmp_path, "instance": tmp_path / "instance", "env": _env(tmp_path / "instance")}
    done = set()
    for where, command in doc_commands():
        if where != doc or (command in done and _runner(command) is not train_tiny):
            continue
        done.add(command)
        _runner(command)(command, ctx)


def test_the_readme_is_for_users_and_operators():
    """At most 350 lines; the references it points at exist."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 350
    for link in re.findall(r"\]\((docs/[\w.-]+\.md)\)", text):
        assert (ROOT / link).is_file(), link
