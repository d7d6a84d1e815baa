from io import StringIO
from pathlib import Path

from django.conf import settings
from django.core.management import call_command

DOCS = Path(settings.BASE_DIR) / "docs"


def test_api_reference_matches_the_schema():
    rendered = StringIO()
    call_command("apireference", stdout=rendered)
    assert rendered.getvalue() == (DOCS / "api-reference.md").read_text(), (
        "docs/api-reference.md is stale: run "
        "`python manage.py apireference > docs/api-reference.md`"
    )


def test_every_page_the_docs_link_to_exists():
    pages = [Path(settings.BASE_DIR) / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        text = page.read_text()
        for target in {part.split(")")[0] for part in text.split("](")[1:]}:
            if target.startswith(("http", "#", "../shared")):
                continue
            assert (page.parent / target.split("#")[0]).exists(), f"{page.name} links to {target}"
