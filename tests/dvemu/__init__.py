"""A Dataverse emulator for tests: HTTPS, Entra ID client credentials (what msal asks for), the
Web API's rows, table definitions and $batch, service protection errors and fault injection.
See server.py."""

from tests.dvemu.server import DataverseEmulator, VerifyingSession
from tests.dvemu.state import Call, DataverseState

__all__ = ["Call", "DataverseEmulator", "DataverseState", "VerifyingSession"]
