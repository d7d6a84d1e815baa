"""``python -m flowmaestro.serve ...``: daphne's command line, with an access log that
leaves out query strings, since a stream token travels in one (``?token=``)."""

from daphne import cli
from daphne.access import AccessLogGenerator


class PathOnlyAccessLog(AccessLogGenerator):
    """daphne's access log, each request's path without its query string."""

    def __call__(self, protocol, action, details):
        if "path" in details:
            details = {**details, "path": details["path"].partition("?")[0]}
        super().__call__(protocol, action, details)


# The command line builds its access log from this name; it offers no option for it.
cli.AccessLogGenerator = PathOnlyAccessLog

if __name__ == "__main__":
    cli.CommandLineInterface.entrypoint()
