"""Run the suite on Django 6.1, which needs Python 3.12+, beside `make test`'s Django 5.2 run."""

import glob
import os
import subprocess

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["django6"]

CANDIDATES = ("3.14", "3.13", "3.12")


def newest_python():
    """Return the path of the newest working Python 3.12+ interpreter, or None."""
    for version in CANDIDATES:
        pyenv = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python3")))
        for executable in (f"python{version}", *reversed(pyenv)):
            try:
                found = subprocess.run(
                    [executable, "-c", "import sys; print(sys.executable)"],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=20,
                )
            except (OSError, subprocess.SubprocessError):
                continue
            return found.stdout.strip()
    return None


NEWEST = newest_python()


@nox.session(python=NEWEST or False)
def django6(session):
    if NEWEST is None:
        session.log("No Python 3.12+ interpreter found: Django 6.1 was NOT tested.")
        return
    session.install("-e", ".[dev]", "django>=6.1,<6.2")
    version = "import django, sys; print('Django', django.get_version(), 'on', sys.version)"
    session.run("python", "-c", version)
    session.run("pytest", *session.posargs)
