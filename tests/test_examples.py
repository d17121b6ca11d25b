"""The examples run as they are: the Starlette app with its lifespan, the quickstart."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from .webkit import client

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_starlette_example_runs_keyflow_in_its_lifespan(tmp_path: Path) -> None:
    example = load("starlette_app")
    storage = f"sqlite:///{tmp_path / 'app.db'}"
    app = example.build(storage=storage, admin_token="s3cret")
    kf = app.state.keyflow
    assert not kf.running  # nothing starts before the lifespan
    # What a server does around serving: enter the app's lifespan, serve, leave it.
    async with app.router.lifespan_context(app), client(app) as http:
        assert kf.running
        first = (await http.post("/orgs/acme/process")).json()
        assert first["disposition"] in ("created", "queued", "coalesced")
        done = (await http.get(f"/runs/{first['run_id']}", params={"wait": "10"})).json()
        assert done["status"] == "completed"
        assert done["output"] == {"org": "acme", "ok": True}
        assert (await http.get("/runs/nope")).status_code == 404
        # The dashboard: read-only for everyone, actions with the admin token.
        assert (await http.get("/keyflow/lanes")).status_code == 200
        assert "read-only" in (await http.get("/keyflow/")).text
        admin = await http.get("/keyflow/", headers={"Authorization": "Bearer s3cret"})
        assert "read-only" not in admin.text
    assert not kf.running  # the lifespan stopped it
    assert (tmp_path / "app.db").exists()


def test_the_quickstart_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert 'coalesce="queue"' in done.stdout
    assert "0 left unprocessed" in done.stdout


async def test_the_starlette_example_answers_a_bad_wait_with_400(tmp_path: Path) -> None:
    app = load("starlette_app").build(storage=f"sqlite:///{tmp_path / 'app.db'}")
    async with app.router.lifespan_context(app), client(app) as http:
        run_id = (await http.post("/orgs/acme/process")).json()["run_id"]
        for wait in ("abc", "-1", "nan", "inf", "1e309"):
            answer = await http.get(f"/runs/{run_id}", params={"wait": wait})
            assert answer.status_code == 400, wait
            assert "wait" in answer.json()["error"]


def test_the_dashboard_example_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    command = [sys.executable, str(EXAMPLES / "dashboard.py"), "--port", "0"]
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("dashboard on http://")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
