"""The team's emails: the catalogue (`catalogue.py`), the templates and the brand
(`rendering.py`), and samples to check and preview them with (`samples.py`). Shared by the
notifier, which sends them, and the sandbox's dev inbox and the `postroom templates`
command, which show them."""

from postroom.emails.catalogue import Catalogue, CatalogueError, EmailSpec
from postroom.emails.rendering import Brand, Emails, RenderedEmail, TemplateProblem

__all__ = [
    "Brand",
    "Catalogue",
    "CatalogueError",
    "EmailSpec",
    "Emails",
    "RenderedEmail",
    "TemplateProblem",
]
