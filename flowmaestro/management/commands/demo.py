import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from apikeys.models import APIKey
from apikeys.scopes import all_bundles

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"  # noqa: S105 (a local demo account, printed on screen)
DEMO_INPUTS = '{"nodes": 12, "delay_ms": 4000}'


class Command(BaseCommand):
    help = (
        "Migrate, create a demo user and key, serve the site with a task worker beside it, "
        "and start a demo execution."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(self, *args, host, port, **options):
        # Stopped by a supervisor (SIGTERM) as by Ctrl-C: stop the server and worker too.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        call_command("migrate", verbosity=0)
        user = self.demo_user()
        key, raw = APIKey.objects.create_key(
            owner=user, name="demo key", scopes=all_bundles()["full-access"]
        )
        base = f"http://{host}:{port}"
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        children = []
        try:
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flowmaestro.serve",  # daphne, its access log without query strings
                    "-b",
                    host,
                    "-p",
                    str(port),
                    "flowmaestro.asgi:application",
                ]
            )
            children.append(server)
            # No autoreload: a reload would kill the workflow it is running.
            children.append(
                subprocess.Popen([*manage, "db_worker", "--interval", "0.2", "--no-reload"])
            )
            self.wait_for_port(host, port, server)
            runner = subprocess.Popen(
                [*manage, "runworkflow", "wf_demo", "--owner", DEMO_USER, "--inputs", DEMO_INPUTS],
                stdout=subprocess.PIPE,
                text=True,
            )
            children.append(runner)
            execution_id = runner.stdout.readline().strip()
            if not execution_id.startswith("exec_"):
                raise CommandError("The demo execution did not start; see the errors above.")
            self.print_instructions(base, raw, key, execution_id)
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()

    def demo_user(self):
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(
            username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        return user

    @staticmethod
    def wait_for_port(host, port, server):
        for _ in range(100):
            if server.poll() is not None:
                raise CommandError(f"The server exited (is port {port} already in use?).")
            try:
                with socket.create_connection((host, port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise CommandError(f"The server did not answer on {host}:{port}.")

    def print_instructions(self, base, raw, key, execution_id):
        events_url = f"{base}/api/v1/executions/{execution_id}/events"
        start = (
            f"{shlex.quote(sys.executable)} manage.py runworkflow wf_demo --owner {DEMO_USER} "
            f'--inputs \'{{"nodes": 5, "delay_ms": 1000}}\''
        )
        live_page = base + reverse("execution_pages:execution-detail", args=[execution_id])
        write = self.stdout.write
        write("")
        write(self.style.SUCCESS("The demo is running."))
        write("")
        write(f"  A demo execution is running now ({execution_id}). Watch it live in your browser:")
        write("")
        write(self.style.SUCCESS(f"    {live_page}"))
        write(f"    log in as user {DEMO_USER!r}, password {DEMO_PASSWORD!r}")
        write("")
        write(f"  All executions: {base}/executions/   Admin: {base}/admin/  (the same login)")
        write("")
        write(f"  Your demo API key (full access; shown once): {raw}")
        write("")
        write("  Or watch it stream in a terminal:")
        write("")
        write(f"    curl -N -H 'X-API-Key: {raw}' {events_url}")
        write("")
        write("  Start another one through the API (the worker beside the server runs it),")
        write("  then stream it the same way with the execution_id it answers:")
        write("")
        write(
            f"    curl -X POST -H 'X-API-Key: {raw}' -H 'Content-Type: application/json' "
            f'-d \'{{"inputs": {{"nodes": 5, "delay_ms": 1000}}}}\' '
            f"{base}/api/v1/workflows/wf_demo/execute"
        )
        write("")
        write("  or from a shell, as your own workers would record one:")
        write("")
        write(f"    {start}")
        write("")
        write(f"  API reference: {base}/api/v1/docs/")
        write("")
        write("  Press Ctrl-C to stop.")
        write("")
        self.stdout.flush()
