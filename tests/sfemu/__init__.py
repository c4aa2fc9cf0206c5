"""A Salesforce emulator for tests: HTTPS, OAuth (JWT bearer, client credentials), REST sObjects,
sObject Collections, SOQL query/queryMore, API limits and fault injection. See server.py."""

from tests.sfemu.ids import checksum, is_valid_id, to18
from tests.sfemu.server import SalesforceEmulator
from tests.sfemu.state import Call
from tests.sfemu.tls import KeyPair, make_consumer_keypair

__all__ = [
    "Call",
    "KeyPair",
    "SalesforceEmulator",
    "checksum",
    "is_valid_id",
    "make_consumer_keypair",
    "to18",
]
