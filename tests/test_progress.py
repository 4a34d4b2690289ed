"""Long waits that speak (issue 20): heartbeats where there is no terminal, JSON events for
machines, a live display on a terminal, and the timeline each bake keeps."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading
import time

import pytest

from bakery.progress import JsonSink, PlainSink, Reporter, clock, say, waiting
from tests.matrix import cli_environment
from tests.support import ROOT, FakeBuilderHost, MotoServer, recipe_text, stop_process, write_recipe


def plain(heartbeat: float | None = None) -> tuple[Reporter, io.StringIO]:
    """A reporter on plain lines; with no `heartbeat` thread unless asked: the tests below call the
    heartbeat's pass themselves, at the times they choose (Sink.beat_due)."""
    out = io.StringIO()
    sink = PlainSink(out, heartbeat=heartbeat or 30.0)
    sink._beating = threading.current_thread()  # as if a thread were beating: none is started
    return Reporter(prefix="[web] ", sink=sink), out


def test_a_silent_step_says_it_is_still_running_at_every_interval_before_its_closing_line():
    report, out = plain()
    with report.stage("step 2/3: compile", kind="step") as stage:
        for after in (29.0, 30.0, 45.0, 60.0, 70.0):  # seconds of silence
            report.sink.beat_due(stage.started + after)
    lines = out.getvalue().splitlines()
    assert [line.split(", ")[0] for line in lines[:-1]] == ["[web] … still step 2/3: compile"] * 2  # at 30 s, 60 s
    assert lines[-1].startswith("[web] ✓ step 2/3: compile (")
    report.sink.close()
    report.sink.beat_due(time.monotonic() + 3600)  # after the command: never another line
    assert out.getvalue().splitlines() == lines


def test_a_step_that_prints_is_not_silent():
    report, out = plain()
    with report.stage("step 1/1: chatty", kind="step") as stage:
        report.output("chatty", "line 1")
        spoke = stage.quiet_since
        assert report.sink.beat_due(spoke + 29.0) == 0 and report.sink.beat_due(spoke + 30.0) == 1
    assert "still" not in out.getvalue().splitlines()[0]


def test_the_heartbeat_says_what_the_cloud_last_said_and_names_the_innermost_stage():
    report, out = plain()
    with report.stage("publish"), report.stage("wait for image") as stage, waiting("image ami-1 to be available"):
        say("ami-1 in us-east-1: pending, snapshot 45%")
        report.sink.beat_due(stage.started + 240.5)
    (beat,) = [line for line in out.getvalue().splitlines() if "still" in line]
    assert beat.startswith("[web] … still wait for image: ami-1 in us-east-1: pending, snapshot 45%, ")


def test_time_waiting_on_the_cloud_is_counted_once_however_many_waits_overlap():
    from concurrent.futures import ThreadPoolExecutor

    from bakery.progress import submit_in_stage

    report, _ = plain()
    together = threading.Barrier(3)

    def copy() -> None:  # a region copy's wait; the three are inside their waits at once
        with waiting("a copy"):
            together.wait(timeout=30)
            time.sleep(0.3)

    with report.stage("publish"):
        t0 = time.monotonic()
        with waiting("the image"), waiting("its snapshot"):  # nested: once
            time.sleep(0.2)
        t1 = time.monotonic()
        with ThreadPoolExecutor(3) as pool:  # three side by side: once
            for done in [submit_in_stage(pool, copy) for _ in range(3)]:
                done.result()
        t2 = time.monotonic()
    (entry,) = report.timeline()
    # Counted twice, the nested wait would add 0.2 s and the copies 0.6 s more than the wall time
    # they took, however slow the machine is
    assert 0.5 <= entry["waited"] <= (t1 - t0) + (t2 - t1) + 0.005 and entry["waited"] <= entry["seconds"]


