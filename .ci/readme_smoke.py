"""The README as a new user takes it: a fresh virtual environment, the base install only (no
extras), the first quick-start command's `chainrule serve`, then every command the README
shows after it, in order, against that server.

    python .ci/readme_smoke.py            # from the repository root; about a minute

What runs, read from README.md itself (so the README cannot drift from what works):
* every block after the quick start's, in the README's order:
  - ```bash: each command (continuation lines joined, trailing comments dropped);
    `<job id>` becomes the id the last `chainrule submit` printed. Skipped: `chainrule serve`
    (already running) and the `.[bench]` line (PyTorch, a gigabyte; tests/test_step_bench.py
    smoke-tests the script). Other lines that install an extra (`.[examples]`) are not the
    base install by definition: they run last, after every base command, in the same venv
    (as a reader adds the extra to the environment `chainrule serve` runs in);
  - ```python: consecutive blocks run as one script (a later one uses the names an earlier
    one defines, as a reader does), before the next bash block.
Commands run in a scratch directory holding a link to examples/, so files they write
(params, graph.dot, ...) do not land in the clone. Each must exit 0 without a traceback.
The server gets no REDIS_URL and no CHAINRULE_* variables, so it starts its embedded Redis
and runs without auth, as on a fresh machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEFAULT_URL = "http://127.0.0.1:8000"
STEP_TIMEOUT_S = 300
SKIPPED_EXTRAS = ("bench",)  # extras too large to install in CI (PyTorch)
EXTRA_INSTALL = re.compile(r'^(python -m pip install -e "\.\[(\w+)\]")(?: && (.*))?$')


def blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w+)\n(.*?)^```", text, re.S | re.M)]


def commands(block: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(bin_dir: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHAINRULE_", "VIRTUAL_ENV", "PYTHON")) and k != "REDIS_URL"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["CHAINRULE_URL"] = url
    return env


def run(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    print(f"$ {command}", flush=True)
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=STEP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
    for line in tail:
        print(f"    {line[:160]}")
    print(f"    -> exit {result.returncode} in {time.monotonic() - started:.1f} s", flush=True)
    if result.returncode != 0 or "Traceback" in result.stdout + result.stderr:
        raise SystemExit(f"readme smoke: `{command}` failed (exit {result.returncode}):\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"readme smoke: chainrule serve exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=3) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"readme smoke: chainrule serve not ready within {timeout:.0f} s:\n{log.read_text()}")


def main() -> int:
    text = README.read_text()
    found = blocks(text)
    bash = [body for lang, body in found if lang == "bash"]
    first = commands(bash[0])[0]
    install, _, serve = first.partition(" && ")
    assert install == "python -m pip install -e ." and serve == "chainrule serve", (
        f"the README's first command changed ({first!r}): update .ci/readme_smoke.py")

    scratch = Path(tempfile.mkdtemp(prefix="chainrule-readme-"))
    server = None
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(scratch / "venv")
        bin_dir = scratch / "venv" / "bin"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = clean_env(bin_dir, url)
        run(install, env, ROOT)
        work = scratch / "work"
        work.mkdir()
        (work / "examples").symlink_to(ROOT / "examples")

        log = scratch / "serve.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(["chainrule", "serve", "--port", str(port)], cwd=work, env=env,
                                      stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        wait_ready(url, server, log)
        print(f"chainrule serve ready at {url} (embedded Redis, base install)", flush=True)

        job_id = None
        ran = skipped = 0
        with_extras: list[tuple[str, str | None]] = []  # (install, then) commands that need an extra
        pending: list[str] = []  # consecutive python blocks: one script (a later one uses the earlier's names)

        def run_python() -> None:
            nonlocal ran
            if pending:
                script = work / f"readme_python_{ran}.py"
                script.write_text("\n\n".join(pending).replace(DEFAULT_URL, url))
                run(f"python {script.name}", env, work)
                pending.clear()
                ran += 1

        for lang, body in found[found.index(("bash", bash[0])) + 1:]:
            if lang == "python":
                pending.append(body)
                continue
            if lang != "bash":
                continue
            run_python()
            for command in commands(body):
                extra = EXTRA_INSTALL.match(command)
                if command.startswith("chainrule serve") or (extra and extra.group(2) in SKIPPED_EXTRAS):
                    print(f"(skipped: {command})")
                    skipped += 1
                    continue
                if extra:
                    print(f"(deferred to the end, after the base install's commands: {command})")
                    with_extras.append((extra.group(1), extra.group(3)))
                    continue
                assert not re.search(r"pip install .*\[", command), (
                    f"`{command}`: write an extra's install as `python -m pip install -e \".[name]\" && ...`")
                if "<job id>" in command:
                    assert job_id, f"`{command}` needs a job, but no `chainrule submit` ran before it"
                    command = command.replace("<job id>", job_id)
                result = run(command, env, work)
                ran += 1
                if command.startswith("chainrule submit"):
                    job_id = result.stdout.split()[0]
        run_python()
        base = ran
        for install_extra, then in with_extras:
            run(install_extra, env, ROOT)
            if then:
                run(then, env, work)
            ran += 1
        print(f"readme smoke: {base} commands passed on the base install (fresh venv), then {ran - base} with "
              f"extras; {skipped} skipped")
        return 0
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
