"""The README documents what an operator can set."""

from pathlib import Path

from api.settings import ApiSettings
from notifier.settings import NotifierSettings
from outbox_relay.settings import RelaySettings
from sandbox.settings import SandboxSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_documents_every_setting() -> None:
    readme = README.read_text()
    fields = {
        name.upper()
        for cls in (ApiSettings, RelaySettings, NotifierSettings, SandboxSettings)
        for name in cls.model_fields
    }
    assert sorted(name for name in fields if f"`{name}`" not in readme) == []