def test_the_heartbeat_thread_beats_by_itself_and_stops_with_the_command():
    out = io.StringIO()
    report = Reporter(prefix="[web] ", sink=PlainSink(out, heartbeat=0.2))
    with report.stage("step 1/1: think", kind="step"):
        deadline = time.monotonic() + 30
        while out.getvalue().count("… still") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        beating = report.sink._beating
        report.sink.close()  # while the step still runs: the command is over, so are its heartbeats
        assert beating is not None and not beating.is_alive()
        beats = out.getvalue().count("[web] … still step 1/1: think, ")
        time.sleep(0.2 * 3)
    assert beats >= 2 and out.getvalue().count("… still") == beats


def test_elapsed_time_reads_as_a_clock():
    assert [clock(s) for s in (0.4, 45, 240, 3723)] == ["0s", "45s", "4m00s", "1h02m03s"]


def test_json_events_parse_line_by_line_and_pair_every_start_with_its_end():
    out = io.StringIO()
    sink = JsonSink(out, heartbeat=30.0)
    sink._beating = threading.current_thread()  # the test beats (Sink.beat_due)
    report = Reporter(prefix="[web] ", sink=sink)
    with report.stage("launch builder"):
        say("i-1: pending")
    with report.stage("step 1/1: build", kind="step") as step:
        report.output("build", "compiling")
        sink.beat_due(step.quiet_since + 31)
    with pytest.raises(RuntimeError), report.stage("stop builder"):
        raise RuntimeError("boom")
    report.warn("careful")
    report.sink.close()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all(e["recipe"] == "web" and e["time"].endswith("+00:00") for e in events)
    kinds = [(e["event"], e.get("name") or e.get("stage")) for e in events if e["event"] != "heartbeat"]
    assert kinds == [("stage-start", "launch builder"), ("status", "launch builder"), ("stage-end", "launch builder"),
                     ("step-start", "step 1/1: build"), ("output", "step 1/1: build"), ("step-end", "step 1/1: build"),
                     ("stage-start", "stop builder"), ("stage-end", "stop builder"), ("warning", None)]
    assert [e for e in events if e["event"] == "heartbeat"][0]["stage"] == "step 1/1: build"
    ends = {e["name"]: e for e in events if e["event"].endswith("-end")}
    assert ends["stop builder"]["ok"] is False and ends["step 1/1: build"]["ok"] is True


# ---- end to end: moto server and a real sshd as the builder -----------------------------------

SILENT = "  - name: think\n    shell: sleep 3 && echo done\n"  # six heartbeat intervals of 0.5 s


