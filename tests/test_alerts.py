"""Alerts reach a real HTTP server on 127.0.0.1; a slow or dead webhook never blocks or breaks training."""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from monitor_common import InjectingTrainer, make_args, notifier_of, tiny_model, token_rows  # noqa: E402

from hftrain.alerts import WebhookSender, alert_body  # noqa: E402


class Hook:
    """A local webhook endpoint recording every POST body; `gate` (an Event) can hold responses back."""

    def __init__(self, gate=None):
        self.bodies, self.paths, self.gate = [], [], gate
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(data))
                hook.paths.append(self.path)
                if hook.gate is not None:
                    hook.gate.wait(10)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def test_anomaly_action_and_finish_alerts_reach_local_server(tmp_path, hook):
    trainer = InjectingTrainer(
        model=tiny_model(),
        train_dataset=token_rows(),
        nan_at=[3],
        args=make_args(
            str(tmp_path / "out"),
            max_steps=6,
            save_strategy="steps",
            save_steps=6,
            alert_webhook_url=hook.url,
            run_name="alert-run",
        ),
    )
    trainer.train()
    assert notifier_of(trainer).sender.flush(10)
    kinds = [(b["event"], b["kind"], b["step"]) for b in hook.bodies]
    assert kinds == [("anomaly", "nonfinite", 3), ("action", "skip", 3), ("finish", "finish", 6)]
    anomaly, _, finish = hook.bodies
    assert anomaly["run_name"] == "alert-run" and anomaly["metrics"]["grad_norm"] == "nan"
    assert "action: skip" in anomaly["message"] and "alert-run" in anomaly["text"]
    assert finish["checkpoint"].endswith("checkpoint-6") and "loss" in finish["metrics"]


def test_failure_alert_and_the_error_still_propagates(tmp_path, hook):
    trainer = InjectingTrainer(
        model=tiny_model(),
        train_dataset=token_rows(),
        raise_at=2,
        args=make_args(str(tmp_path / "out"), max_steps=6, alert_webhook_url=hook.url),
    )
    with pytest.raises(RuntimeError, match="injected failure"):
        trainer.train()
    assert notifier_of(trainer).sender.flush(10)
    (failure,) = hook.bodies
    assert failure["event"] == "failure" and "RuntimeError: injected failure at step 2" in failure["message"]


def test_hanging_webhook_never_blocks_training_and_retries_are_bounded(tmp_path):
    gate = threading.Event()  # the server holds every response until the test releases it
    hook = Hook(gate)
    try:
        trainer = InjectingTrainer(
            model=tiny_model(),
            train_dataset=token_rows(),
            nan_at=[2],
            args=make_args(
                str(tmp_path / "out"), max_steps=4, alert_webhook_url=hook.url, alert_timeout=0.5, alert_retries=1
            ),
        )
        trainer.train()
        # Training finished although the first request has not been answered (it cannot be: the gate is shut).
        assert not gate.is_set() and trainer.state.global_step == 4
        sender = notifier_of(trainer).sender
        assert sender.flush(30)
        # Every alert was tried exactly twice (1 + alert_retries), then given up on.
        assert sender.failed == 3 and sender.sent == 0 and len(hook.bodies) == 6
    finally:
        hook.close()


def test_dead_webhook_is_logged_not_raised(tmp_path):
    sender = WebhookSender("http://127.0.0.1:9/none", timeout=0.5, retries=1, backoff=0.01)  # port 9: discard, closed
    assert sender.send(
        {
            "event": "finish",
            "kind": "finish",
            "run_name": "r",
            "step": 1,
            "message": "m",
            "metrics": {},
            "checkpoint": None,
            "time": 0,
        }
    )
    assert sender.flush(10) and sender.failed == 1 and sender.sent == 0


@pytest.mark.parametrize("fmt,key", [("slack", "text"), ("discord", "content")])
def test_slack_and_discord_bodies_sent_to_local_server(hook, fmt, key):
    sender = WebhookSender(hook.url, fmt=fmt, timeout=2)
    alert = {
        "event": "anomaly",
        "kind": "loss_spike",
        "run_name": "r1",
        "step": 7,
        "message": "loss 9.1 spiked",
        "metrics": {"loss": float("nan")},
        "checkpoint": "out/checkpoint-6",
        "time": 0,
    }
    sender.send(alert)
    assert sender.flush(10)
    (body,) = hook.bodies
    assert list(body) == ([key] if fmt == "slack" else [key, "username"])
    assert "r1" in body[key] and "step 7" in body[key] and "checkpoint-6" in body[key] and "loss=nan" in body[key]


def test_auto_format_from_url():
    alert = {
        "event": "finish",
        "kind": "finish",
        "run_name": "r",
        "step": 1,
        "message": "x" * 3000,
        "metrics": {},
        "checkpoint": None,
        "time": 0,
    }
    assert WebhookSender("https://hooks.slack.com/services/T/B/x").format == "slack"
    assert WebhookSender("https://discord.com/api/webhooks/1/x").format == "discord"
    assert len(alert_body(alert, "discord")["content"]) == 2000
    assert alert_body(alert, "json")["run_name"] == "r"