@pytest.fixture
def slow_moto():
    """A moto server whose images stay pending 4 s, their snapshots' progress moving."""
    server = MotoServer(slow_images=4.0)
    ec2 = server.client()
    seed = ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    source = ec2.create_image(InstanceId=seed, Name="test-debian-12-amd64-20260101")["ImageId"]
    ec2.terminate_instances(InstanceIds=[seed])
    ec2.get_waiter("image_available").wait(ImageIds=[source], WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    yield server
    stop_process(server.proc)


@pytest.mark.e2e
def test_waiting_for_an_image_the_heartbeat_shows_its_state_and_the_snapshot_moving(slow_moto, tmp_path, monkeypatch):
    from bakery.bake.run import bake
    from bakery.cloud.images import SnapshotProgress
    from bakery.config.settings import Settings

    monkeypatch.setattr(SnapshotProgress, "INTERVAL", 0.4)  # the 10 s of AWS, shortened as the image's 4 s are
    host = FakeBuilderHost(slow_moto, tmp_path / "builder")
    try:
        write_recipe(tmp_path / "recipes", "web", recipe_text(host.port, "  - {name: hi, shell: 'true'}\n"))
        settings = Settings(cloud="aws", region="us-east-1", endpoint_url=slow_moto.url, project_dir=tmp_path,
                            recipes_dir=tmp_path / "recipes", state_dir=tmp_path / "state")
        out = io.StringIO()
        report = Reporter(prefix="[web] ", sink=PlainSink(out, heartbeat=0.3))
        manifest = bake(settings, "web", {}, report=report)
        report.sink.close()
    finally:
        host.close()
    beats = [line for line in out.getvalue().splitlines() if line.startswith("[web] … still wait for image: ")]
    assert beats, out.getvalue()
    said = [line.split(": ", 1)[1] for line in beats]
    assert all(f"{manifest.ami_id} in us-east-1: pending, snapshot " in s for s in said), said
    shares = {int(s.split("snapshot ")[1].split("%")[0]) for s in said}
    # it moved while the image was pending (a last beat may pair the last "pending" with a read at 100 %)
    assert len({share for share in shares if share < 100}) >= 2, said
    wait = next(e for e in manifest.timeline if e["name"] == "wait for image")
    assert wait["waited"] >= 2.5  # of the 4 s the image was pending: the wait began soon after CreateImage


def cli(moto_url: str, tmp_path, *args: str, stderr=subprocess.PIPE, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=stderr is None or None,
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=180,
                          env=cli_environment(moto_url, tmp_path, **env))


@pytest.mark.e2e
def test_log_format_json_has_every_stage_and_step_of_the_bake_with_start_and_end(moto, builder_host, tmp_path):
    write_recipe(tmp_path / "recipes", "web", recipe_text(builder_host.port, SILENT))
    done = cli(moto.url, tmp_path, "bake", "--recipe", "web", "--json", "--log-format", "json",
               INVOKE_BAKERY_HEARTBEAT="0.5")
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    events = [json.loads(line) for line in done.stderr.splitlines()]  # every line is one JSON object
    started = [e["name"] for e in events if e["event"] in ("stage-start", "step-start")]
    ended = [e["name"] for e in events if e["event"] in ("stage-end", "step-end")]
    assert sorted(started) == sorted(ended) == sorted(manifest["stages"])
    assert [e["name"] for e in events if e["event"] == "step-start"] == ["step 1/1: think"]
    assert any(e["event"] == "heartbeat" and e["stage"] == "step 1/1: think" for e in events)
    assert sorted(e["name"] for e in manifest["timeline"]) == sorted(manifest["stages"])  # (JSON sorts keys)


@pytest.mark.e2e
def test_a_failed_bake_in_json_says_why_as_events_too(moto, builder_host, tmp_path):
    write_recipe(tmp_path / "recipes", "web", recipe_text(builder_host.port, "  - {name: fail, shell: 'exit 3'}\n"))
    done = cli(moto.url, tmp_path, "bake", "--recipe", "web", "--log-format", "json")
    assert done.returncode != 0
    events = [json.loads(line) for line in done.stderr.splitlines()]  # still one JSON object per line
    failed = next(e for e in events if e["event"] == "step-end")
    assert failed["ok"] is False and "step 1/1: fail exited with status 3" in failed["error"]
    assert events[-1]["event"] == "error" and events[-1]["text"].startswith("error: ")
    report = cli(moto.url, tmp_path, "report")  # the failed bake kept its manifest, for this
    assert report.returncode == 0, report.stderr
    head, *rows = report.stdout.splitlines()
    assert ", failed: " in head and "step 1/1: fail exited with status 3" in head
    assert any(row.endswith("  step 1/1: fail  (failed)") for row in rows)


@pytest.mark.e2e
def test_without_a_terminal_a_silent_step_gets_heartbeats_before_its_closing_line(moto, builder_host, tmp_path):
    write_recipe(tmp_path / "recipes", "web", recipe_text(builder_host.port, SILENT))
    done = cli(moto.url, tmp_path, "bake", "--recipe", "web", INVOKE_BAKERY_HEARTBEAT="0.5")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    closing = next(i for i, line in enumerate(lines) if line.startswith("[web] ✓ step 1/1: think"))
    beats = [i for i, line in enumerate(lines) if line.startswith("[web] … still step 1/1: think, ")]
    assert len(beats) >= 2 and max(beats) < closing


@pytest.mark.e2e
def test_in_a_terminal_the_live_display_shows_and_every_closing_line_stays(moto, builder_host, tmp_path):
    import select

    write_recipe(tmp_path / "recipes", "web", recipe_text(builder_host.port, SILENT))
    main, side = pty.openpty()
    env = {**cli_environment(moto.url, tmp_path), "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("CI", None)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "bake", "--recipe", "web"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=side, env=env)
    os.close(side)
    seen, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal's other side closed: the bake ended
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0, seen.decode(errors="replace")
    os.close(main)
    screen = seen.decode(errors="replace")
    assert "\x1b[" in screen  # drawn and redrawn with control sequences
    assert "⋯ step 1/1: think" in screen  # the running step's line in the live display
    (path,) = (tmp_path / "state/manifests").glob("web-b-*[0-9a-f].json")
    for stage in json.loads(path.read_text())["stages"]:
        assert f"✓ {stage}" in screen, stage


# ---- where the time went: invoke report, the rebake summary's chart ----------------------------

@pytest.mark.e2e
def test_report_prints_every_stage_with_its_share_and_writes_a_timeline_picture(moto, builder_host, tmp_path):
    from PIL import Image

    write_recipe(tmp_path / "recipes", "web", recipe_text(builder_host.port, SILENT))
    baked = cli(moto.url, tmp_path, "bake", "--recipe", "web", "--json")
    assert baked.returncode == 0, baked.stderr
    manifest = json.loads(baked.stdout)
    done = cli(moto.url, tmp_path, "report")  # the newest bake
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"web {manifest['build_id']}: ") and lines[1].split() == [
        "START", "SECONDS", "SHARE", "WAITING", "STAGE"]
    for stage in manifest["stages"]:
        assert any(line.endswith(f"  {stage}") for line in lines[2:]), stage
    think = next(line for line in lines if line.endswith("  step 1/1: think"))
    assert float(think.split()[1]) >= 1.6 and think.split()[2].endswith("%")
    assert lines[-2].startswith("waiting on the cloud ")
    picture = tmp_path / "state/manifests" / f"web-{manifest['build_id']}.timeline.png"
    assert lines[-1] == f"timeline: {picture}"
    with Image.open(picture) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] >= 900 and image.size[1] >= 64 + 24 * len(manifest["stages"])
    assert picture.stat().st_size > 10_000
    again = cli(moto.url, tmp_path, "report", "--build-id", manifest["build_id"], "--png", str(tmp_path / "t.png"),
                "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["png"] == str(tmp_path / "t.png")
    missing = cli(moto.url, tmp_path, "report", "--build-id", "b-20200101000000-000000")
    assert missing.returncode == 2 and missing.stderr.startswith("error: report: no manifest of build b-2020")
    nowhere = cli(moto.url, tmp_path, "report", "--png", str(tmp_path / "no/such/dir/t.png"))
    assert nowhere.returncode == 2 and nowhere.stderr == f"error: --png {tmp_path}/no/such/dir/t.png: No such file or directory\n"
    picture.with_suffix("").with_suffix(".json").write_text('{"build_id": "' + manifest["build_id"] + '", "timel')
    broken = cli(moto.url, tmp_path, "report", "--build-id", manifest["build_id"])
    assert broken.returncode == 2 and broken.stderr.startswith(f"error: report: {picture.with_suffix('').with_suffix('.json')}: not a bake manifest")


@pytest.mark.e2e
def test_rebake_writes_a_mermaid_gantt_of_each_baked_recipe_to_the_job_summary(moto, builder_host, tmp_path):
    write_recipe(tmp_path / "recipes", "web", recipe_text(builder_host.port, SILENT))
    summary = tmp_path / "summary.md"
    done = cli(moto.url, tmp_path, "rebake", GITHUB_STEP_SUMMARY=str(summary))
    assert done.returncode == 0, done.stderr
    text = summary.read_text()
    block = text[text.index("```mermaid\n"):]
    block = block[:block.index("\n```") + 4].splitlines()
    assert block[1:6] == ["gantt", "    title web: where the bake's time went", "    dateFormat YYYY-MM-DD HH:mm:ss",
                          "    axisFormat %H:%M:%S", "    todayMarker off"]
    assert "    section bakery" in block and "    section recipe steps" in block
    think = next(line for line in block if line.lstrip().startswith("step 1/1  think :"))
    tag, start, end = think.split(" :", 1)[1].split(", ")
    assert tag == "step0" and start.startswith("2000-01-01 00:00:") and end > start


def test_a_gantt_task_is_one_name_even_when_a_stage_is_named_like_mermaid_syntax():
    from bakery.bake.timeline import mermaid

    chart = mermaid("web", [{"name": "section: a; b # c", "kind": "step", "start": 100.0, "seconds": 3.5, "waited": 0},
                            {"name": "wait for image", "kind": "stage", "start": 90.0, "seconds": 10.0, "waited": 9.0},
                            {"name": "stop builder", "kind": "stage", "start": 103.5, "seconds": 0.2, "waited": 0,
                             "ok": False}]).splitlines()
    assert chart[-1] == "```" and chart.index("    section bakery") < chart.index("    section recipe steps")
    assert "    wait for image :active, stage0, 2000-01-01 00:00:00, 2000-01-01 00:00:10" in chart
    assert "    stop builder :crit, stage1, 2000-01-01 00:00:13, 2000-01-01 00:00:14" in chart
    assert "    · section  a  b   c :step0, 2000-01-01 00:00:10, 2000-01-01 00:00:14" in chart


def test_what_is_said_of_several_subjects_at_once_stays_side_by_side():
    """Copies in two regions waited for at once, each in a copy of the stage's context."""
    from concurrent.futures import ThreadPoolExecutor

    from bakery.progress import submit_in_stage

    report, out = plain()
    with report.stage("publish") as stage, ThreadPoolExecutor(2) as pool:
        def wait(region: str) -> None:
            say(f"ami-{region} in {region}: pending, snapshot 10%", subject=f"ami-{region}")
        for done in [submit_in_stage(pool, wait, r) for r in ("eu-west-1", "us-west-2")]:
            done.result()
        report.sink.beat_due(stage.started + 31)
    assert sorted(stage.status.split("; ")) == ["ami-eu-west-1 in eu-west-1: pending, snapshot 10%",
                                                "ami-us-west-2 in us-west-2: pending, snapshot 10%"]
    assert "; " in next(line for line in out.getvalue().splitlines() if "still publish" in line)


@pytest.mark.parametrize("args, env, message", [
    (["--log-format", "xml"], {}, "error: --log-format: 'xml' is not one of text, json"),
    ([], {"INVOKE_BAKERY_HEARTBEAT": "soon"}, "error: invoke config bakery.heartbeat: 'soon' is not a number of seconds"),
    ([], {"INVOKE_BAKERY_LOG_FORMAT": "yaml"}, "error: invoke config bakery.log_format: 'yaml' is not one of text, json"),
])
def test_a_bad_progress_setting_is_one_line_before_any_cloud(tmp_path, args, env, message):
    write_recipe(tmp_path / "recipes", "web", recipe_text(1, "  - {name: hi, shell: 'true'}\n"))
    done = cli("http://127.0.0.1:1", tmp_path, "bake", "--recipe", "web", *args, **env)
    assert done.returncode == 2 and done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


def test_waiting_for_another_bake_of_the_recipe_here_is_a_stage_of_its_own(tmp_path):
    """Two bakes of one recipe on one machine: the second waits for the first's lock in a stage of
    its own (so a long wait gets its heartbeats, as any stage does), and says so when it is over."""
    from bakery.housekeeping.locks import exclusive

    first = exclusive(tmp_path, "bake-us-east-1-web", waiting=lambda: pytest.fail("the first never waits"))
    out = io.StringIO()
    report = Reporter(prefix="[web] ", sink=PlainSink(out, heartbeat=0.2))
    def waiting():  # the first bake ends a second after this one began to wait for it
        threading.Timer(1.0, first.close).start()
        return report.stage("wait for another bake of web running here")

    with exclusive(tmp_path, "bake-us-east-1-web", waiting):
        pass
    report.sink.close()
    closing = out.getvalue().splitlines()[-1]
    assert closing.startswith("[web] ✓ wait for another bake of web running here (")
    assert float(closing.rsplit("(", 1)[1].rstrip("s)")) >= 0.9  # as long as the first bake held it
